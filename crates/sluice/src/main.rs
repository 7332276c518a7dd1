//! `sluice`: the CLI users run. `sluice run -f SERVICE.yaml` runs the whole platform on
//! this machine; `sluice apply` and `sluice status` talk to it. `sluice simulate
//! SCENARIO.yaml` replays a traffic pattern through the autoscaler's own code on a virtual
//! clock. Every component is a subcommand too (`sluice queue-proxy`, `sluice activator`,
//! `sluice autoscaler`, `sluice gateway`, `sluice sample-app`), the same code as its own
//! binary: pods run `sluice queue-proxy` and `sluice sample-app`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Exit code for a bad scenario or configuration.
const EXIT_BAD_INPUT: u8 = 2;
/// `EX_USAGE`: a bad flag.
const EXIT_USAGE: u8 = 64;

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
    /// Run the platform (gateway, activator, autoscaler, pods) from Knative Service manifests.
    Run(sluice::run::cli::RunArgs),
    /// Change the running platform: new revisions, traffic, annotations, config-autoscaler.
    Apply(sluice::run::cli::ApplyArgs),
    /// Services, revisions, traffic, pods, concurrency and panic mode of the running platform.
    Status(sluice::run::cli::StatusArgs),
    /// Replay a traffic scenario through the KPA on a virtual clock; one JSON line per tick.
    Simulate {
        /// The scenario (YAML; see the README).
        scenario: PathBuf,
        /// Also draw concurrency, desired and ready pods over time as an SVG chart.
        #[arg(long)]
        plot: Option<PathBuf>,
    },
    /// Run the control plane alone: the applied services, their pods (local processes),
    /// and the routes and endpoints feeds the other components follow.
    Control(Box<sluice::run::control::ControlArgs>),
    /// Run the autoscaler: stats in and decisions out over gRPC, metrics on HTTP.
    Autoscaler {
        #[command(flatten)]
        args: sluice_autoscaler::server::Args,
        /// `--leader-elect`: one autoscaler of several acts (the Lease `sluice-autoscaler`).
        #[command(flatten)]
        lease: sluice::run::kube::LeaseArgs,
    },
    /// Run the activator: hold requests for revisions with no ready pod, release them to
    /// pods within their capacity (the same code as the `activator` binary).
    Activator(sluice_activator::Args),
    /// Run the gateway: Host routing and traffic splits (the same code as the `gateway` binary).
    Gateway(sluice_gateway::Args),
    /// Run a queue-proxy from Knative's env (the same code as the `queue-proxy` binary).
    QueueProxy(Box<sluice_queue_proxy::Args>),
    /// Run the sample app (Knative's helloworld-go and autoscale-go).
    SampleApp(sluice_sample_app::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Simulate { scenario, plot } => simulate(&scenario, plot.as_deref()),
        Command::Autoscaler { args, lease } => autoscaler(&args, &lease),
        Command::Activator(args) => sluice_activator::main(args),
        Command::Gateway(args) => sluice_gateway::main(args),
        Command::QueueProxy(args) => sluice_queue_proxy::main(*args),
        Command::SampleApp(args) => sluice_sample_app::main(args),
        Command::Run(args) => sluice::run::cli::run(args),
        Command::Control(args) => sluice::run::control::main(*args),
        Command::Apply(args) => sluice::run::cli::apply(args),
        Command::Status(args) => sluice::run::cli::status(args),
    }
}

/// The autoscaler, once it leads when `--leader-elect` is given: a standby binds only its
/// `--health-listen` (answering readiness), and the leader's EndpointSlice on
/// `--leader-service` makes the autoscaler's Service reach the leader alone.
fn autoscaler(
    args: &sluice_autoscaler::server::Args,
    lease: &sluice::run::kube::LeaseArgs,
) -> ExitCode {
    if lease.leader_elect {
        let mut bad = Vec::new();
        let (api, config) = lease.check(sluice::run::kube::AUTOSCALER_AGENT, &mut bad);
        if !bad.is_empty() {
            eprintln!("sluice autoscaler: {}", bad.join("\n"));
            return ExitCode::from(EXIT_USAGE);
        }
        sluice_core::telemetry::init("info");
        let Some(config) = config else {
            return sluice_autoscaler::server::main(args);
        };
        let h2c = Some("kubernetes.io/h2c".to_owned());
        let ports = vec![
            ("grpc".to_owned(), args.listen.port(), h2c),
            ("metrics".to_owned(), args.metrics_listen.port(), None),
        ];
        let guard = match sluice::run::kube::lead_blocking(
            api,
            sluice::run::kube::AUTOSCALER_AGENT,
            config,
            ports,
        ) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("sluice autoscaler: {e}");
                return ExitCode::FAILURE;
            }
        };
        // Served until SIGTERM; then the Lease is handed to a standby at once.
        let code = sluice_autoscaler::server::main(args);
        guard.release();
        return code;
    } else if lease.kube_api.is_some() {
        eprintln!("sluice autoscaler: --kube-api needs --leader-elect");
        return ExitCode::from(EXIT_USAGE);
    } else if lease.health_listen.is_some() || lease.leader_service.is_some() {
        eprintln!("sluice autoscaler: --health-listen and --leader-service need --leader-elect");
        return ExitCode::from(EXIT_USAGE);
    }
    sluice_autoscaler::server::main(args)
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
