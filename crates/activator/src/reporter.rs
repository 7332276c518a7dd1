//! What the activator tells the autoscaler (§2.8): a poke (concurrency 1) the moment the
//! first request for an idle revision arrives, then every second each active revision's
//! average concurrency (time spent held included) and request count, with the poke's
//! request taken back out so it is not counted twice. A revision whose second averaged 0
//! is reported once more at 0, then forgotten until its next request pokes again.

use std::time::Duration;

use sluice_core::{ReqEvent, RequestStats};
use tokio::time::Instant;

/// How often the activator reports (Knative's `reportInterval`).
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// One revision's reporting state. A plain struct fed `now`.
#[derive(Debug, Default)]
pub(crate) struct ReportEntry {
    /// `None` while the revision is idle (not being reported).
    stats: Option<RequestStats>,
    /// 1 between a poke and the next report: that request was already sent.
    first_request: f64,
}

/// What one report says about a revision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Report {
    pub(crate) concurrency: f64,
    pub(crate) request_count: f64,
}

// === impl ReportEntry ===

impl ReportEntry {
    /// A request arrived. True when it is the first for an idle revision: send the poke.
    pub(crate) fn request_in(&mut self, now: Instant) -> bool {
        let poke = self.stats.is_none();
        let stats = self.stats.get_or_insert_with(|| RequestStats::new(now));
        if poke {
            self.first_request = 1.0;
        }
        stats.handle(ReqEvent::In, now);
        poke
    }

    pub(crate) fn request_out(&mut self, now: Instant) {
        if let Some(stats) = self.stats.as_mut() {
            stats.handle(ReqEvent::Out, now);
        }
    }

    /// Closes the period ending at `now`: what to send, or `None` for an idle revision.
    pub(crate) fn report(&mut self, now: Instant) -> Option<Report> {
        let stats = self.stats.as_mut()?;
        let r = stats.report(now);
        let report = Report {
            concurrency: (r.average_concurrency - self.first_request).max(0.0),
            request_count: r.request_count as f64 - self.first_request,
        };
        self.first_request = 0.0;
        if r.average_concurrency == 0.0 && stats.concurrency() == 0 {
            self.stats = None;
        }
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn at(start: Instant, ms: u32) -> Instant {
        start + MS * ms
    }

    fn report(concurrency: f64, request_count: f64) -> Option<Report> {
        Some(Report {
            concurrency,
            request_count,
        })
    }

    #[test]
    fn r1_the_first_request_of_each_revision_pokes() {
        let t0 = Instant::now();
        let (mut rev1, mut rev2) = (ReportEntry::default(), ReportEntry::default());
        assert!(rev1.request_in(t0));
        assert!(rev2.request_in(t0));
        assert!(!rev1.request_in(t0), "only the first");
    }

    #[test]
    fn r2_the_poked_request_is_not_counted_twice() {
        let t0 = Instant::now();
        let mut e = ReportEntry::default();
        assert!(e.request_in(at(t0, 0)));
        e.request_out(at(t0, 1));
        assert!(!e.request_in(at(t0, 1)));
        e.request_out(at(t0, 2));
        assert_eq!(e.report(at(t0, 2)), report(0.0, 1.0));
    }

    #[test]
    fn r3_two_requests_across_two_ticks() {
        let t0 = Instant::now();
        let mut e = ReportEntry::default();
        assert!(e.request_in(t0));
        assert!(!e.request_in(t0));
        assert_eq!(e.report(at(t0, 1)), report(1.0, 1.0));
        assert_eq!(e.report(at(t0, 2)), report(2.0, 0.0));
    }

    #[test]
    fn r4_an_idle_revision_is_reported_once_at_zero_then_forgotten() {
        let t0 = Instant::now();
        let mut e = ReportEntry::default();
        assert!(e.request_in(at(t0, 0)));
        e.request_out(at(t0, 1));
        assert_eq!(e.report(at(t0, 1)), report(0.0, 0.0));
        assert_eq!(e.report(at(t0, 2)), report(0.0, 0.0));
        assert_eq!(e.report(at(t0, 3)), None, "forgotten");
        assert!(e.request_in(at(t0, 3)), "the next request pokes again");
    }

    #[test]
    fn r5_overlapping_requests_average_over_the_period() {
        let t0 = Instant::now();
        let mut e = ReportEntry::default();
        assert!(e.request_in(at(t0, 0)));
        assert!(!e.request_in(at(t0, 0)));
        e.request_out(at(t0, 1));
        e.request_out(at(t0, 2));
        assert_eq!(e.report(at(t0, 2)), report(0.5, 1.0));
    }

    #[test]
    fn a_revision_with_a_request_still_held_is_not_forgotten() {
        let t0 = Instant::now();
        let mut e = ReportEntry::default();
        assert!(e.request_in(t0));
        // Arrived at the very end of the period: average 0, but still in flight.
        let mut late = ReportEntry::default();
        late.request_in(at(t0, 5));
        assert!(late.report(at(t0, 5)).is_some());
        assert!(late.report(at(t0, 6)).is_some(), "still in flight: kept");
        assert!(!late.request_in(at(t0, 7)), "no second poke");
    }
}
