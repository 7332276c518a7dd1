//! One revision's metric windows, fed by every reporter (reference §3.2, §3.3): stable
//! and panic windows for concurrency and for requests per second.
//!
//! Every queue-proxy pushes its own pod's stat each second; values landing in the same
//! second add up, so a second's bucket holds the revision's total. A queue-proxy's
//! proxied part is subtracted because the activator reports those requests itself. A
//! revision of the gateway-metrics class (`mpa`) scales on the gateway's count alone.

use std::time::Duration;

use super::Window;
use crate::revision::{Aggregation, Class, Metric};

/// Who measured a stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reporter {
    QueueProxy,
    Activator,
    Gateway,
}

/// One reporter's stat for one second (Knative's `Stat` fields that scaling reads).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StatSample {
    pub average_concurrency: f64,
    pub average_proxied_concurrency: f64,
    /// Per second.
    pub request_count: f64,
    pub proxied_request_count: f64,
}

#[derive(Clone, Debug)]
pub struct Collector {
    class: Class,
    stable_concurrency: Window,
    panic_concurrency: Window,
    stable_rps: Window,
    panic_rps: Window,
}

// === impl Collector ===

impl Collector {
    pub fn new(
        class: Class,
        stable_window: Duration,
        panic_window: Duration,
        aggregation: Aggregation,
    ) -> Self {
        let window = match aggregation {
            Aggregation::Linear => Window::new,
            Aggregation::WeightedExponential => Window::weighted,
        };
        Self {
            class,
            stable_concurrency: window(stable_window),
            panic_concurrency: window(panic_window),
            stable_rps: window(stable_window),
            panic_rps: window(panic_window),
        }
    }

    /// Records a stat received at `now`. Returns whether it counts for this revision's
    /// class (a gateway's stat for a KPA revision, say, does not).
    pub fn record(&mut self, now: Duration, reporter: Reporter, s: StatSample) -> bool {
        let (concurrency, rps) = match (self.class, reporter) {
            (Class::Kpa, Reporter::QueueProxy) => (
                s.average_concurrency - s.average_proxied_concurrency,
                s.request_count - s.proxied_request_count,
            ),
            (Class::Kpa, Reporter::Activator) | (Class::Mpa, Reporter::Gateway) => {
                (s.average_concurrency, s.request_count)
            }
            _ => return false,
        };
        self.stable_concurrency.record(now, concurrency);
        self.panic_concurrency.record(now, concurrency);
        self.stable_rps.record(now, rps);
        self.panic_rps.record(now, rps);
        true
    }

    /// The stable and panic averages of `metric` at `now`, or `None` when nothing was
    /// recorded for a whole stable window (Knative's `ErrNoData`: keep the last decision).
    pub fn stable_and_panic(&self, now: Duration, metric: Metric) -> Option<(f64, f64)> {
        let (stable, panic) = match metric {
            Metric::Concurrency => (&self.stable_concurrency, &self.panic_concurrency),
            Metric::Rps => (&self.stable_rps, &self.panic_rps),
        };
        (!stable.is_empty(now)).then(|| (stable.average(now), panic.average(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn collector(class: Class) -> Collector {
        Collector::new(class, secs(60), secs(6), Aggregation::Linear)
    }

    #[test]
    fn w9_same_second_stats_add_up_to_the_revision_total() {
        let mut c = collector(Class::Kpa);
        let pod = StatSample {
            average_concurrency: 10.0,
            request_count: 20.0,
            ..StatSample::default()
        };
        for _ in 0..3 {
            assert!(c.record(secs(100), Reporter::QueueProxy, pod));
        }
        assert_eq!(
            c.stable_and_panic(secs(100), Metric::Concurrency),
            Some((30.0, 30.0))
        );
        assert_eq!(
            c.stable_and_panic(secs(100), Metric::Rps),
            Some((60.0, 60.0))
        );
    }

    #[test]
    fn w11_proxied_part_is_not_counted_twice_and_old_stats_leave() {
        let mut c = collector(Class::Kpa);
        let old = StatSample {
            average_concurrency: 100.0,
            request_count: 100.0,
            ..StatSample::default()
        };
        c.record(secs(30), Reporter::QueueProxy, old);
        let s = StatSample {
            average_concurrency: 20.0,
            average_proxied_concurrency: 10.0,
            request_count: 30.0,
            proxied_request_count: 20.0,
        };
        c.record(secs(100), Reporter::QueueProxy, s);
        assert_eq!(
            c.stable_and_panic(secs(100), Metric::Concurrency),
            Some((10.0, 10.0))
        );
        assert_eq!(
            c.stable_and_panic(secs(100), Metric::Rps),
            Some((10.0, 10.0))
        );
    }

    #[test]
    fn activator_stats_add_to_queue_proxy_stats() {
        let mut c = collector(Class::Kpa);
        let qp = StatSample {
            average_concurrency: 5.0,
            average_proxied_concurrency: 2.0,
            ..StatSample::default()
        };
        let activator = StatSample {
            average_concurrency: 2.0,
            ..StatSample::default()
        };
        c.record(secs(10), Reporter::QueueProxy, qp);
        c.record(secs(10), Reporter::Activator, activator);
        assert_eq!(
            c.stable_and_panic(secs(10), Metric::Concurrency),
            Some((5.0, 5.0))
        );
    }

    #[test]
    fn mpa_scales_on_the_gateway_alone() {
        let mut c = collector(Class::Mpa);
        let s = StatSample {
            average_concurrency: 7.0,
            ..StatSample::default()
        };
        assert!(!c.record(secs(10), Reporter::QueueProxy, s));
        assert!(!c.record(secs(10), Reporter::Activator, s));
        assert!(c.record(secs(10), Reporter::Gateway, s));
        assert_eq!(
            c.stable_and_panic(secs(10), Metric::Concurrency),
            Some((7.0, 7.0))
        );
        let mut kpa = collector(Class::Kpa);
        assert!(
            !kpa.record(secs(10), Reporter::Gateway, s),
            "a KPA revision ignores the gateway"
        );
    }

    #[test]
    fn no_data_for_a_stable_window_is_none_and_panic_forgets_sooner() {
        let mut c = collector(Class::Kpa);
        assert_eq!(c.stable_and_panic(secs(0), Metric::Concurrency), None);
        let s = StatSample {
            average_concurrency: 12.0,
            ..StatSample::default()
        };
        c.record(secs(0), Reporter::QueueProxy, s);
        assert_eq!(
            c.stable_and_panic(secs(10), Metric::Concurrency),
            Some((12.0, 0.0)),
            "past the 6 s panic window"
        );
        assert_eq!(c.stable_and_panic(secs(61), Metric::Concurrency), None);
    }
}
