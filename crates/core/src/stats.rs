//! Time-weighted concurrency and request counts over a report period, as Knative's
//! `networking/pkg/http/stats.RequestStats` computes them. A plain struct fed `now`.

use std::time::Duration;

use tokio::time::Instant;

/// A request entering or leaving, directly or through the activator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReqEvent {
    In,
    Out,
    ProxiedIn,
    ProxiedOut,
}

/// What one report period saw.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatsReport {
    /// Requests in flight, averaged over the time since the last report.
    pub average_concurrency: f64,
    /// The part of `average_concurrency` that came through the activator.
    pub average_proxied_concurrency: f64,
    /// Requests that arrived in the period (not a rate).
    pub request_count: u64,
    /// The part of `request_count` that came through the activator.
    pub proxied_request_count: u64,
}

/// Accumulates concurrency × time between reports.
///
/// Invariant: `concurrency >= proxied_concurrency`; the counts never go below zero even
/// if an `Out` arrives without its `In` (it is then ignored), so a bug elsewhere cannot
/// make the autoscaler see negative load.
#[derive(Debug)]
pub struct RequestStats {
    concurrency: u32,
    proxied_concurrency: u32,
    last_change: Instant,
    request_count: u64,
    proxied_count: u64,
    computed_concurrency: f64,
    computed_proxied_concurrency: f64,
    seconds_in_use: f64,
}

// === impl RequestStats ===

impl RequestStats {
    pub fn new(now: Instant) -> Self {
        Self {
            concurrency: 0,
            proxied_concurrency: 0,
            last_change: now,
            request_count: 0,
            proxied_count: 0,
            computed_concurrency: 0.0,
            computed_proxied_concurrency: 0.0,
            seconds_in_use: 0.0,
        }
    }

    /// Requests in flight right now.
    pub fn concurrency(&self) -> u32 {
        self.concurrency
    }

    pub fn handle(&mut self, event: ReqEvent, now: Instant) {
        self.compute(now);
        match event {
            ReqEvent::In => {
                self.concurrency += 1;
                self.request_count += 1;
            }
            ReqEvent::ProxiedIn => {
                self.concurrency += 1;
                self.request_count += 1;
                self.proxied_concurrency += 1;
                self.proxied_count += 1;
            }
            ReqEvent::Out => self.concurrency = self.concurrency.saturating_sub(1),
            ReqEvent::ProxiedOut => {
                self.concurrency = self.concurrency.saturating_sub(1);
                self.proxied_concurrency = self.proxied_concurrency.saturating_sub(1);
            }
        }
    }

    /// Closes the period ending at `now` and starts the next one.
    pub fn report(&mut self, now: Instant) -> StatsReport {
        self.compute(now);
        let (avg, proxied_avg) = if self.seconds_in_use > 0.0 {
            (
                self.computed_concurrency / self.seconds_in_use,
                self.computed_proxied_concurrency / self.seconds_in_use,
            )
        } else {
            (0.0, 0.0)
        };
        let report = StatsReport {
            average_concurrency: avg,
            average_proxied_concurrency: proxied_avg,
            request_count: self.request_count,
            proxied_request_count: self.proxied_count,
        };
        self.request_count = 0;
        self.proxied_count = 0;
        self.computed_concurrency = 0.0;
        self.computed_proxied_concurrency = 0.0;
        self.seconds_in_use = 0.0;
        report
    }

    // Out-of-order timestamps (now before last_change) add nothing, as in Knative: events
    // are stamped before the lock is taken, so two racing requests may arrive swapped.
    fn compute(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_change);
        if elapsed > Duration::ZERO {
            let secs = elapsed.as_secs_f64();
            self.computed_concurrency += f64::from(self.concurrency) * secs;
            self.computed_proxied_concurrency += f64::from(self.proxied_concurrency) * secs;
            self.seconds_in_use += secs;
            self.last_change = now;
        }
    }
}

#[cfg(test)]
mod tests;
