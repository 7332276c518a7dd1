//! Knative's `request_test.go` cases S1–S8 (reference §5.5), times in ms from t0.

use super::*;

fn at(t0: Instant, ms: u64) -> Instant {
    t0 + Duration::from_millis(ms)
}

fn approx(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn s1_no_events_reports_zero() {
    let t0 = Instant::now();
    let mut s = RequestStats::new(t0);
    let r = s.report(at(t0, 1000));
    assert_eq!(r, StatsReport::default());
}

#[test]
fn s2_one_request_for_the_whole_second() {
    let t0 = Instant::now();
    let mut s = RequestStats::new(t0);
    s.handle(ReqEvent::In, t0);
    s.handle(ReqEvent::Out, at(t0, 1000));
    let r = s.report(at(t0, 1000));
    assert!(approx(r.average_concurrency, 1.0), "{r:?}");
    assert_eq!(r.request_count, 1);
}

#[test]
fn s3_half_of_a_long_period() {
    let t0 = Instant::now();
    let mut s = RequestStats::new(t0);
    s.handle(ReqEvent::In, t0);
    s.handle(ReqEvent::Out, at(t0, 3000));
    let r = s.report(at(t0, 6000));
    assert!(approx(r.average_concurrency, 0.5), "{r:?}");
    assert_eq!(r.request_count, 1);
}

#[test]
fn s4_a_very_short_request() {
    let t0 = Instant::now();
    let mut s = RequestStats::new(t0);
    s.handle(ReqEvent::In, t0);
    s.handle(ReqEvent::Out, at(t0, 1));
    let r = s.report(at(t0, 1000));
    assert!(approx(r.average_concurrency, 0.001), "{r:?}");
    assert_eq!(r.request_count, 1);
}

#[test]
fn s5_overlapping_requests() {
    let t0 = Instant::now();
    let mut s = RequestStats::new(t0);
    s.handle(ReqEvent::In, t0);
    s.handle(ReqEvent::In, at(t0, 100));
    s.handle(ReqEvent::Out, at(t0, 600));
    s.handle(ReqEvent::Out, at(t0, 1000));
    let r = s.report(at(t0, 1000));
    assert!(approx(r.average_concurrency, 1.5), "{r:?}");
    assert_eq!(r.request_count, 2);
}

#[test]
fn s6_request_spanning_two_reports() {
    let t0 = Instant::now();
    let mut s = RequestStats::new(t0);
    s.handle(ReqEvent::In, t0);
    let r1 = s.report(at(t0, 1000));
    s.handle(ReqEvent::Out, at(t0, 1500));
    let r2 = s.report(at(t0, 2000));
    assert!(
        approx(r1.average_concurrency, 1.0) && r1.request_count == 1,
        "{r1:?}"
    );
    assert!(
        approx(r2.average_concurrency, 0.5) && r2.request_count == 0,
        "{r2:?}"
    );
}

#[test]
fn s8_proxied_and_direct() {
    let t0 = Instant::now();
    let mut s = RequestStats::new(t0);
    s.handle(ReqEvent::ProxiedIn, t0);
    s.handle(ReqEvent::In, t0);
    s.handle(ReqEvent::ProxiedOut, at(t0, 500));
    s.handle(ReqEvent::Out, at(t0, 1000));
    let r = s.report(at(t0, 1000));
    assert!(approx(r.average_concurrency, 1.5), "{r:?}");
    assert!(approx(r.average_proxied_concurrency, 0.5), "{r:?}");
    assert_eq!((r.request_count, r.proxied_request_count), (2, 1));
}

#[test]
fn out_of_order_timestamps_add_nothing() {
    let t0 = Instant::now();
    let mut s = RequestStats::new(at(t0, 500));
    s.handle(ReqEvent::In, t0); // stamped before the last change: no negative time
    let r = s.report(at(t0, 1500));
    assert!(approx(r.average_concurrency, 1.0), "{r:?}");
}

#[test]
fn unmatched_out_never_goes_negative() {
    let t0 = Instant::now();
    let mut s = RequestStats::new(t0);
    s.handle(ReqEvent::ProxiedOut, t0);
    assert_eq!(s.concurrency(), 0);
    let r = s.report(at(t0, 1000));
    assert!(approx(r.average_concurrency, 0.0), "{r:?}");
}
