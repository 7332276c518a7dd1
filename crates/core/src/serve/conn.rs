//! One served connection: its requests counted in and out (a request counts until its
//! response body ends), closed once idle past the idle timeout, and cut when an HTTP/1.1
//! exchange outlives the deadline its handler declared. That last rule is what frees a
//! slot held by a client that stopped reading (or sending): hyper polls a response body
//! only when the client can take more, so a timer inside the body never fires then.

use std::fmt::Display;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::service::Service;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::body::GuardedBody;

/// How long past its deadline an exchange may still end on its own (the handler's own
/// timers answer at the deadline) before its connection is cut.
pub const DEADLINE_SLACK: Duration = Duration::from_secs(1);

/// Put in a response's extensions by a handler: the whole exchange, response body
/// included, must be over by then (Knative's `timeoutSeconds`). On HTTP/1.1 the
/// connection is cut [`DEADLINE_SLACK`] later if it is not; HTTP/2 streams share their
/// connection with others and are left to the handler's own timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExchangeDeadline(pub Instant);

/// What one connection's requests share with the task that drives it.
#[derive(Debug)]
pub(super) struct ConnShared {
    times: Mutex<Times>,
    /// Told when a deadline earlier than the armed timer arrives.
    rearm: Notify,
}

#[derive(Debug)]
struct Times {
    in_flight: u32,
    idle_since: Instant,
    /// The earliest deadline of the exchanges in flight.
    deadline: Option<Instant>,
    /// When the driving task's timer fires next.
    armed: Instant,
}

/// What the driving task does when its timer fires.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Check {
    /// Nothing yet; look again then.
    At(Instant),
    /// No request for the idle timeout: close gracefully.
    Idle,
    /// An exchange outlived its deadline: cut the connection.
    Overdue,
}

/// One request in flight on a connection, until its response body ends.
#[derive(Debug)]
pub struct InFlight(Arc<ConnShared>);

/// Counts a connection's requests; passes everything else through.
#[derive(Debug)]
pub(super) struct Counted<S> {
    pub(super) inner: S,
    pub(super) conn: Arc<ConnShared>,
}

pin_project_lite::pin_project! {
    /// A [`Counted`] request's response on its way: the count moves into its body.
    #[derive(Debug)]
    pub struct CountedFuture<F> {
        #[pin]
        inner: F,
        flight: Option<InFlight>,
        h1: bool,
    }
}

// === impl ConnShared ===

impl ConnShared {
    pub(super) fn new(now: Instant, idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            times: Mutex::new(Times {
                in_flight: 0,
                idle_since: now,
                deadline: None,
                armed: now + idle,
            }),
            rearm: Notify::new(),
        })
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.times.lock().in_flight += 1;
        InFlight(Arc::clone(self))
    }

    fn set_deadline(&self, at: Instant) {
        let earlier = {
            let mut t = self.times.lock();
            t.deadline = Some(t.deadline.map_or(at, |d| d.min(at)));
            at + DEADLINE_SLACK < t.armed
        };
        if earlier {
            self.rearm.notify_one();
        }
    }

    pub(super) fn check(&self, now: Instant, idle: Duration) -> Check {
        let mut t = self.times.lock();
        let at = if t.in_flight == 0 {
            let until = t.idle_since + idle;
            if now >= until {
                return Check::Idle;
            }
            until
        } else {
            match t.deadline.map(|d| d + DEADLINE_SLACK) {
                Some(cut) if now >= cut => return Check::Overdue,
                Some(cut) => cut.min(now + idle),
                None => now + idle,
            }
        };
        t.armed = at;
        Check::At(at)
    }

    pub(super) async fn rearmed(&self) {
        self.rearm.notified().await;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut t = self.0.times.lock();
        t.in_flight -= 1;
        if t.in_flight == 0 {
            t.idle_since = Instant::now();
            t.deadline = None;
        }
    }
}

// === impl Counted ===

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
{
    type Response = Response<GuardedBody<B, InFlight>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let h1 = req.version() < Version::HTTP_2;
        let flight = self.conn.begin();
        CountedFuture {
            inner: self.inner.call(req),
            flight: Some(flight),
            h1,
        }
    }
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GuardedBody<B, InFlight>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let rsp = ready!(this.inner.poll(cx))?;
        let flight = this
            .flight
            .take()
            .expect("a CountedFuture is not polled after it completed");
        if *this.h1
            && let Some(ExchangeDeadline(at)) = rsp.extensions().get()
        {
            flight.0.set_deadline(*at);
        }
        Poll::Ready(Ok(rsp.map(|body| GuardedBody::new(body, flight))))
    }
}

/// Drives `conn` until it ends: gracefully closed when `stopped` resolves or when idle
/// past `idle`, dropped (cut) when an exchange is overdue.
pub(super) async fn drive<C, E>(
    mut conn: Pin<&mut C>,
    graceful: fn(Pin<&mut C>),
    shared: &ConnShared,
    idle: Duration,
    stopped: impl Future<Output = ()>,
) where
    C: Future<Output = Result<(), E>>,
    E: Display,
{
    let mut stopped = pin!(stopped);
    let mut closing = false;
    let first = match shared.check(Instant::now(), idle) {
        Check::At(at) => at,
        _ => Instant::now() + idle,
    };
    let mut timer = pin!(tokio::time::sleep_until(first));
    loop {
        tokio::select! {
            biased;
            ended = conn.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%error, "connection closed with error");
                }
                return;
            }
            () = &mut stopped, if !closing => {
                closing = true;
                graceful(conn.as_mut());
                continue;
            }
            () = shared.rearmed() => {}
            () = timer.as_mut() => {}
        }
        match shared.check(Instant::now(), idle) {
            Check::At(at) => timer.as_mut().reset(at),
            Check::Idle if !closing => {
                tracing::debug!(?idle, "idle connection closed");
                closing = true;
                graceful(conn.as_mut());
                // A connection that does not close by the next check is dropped.
                timer.as_mut().reset(Instant::now() + idle);
            }
            Check::Idle => return,
            Check::Overdue => {
                tracing::debug!("exchange past its deadline; connection cut");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(75);

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_idle_timeout_only() {
        let t0 = Instant::now();
        let shared = ConnShared::new(t0, IDLE);
        assert_eq!(shared.check(t0, IDLE), Check::At(t0 + IDLE));
        let flight = shared.begin();
        let later = t0 + Duration::from_secs(100);
        assert_eq!(
            shared.check(later, IDLE),
            Check::At(later + IDLE),
            "a request in flight is never idle"
        );
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(flight);
        let done = Instant::now();
        assert_eq!(shared.check(done, IDLE), Check::At(done + IDLE));
        assert_eq!(shared.check(done + IDLE, IDLE), Check::Idle);
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_past_its_deadline_is_overdue_and_rearms_the_timer() {
        let t0 = Instant::now();
        let shared = ConnShared::new(t0, IDLE);
        let flight = shared.begin();
        assert_eq!(shared.check(t0, IDLE), Check::At(t0 + IDLE));
        let deadline = t0 + Duration::from_secs(2);
        shared.set_deadline(deadline);
        tokio::time::timeout(Duration::from_millis(1), shared.rearmed())
            .await
            .expect("an earlier deadline wakes the driver");
        assert_eq!(shared.check(t0, IDLE), Check::At(deadline + DEADLINE_SLACK));
        assert_eq!(
            shared.check(deadline + DEADLINE_SLACK, IDLE),
            Check::Overdue
        );
        drop(flight);
        let now = Instant::now();
        assert_eq!(
            shared.check(now, IDLE),
            Check::At(now + IDLE),
            "the deadline goes with the last request"
        );
    }
}
