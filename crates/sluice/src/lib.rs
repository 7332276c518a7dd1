//! The Sluice CLI's library: each subcommand's work, callable from tests.

pub mod run;
pub mod simulate;
