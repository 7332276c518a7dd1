//! A body wrapper that holds a guard until the body ends: at end of stream, on error, or
//! when dropped (the client went away). Concurrency permits and in-flight counts live in
//! the guard so that a request counts until its response body has been sent.

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};

pin_project_lite::pin_project! {
    /// `B` with `G` dropped when the last frame has been yielded.
    #[derive(Debug)]
    pub struct GuardedBody<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

// === impl GuardedBody ===

impl<B, G> GuardedBody<B, G> {
    pub fn new(inner: B, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }

    /// The guard while the body is still running.
    pub fn guard_mut(&mut self) -> Option<&mut G> {
        self.guard.as_mut()
    }
}

impl<B: Body, G> Body for GuardedBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            None | Some(Err(_)) => drop(this.guard.take()),
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full, StreamBody};

    use super::*;

    struct Count(Arc<AtomicUsize>);
    impl Drop for Count {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn guard_drops_at_end_of_stream_before_the_body() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let mut body = GuardedBody::new(
            Full::new(Bytes::from_static(b"hi")),
            Count(Arc::clone(&dropped)),
        );
        let frame = body.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"hi")));
        assert_eq!(dropped.load(Ordering::SeqCst), 0, "held while data flows");
        assert!(body.frame().await.is_none());
        assert_eq!(
            dropped.load(Ordering::SeqCst),
            1,
            "released at end of stream"
        );
        drop(body);
        assert_eq!(dropped.load(Ordering::SeqCst), 1, "released once");
    }

    #[tokio::test]
    async fn guard_drops_on_error_and_on_drop() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let stream = futures_util::stream::iter(vec![Err::<Frame<Bytes>, _>(
            std::io::Error::other("reset"),
        )]);
        let mut body = GuardedBody::new(StreamBody::new(stream), Count(Arc::clone(&dropped)));
        assert!(body.frame().await.expect("frame").is_err());
        assert_eq!(dropped.load(Ordering::SeqCst), 1);

        let early = GuardedBody::new(Full::new(Bytes::new()), Count(Arc::clone(&dropped)));
        drop(early);
        assert_eq!(dropped.load(Ordering::SeqCst), 2, "client went away");
    }
}
