//! The activator's `Throttler` for one revision (§2.3): a revision-wide breaker whose
//! capacity follows the ready pods (containerConcurrency × pods; open or shut for CC 0),
//! a bounded count of requests held while it is shut, and a tracker per pod that never
//! has more than containerConcurrency requests in flight.
//!
//! A request first takes a revision slot (waiting, in arrival order, on the breaker's fair
//! semaphore: a gate, never a poll), then a pod slot through the load-balancing policy.
//! Both are held until the response body ends. The revision's capacity is the sum of its
//! pods' capacities, so a request holding a revision slot finds a free pod, except in the
//! short window after the pod set changed; then it waits for a pod slot to free up,
//! keeping its place.

mod capacity;
mod lb;

use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use http::HeaderValue;
use http::uri::Authority;
use parking_lot::Mutex;
use prometheus::IntGauge;
use sluice_core::breaker::{Breaker, BreakerParams, BreakerPermit};
use sluice_core::upstream::Upstream;
use tokio::sync::{Notify, watch};

use crate::metrics::RevisionMetrics;

pub(crate) use capacity::Activators;
use capacity::{INFINITE, assign_slice};
use lb::Policy;

/// Why a request got no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ThrottleError {
    #[error("too many requests held for this revision")]
    QueueFull,
    #[error("the revision was removed")]
    Removed,
}

/// One pod as the throttler sees it: where it is, how to reach it, and what it runs.
#[derive(Debug)]
pub(crate) struct PodTracker {
    dest: SocketAddr,
    authority: Authority,
    host: HeaderValue,
    upstream: Arc<Upstream>,
    /// containerConcurrency; 0 for no limit.
    capacity: u32,
    in_flight: AtomicU32,
    freed: Arc<Freed>,
    gauge: Option<IntGauge>,
}

/// A request's slot on one pod, given back when dropped.
#[derive(Debug)]
pub(crate) struct PodPermit(Arc<PodTracker>);

/// What a request holds to reach a pod. The pod slot is declared (so dropped) first: by
/// the time the next waiter gets the revision slot, the pod slot is free for it.
#[derive(Debug)]
pub(crate) struct Grant {
    pub(crate) pod: PodPermit,
    _revision: BreakerPermit,
}

/// Wakes requests that hold a revision slot but found every pod full. Counting them keeps
/// the common release (nobody waiting) to one atomic load.
#[derive(Debug, Default)]
struct Freed {
    waiters: AtomicUsize,
    notify: Notify,
}

#[derive(Debug)]
pub(crate) struct Throttler {
    container_concurrency: u32,
    breaker: Arc<Breaker>,
    queue_depth: usize,
    held: AtomicUsize,
    policy: Policy,
    /// Assigned trackers sorted by destination: what picks read, without a lock.
    assigned: ArcSwap<Vec<Arc<PodTracker>>>,
    /// Every healthy pod's tracker (assigned or not), kept across updates so in-flight
    /// counts survive them; the lock is taken only by updates.
    trackers: Mutex<Vec<Arc<PodTracker>>>,
    activators: Mutex<Activators>,
    freed: Arc<Freed>,
    closed: watch::Sender<bool>,
    metrics: Option<Arc<RevisionMetrics>>,
}

/// Counts a request as held while it waits for a revision slot.
struct Held<'a>(&'a Throttler);

// === impl Throttler ===

impl Throttler {
    /// `queue_depth`: how many requests may wait for the revision at once.
    pub(crate) fn new(container_concurrency: u32, queue_depth: usize) -> Self {
        let breaker = Breaker::new(BreakerParams {
            // The held bound is enforced here, on waiting requests only; the breaker's
            // own bound (running + waiting) must never be the one that trips.
            queue_depth: queue_depth.max(1),
            max_concurrency: INFINITE,
            initial_capacity: 0,
        })
        .expect("queue depth ≥ 1 and initial capacity 0 are valid");
        Self {
            container_concurrency,
            breaker,
            queue_depth,
            held: AtomicUsize::new(0),
            policy: Policy::for_container_concurrency(container_concurrency),
            assigned: ArcSwap::from_pointee(Vec::new()),
            trackers: Mutex::new(Vec::new()),
            activators: Mutex::new(Activators::default()),
            freed: Arc::new(Freed::default()),
            closed: watch::channel(false).0,
            metrics: None,
        }
    }

    /// Reports held requests, capacity and each pod's in-flight count on `metrics`.
    pub(crate) fn with_metrics(mut self, metrics: Arc<RevisionMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    pub(crate) fn container_concurrency(&self) -> u32 {
        self.container_concurrency
    }

    /// A revision slot and a pod slot. Waits, in arrival order, while the revision has no
    /// capacity; fails at once when `queue_depth` requests are already waiting. Dropping
    /// the future (client gone, timeout) leaves the queue.
    pub(crate) async fn acquire(&self) -> Result<Grant, ThrottleError> {
        let revision = match self.breaker.reserve() {
            Some(permit) => permit,
            None => Box::pin(self.wait_for_capacity()).await?,
        };
        let pod = match self.policy.pick(&self.assigned.load()) {
            Some(pod) => pod,
            None => Box::pin(self.wait_for_pod()).await?,
        };
        Ok(Grant {
            pod,
            _revision: revision,
        })
    }

    /// Another pod for a request whose pod failed before it was sent anything. It keeps
    /// its revision slot, so it does not queue again behind later arrivals.
    pub(crate) async fn repick(&self, grant: Grant) -> Result<Grant, ThrottleError> {
        let Grant { pod, _revision } = grant;
        drop(pod);
        let pod = match self.policy.pick(&self.assigned.load()) {
            Some(pod) => pod,
            None => Box::pin(self.wait_for_pod()).await?,
        };
        Ok(Grant { pod, _revision })
    }

    async fn wait_for_capacity(&self) -> Result<BreakerPermit, ThrottleError> {
        let _held = Held::enter(self)?;
        let mut closed = self.closed.subscribe();
        tokio::select! {
            permit = self.breaker.acquire() => permit.map_err(|_| ThrottleError::QueueFull),
            _ = closed.wait_for(|c| *c) => Err(ThrottleError::Removed),
        }
    }

    async fn wait_for_pod(&self) -> Result<PodPermit, ThrottleError> {
        self.freed.waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = scopeguard(|| {
            self.freed.waiters.fetch_sub(1, Ordering::AcqRel);
        });
        let mut closed = self.closed.subscribe();
        loop {
            let mut freed = pin!(self.freed.notify.notified());
            freed.as_mut().enable();
            if let Some(pod) = self.policy.pick(&self.assigned.load()) {
                return Ok(pod);
            }
            if *closed.borrow_and_update() {
                return Err(ThrottleError::Removed);
            }
            tokio::select! {
                () = freed => {}
                _ = closed.changed() => {}
            }
        }
    }

    /// No pod of the revision is assigned to this activator: a request now waits for a
    /// cold start (or for another activator's pods to be shared).
    pub(crate) fn no_pods(&self) -> bool {
        self.assigned.load().is_empty()
    }

    /// Requests waiting for the revision now.
    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// The revision-wide capacity now.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.breaker.capacity()
    }

    /// Destinations of the assigned pods, in order.
    #[cfg(test)]
    pub(crate) fn assigned(&self) -> Vec<SocketAddr> {
        self.assigned.load().iter().map(|t| t.dest).collect()
    }

    /// The healthy pods are now `healthy`: trackers are kept for pods that stay (with their
    /// in-flight counts), made for new ones, dropped for pods that left; then the slice
    /// and the capacity are recomputed.
    pub(crate) fn update(
        &self,
        healthy: &[SocketAddr],
        upstream: impl Fn(SocketAddr) -> Arc<Upstream>,
    ) {
        let mut trackers = self.trackers.lock();
        let mut next: Vec<Arc<PodTracker>> = healthy
            .iter()
            .map(|dest| {
                trackers
                    .iter()
                    .find(|t| t.dest == *dest)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(self.tracker(*dest, upstream(*dest))))
            })
            .collect();
        // Knative sorts by the destination string, so every activator agrees on slices.
        next.sort_by_cached_key(|t| t.dest.to_string());
        next.dedup_by_key(|t| t.dest);
        if let Some(m) = &self.metrics {
            for gone in trackers
                .iter()
                .filter(|t| !next.iter().any(|n| n.dest == t.dest))
            {
                m.forget_pod(&gone.dest);
            }
        }
        *trackers = next;
        self.reassign(&trackers);
    }

    /// This activator's place among `activators`; the slice and capacity follow. Nothing
    /// calls it outside tests yet: a single activator uses every pod. A multi-activator
    /// deployment needs a source for the count and index (Knative's public endpoints).
    #[cfg(test)]
    pub(crate) fn set_activators(&self, activators: Activators) {
        let trackers = self.trackers.lock();
        *self.activators.lock() = activators;
        self.reassign(&trackers);
    }

    /// Refuses every request waiting and every one to come.
    pub(crate) fn close(&self) {
        self.closed.send_replace(true);
    }

    fn reassign(&self, trackers: &[Arc<PodTracker>]) {
        let activators = *self.activators.lock();
        let assigned = assign_slice(trackers, self.container_concurrency, activators);
        let capacity = capacity::capacity(
            self.container_concurrency,
            trackers.len(),
            assigned.len(),
            true,
            activators,
        );
        self.assigned.store(Arc::new(assigned));
        self.breaker.update_concurrency(capacity);
        if let Some(m) = &self.metrics {
            m.set_capacity(capacity, trackers.len());
        }
        // Waiters for a pod re-check the new set.
        self.freed.notify.notify_waiters();
    }

    fn tracker(&self, dest: SocketAddr, upstream: Arc<Upstream>) -> PodTracker {
        PodTracker {
            dest,
            authority: Authority::try_from(dest.to_string().as_str())
                .expect("a socket address is a valid authority"),
            host: HeaderValue::from_str(&dest.to_string())
                .expect("a socket address is a valid header value"),
            upstream,
            capacity: self.container_concurrency,
            in_flight: AtomicU32::new(0),
            freed: Arc::clone(&self.freed),
            gauge: self.metrics.as_ref().map(|m| m.pod_in_flight(&dest)),
        }
    }
}

// === impl Held ===

impl<'a> Held<'a> {
    fn enter(t: &'a Throttler) -> Result<Self, ThrottleError> {
        t.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < t.queue_depth).then_some(n + 1)
            })
            .map_err(|_| ThrottleError::QueueFull)?;
        if let Some(m) = &t.metrics {
            m.held.inc();
        }
        Ok(Self(t))
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.held.fetch_sub(1, Ordering::AcqRel);
        if let Some(m) = &self.0.metrics {
            m.held.dec();
        }
    }
}

// === impl PodTracker ===

impl PodTracker {
    pub(crate) fn dest(&self) -> SocketAddr {
        self.dest
    }

    pub(crate) fn authority(&self) -> &Authority {
        &self.authority
    }

    pub(crate) fn host(&self) -> &HeaderValue {
        &self.host
    }

    pub(crate) fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// A slot if one is free (Knative's non-blocking `Reserve`).
    fn reserve(self: &Arc<Self>) -> Option<PodPermit> {
        if self.capacity == 0 {
            return Some(self.take());
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.capacity).then_some(n + 1)
            })
            .ok()?;
        Some(self.permit())
    }

    /// A slot regardless of load (CC 0: the weight just grows).
    fn take(self: &Arc<Self>) -> PodPermit {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.permit()
    }

    fn permit(self: &Arc<Self>) -> PodPermit {
        if let Some(g) = &self.gauge {
            g.inc();
        }
        PodPermit(Arc::clone(self))
    }
}

// === impl PodPermit ===

impl PodPermit {
    pub(crate) fn tracker(&self) -> &Arc<PodTracker> {
        &self.0
    }
}

impl Drop for PodPermit {
    fn drop(&mut self) {
        let t = &self.0;
        t.in_flight.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &t.gauge {
            g.dec();
        }
        if t.freed.waiters.load(Ordering::Acquire) > 0 {
            t.freed.notify.notify_waiters();
        }
    }
}

/// Runs `f` when dropped.
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}

#[cfg(test)]
mod tests;
