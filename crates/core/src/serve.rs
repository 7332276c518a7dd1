//! The serve loop every Sluice listener runs: HTTP/1.1 and h2c on one port (hyper-util's
//! `auto` builder), one task per connection, and a graceful shutdown that stops accepting,
//! lets requests in flight finish, then waits (bounded) for upgraded connections.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::HeaderValue;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({port}): {source}")]
pub struct BindError {
    pub port: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `addr` for the port called `port` (named in the error).
pub async fn listen(port: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { port, addr, source })
}

/// The address a bound listener took (the port, when 0 was asked for).
pub fn local_addr(l: &TcpListener) -> SocketAddr {
    l.local_addr()
        .expect("a bound listener has a local address")
}

/// Splices two upgraded connections (client and upstream) until either side closes.
pub async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
) -> Result<(), BoxError> {
    let (client, upstream) = tokio::try_join!(client, upstream)?;
    let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

/// Knative's `HijackTracker` bound on waiting for upgraded connections at shutdown.
pub const UPGRADE_DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Counts upgraded (e.g. websocket) connections, which outlive hyper's connection
/// tracking once upgraded, so shutdown can wait for them.
#[derive(Debug, Default)]
pub struct UpgradeTracker {
    active: AtomicUsize,
    idle: Notify,
}

/// One upgraded connection; dropping it marks it finished.
#[derive(Debug)]
pub struct UpgradeGuard(Arc<UpgradeTracker>);

// === impl UpgradeTracker ===

impl UpgradeTracker {
    pub fn track(self: &Arc<Self>) -> UpgradeGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        UpgradeGuard(Arc::clone(self))
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no upgraded connection is left, or `limit` passes. Returns how many
    /// were still open.
    pub async fn wait(&self, limit: Duration) -> usize {
        let wait = async {
            loop {
                let mut idle = pin!(self.idle.notified());
                idle.as_mut().enable();
                if self.active() == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
        self.active()
    }
}

impl Drop for UpgradeGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// The peer's IP as a header value (for `X-Forwarded-For`), rendered once per connection.
pub fn peer_ip(peer: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&peer.ip().to_string()).expect("an IP address is a valid header value")
}

/// Stops several servers at once: each [`Stop::stopped`] future resolves on [`Stop::stop`].
#[derive(Debug)]
pub struct Stop(watch::Sender<bool>);

impl Default for Stop {
    fn default() -> Self {
        Self(watch::channel(false).0)
    }
}

impl Stop {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once `stop` has been called (at once if it already was).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Serves `listener` until `shutdown` resolves, then closes gracefully: no new
/// connections, keep-alive turned off, requests in flight allowed to finish within
/// `grace`. `make_service` is called once per connection with the peer's address.
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    mut make_service: M,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) where
    M: FnMut(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let local = listener.local_addr().ok();
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    tracing::debug!(server = name, ?local, "serving");
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(server = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Small request/response exchanges must not wait on Nagle.
        let _ = stream.set_nodelay(true);
        let service = make_service(peer);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let span = tracing::debug_span!("conn", server = name, %peer);
        tokio::spawn(
            async move {
                if let Err(error) = conn.await {
                    tracing::debug!(error = %error, "connection closed with error");
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    tracing::debug!(server = name, "stopped accepting; closing connections");
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            server = name,
            ?grace,
            "connections still open after the grace period"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn upgrade_tracker_waits_for_the_last_guard() {
        let tracker = Arc::new(UpgradeTracker::default());
        assert_eq!(
            tracker.wait(Duration::from_secs(1)).await,
            0,
            "nothing to wait for"
        );
        let g1 = tracker.track();
        let g2 = tracker.track();
        let t = Arc::clone(&tracker);
        let waiter = tokio::spawn(async move { t.wait(Duration::from_secs(60)).await });
        drop(g1);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiter.is_finished());
        drop(g2);
        assert_eq!(waiter.await.expect("join"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn upgrade_tracker_gives_up_after_the_limit() {
        let tracker = Arc::new(UpgradeTracker::default());
        let _g = tracker.track();
        assert_eq!(tracker.wait(Duration::from_secs(60)).await, 1);
    }
}
