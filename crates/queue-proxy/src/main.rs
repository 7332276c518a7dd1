//! `queue-proxy`: parse Knative's env (exit 64 on bad config, before binding anything),
//! bind, serve, and drain on SIGTERM.

use std::process::ExitCode;

use sluice_queue_proxy::{Config, QueueProxy};

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    sluice_core::telemetry::init("info");
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("queue-proxy: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    // A sidecar gets a slice of a core: one thread does the work with no cross-thread
    // wake-ups. SLUICE_WORKER_THREADS > 1 opts into the multi-threaded scheduler.
    let threads: usize = std::env::var("SLUICE_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("queue-proxy: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let qp = match QueueProxy::bind(config).await {
            Ok(qp) => qp,
            Err(error) => {
                eprintln!("queue-proxy: {error}");
                return ExitCode::FAILURE;
            }
        };
        qp.run(async {
            let signal = sluice_core::shutdown::signal().await;
            tracing::info!(signal, "received signal");
        })
        .await;
        ExitCode::SUCCESS
    })
}
