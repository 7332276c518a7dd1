//! `fake-cluster`: the Kubernetes API server double and the fake kubelet as one process,
//! for pointing `kubectl` (or Sluice's control plane) at a cluster on loopback.
//!
//! ```text
//! cargo run -p sluice-test-support --bin fake-cluster -- --kubeconfig /tmp/fake.yaml \
//!     --image sluice-queue-proxy=target/debug/sluice,queue-proxy
//! KUBECONFIG=/tmp/fake.yaml kubectl get namespaces
//! ```
//!
//! It writes a kubeconfig naming the double to `--kubeconfig`, prints `ready` on stdout
//! once both serve, and runs until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use sluice_test_support::kube_api::KubeApi;
use sluice_test_support::kubelet::{Kubelet, KubeletConfig};

#[derive(Debug, Parser)]
#[command(about = "The Kubernetes API double and the fake kubelet, on loopback")]
struct Args {
    /// Where to write the kubeconfig that names the double.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// An image (as its name starts) and the local command that runs it:
    /// `PREFIX=PROGRAM[,ARG...]`. Repeatable; a pod whose image has none fails to pull.
    #[arg(long = "image", value_parser = parse_image)]
    images: Vec<(String, Vec<String>)>,
    /// Where each container's stderr goes (`{pod}-{container}.log`).
    #[arg(long)]
    log_dir: Option<PathBuf>,
}

fn parse_image(s: &str) -> Result<(String, Vec<String>), String> {
    let (prefix, command) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected PREFIX=PROGRAM[,ARG...]"))?;
    let command: Vec<String> = command.split(',').map(str::to_owned).collect();
    if prefix.is_empty() || command[0].is_empty() {
        return Err(format!("{s:?}: expected PREFIX=PROGRAM[,ARG...]"));
    }
    Ok((prefix.to_owned(), command))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fake-cluster: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(args))
}

async fn run(args: Args) -> ExitCode {
    let api = KubeApi::start().await;
    let kubeconfig = sluice_test_support::kube_api::kubeconfig(&api.url());
    if let Err(e) = std::fs::write(&args.kubeconfig, kubeconfig) {
        eprintln!("fake-cluster: {}: {e}", args.kubeconfig.display());
        return ExitCode::FAILURE;
    }
    let client = match api
        .url()
        .parse()
        .map(kube::Config::new)
        .map(kube::Client::try_from)
    {
        Ok(Ok(c)) => c,
        _ => {
            eprintln!("fake-cluster: no client for {}", api.url());
            return ExitCode::FAILURE;
        }
    };
    let kubelet = Kubelet::start(
        client,
        KubeletConfig {
            images: args.images,
            queue_proxy_env: Vec::new(),
            period: Duration::from_millis(200),
            log_dir: args.log_dir,
        },
    )
    .await;
    println!("ready");
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fake-cluster: SIGTERM: {e}");
            return ExitCode::FAILURE;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    kubelet.shutdown().await;
    api.stop().await;
    ExitCode::SUCCESS
}
