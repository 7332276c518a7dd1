//! The response body the queue-proxy sends: either a short local answer, or the app's
//! body carrying the request's guard (slot, in-flight count, pooled connection) until it
//! ends, with Knative's total and idle timeouts applied while it streams.

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::guard::RequestGuard;

/// What a timed-out streaming response ends with (Knative's timeout handler message).
pub(crate) const TIMEOUT_MESSAGE: &str = "request timeout";

#[derive(Debug)]
pub(crate) struct ProxyBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(Upstream),
}

#[derive(Debug)]
struct Upstream {
    inner: Option<Incoming>,
    guard: Option<RequestGuard>,
    deadline: Instant,
    /// Only with an idle timeout: no clock is read per response without one.
    idle: Option<Idle>,
    /// Created only once the body has to wait, so short bodies never arm a timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// The idle timer: its limit and when the app last wrote.
#[derive(Debug)]
struct Idle {
    limit: Duration,
    last_write: Instant,
}

// === impl ProxyBody ===

impl ProxyBody {
    pub(crate) fn upstream(
        inner: Incoming,
        guard: RequestGuard,
        deadline: Instant,
        idle: Option<Duration>,
    ) -> Self {
        Self {
            kind: Kind::Upstream(Upstream {
                inner: Some(inner),
                guard: Some(guard),
                deadline,
                idle: idle.map(|limit| Idle {
                    limit,
                    last_write: Instant::now(),
                }),
                sleep: None,
            }),
        }
    }

    pub(crate) fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }
}

impl From<Bytes> for ProxyBody {
    fn from(b: Bytes) -> Self {
        Self {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Kind::Upstream(up) => up.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream(up) => up.inner.as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream(up) => up
                .inner
                .as_ref()
                .map_or_else(SizeHint::default, Body::size_hint),
        }
    }
}

// === impl Upstream ===

impl Upstream {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = self.idle.as_mut() {
                    idle.last_write = Instant::now();
                }
                // hyper stops polling a body of known length once it reports its end,
                // so the end is seen here, not as a final `None`.
                if inner.is_end_stream() {
                    self.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                self.inner = None;
                self.guard = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => self.poll_timeout(cx),
        }
    }

    /// The app's body ended cleanly: its connection can be reused and the request's
    /// slot and count are released now.
    fn finish(&mut self) {
        self.inner = None;
        if let Some(mut guard) = self.guard.take() {
            guard.mark_clean();
        }
    }

    /// Pending on the app: returns `Ready` with the timeout message once the total or
    /// idle timer has passed.
    fn poll_timeout(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            let next = match &self.idle {
                Some(idle) => self.deadline.min(idle.last_write + idle.limit),
                None => self.deadline,
            };
            let sleep = self
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(next)));
            if sleep.deadline() != next {
                sleep.as_mut().reset(next);
            }
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            let idle_passed = self
                .idle
                .as_ref()
                .is_some_and(|idle| now >= idle.last_write + idle.limit);
            if now >= self.deadline || idle_passed {
                // Dropping the app's body aborts its connection; the guard frees the slot.
                self.inner = None;
                self.guard = None;
                return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    TIMEOUT_MESSAGE.as_bytes(),
                )))));
            }
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        // A body that was complete from the start (no content) is never polled.
        if self.inner.as_ref().is_some_and(Body::is_end_stream) {
            self.finish();
        }
    }
}
