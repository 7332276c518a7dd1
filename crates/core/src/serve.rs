//! The serve loop every Sluice listener runs: HTTP/1.1 and h2c on one port (hyper-util's
//! `auto` builder), one task per connection, every connection held to the port's
//! [`Limits`] (header-read and idle timeouts, HTTP/2 keep-alive and stream cap, a
//! connection bound past which the answer is 503), and a graceful shutdown that stops
//! accepting, lets requests in flight finish, then waits (bounded) for upgraded
//! connections.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tracing::Instrument;

mod conn;
mod io;
pub mod limits;
pub mod local;
pub mod passed;

pub use conn::{DEADLINE_SLACK, ExchangeDeadline, InFlight};
pub use io::Io;
pub use limits::{LimitArgs, Limits};
pub use local::{LocalConnector, LocalListener};

use conn::{ConnShared, Counted};

pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({port}): {source}")]
pub struct BindError {
    pub port: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds `addr` for the port called `port` (named in the error), or takes the socket
/// passed to the process under that name ([`passed`]: systemd's socket activation), which
/// then wins over `addr`.
pub async fn listen(port: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    let bind_error = |source| BindError { port, addr, source };
    if let Some(l) = passed::take(port).map_err(bind_error)? {
        let l = TcpListener::from_std(l).map_err(bind_error)?;
        tracing::debug!(port, addr = %local_addr(&l), "listening on a passed socket");
        return Ok(l);
    }
    TcpListener::bind(addr).await.map_err(bind_error)
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

/// Counts things that outlive a single request and that shutdown waits for: a server's
/// open connections, and upgraded (e.g. websocket) connections, which leave hyper's
/// connection once upgraded.
#[derive(Debug, Default)]
pub struct Tracker {
    active: AtomicUsize,
    idle: Notify,
}

/// One tracked thing; dropping it marks it finished.
#[derive(Debug)]
pub struct TrackGuard(Arc<Tracker>);

// === impl Tracker ===

impl Tracker {
    pub fn track(self: &Arc<Self>) -> TrackGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        TrackGuard(Arc::clone(self))
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until nothing tracked is left, or `limit` passes. Returns how many were
    /// still open.
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

impl Drop for TrackGuard {
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

/// How a port serves besides its handler: the bounds on its clients, how long open
/// connections get at shutdown, and the in-process connections it also accepts.
#[derive(Debug)]
pub struct Serving {
    pub limits: Limits,
    pub grace: Duration,
    pub local: Option<LocalListener>,
}

impl Serving {
    /// Default limits, `grace` at shutdown, TCP only.
    pub fn new(grace: Duration) -> Self {
        Self {
            limits: Limits::default(),
            grace,
            local: None,
        }
    }

    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn local(mut self, local: Option<LocalListener>) -> Self {
        self.local = local;
        self
    }
}

/// The longest a connection past the bound is kept for its 503: a client that sends
/// nothing must not hold a descriptor the bound is there to protect.
const REFUSED_LINGER: Duration = Duration::from_secs(2);

/// The peer given to `make_service` for an in-process connection.
const LOCAL_PEER: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// Serves `listener` (and in-process connections, if any) until `shutdown` resolves, then
/// closes gracefully: no new connections, keep-alive turned off, requests in flight
/// allowed to finish within the grace period. `make_service` is called once per
/// connection with the peer's address. Every connection is held to `serving.limits`.
pub async fn serve<M, S, B>(
    name: &'static str,
    listener: TcpListener,
    mut make_service: M,
    shutdown: impl Future<Output = ()>,
    serving: Serving,
) where
    M: FnMut(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>> + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Serving {
        limits,
        grace,
        mut local,
    } = serving;
    let local_addr = listener.local_addr().ok();
    let max_connections = limits.max_connections();
    let builder = builder(&limits);
    let connections = Arc::new(Tracker::default());
    let (stop, stopped) = watch::channel(false);
    let mut shutdown = pin!(shutdown);
    tracing::debug!(server = name, local = ?local_addr, max_connections, "serving");
    loop {
        let (io, peer) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small request/response exchanges must not wait on Nagle.
                    let _ = stream.set_nodelay(true);
                    (Io::Tcp(stream), peer)
                }
                Err(error) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(server = name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            Some(stream) = next_local(&mut local) => (Io::Local(stream), LOCAL_PEER),
        };
        let span = tracing::debug_span!("conn", server = name, %peer);
        let tracked = (connections.track(), crate::memory::Open::count());
        if connections.active() > max_connections {
            tokio::spawn(
                refuse(
                    builder.clone(),
                    io,
                    max_connections,
                    limits.header_read_timeout.min(REFUSED_LINGER),
                    tracked,
                )
                .instrument(span),
            );
            continue;
        }
        let shared = ConnShared::new(tokio::time::Instant::now(), limits.idle_timeout);
        let service = Counted {
            inner: make_service(peer),
            conn: Arc::clone(&shared),
        };
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned();
        let mut stopped = stopped.clone();
        let idle = limits.idle_timeout;
        tokio::spawn(
            async move {
                let _tracked = tracked;
                let conn = pin!(conn);
                let stopped = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                conn::drive(conn, |c| c.graceful_shutdown(), &shared, idle, stopped).await;
            }
            .instrument(span),
        );
    }
    drop(listener);
    drop(local);
    tracing::debug!(server = name, "stopped accepting; closing connections");
    stop.send_replace(true);
    let left = connections.wait(grace).await;
    if left > 0 {
        tracing::warn!(
            server = name,
            ?grace,
            left,
            "connections still open after the grace period"
        );
    }
}

/// The next in-process connection, or never when there is no in-process listener.
async fn next_local(local: &mut Option<LocalListener>) -> Option<tokio::io::DuplexStream> {
    match local {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// hyper's builder with the port's limits.
fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.h2_keepalive_interval)
        .keep_alive_timeout(limits.h2_keepalive_timeout)
        .max_concurrent_streams(limits.h2_max_concurrent_streams);
    builder
}

/// A connection past the port's bound: each request on it gets 503 naming the bound, and
/// it closes after the first (HTTP/1.1) or within `limit`.
async fn refuse(
    builder: auto::Builder<TokioExecutor>,
    io: Io,
    max: usize,
    limit: Duration,
    tracked: (TrackGuard, crate::memory::Open),
) {
    tracing::debug!(max, "connection limit reached; answering 503");
    let body = Bytes::from(format!(
        "overloaded: this server already has {max} open connections (its connection limit)\n"
    ));
    let service = service_fn(move |_req: Request<Incoming>| {
        let mut rsp: Response<Full<Bytes>> =
            crate::respond::text(StatusCode::SERVICE_UNAVAILABLE, body.clone());
        rsp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        std::future::ready(Ok::<_, Infallible>(rsp))
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let _ = tokio::time::timeout(limit, conn).await;
    drop(tracked);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn upgrade_tracker_waits_for_the_last_guard() {
        let tracker = Arc::new(Tracker::default());
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
        let tracker = Arc::new(Tracker::default());
        let _g = tracker.track();
        assert_eq!(tracker.wait(Duration::from_secs(60)).await, 1);
    }
}
