//! The response body a proxy sends: a short local answer, or the upstream's body carrying
//! the request's guard (slots, pooled connection, stats) until it ends, so a pod's slot is
//! counted until the last byte, as its queue-proxy counts it. The activator and the
//! gateway both answer with it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

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
    Upstream {
        inner: Option<Incoming>,
        guard: Option<G>,
    },
}

// === impl ProxyBody ===

impl<G: BodyGuard> ProxyBody<G> {
    pub fn upstream(inner: Incoming, guard: G) -> Self {
        Self {
            kind: Kind::Upstream {
                inner: Some(inner),
                guard: Some(guard),
            },
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
            Kind::Upstream { inner, guard } => {
                let Some(body) = inner.as_mut() else {
                    return Poll::Ready(None);
                };
                let frame = std::task::ready!(Pin::new(&mut *body).poll_frame(cx));
                match &frame {
                    // hyper stops polling a body of known length once it reports its end.
                    Some(Ok(_)) if body.is_end_stream() => finish(inner, guard),
                    Some(Ok(_)) => {}
                    None => finish(inner, guard),
                    Some(Err(_)) => {
                        *inner = None;
                        *guard = None;
                    }
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(data) => data.is_none(),
            Kind::Upstream { inner, .. } => inner.as_ref().is_none_or(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            Kind::Upstream { inner, .. } => inner
                .as_ref()
                .map_or_else(SizeHint::default, Body::size_hint),
        }
    }
}

impl<G: BodyGuard> Drop for ProxyBody<G> {
    fn drop(&mut self) {
        // A body complete from the start (no content) is never polled.
        if let Kind::Upstream { inner, guard } = &mut self.kind
            && inner.as_ref().is_some_and(Body::is_end_stream)
        {
            finish(inner, guard);
        }
    }
}

/// The pod's body ended cleanly: its connection may be reused, and the slots go back.
fn finish<G: BodyGuard>(inner: &mut Option<Incoming>, guard: &mut Option<G>) {
    *inner = None;
    if let Some(mut guard) = guard.take() {
        guard.mark_clean();
    }
}
