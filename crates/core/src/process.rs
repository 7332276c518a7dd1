//! The process around a component (queue-proxy, activator, autoscaler, gateway, sample
//! app): a Tokio runtime, the component's body on it, and one way to fail.

use std::fmt;
use std::future::Future;
use std::process::ExitCode;

/// Why a component's process ends early: what it prints, and its exit code.
#[derive(Debug)]
pub struct Exit {
    code: u8,
    message: String,
}

impl Exit {
    pub fn new(code: u8, message: impl fmt::Display) -> Self {
        Self {
            code,
            message: message.to_string(),
        }
    }
}

/// Any error ends the process with code 1, printing the error.
impl<E: std::error::Error> From<E> for Exit {
    fn from(error: E) -> Self {
        Self::new(1, error)
    }
}

/// Runs `body` on a new runtime and exits as it says: 0 when it returns `Ok`, else the
/// `Exit`'s code with `{name}: {message}` on stderr. `worker_threads`: `None`, Tokio's
/// multi-threaded default; `Some(1)`, the current-thread scheduler (no cross-thread
/// wake-ups); `Some(n)`, n workers.
pub fn run<F>(name: &str, worker_threads: Option<usize>, body: F) -> ExitCode
where
    F: Future<Output = Result<(), Exit>>,
{
    // Overload must meet the connection bound (a 503), not the open-file limit.
    crate::serve::limits::raise_fd_limit();
    let runtime = match worker_threads {
        Some(n) if n <= 1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("{name}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.spawn(crate::memory::give_back_after_bursts());
    match runtime.block_on(body) {
        Ok(()) => ExitCode::SUCCESS,
        Err(exit) => {
            eprintln!("{name}: {}", exit.message);
            ExitCode::from(exit.code)
        }
    }
}
