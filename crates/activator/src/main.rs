//! `activator`: parse flags and env (exit 64 on bad config, before binding anything),
//! bind, serve, and drain on SIGTERM.

use std::process::ExitCode;

use clap::Parser as _;
use sluice_activator::{Activator, Args, Config};

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    sluice_core::telemetry::init("info");
    let config = match Args::try_parse().map(Config::try_from) {
        Ok(Ok(config)) => config,
        Ok(Err(error)) => {
            eprintln!("activator: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
        Err(error) => {
            let _ = error.print();
            return ExitCode::from(if error.use_stderr() { EXIT_CONFIG } else { 0 });
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("activator: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let activator = match Activator::bind(config, None).await {
            Ok(a) => a,
            Err(error) => {
                eprintln!("activator: {error}");
                return ExitCode::FAILURE;
            }
        };
        activator
            .run(async {
                let signal = sluice_core::shutdown::signal().await;
                tracing::info!(signal, "received signal");
            })
            .await;
        ExitCode::SUCCESS
    })
}
