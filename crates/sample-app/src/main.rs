//! `sample-app`: the demo container. `PORT` (default 8080) and `TARGET` (default World).

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = match sluice_sample_app::Args::try_parse() {
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
    sluice_sample_app::main(args)
}
