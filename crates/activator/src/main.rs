//! `activator`: flags and env, then [`sluice_activator::main`].

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    sluice_activator::main(sluice_activator::Args::parse())
}
