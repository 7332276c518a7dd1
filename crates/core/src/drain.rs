//! Knative's `Drainer`: once draining, health checks fail so the pod leaves every
//! endpoint set, while real requests keep being served; the drain completes after a
//! quiet period with no request.

use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Knative's `drainSleepDuration`.
pub const DEFAULT_QUIET_PERIOD: Duration = Duration::from_secs(30);

/// How a wait for the drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrainOutcome {
    /// A whole quiet period passed with no request.
    Drained,
    /// [`Drainer::reset`] cancelled the drain.
    Reset,
}

#[derive(Debug)]
pub struct Drainer {
    quiet_period: Duration,
    /// Read on every request; the lock is only taken while draining.
    draining: AtomicBool,
    last_activity: Mutex<Instant>,
    changed: Notify,
}

// === impl Drainer ===

impl Drainer {
    pub fn new(quiet_period: Duration) -> Self {
        Self {
            quiet_period,
            draining: AtomicBool::new(false),
            last_activity: Mutex::new(Instant::now()),
            changed: Notify::new(),
        }
    }

    pub fn quiet_period(&self) -> Duration {
        self.quiet_period
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Records a served request: while draining, it restarts the quiet period.
    pub fn touch(&self) {
        if self.is_draining() {
            *self.last_activity.lock() = Instant::now();
        }
    }

    /// Starts draining (if not already) and waits until a quiet period passes with no
    /// request, or until [`Drainer::reset`]. Any number of callers may wait at once.
    pub async fn drain(&self) -> DrainOutcome {
        {
            let mut last = self.last_activity.lock();
            if !self.draining.swap(true, Ordering::AcqRel) {
                *last = Instant::now();
                tracing::info!(quiet_period = ?self.quiet_period, "draining");
            }
        }
        loop {
            let mut changed = pin!(self.changed.notified());
            changed.as_mut().enable();
            if !self.is_draining() {
                return DrainOutcome::Reset;
            }
            let deadline = *self.last_activity.lock() + self.quiet_period;
            if Instant::now() >= deadline {
                return DrainOutcome::Drained;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = changed => {}
            }
        }
    }

    /// Cancels a drain: health checks pass again and waiting `drain()` calls return.
    pub fn reset(&self) {
        let _last = self.last_activity.lock();
        if self.draining.swap(false, Ordering::AcqRel) {
            tracing::info!("drain reset");
        }
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    const QUIET: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn drains_after_a_quiet_period() {
        let d = Drainer::new(QUIET);
        assert!(!d.is_draining());
        let start = Instant::now();
        assert_eq!(d.drain().await, DrainOutcome::Drained);
        assert_eq!(Instant::now() - start, QUIET);
        assert!(d.is_draining(), "stays draining once drained");
    }

    #[tokio::test(start_paused = true)]
    async fn each_request_restarts_the_quiet_period() {
        let d = Arc::new(Drainer::new(QUIET));
        let start = Instant::now();
        let waiter = tokio::spawn({
            let d = Arc::clone(&d);
            async move { d.drain().await }
        });
        tokio::time::sleep(Duration::from_secs(20)).await;
        d.touch();
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(!waiter.is_finished(), "20 s after the last request");
        assert_eq!(waiter.await.expect("join"), DrainOutcome::Drained);
        assert_eq!(Instant::now() - start, Duration::from_secs(50));
    }

    #[tokio::test(start_paused = true)]
    async fn reset_cancels_every_waiter() {
        let d = Arc::new(Drainer::new(QUIET));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let d = Arc::clone(&d);
                tokio::spawn(async move { d.drain().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
        d.reset();
        for w in waiters {
            assert_eq!(w.await.expect("join"), DrainOutcome::Reset);
        }
        assert!(!d.is_draining());
    }

    #[tokio::test(start_paused = true)]
    async fn touch_before_draining_does_not_delay_the_drain() {
        let d = Drainer::new(QUIET);
        d.touch();
        tokio::time::sleep(Duration::from_secs(100)).await;
        let start = Instant::now();
        assert_eq!(d.drain().await, DrainOutcome::Drained);
        assert_eq!(
            Instant::now() - start,
            QUIET,
            "quiet period counts from drain start"
        );
    }
}
