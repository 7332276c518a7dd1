//! Knative's `Breaker`: admits at most `queue_depth + max_concurrency` requests, lets
//! `capacity` of them run and makes the rest wait in arrival order. The queue-proxy uses
//! it for `containerConcurrency`; the activator for each revision, with a capacity that
//! follows the revision's ready pods.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Admission was refused: running and waiting requests are already at the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("pending request queue full")]
pub struct QueueFull;

/// Invalid breaker parameters (Knative panics on these; we refuse them).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBreaker {
    #[error("queue depth must be greater than 0, got {0}")]
    QueueDepth(usize),
    #[error("initial capacity {initial} must be between 0 and max concurrency {max}")]
    InitialCapacity { initial: usize, max: usize },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerParams {
    /// Requests allowed to wait beyond those running.
    pub queue_depth: usize,
    /// The largest capacity the breaker can be given.
    pub max_concurrency: usize,
    /// Requests allowed to run at once at start.
    pub initial_capacity: usize,
}

/// Admission control with a bounded wait queue.
///
/// Two stages, as Knative's: a non-blocking check-and-increment of `pending` against
/// `total_slots` (fails fast with [`QueueFull`]), then a wait on a semaphore of `capacity`
/// permits. tokio's semaphore is fair, so waiters are served in arrival order.
#[derive(Debug)]
pub struct Breaker {
    pending: AtomicUsize,
    total_slots: usize,
    max_concurrency: usize,
    sem: Arc<Semaphore>,
    /// Current capacity target; permits above it are forgotten as they come back.
    capacity: AtomicUsize,
    /// Permits to forget on release, owed after a capacity decrease found them in use.
    owed: AtomicUsize,
}

/// A running slot. Held until the response body ends; dropping it frees the slot.
#[derive(Debug)]
pub struct BreakerPermit {
    breaker: Arc<Breaker>,
    permit: Option<OwnedSemaphorePermit>,
}

/// Counts a request in `pending` until dropped, so a waiter whose client went away
/// (its future dropped while waiting) gives its place back.
struct Pending(Arc<Breaker>);

// === impl BreakerParams ===

impl BreakerParams {
    /// Knative's queue-proxy parameters for `containerConcurrency` = `cc` > 0 (§1.4, B1).
    pub fn for_container_concurrency(cc: usize) -> Self {
        Self {
            queue_depth: 10 * cc,
            max_concurrency: cc,
            initial_capacity: cc,
        }
    }
}

// === impl Breaker ===

impl Breaker {
    pub fn new(params: BreakerParams) -> Result<Arc<Self>, InvalidBreaker> {
        if params.queue_depth == 0 {
            return Err(InvalidBreaker::QueueDepth(params.queue_depth));
        }
        if params.initial_capacity > params.max_concurrency {
            return Err(InvalidBreaker::InitialCapacity {
                initial: params.initial_capacity,
                max: params.max_concurrency,
            });
        }
        Ok(Arc::new(Self {
            pending: AtomicUsize::new(0),
            total_slots: params.queue_depth + params.max_concurrency,
            max_concurrency: params.max_concurrency,
            sem: Arc::new(Semaphore::new(params.initial_capacity)),
            capacity: AtomicUsize::new(params.initial_capacity),
            owed: AtomicUsize::new(0),
        }))
    }

    /// Waits for a running slot; fails at once when the queue is full. Cancel-safe: a
    /// dropped future leaves the queue.
    pub async fn acquire(self: &Arc<Self>) -> Result<BreakerPermit, QueueFull> {
        let pending = self.admit()?;
        let permit = Arc::clone(&self.sem)
            .acquire_owned()
            .await
            .expect("the breaker never closes its semaphore");
        std::mem::forget(pending); // now owned by the permit
        Ok(BreakerPermit {
            breaker: Arc::clone(self),
            permit: Some(permit),
        })
    }

    /// A slot without waiting, or `None` if none is free right now (Knative's `Reserve`).
    pub fn reserve(self: &Arc<Self>) -> Option<BreakerPermit> {
        let pending = self.admit().ok()?;
        let permit = Arc::clone(&self.sem).try_acquire_owned().ok()?;
        std::mem::forget(pending);
        Some(BreakerPermit {
            breaker: Arc::clone(self),
            permit: Some(permit),
        })
    }

    /// Requests admitted: running plus waiting (Knative's `InFlight`, the queue depth metric).
    pub fn in_flight(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }

    /// How many may run at once now.
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Acquire)
    }

    /// Changes how many may run at once, clamped to `max_concurrency`. Running requests
    /// are never interrupted: a decrease takes effect as they finish.
    pub fn update_concurrency(&self, capacity: usize) {
        let target = capacity.min(self.max_concurrency);
        let old = self.capacity.swap(target, Ordering::AcqRel);
        if target > old {
            let mut add = target - old;
            // Cancel forgetting still owed before adding fresh permits.
            while add > 0 {
                let owed = self.owed.load(Ordering::Acquire);
                if owed == 0 {
                    break;
                }
                let take = owed.min(add);
                if self
                    .owed
                    .compare_exchange(owed, owed - take, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    add -= take;
                }
            }
            self.sem.add_permits(add);
        } else if target < old {
            let remove = old - target;
            let forgotten = self.sem.forget_permits(remove);
            self.owed.fetch_add(remove - forgotten, Ordering::AcqRel);
        }
    }

    fn admit(self: &Arc<Self>) -> Result<Pending, QueueFull> {
        self.pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.total_slots).then_some(n + 1)
            })
            .map_err(|_| QueueFull)?;
        Ok(Pending(Arc::clone(self)))
    }

    fn release(&self, permit: OwnedSemaphorePermit) {
        let mut owed = self.owed.load(Ordering::Acquire);
        while owed > 0 {
            match self
                .owed
                .compare_exchange(owed, owed - 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    permit.forget();
                    return;
                }
                Err(now) => owed = now,
            }
        }
        drop(permit);
    }
}

// === impl BreakerPermit ===

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.breaker.release(permit);
        }
        self.breaker.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Pending ===

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
