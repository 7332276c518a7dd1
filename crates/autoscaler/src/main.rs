//! `autoscaler`: Knative's KPA over gRPC (see `sluice_autoscaler::server`).

use std::process::ExitCode;

use clap::Parser;
use sluice_autoscaler::server::Args;

#[derive(Debug, Parser)]
#[command(
    name = "autoscaler",
    version,
    about = "Sluice's autoscaler: Knative's KPA over gRPC"
)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn main() -> ExitCode {
    sluice_autoscaler::server::main(&Cli::parse().args)
}
