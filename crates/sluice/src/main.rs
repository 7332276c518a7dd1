//! `sluice`: the CLI users run. `sluice simulate SCENARIO.yaml` replays a traffic pattern
//! through the autoscaler's own code on a virtual clock; `sluice autoscaler` runs the
//! autoscaler service, the same code as the `autoscaler` binary; `sluice activator` the
//! activator, the same code as the `activator` binary.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for a bad scenario or configuration.
const EXIT_BAD_INPUT: u8 = 2;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Sluice: request-driven autoscaling, compatible with Knative Serving"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Replay a traffic scenario through the KPA on a virtual clock; one JSON line per tick.
    Simulate {
        /// The scenario (YAML; see the README).
        scenario: PathBuf,
        /// Also draw concurrency, desired and ready pods over time as an SVG chart.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Run the autoscaler: stats in and decisions out over gRPC, metrics on HTTP.
    Autoscaler(sluice_autoscaler::server::Args),
    /// Run the activator: hold requests for revisions with no ready pod, release them to
    /// pods within their capacity (the same code as the `activator` binary).
    Activator(sluice_activator::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate { scenario, plot } => simulate(&scenario, plot.as_deref()),
        Command::Autoscaler(args) => sluice_autoscaler::server::main(&args),
        Command::Activator(args) => sluice_activator::main(args),
    }
}

fn simulate(path: &std::path::Path, plot: Option<&std::path::Path>) -> ExitCode {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("sluice simulate: cannot read {}: {e}", path.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let scenario = match sluice::simulate::Scenario::from_yaml(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice simulate: {}: {e}", path.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let run = scenario.run();
    let mut out = std::io::stdout().lock();
    for tick in &run.ticks {
        let line = serde_json::to_string(tick).expect("a tick always serializes");
        if writeln!(out, "{line}").is_err() {
            return ExitCode::FAILURE; // stdout closed (e.g. piped into head)
        }
    }
    if let Some(plot) = plot
        && let Err(e) = std::fs::write(plot, sluice::simulate::svg(&run))
    {
        eprintln!("sluice simulate: cannot write {}: {e}", plot.display());
        return ExitCode::FAILURE;
    }
    eprintln!("{}", run.summary);
    ExitCode::SUCCESS
}
