//! Waiting for the signals that start a drain.

/// Resolves on SIGTERM (Kubernetes' stop) or SIGINT (Ctrl-C), naming the signal.
pub async fn signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; only a kill stops this process");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// [`signal`], logged when it comes: what a component's `run` waits on to start its drain.
pub async fn logged_signal() {
    let signal = signal().await;
    tracing::info!(signal, "received signal");
}
