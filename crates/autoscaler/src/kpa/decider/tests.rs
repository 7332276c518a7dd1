//! Knative's autoscaler cases (reference §5.1 A1–A28, §5.2 D1–D6), with its test harness
//! defaults: total = target / 0.75, panic threshold 2, scale rates 10, stable window 60 s,
//! reachable, created with one ready pod.

use super::*;
use crate::kpa::ReasonKind;

fn spec(target: f64, tbc: f64) -> DeciderSpec {
    DeciderSpec {
        target_value: target,
        total_value: target / 0.75,
        target_burst_capacity: tbc,
        panic_threshold: 2.0,
        max_scale_up_rate: 10.0,
        max_scale_down_rate: 10.0,
        stable_window: Duration::from_secs(60),
        scale_down_delay: Duration::ZERO,
        activation_scale: 0,
        reachable: true,
    }
}

const T0: Duration = Duration::from_secs(1_000);

fn at(offset_ms: u64) -> Duration {
    T0 + Duration::from_millis(offset_ms)
}

fn decide(spec: DeciderSpec, stable: f64, panic: f64, ready: u32) -> ((i32, i32), bool) {
    let mut d = Decider::new(spec, Some(1), T0);
    let r = d.scale(T0, stable, panic, ready);
    (counts(r), d.in_panic())
}

/// A decision's (desired, EBC); its reason is asserted where it is the subject.
fn counts(r: ScaleResult) -> (i32, i32) {
    (r.desired, r.excess_burst_capacity)
}

fn result(desired: i32, ebc: i32) -> (i32, i32) {
    (desired, ebc)
}

#[test]
fn a1_one_pod_panics_at_five_times_demand() {
    assert_eq!(
        decide(spec(10.0, 100.0), 50.0, 50.0, 1),
        (result(5, -137), true)
    );
}

#[test]
fn a2_already_scaled_no_panic() {
    assert_eq!(
        decide(spec(10.0, 100.0), 50.0, 50.0, 5),
        (result(5, -84), false)
    );
}

#[test]
fn a3_unlimited_tbc() {
    assert_eq!(decide(spec(181.0, -1.0), 21.0, 26.0, 1).0, result(1, -1));
}

#[test]
fn a4_zero_tbc() {
    assert_eq!(decide(spec(10.0, 0.0), 50.0, 49.0, 1).0, result(5, 0));
}

#[test]
fn a5_no_load_at_one_pod() {
    assert_eq!(decide(spec(10.0, 100.0), 0.0, 0.0, 1).0, result(0, -87));
}

#[test]
fn a6_stable_increase_limited_by_scale_up_rate() {
    let mut d = Decider::new(spec(10.0, 101.0), Some(1), T0);
    assert_eq!(counts(d.scale(T0, 50.0, 10.0, 1)), result(5, -98));
    assert_eq!(counts(d.scale(at(2_000), 100.0, 10.0, 1)), result(10, -98));
    assert!(!d.in_panic(), "dppc / R = 1");
}

#[test]
fn a7_rps_uses_the_same_arithmetic() {
    let mut d = Decider::new(spec(10.0, 101.0), Some(1), T0);
    assert_eq!(counts(d.scale(T0, 50.0, 50.0, 1)), result(5, -138));
    assert_eq!(counts(d.scale(at(2_000), 100.0, 99.0, 1)), result(10, -187));
}

#[test]
fn a8_panic_doubles() {
    assert_eq!(
        decide(spec(10.0, 84.0), 50.0, 100.0, 1),
        (result(10, -171), true)
    );
}

fn in_panic_since_5s_with_5_pods(stable: f64, panic: f64) -> ScaleResult {
    // Created with 5 ready pods 5 s ago: in panic, maxPanicPods 5.
    let mut d = Decider::new(spec(1.0, 100.0), Some(5), at(0));
    d.scale(at(5_000), stable, panic, 5)
}

#[test]
fn a9_in_panic_the_larger_of_stable_and_panic() {
    assert_eq!(
        counts(in_panic_since_5s_with_5_pods(50.0, 30.0)),
        result(50, -124)
    );
}

#[test]
fn a10_in_panic_panic_larger() {
    assert_eq!(
        counts(in_panic_since_5s_with_5_pods(20.0, 30.0)),
        result(30, -124)
    );
}

#[test]
fn a11_small_scale_up_rate_still_adds_a_pod() {
    let mut s = spec(1.0, 1982.0);
    s.max_scale_up_rate = 1.1;
    assert_eq!(decide(s, 3.0, 3.1, 2).0, result(3, -1983));
}

#[test]
fn a12_small_scale_down_rate() {
    let mut s = spec(10.0, 1982.0);
    s.max_scale_down_rate = 1.1;
    assert_eq!(decide(s.clone(), 1.0, 1.0, 100).0, result(90, -650));
    s.reachable = false;
    assert_eq!(
        decide(s, 1.0, 1.0, 100).0.0,
        1,
        "A13: no scale-down limit when unreachable"
    );
}

#[test]
fn a14_scale_up_rate_limit() {
    let mut d = Decider::new(spec(10.0, 61.0), Some(1), T0);
    assert_eq!(d.scale(T0, 1000.0, 1001.0, 1).desired, 10);
    assert_eq!(d.scale(at(2_000), 1000.0, 1001.0, 10).desired, 100);
}

#[test]
fn a15_scale_down_rate_limit() {
    let mut d = Decider::new(spec(10.0, 61.0), Some(1), T0);
    assert_eq!(d.scale(T0, 1.0, 1.0, 100).desired, 10);
    assert_eq!(d.scale(at(2_000), 1.0, 1.0, 10).desired, 1);
}

#[test]
fn a16_no_ready_pods_count_as_one_for_rates_but_zero_for_ebc() {
    assert_eq!(
        decide(spec(10.0, 81.0), 1000.0, 888.0, 0).0,
        result(10, -969)
    );
}

#[test]
fn a17_scale_to_zero_when_traffic_stops() {
    let mut d = Decider::new(spec(10.0, 75.0), Some(1), T0);
    assert_eq!(d.scale(T0, 1.0, 0.0, 1).desired, 1);
    assert_eq!(counts(d.scale(at(2_000), 0.0, 0.0, 1)), result(0, -62));
}

#[test]
fn a18_activation_scale_only_above_zero() {
    let mut s = spec(10.0, 75.0);
    s.activation_scale = 2;
    let mut d = Decider::new(s, Some(1), T0);
    assert_eq!(d.scale(T0, 0.0, 0.0, 1).desired, 0);
    assert_eq!(d.scale(at(2_000), 1.0, 0.0, 1).desired, 2);
}

#[test]
fn a24_starts_in_panic_with_more_than_one_ready_pod() {
    for (ready, panic) in [
        (Some(0), false),
        (Some(1), false),
        (Some(2), true),
        (Some(7), true),
        (None, false),
    ] {
        let d = Decider::new(spec(10.0, 100.0), ready, T0);
        assert_eq!(d.in_panic(), panic, "{ready:?}");
    }
    // maxPanicPods = ready: with no load, 7 pods are kept while in panic.
    let mut d = Decider::new(spec(10.0, 100.0), Some(7), T0);
    assert_eq!(d.scale(at(2_000), 0.0, 0.0, 7).desired, 7);
}

/// Knative's stock configuration: CC=0 → total 100, utilization 0.7, TBC 211,
/// panic threshold 200 %, scale up 1000, down 2.
fn stock() -> DeciderSpec {
    DeciderSpec {
        target_value: 70.0,
        total_value: 100.0,
        target_burst_capacity: 211.0,
        panic_threshold: 2.0,
        max_scale_up_rate: 1000.0,
        max_scale_down_rate: 2.0,
        stable_window: Duration::from_secs(60),
        scale_down_delay: Duration::ZERO,
        activation_scale: 0,
        reachable: true,
    }
}

#[test]
fn a27_stock_defaults_one_pod_proxy_mode() {
    let mut d = Decider::new(stock(), Some(1), T0);
    assert_eq!(counts(d.scale(T0, 35.0, 35.0, 1)), result(1, -146));
}

#[test]
fn a28_stock_defaults_panic_keeps_three_pods_serve_mode() {
    let mut d = Decider::new(stock(), Some(3), T0);
    assert_eq!(counts(d.scale(T0, 50.0, 50.0, 3)), result(3, 39));
}

#[test]
fn panic_ends_a_stable_window_after_the_last_over_threshold_tick() {
    let mut d = Decider::new(spec(10.0, 100.0), Some(1), T0);
    assert_eq!(d.scale(T0, 50.0, 50.0, 1).desired, 5);
    assert!(d.in_panic());
    // Load gone: in panic the count does not go down...
    assert_eq!(d.scale(at(30_000), 0.0, 0.0, 5).desired, 5);
    assert_eq!(
        d.scale(at(60_000), 0.0, 0.0, 5).desired,
        5,
        "exactly a window later: still in panic"
    );
    // ...until a whole stable window has passed without an over-threshold tick.
    assert_eq!(d.scale(at(60_001), 0.0, 0.0, 5).desired, 0);
    assert!(!d.in_panic());
}

fn delayed(delay_secs: u64) -> DeciderSpec {
    let mut s = spec(10.0, 100.0);
    s.max_scale_up_rate = 10.0;
    s.max_scale_down_rate = 10.0;
    s.panic_threshold = 100.0;
    s.scale_down_delay = Duration::from_secs(delay_secs);
    s
}

fn epoch(secs: u64) -> Duration {
    Duration::from_secs(secs)
}

#[test]
fn d1_d3_scale_down_waits_for_the_delay() {
    let mut d = Decider::new(delayed(300), Some(0), epoch(0));
    assert_eq!(d.scale(epoch(2), 40.0, 40.0, 0).desired, 4, "D1");
    assert_eq!(
        d.scale(epoch(300), 0.0, 0.0, 0).desired,
        4,
        "D2: still inside 5 min"
    );
    assert_eq!(d.scale(epoch(302), 0.0, 0.0, 0).desired, 0, "D3");
}

#[test]
fn d5_no_delay_scales_down_at_once() {
    let mut d = Decider::new(delayed(0), Some(0), epoch(0));
    assert_eq!(d.scale(epoch(2), 40.0, 40.0, 0).desired, 4);
    assert_eq!(
        d.scale(Duration::from_millis(2_500), 20.0, 20.0, 0).desired,
        2
    );
}

#[test]
fn d6_delay_ignored_when_unreachable() {
    let mut d = Decider::new(delayed(300), Some(0), epoch(0));
    assert_eq!(d.scale(epoch(2), 40.0, 40.0, 0).desired, 4);
    assert_eq!(d.scale(epoch(62), 0.0, 0.0, 0).desired, 4);
    let mut unreachable = d.spec().clone();
    unreachable.reachable = false;
    d.update(unreachable);
    assert_eq!(d.scale(epoch(64), 0.0, 0.0, 0).desired, 0);
}

// Reasons: each rule of the decider names itself, with its numbers.

fn reason_of(r: &ScaleResult) -> (ReasonKind, String) {
    (r.reason.kind(), r.reason.to_string())
}

#[test]
fn reason_stable_window() {
    let mut d = Decider::new(spec(10.0, 0.0), Some(1), T0);
    let r = d.scale(T0, 50.0, 10.0, 5);
    assert_eq!(r.desired, 5);
    assert_eq!(
        reason_of(&r),
        (
            ReasonKind::Stable,
            "stable: 1m average 50.0; desired ⌈50.0/10⌉ = 5".to_owned()
        )
    );
}

#[test]
fn reason_panic_entry_and_hold() {
    let mut d = Decider::new(spec(10.0, 100.0), Some(1), T0);
    let r = d.scale(T0, 50.0, 50.0, 1);
    assert_eq!(r.desired, 5);
    assert_eq!(
        reason_of(&r),
        (
            ReasonKind::Panic,
            "panic: panic-window average 50.0 wants ⌈50.0/10⌉ = 5 pods ≥ 2 × 1 ready; desired 5"
                .to_owned()
        )
    );
    // Load gone, still within the stable window of the panic reading: the peak is held.
    let r = d.scale(at(2_000), 0.0, 0.0, 5);
    assert_eq!(r.desired, 5);
    assert_eq!(
        reason_of(&r),
        (ReasonKind::Panic, "panic: holding 5, the most since panic began (it ends after a 1m stable window without a panic reading)".to_owned())
    );
}

#[test]
fn reason_scale_up_rate() {
    let mut s = spec(10.0, 0.0);
    s.max_scale_up_rate = 2.0;
    let mut d = Decider::new(s, Some(1), T0);
    let r = d.scale(T0, 100.0, 10.0, 2);
    assert_eq!(r.desired, 4);
    assert_eq!(
        reason_of(&r),
        (
            ReasonKind::MaxScaleUpRate,
            "scale-up limited by max-scale-up-rate 2: 2 → 4 (wanted 10)".to_owned()
        )
    );
}

#[test]
fn reason_scale_down_rate() {
    let mut s = spec(10.0, 0.0);
    s.max_scale_down_rate = 2.0;
    let mut d = Decider::new(s, Some(1), T0);
    let r = d.scale(T0, 10.0, 10.0, 10);
    assert_eq!(r.desired, 5);
    assert_eq!(
        reason_of(&r),
        (
            ReasonKind::MaxScaleDownRate,
            "scale-down limited by max-scale-down-rate 2: 10 → 5 (wanted 1)".to_owned()
        )
    );
}

#[test]
fn reason_activation_scale() {
    let mut s = spec(10.0, 0.0);
    s.activation_scale = 3;
    let mut d = Decider::new(s, Some(1), T0);
    let r = d.scale(T0, 5.0, 5.0, 1);
    assert_eq!(r.desired, 3);
    assert_eq!(
        reason_of(&r),
        (
            ReasonKind::ActivationScale,
            "activation-scale 3: the load wants ⌈5.0/10⌉ = 1".to_owned()
        )
    );
}

#[test]
fn reason_scale_down_delay() {
    let mut s = spec(10.0, 0.0);
    s.scale_down_delay = Duration::from_secs(60);
    let mut d = Decider::new(s, Some(0), epoch(0));
    assert_eq!(d.scale(epoch(2), 40.0, 10.0, 4).desired, 4);
    let r = d.scale(epoch(30), 0.0, 0.0, 4);
    assert_eq!(r.desired, 4);
    assert_eq!(
        reason_of(&r),
        (
            ReasonKind::ScaleDownDelay,
            "scale-down delay: keeping 4 (peak of the last 1m); 0 wanted now".to_owned()
        )
    );
}
