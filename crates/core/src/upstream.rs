//! Connections to one origin (the queue-proxy's app on 127.0.0.1:USER_PORT, or one of
//! the activator's pods): a stack of idle HTTP/1.1 connections (reused only after a
//! response body ended cleanly), one shared HTTP/2 connection for requests that arrived
//! as HTTP/2, and dedicated connections for upgrades.
//!
//! A hand-rolled pool rather than hyper-util's client: each pool has exactly one origin,
//! so keying, URI parsing and per-checkout bookkeeping are pure overhead on the hot path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use crate::serve::{Io, LocalConnector};

/// Knative's dial backoff: the first connect attempt may take 50 ms, each retry 1.4×
/// longer, 15 attempts in all. Only timeouts are retried: a refusal fails at once.
const DIAL_FIRST_TIMEOUT: Duration = Duration::from_millis(50);
const DIAL_ATTEMPTS: u32 = 15;

/// Failing to get an answer from the app.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("dial tcp {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("dial tcp {0}: i/o timeout")]
    ConnectTimeout(SocketAddr),
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

// === impl UpstreamError ===

impl UpstreamError {
    /// The client's own request body failed on its way through (malformed chunked
    /// encoding, a body cut short): the client's fault, never the origin's. hyper reports
    /// it as an error "from user's Body stream" carrying the body's error.
    pub fn is_client_body(&self) -> bool {
        match self {
            Self::Http(e) => e.is_user() && std::error::Error::source(e).is_some(),
            _ => false,
        }
    }

    /// What the client is answered: 400 for its own bad body, 502 for the origin.
    pub fn status(&self) -> StatusCode {
        if self.is_client_body() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::BAD_GATEWAY
        }
    }
}

/// A failed send: why, and the request itself when it never left (nothing of it reached
/// the origin, so it can go to another one).
#[derive(Debug)]
pub struct SendError {
    pub error: UpstreamError,
    pub request: Option<Request<UpstreamBody>>,
}

/// Go's `http.Transport.IdleConnTimeout`: a pooled connection unused this long is closed.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    /// In-process origins are reached through this instead of `addr`.
    local: Option<LocalConnector>,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<UpstreamBody>>>,
    /// Set for an origin that takes every request over shared HTTP/2 connections.
    mux: Option<Mux>,
}

/// HTTP/2 connections to one origin shared by many requests: each takes a stream on the
/// connection with the fewest open, and a connection is added only when every one has
/// `streams_per_conn` open. Thousands of held requests cost a handful of sockets.
#[derive(Debug)]
struct Mux {
    streams_per_conn: usize,
    conns: Mutex<Vec<MuxConn>>,
    /// One connection opened at a time: a burst must not open one per request.
    opening: tokio::sync::Mutex<()>,
}

#[derive(Debug)]
struct MuxConn {
    sender: http2::SendRequest<UpstreamBody>,
    open: Arc<AtomicUsize>,
    _task: AbortOnDrop,
}

/// A stream taken on a shared connection, given back when dropped (hold it until the
/// response body ends).
#[derive(Debug)]
pub struct MuxStream(Arc<AtomicUsize>);

/// Aborts a connection's task when its last handle goes.
#[derive(Debug)]
struct AbortOnDrop(AbortHandle);

/// An idle HTTP/1.1 connection and since when.
#[derive(Debug)]
struct Idle {
    conn: Conn1,
    since: Instant,
}

/// An HTTP/1.1 connection: its sender, and the task that drives it, aborted when the
/// connection is dropped. Without that, a connection whose request was abandoned while
/// its body was still being written (the next hop not reading) would wait forever with
/// its socket, its peer's slot and every hop behind it.
#[derive(Debug)]
struct Conn1 {
    sender: http1::SendRequest<UpstreamBody>,
    _task: AbortOnDrop,
}

/// What a request to the origin carries: the client's body streamed through, or bytes
/// held in full (empty for most requests), which a retry can send again (hyper's
/// `Incoming` can be neither cloned nor rebuilt).
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

/// The client's body as an [`UpstreamBody`]: an already-ended body becomes replayable.
pub fn body_of(body: Incoming) -> UpstreamBody {
    if body.is_end_stream() {
        Either::Right(Full::new(Bytes::new()))
    } else {
        Either::Left(body)
    }
}

/// An HTTP/1.1 connection lent to one request. It goes back to the pool only if the
/// response body ended cleanly (`release(true)`); otherwise it is dropped and closes.
#[derive(Debug)]
pub struct Lease {
    upstream: Arc<Upstream>,
    conn: Conn1,
}

// === impl SendError ===

impl SendError {
    fn unsent(error: UpstreamError, request: Request<UpstreamBody>) -> Self {
        Self {
            error,
            request: Some(request),
        }
    }

    fn sent(error: UpstreamError) -> Self {
        Self {
            error,
            request: None,
        }
    }
}

impl From<SendError> for UpstreamError {
    fn from(e: SendError) -> Self {
        e.error
    }
}

// === impl Upstream ===

impl Upstream {
    /// `max_idle`: Knative keeps CC idle connections, or 1000 when CC is 0.
    pub fn new(addr: SocketAddr, max_idle: usize) -> Arc<Self> {
        Self::build(addr, None, max_idle, None)
    }

    /// An origin in this process, reached over in-process pipes (`addr` names it in logs
    /// and in the `Host` of requests that came without one).
    pub fn in_process(addr: SocketAddr, local: LocalConnector, max_idle: usize) -> Arc<Self> {
        Self::build(addr, Some(local), max_idle, None)
    }

    /// An origin that takes every request (but upgrades) over shared HTTP/2 connections,
    /// at most `streams_per_conn` on each (the activator, from a gateway in another
    /// process).
    pub fn multiplexed(addr: SocketAddr, streams_per_conn: usize) -> Arc<Self> {
        let mux = Mux {
            streams_per_conn: streams_per_conn.max(1),
            conns: Mutex::new(Vec::new()),
            opening: tokio::sync::Mutex::new(()),
        };
        Self::build(addr, None, 0, Some(mux))
    }

    /// Whether requests to this origin go over shared HTTP/2 connections.
    pub fn is_multiplexed(&self) -> bool {
        self.mux.is_some()
    }

    /// Sends an HTTP/2 request on a shared connection of a multiplexed origin; the
    /// [`MuxStream`] counts it on that connection until dropped. A request that could
    /// not be sent at all comes back in the error.
    pub async fn send_multiplexed(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, MuxStream), SendError> {
        let (mut sender, stream) = match self.mux_stream().await {
            Ok(taken) => taken,
            Err(error) => return Err(SendError::unsent(error, req)),
        };
        if let Err(error) = sender.ready().await {
            return Err(SendError::unsent(error.into(), req));
        }
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok((rsp, stream)),
            Err(mut e) => Err(SendError {
                request: e.take_message(),
                error: e.into_error().into(),
            }),
        }
    }

    /// A stream on the least busy shared connection, opening one if all are full.
    async fn mux_stream(
        &self,
    ) -> Result<(http2::SendRequest<UpstreamBody>, MuxStream), UpstreamError> {
        let mux = self
            .mux
            .as_ref()
            .expect("send_multiplexed is only called on a multiplexed origin");
        if let Some(taken) = mux.take() {
            return Ok(taken);
        }
        let _opening = mux.opening.lock().await;
        // Another request may have opened one while this one waited.
        if let Some(taken) = mux.take() {
            return Ok(taken);
        }
        let io = TokioIo::new(self.connect().await?);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        let task = AbortOnDrop(tokio::spawn(drive("h2-mux", conn)).abort_handle());
        let open = Arc::new(AtomicUsize::new(1));
        mux.conns.lock().push(MuxConn {
            sender: sender.clone(),
            open: Arc::clone(&open),
            _task: task,
        });
        Ok((sender, MuxStream(open)))
    }

    fn build(
        addr: SocketAddr,
        local: Option<LocalConnector>,
        max_idle: usize,
        mux: Option<Mux>,
    ) -> Arc<Self> {
        let upstream = Arc::new(Self {
            addr,
            local,
            idle: Mutex::new(Vec::with_capacity(max_idle.min(64))),
            max_idle,
            h2: tokio::sync::Mutex::new(None),
            mux,
        });
        // Idle connections are closed after the timeout even when no request comes to
        // notice: a task per origin that pools any, gone with the origin.
        if max_idle > 0 && tokio::runtime::Handle::try_current().is_ok() {
            let span = tracing::debug_span!("pool", origin = %addr);
            tokio::spawn(evict_idle(Arc::downgrade(&upstream)).instrument(span));
        }
        upstream
    }

    /// Closes the pooled connections idle for [`POOL_IDLE_TIMEOUT`] at `now`; how many.
    fn evict_idle(&self, now: Instant) -> usize {
        let mut idle = self.idle.lock();
        // The pool is a stack: the longest idle are at the bottom.
        let stale = idle
            .iter()
            .take_while(|i| now.saturating_duration_since(i.since) >= POOL_IDLE_TIMEOUT)
            .count();
        idle.drain(..stale);
        stale
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends an HTTP/1.1 request on a pooled connection. A request that never left, or a
    /// replayable safe request (GET, HEAD, OPTIONS with its body held in full) whose
    /// reused connection closed before any answer, is sent again once on a fresh
    /// connection, as Go's transport does for Knative: the app closed the connection idle
    /// (Node.js after 5 s, some servers sooner), or its pod died. If even that connection
    /// cannot be opened, the error carries the request back, untouched, so the caller may
    /// send it elsewhere (another pod).
    pub async fn send_http1(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Result<(Response<Incoming>, Lease), SendError> {
        let (mut conn, idle_since) = match self.checkout().await {
            Ok(checked_out) => checked_out,
            Err(error) => return Err(SendError::unsent(error, req)),
        };
        let (parts, body) = req.into_parts();
        // Only a reused connection can have been closed by the other side unseen: a new
        // one's failure is the request's own, and is not sent twice.
        let reused = idle_since.is_some();
        let copy = match &body {
            Either::Right(full)
                if reused
                    && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS) =>
            {
                Some((copy_head(&parts), full.clone()))
            }
            _ => None,
        };
        let rsp = match conn
            .sender
            .try_send_request(Request::from_parts(parts, body))
            .await
        {
            Ok(rsp) => rsp,
            Err(mut e) => {
                let again = e.take_message().or_else(|| {
                    copy.filter(|_| e.error().is_incomplete_message())
                        .map(|(head, body)| Request::from_parts(head, Either::Right(body)))
                });
                let Some(req) = again else {
                    return Err(SendError::sent(e.into_error().into()));
                };
                tracing::debug!(error = %e.error(), "pooled connection gone; retrying on a new one");
                conn = match Box::pin(self.new_http1()).await {
                    Ok(conn) => conn,
                    Err(error) => return Err(SendError::unsent(error, req)),
                };
                conn.sender
                    .send_request(req)
                    .await
                    .map_err(|e| SendError::sent(e.into()))?
            }
        };
        Ok((
            rsp,
            Lease {
                upstream: Arc::clone(self),
                conn,
            },
        ))
    }

    /// Sends a request on the shared HTTP/2 connection, opening it if needed. A request
    /// that could not be sent at all comes back in the error.
    pub async fn send_http2(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let sender = {
            let mut slot = self.h2.lock().await;
            match slot.as_ref().filter(|s| !s.is_closed()) {
                Some(s) => Ok(s.clone()),
                None => match Box::pin(self.new_http2()).await {
                    Ok(sender) => {
                        *slot = Some(sender.clone());
                        Ok(sender)
                    }
                    Err(error) => Err(error),
                },
            }
        };
        let mut sender = match sender {
            Ok(sender) => sender,
            Err(error) => return Err(SendError::unsent(error, req)),
        };
        if let Err(error) = sender.ready().await {
            return Err(SendError::unsent(error.into(), req));
        }
        match sender.try_send_request(req).await {
            Ok(rsp) => Ok(rsp),
            Err(mut e) => Err(SendError {
                request: e.take_message(),
                error: e.into_error().into(),
            }),
        }
    }

    /// Sends on the right kind of connection: a protocol upgrade on a connection of its
    /// own, HTTP/2 on the shared one, HTTP/1.1 on a pooled one (whose [`Lease`] comes
    /// back, to be released when the response body ends). The rarer paths are boxed, so
    /// the common HTTP/1.1 future stays small.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
        upgrade: bool,
    ) -> Result<(Response<Incoming>, Option<Lease>), SendError> {
        if upgrade {
            Box::pin(self.send_upgrade(req)).await.map(|r| (r, None))
        } else if req.version() == http::Version::HTTP_2 {
            Box::pin(self.send_http2(req)).await.map(|r| (r, None))
        } else {
            let (rsp, lease) = self.send_http1(req).await?;
            Ok((rsp, Some(lease)))
        }
    }

    /// Sends an `Upgrade` request on a connection of its own, which hyper hands over
    /// to the caller if the app answers 101.
    pub async fn send_upgrade(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, SendError> {
        let stream = match self.connect().await {
            Ok(stream) => stream,
            Err(error) => return Err(SendError::unsent(error, req)),
        };
        let (mut sender, conn) = match http1::handshake(TokioIo::new(stream)).await {
            Ok(handshake) => handshake,
            Err(error) => return Err(SendError::unsent(error.into(), req)),
        };
        tokio::spawn(drive("upgrade", conn.with_upgrades()));
        sender
            .send_request(req)
            .await
            .map_err(|e| SendError::sent(e.into()))
    }

    /// A ready connection, and since when it sat idle (`None` when new).
    async fn checkout(&self) -> Result<(Conn1, Option<Instant>), UpstreamError> {
        loop {
            let Some(Idle { mut conn, since }) = self.idle.lock().pop() else {
                break;
            };
            // A lease comes back right after its body ends; the connection task may not
            // have marked it idle yet, so wait for readiness rather than test it.
            if !conn.sender.is_closed() && conn.sender.ready().await.is_ok() {
                return Ok((conn, Some(since)));
            }
        }
        // Boxed: connecting is rare, and inlining it would make every request's
        // future (moved several times per request) kilobytes larger.
        Ok((Box::pin(self.new_http1()).await?, None))
    }

    async fn new_http1(&self) -> Result<Conn1, UpstreamError> {
        let io = TokioIo::new(self.connect().await?);
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        let task = AbortOnDrop(tokio::spawn(drive("h1", conn)).abort_handle());
        Ok(Conn1 {
            sender,
            _task: task,
        })
    }

    async fn new_http2(&self) -> Result<http2::SendRequest<UpstreamBody>, UpstreamError> {
        let io = TokioIo::new(self.connect().await?);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(drive("h2", conn));
        Ok(sender)
    }

    async fn connect(&self) -> Result<Io, UpstreamError> {
        if let Some(local) = &self.local {
            return local
                .connect()
                .await
                .map(Io::Local)
                .map_err(|source| UpstreamError::Connect {
                    addr: self.addr,
                    source,
                });
        }
        let mut limit = DIAL_FIRST_TIMEOUT;
        for _ in 0..DIAL_ATTEMPTS {
            match tokio::time::timeout(limit, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(Io::Tcp(stream));
                }
                Ok(Err(source)) => {
                    return Err(UpstreamError::Connect {
                        addr: self.addr,
                        source,
                    });
                }
                Err(_elapsed) => limit = limit.mul_f64(1.4),
            }
        }
        Err(UpstreamError::ConnectTimeout(self.addr))
    }

    fn put(&self, conn: Conn1, since: Instant) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle { conn, since });
        }
    }
}

// === impl Mux ===

impl Mux {
    /// A stream on the open connection with the fewest, if one has room; closed
    /// connections are dropped on the way.
    fn take(&self) -> Option<(http2::SendRequest<UpstreamBody>, MuxStream)> {
        let mut conns = self.conns.lock();
        conns.retain(|c| !c.sender.is_closed());
        let conn = conns
            .iter()
            .filter(|c| c.open.load(Ordering::Relaxed) < self.streams_per_conn)
            .min_by_key(|c| c.open.load(Ordering::Relaxed))?;
        conn.open.fetch_add(1, Ordering::Relaxed);
        Some((conn.sender.clone(), MuxStream(Arc::clone(&conn.open))))
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl Lease ===

impl Lease {
    /// Ends the lease at `now`; `clean`: the response body reached its end without error.
    /// Anything else closes the connection at once, whatever it was doing.
    pub fn release(self, clean: bool, now: Instant) {
        if clean && !self.conn.sender.is_closed() {
            self.upstream.put(self.conn, now);
        }
    }
}

/// The request line and headers again, for a retry (`http::request::Parts` is not Clone).
fn copy_head(parts: &http::request::Parts) -> http::request::Parts {
    let mut head = Request::new(()).into_parts().0;
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    head.headers = parts.headers.clone();
    head
}

/// Every half idle timeout, closes the origin's connections idle past it; ends with the
/// origin.
async fn evict_idle(upstream: std::sync::Weak<Upstream>) {
    let mut tick = tokio::time::interval(POOL_IDLE_TIMEOUT / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(upstream) = upstream.upgrade() else {
            return;
        };
        let closed = upstream.evict_idle(Instant::now());
        if closed > 0 {
            tracing::debug!(origin = %upstream.addr, closed, "idle pooled connections closed");
        }
    }
}

async fn drive<F, E>(kind: &'static str, conn: F)
where
    F: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    if let Err(error) = conn
        .instrument(tracing::debug_span!("upstream", kind))
        .await
    {
        tracing::debug!(kind, %error, "upstream connection ended with error");
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;
    use hyper::service::service_fn;

    use super::*;
    use crate::serve::{Serving, serve};

    async fn origin() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(
            "origin",
            listener,
            |_| {
                service_fn(|_req: Request<Incoming>| {
                    std::future::ready(Ok::<_, Infallible>(Response::new(Full::new(
                        Bytes::from_static(b"ok"),
                    ))))
                })
            },
            std::future::pending(),
            Serving::new(Duration::from_secs(1)),
        ));
        addr
    }

    #[tokio::test]
    async fn a_pooled_connection_is_closed_once_idle_for_the_pool_timeout() {
        let upstream = Upstream::new(origin().await, 4);
        let req = Request::get("/")
            .header(http::header::HOST, "origin")
            .body(Either::Right(Full::new(Bytes::new())))
            .expect("request");
        let (rsp, lease) = upstream.send_http1(req).await.expect("answered");
        let body = rsp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(body, "ok");
        let released = Instant::now();
        lease.release(true, released);
        assert_eq!(upstream.idle.lock().len(), 1, "a clean lease goes back");
        let almost = released + POOL_IDLE_TIMEOUT - Duration::from_secs(1);
        assert_eq!(upstream.evict_idle(almost), 0, "not idle long enough");
        assert_eq!(upstream.evict_idle(released + POOL_IDLE_TIMEOUT), 1);
        assert!(upstream.idle.lock().is_empty());
    }

    /// An origin whose first connection answers one request and then closes on the next
    /// one unanswered (an app closing an idle connection, a pod dying); every later
    /// connection answers. Returns its address and how many connections it accepted.
    async fn closes_its_first_connection_after_one_answer()
    -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        // One request's head (the tests send no body).
                        let len = match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(len) => len,
                        };
                        if n == 0 && buf[..len].windows(7).any(|w| w == b"/second") {
                            return; // read, then closed without an answer
                        }
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if conn.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn request(method: Method, path: &str) -> Request<UpstreamBody> {
        Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, "origin")
            .body(Either::Right(Full::new(Bytes::new())))
            .expect("request")
    }

    /// An upstream whose one pooled connection has answered once and will close on the
    /// next request unanswered; and how many connections its origin accepted.
    async fn pooled_connection_about_to_close()
    -> (Arc<Upstream>, Arc<std::sync::atomic::AtomicUsize>) {
        let (addr, accepted) = closes_its_first_connection_after_one_answer().await;
        let upstream = Upstream::new(addr, 4);
        let (rsp, lease) = upstream
            .send_http1(request(Method::GET, "/first"))
            .await
            .expect("answered");
        rsp.into_body().collect().await.expect("body");
        lease.release(true, Instant::now());
        (upstream, accepted)
    }

    #[tokio::test]
    async fn a_safe_request_on_a_reused_connection_closed_under_it_is_sent_again() {
        let (upstream, accepted) = pooled_connection_about_to_close().await;
        // At once: not an idle connection the app timed out, one that dies under it.
        let (rsp, _lease) = upstream
            .send_http1(request(Method::GET, "/second"))
            .await
            .expect("sent again on a new connection");
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unsafe_request_on_a_reused_connection_closed_under_it_is_not_sent_twice() {
        let (upstream, accepted) = pooled_connection_about_to_close().await;
        let failed = upstream
            .send_http1(request(Method::POST, "/second"))
            .await
            .expect_err("the app may have acted on it");
        assert!(failed.request.is_none(), "sent, so not handed back");
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
