//! Connections to the app on 127.0.0.1:USER_PORT: a stack of idle HTTP/1.1 connections
//! (reused only after a response body ended cleanly), one shared HTTP/2 connection for
//! requests that arrived as HTTP/2, and dedicated connections for upgrades.
//!
//! A hand-rolled pool rather than hyper-util's client: there is exactly one origin, so
//! keying, URI parsing and per-checkout bookkeeping are pure overhead on the hot path.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body::Body;
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::Instrument;

/// Knative's dial backoff: the first connect attempt may take 50 ms, each retry 1.4×
/// longer, 15 attempts in all. Only timeouts are retried: a refusal fails at once.
const DIAL_FIRST_TIMEOUT: Duration = Duration::from_millis(50);
const DIAL_ATTEMPTS: u32 = 15;

/// A pooled connection idle at least this long may be one the app is closing right now
/// (Node.js closes idle keep-alive connections after 5 s, some servers sooner): a request
/// sent on it keeps a copy so it can be sent again if the connection dies under it.
/// Connections busy under load are reused sooner and never pay for the copy.
const STALE_AFTER: Duration = Duration::from_millis(20);

/// Failing to get an answer from the app.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpstreamError {
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

#[derive(Debug)]
pub(crate) struct Upstream {
    addr: SocketAddr,
    idle: Mutex<Vec<Idle>>,
    max_idle: usize,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<Incoming>>>,
}

/// An idle HTTP/1.1 connection and since when.
#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<UpstreamBody>,
    since: Instant,
}

/// What an HTTP/1.1 request to the app carries: the client's body, or nothing (which a
/// retry can rebuild; hyper's `Incoming` cannot be built).
pub(crate) type UpstreamBody = Either<Incoming, Empty<Bytes>>;

/// An HTTP/1.1 connection lent to one request. It goes back to the pool only if the
/// response body ended cleanly (`release(true)`); otherwise it is dropped and closes.
#[derive(Debug)]
pub(crate) struct Lease {
    upstream: Arc<Upstream>,
    sender: http1::SendRequest<UpstreamBody>,
}

// === impl Upstream ===

impl Upstream {
    /// `max_idle`: Knative keeps CC idle connections, or 1000 when CC is 0.
    pub(crate) fn new(addr: SocketAddr, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            addr,
            idle: Mutex::new(Vec::with_capacity(max_idle.min(64))),
            max_idle,
            h2: tokio::sync::Mutex::new(None),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends an HTTP/1.1 request on a pooled connection. A request that never left, or
    /// a body-less safe request whose stale connection died under it, is sent again once
    /// on a fresh connection.
    pub(crate) async fn send_http1(
        self: &Arc<Self>,
        req: Request<Incoming>,
        now: Instant,
    ) -> Result<(Response<Incoming>, Lease), UpstreamError> {
        let (parts, body) = req.into_parts();
        let body = if body.is_end_stream() {
            Either::Right(Empty::new())
        } else {
            Either::Left(body)
        };
        let (mut sender, idle_since) = self.checkout().await?;
        let replayable = matches!(body, Either::Right(_))
            && matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        let stale =
            idle_since.is_some_and(|since| now.saturating_duration_since(since) >= STALE_AFTER);
        let copy = (replayable && stale).then(|| copy_head(&parts));
        let rsp = match sender
            .try_send_request(Request::from_parts(parts, body))
            .await
        {
            Ok(rsp) => rsp,
            Err(mut e) => {
                let again = e.take_message().or_else(|| {
                    copy.filter(|_| e.error().is_incomplete_message())
                        .map(|head| Request::from_parts(head, Either::Right(Empty::new())))
                });
                let Some(req) = again else {
                    return Err(e.into_error().into());
                };
                tracing::debug!(error = %e.error(), "pooled connection gone; retrying on a new one");
                sender = Box::pin(self.new_http1()).await?;
                sender.send_request(req).await?
            }
        };
        Ok((
            rsp,
            Lease {
                upstream: Arc::clone(self),
                sender,
            },
        ))
    }

    /// Sends a request on the shared HTTP/2 connection, opening it if needed.
    pub(crate) async fn send_http2(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = {
            let mut slot = self.h2.lock().await;
            match slot.as_ref().filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let sender = Box::pin(self.new_http2()).await?;
                    *slot = Some(sender.clone());
                    sender
                }
            }
        };
        sender.ready().await?;
        Ok(sender.send_request(req).await?)
    }

    /// Sends an `Upgrade` request on a connection of its own, which hyper hands over
    /// to the caller if the app answers 101.
    pub(crate) async fn send_upgrade(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let io = TokioIo::new(self.connect().await?);
        let (mut sender, conn) = http1::handshake(io).await?;
        tokio::spawn(drive("upgrade", conn.with_upgrades()));
        Ok(sender.send_request(req).await?)
    }

    /// A ready connection, and since when it sat idle (`None` when new).
    async fn checkout(
        &self,
    ) -> Result<(http1::SendRequest<UpstreamBody>, Option<Instant>), UpstreamError> {
        loop {
            let Some(Idle { mut sender, since }) = self.idle.lock().pop() else {
                break;
            };
            // A lease comes back right after its body ends; the connection task may not
            // have marked it idle yet, so wait for readiness rather than test it.
            if !sender.is_closed() && sender.ready().await.is_ok() {
                return Ok((sender, Some(since)));
            }
        }
        // Boxed: connecting is rare, and inlining it would make every request's
        // future (moved several times per request) kilobytes larger.
        Ok((Box::pin(self.new_http1()).await?, None))
    }

    async fn new_http1(&self) -> Result<http1::SendRequest<UpstreamBody>, UpstreamError> {
        let io = TokioIo::new(self.connect().await?);
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(drive("h1", conn));
        Ok(sender)
    }

    async fn new_http2(&self) -> Result<http2::SendRequest<Incoming>, UpstreamError> {
        let io = TokioIo::new(self.connect().await?);
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(drive("h2", conn));
        Ok(sender)
    }

    async fn connect(&self) -> Result<TcpStream, UpstreamError> {
        let mut limit = DIAL_FIRST_TIMEOUT;
        for _ in 0..DIAL_ATTEMPTS {
            match tokio::time::timeout(limit, TcpStream::connect(self.addr)).await {
                Ok(Ok(stream)) => {
                    let _ = stream.set_nodelay(true);
                    return Ok(stream);
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

    fn put(&self, sender: http1::SendRequest<UpstreamBody>, since: Instant) {
        let mut idle = self.idle.lock();
        if idle.len() < self.max_idle {
            idle.push(Idle { sender, since });
        }
    }
}

// === impl Lease ===

impl Lease {
    /// Ends the lease at `now`; `clean`: the response body reached its end without error.
    pub(crate) fn release(self, clean: bool, now: Instant) {
        if clean && !self.sender.is_closed() {
            self.upstream.put(self.sender, now);
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
