//! `sample-app`: the demo container. `PORT` (default 8080) and `TARGET` (default World).

use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use sluice_sample_app::{Args, serve};

fn main() -> ExitCode {
    sluice_core::telemetry::init("warn");
    let args = match Args::try_parse() {
        Ok(args) => args,
        Err(e) if e.use_stderr() => {
            eprintln!("{e}");
            return ExitCode::from(64);
        }
        Err(e) => {
            print!("{e}");
            return ExitCode::SUCCESS;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("sample-app: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let addr = SocketAddr::new(args.bind, args.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(error) => {
                eprintln!("sample-app: cannot listen on {addr}: {error}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!("sample-app listening on {addr}");
        serve(listener, args.target, async {
            sluice_core::shutdown::signal().await;
        })
        .await;
        ExitCode::SUCCESS
    })
}
