//! `queue-proxy`: Knative's env, then [`sluice_queue_proxy::main`].

fn main() -> std::process::ExitCode {
    use clap::Parser as _;
    sluice_queue_proxy::main(sluice_queue_proxy::Args::parse())
}
