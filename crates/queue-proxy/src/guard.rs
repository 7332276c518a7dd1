//! Everything one request holds until its response ends: its place in the concurrency
//! stats, its breaker slot, its pooled connection to the app. Dropping the guard gives
//! it all back and records the request's metrics.

use std::sync::Arc;

use sluice_core::{BreakerPermit, ReqEvent};
use tokio::time::Instant;

use crate::State;
use sluice_core::upstream::Lease;

#[derive(Debug)]
pub(crate) struct RequestGuard {
    state: Arc<State>,
    /// The stats event to record on the way out; `None` for probes, which are not counted.
    out: Option<ReqEvent>,
    start: Instant,
    pub(crate) status: u16,
    pub(crate) permit: Option<BreakerPermit>,
    /// When the breaker slot was obtained (the app's latency starts there).
    pub(crate) app_start: Option<Instant>,
    pub(crate) lease: Option<Lease>,
    clean: bool,
}

// === impl RequestGuard ===

impl RequestGuard {
    /// Counts the request in; `counted: false` for probes.
    pub(crate) fn enter(state: Arc<State>, counted: bool, proxied: bool) -> Self {
        let start = Instant::now();
        let out = counted.then(|| {
            let (inn, out) = if proxied {
                (ReqEvent::ProxiedIn, ReqEvent::ProxiedOut)
            } else {
                (ReqEvent::In, ReqEvent::Out)
            };
            state.stats.lock().handle(inn, start);
            out
        });
        Self {
            state,
            out,
            start,
            status: 0,
            permit: None,
            app_start: None,
            lease: None,
            clean: false,
        }
    }

    pub(crate) fn start(&self) -> Instant {
        self.start
    }
}

impl sluice_core::proxy_body::BodyGuard for RequestGuard {
    /// The response body ended without error: the connection may be reused.
    fn mark_clean(&mut self) {
        self.clean = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        if let Some(lease) = self.lease.take() {
            lease.release(self.clean, now);
        }
        self.permit = None;
        if let Some(out) = self.out {
            self.state.stats.lock().handle(out, now);
            let app = self.app_start.map(|s| now.saturating_duration_since(s));
            self.state
                .metrics
                .record(self.status, now.saturating_duration_since(self.start), app);
        }
    }
}
