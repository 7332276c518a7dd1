//! `gateway`: flags and env, then [`sluice_gateway::main`].

use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    sluice_gateway::main(sluice_gateway::Args::parse())
}
