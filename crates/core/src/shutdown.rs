//! Waiting for the signals that start a drain.

use std::future::Future;

/// Resolves on SIGTERM (Kubernetes' stop) or SIGINT (Ctrl-C), naming the signal. The
/// handlers are installed when this is called, not when it is first polled: a signal
/// that comes while a process is still starting (a rolling update may send one at any
/// moment) is held for it, instead of killing it where it stands (a leader's Lease then
/// not handed back). Call it inside a tokio runtime.
pub fn signal() -> impl Future<Output = &'static str> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; only a kill stops this process");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    }
}

/// [`signal`], logged when it comes: what a component's `run` waits on to start its drain.
pub fn logged_signal() -> impl Future<Output = ()> + Send + 'static {
    let signal = signal();
    async move {
        let signal = signal.await;
        tracing::info!(signal, "received signal");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::sys::signal::{Signal, raise};

    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_held_for_it() {
        let stop = super::signal();
        // Without the handler installed at the call, this would end the test process.
        raise(Signal::SIGINT).expect("raise");
        let got = tokio::time::timeout(Duration::from_secs(5), stop).await;
        assert_eq!(got, Ok("SIGINT"));
    }
}
