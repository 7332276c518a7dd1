//! The response body every proxy sends (queue-proxy, activator, gateway): a short local
//! answer, or the upstream's body carrying the request's guard (slots, pooled connection,
//! stats) until it ends, so a pod's slot is counted until the last byte. The queue-proxy
//! adds Knative's timers ([`ProxyBody::timed`]): a total deadline, and optionally an idle
//! limit between the app's writes, past which the body ends with [`TIMEOUT_MESSAGE`].
//!
//! ([`crate::GuardedBody`] is the other wrapper: any body, around a connection's in-flight
//! count, for the serve loop.)

use std::future::Future as _;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// What a timed-out streaming response ends with (Knative's timeout handler message).
pub const TIMEOUT_MESSAGE: &str = "request timeout";

/// What a [`ProxyBody`] holds until the upstream body ends. Dropped either way; told
/// first when the body ended cleanly (its connection may be reused).
pub trait BodyGuard {
    fn mark_clean(&mut self);
}

#[derive(Debug)]
pub struct ProxyBody<G: BodyGuard> {
    kind: Kind<G>,
}

#[derive(Debug)]
enum Kind<G: BodyGuard> {
    Full(Option<Bytes>),
    Upstream(Upstream<G>),
}

#[derive(Debug)]
struct Upstream<G: BodyGuard> {
    inner: Option<Incoming>,
    guard: Option<G>,
    /// The queue-proxy's; `None` for the activator and the gateway.
    timers: Option<Timers>,
}

/// The total deadline, the idle limit, and the one timer that waits for either.
#[derive(Debug)]
struct Timers {
    deadline: Instant,
    /// Only with an idle timeout: no clock is read per frame without one.
    idle: Option<Idle>,
    /// Created only once the body has to wait, so short bodies never arm a timer.
    sleep: Option<Pin<Box<Sleep>>>,
}

/// The idle timer: its limit and when the upstream last wrote.
#[derive(Debug)]
struct Idle {
    limit: Duration,
    last_write: Instant,
}

// === impl ProxyBody ===

impl<G: BodyGuard> ProxyBody<G> {
    pub fn upstream(inner: Incoming, guard: G) -> Self {
        Self::with_timers(inner, guard, None)
    }

    /// The upstream's body, cut with [`TIMEOUT_MESSAGE`] at `deadline`, or once `idle`
    /// passes with nothing written.
    pub fn timed(inner: Incoming, guard: G, deadline: Instant, idle: Option<Duration>) -> Self {
        let timers = Timers {
            deadline,
            idle: idle.map(|limit| Idle {
                limit,
                last_write: Instant::now(),
            }),
            sleep: None,
        };
        Self::with_timers(inner, guard, Some(timers))
    }

    fn with_timers(inner: Incoming, guard: G, timers: Option<Timers>) -> Self {
        Self {
            kind: Kind::Upstream(Upstream {
                inner: Some(inner),
                guard: Some(guard),
                timers,
            }),
        }
    }

    pub fn empty() -> Self {
        Self {
            kind: Kind::Full(None),
        }
    }
}

impl<G: BodyGuard> From<Bytes> for ProxyBody<G> {
    fn from(b: Bytes) -> Self {
        Self {
            kind: Kind::Full((!b.is_empty()).then_some(b)),
        }
    }
}

impl<G: BodyGuard + Unpin> Body for ProxyBody<G> {
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

impl<G: BodyGuard> Upstream<G> {
    fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(&mut *inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(idle) = self.timers.as_mut().and_then(|t| t.idle.as_mut()) {
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
            Poll::Pending => {
                let passed = self
                    .timers
                    .as_mut()
                    .is_some_and(|t| t.poll_passed(cx).is_ready());
                if !passed {
                    return Poll::Pending;
                }
                // Dropping the upstream's body aborts its connection; the guard frees the
                // slot.
                self.inner = None;
                self.guard = None;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                    TIMEOUT_MESSAGE.as_bytes(),
                )))))
            }
        }
    }

    /// The upstream's body ended cleanly: its connection can be reused and the request's
    /// slots and counts are released now.
    fn finish(&mut self) {
        self.inner = None;
        if let Some(mut guard) = self.guard.take() {
            guard.mark_clean();
        }
    }
}

impl<G: BodyGuard> Drop for Upstream<G> {
    fn drop(&mut self) {
        // A body that was complete from the start (no content) is never polled.
        if self.inner.as_ref().is_some_and(Body::is_end_stream) {
            self.finish();
        }
    }
}

// === impl Timers ===

impl Timers {
    /// `Ready` once the deadline or the idle limit has passed; else the timer is armed
    /// for whichever comes first.
    fn poll_passed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
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
                return Poll::Ready(());
            }
        }
    }
}
