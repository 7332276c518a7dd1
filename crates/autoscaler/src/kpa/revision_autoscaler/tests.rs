//! The multiscaler cases (reference §5.7 T17–T19) and the tick/reconcile glue.

use std::collections::BTreeMap;

use super::*;
use crate::revision::RevisionScaling;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn scaling(annotations: &[(&str, &str)], cc: u32) -> (AutoscalerConfig, RevisionScaling) {
    let cfg = AutoscalerConfig::default();
    let annotations: BTreeMap<String, String> = annotations
        .iter()
        .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), (*v).to_owned()))
        .collect();
    let s = RevisionScaling::resolve(&cfg, &annotations, cc).expect("valid annotations");
    (cfg, s)
}

fn load(c: f64) -> StatSample {
    StatSample {
        average_concurrency: c,
        ..StatSample::default()
    }
}

#[test]
fn t17_activator_count() {
    // Total 100 (CC 0, default target 100), activator capacity 100.
    let (cfg, s) = scaling(&[("target-burst-capacity", "200")], 0);
    assert_eq!(s.total, 100.0);
    let ra = RevisionAutoscaler::new(&cfg, s, None, secs(0));
    let counts: Vec<u32> = [0, 1, 15]
        .iter()
        .map(|&ready| ra.activator_count(&cfg, ready))
        .collect();
    assert_eq!(counts, [2, 3, 17]);

    let (cfg, s) = scaling(&[("target-burst-capacity", "0")], 0);
    assert_eq!(
        RevisionAutoscaler::new(&cfg, s, None, secs(0)).activator_count(&cfg, 100),
        2
    );

    let (cfg, s) = scaling(&[("target-burst-capacity", "-1")], 0);
    assert_eq!(
        RevisionAutoscaler::new(&cfg, s, None, secs(0)).activator_count(&cfg, 5),
        5
    );
}

#[test]
fn t18_a_new_decider_starts_unknown_with_the_initial_pods_ebc() {
    // Total 25 via containerConcurrency 25.
    let (cfg, s) = scaling(
        &[("initial-scale", "2"), ("target-burst-capacity", "42")],
        25,
    );
    assert_eq!(s.total, 25.0);
    assert_eq!(
        RevisionAutoscaler::new(&cfg, s, None, secs(0)).status(),
        (-1, 8)
    );

    let (cfg, s) = scaling(
        &[("initial-scale", "2"), ("target-burst-capacity", "-1")],
        25,
    );
    assert_eq!(
        RevisionAutoscaler::new(&cfg, s, None, secs(0)).status(),
        (-1, -1)
    );
}

#[test]
fn t19_a_poke_at_zero_asks_for_a_decision_at_once() {
    let (cfg, s) = scaling(&[("target", "10")], 0);
    let mut ra = RevisionAutoscaler::new(&cfg, s, Some(1), secs(0));
    assert!(
        !ra.record(secs(0), Reporter::Activator, load(1.0), true),
        "not decided yet (-1): no poke"
    );
    ra = RevisionAutoscaler::new(&cfg, ra.scaling().clone(), Some(1), secs(0));
    // No load for a while: the decider says 0.
    for t in 0..4 {
        assert!(!ra.record(secs(t), Reporter::QueueProxy, load(0.0), false));
    }
    ra.tick(
        secs(4),
        PodCounts {
            ready: 1,
            replicas: 1,
        },
        true,
    );
    assert_eq!(ra.status().0, 0);
    // Load arrives through the activator: decide now.
    assert!(ra.record(secs(5), Reporter::Activator, load(1.0), true));
    let d = ra.tick(
        secs(5),
        PodCounts {
            ready: 0,
            replicas: 0,
        },
        true,
    );
    assert_eq!(d.desired, 1, "{d:?}");
    assert_eq!(d.scale, 1);
    // Not at zero any more: a stat is just a stat.
    assert!(!ra.record(secs(6), Reporter::Activator, load(1.0), true));
}

#[test]
fn a_gateway_stat_for_a_kpa_revision_is_no_poke() {
    let (cfg, s) = scaling(&[], 0);
    let mut ra = RevisionAutoscaler::new(&cfg, s, Some(0), secs(0));
    ra.record(secs(0), Reporter::Activator, load(0.0), false);
    ra.tick(secs(2), PodCounts::default(), true);
    assert_eq!(ra.status().0, 0);
    assert!(!ra.record(secs(3), Reporter::Gateway, load(5.0), true));
    assert!(ra.record(secs(3), Reporter::Activator, load(5.0), false));
}

#[test]
fn a25_a_tick_without_data_keeps_the_last_decision() {
    let (cfg, s) = scaling(&[("target", "10")], 0);
    let mut ra = RevisionAutoscaler::new(&cfg, s, Some(1), secs(0));
    let pods = PodCounts {
        ready: 1,
        replicas: 1,
    };
    let first = ra.tick(secs(2), pods, true);
    assert_eq!(first.desired, -1, "no data yet");
    ra.record(secs(3), Reporter::QueueProxy, load(50.0), false);
    let d = ra.tick(secs(4), pods, true);
    // Target 10 × 70 % = 7 per pod: ⌈50 / 7⌉ = 8, and a jump that size is panic.
    assert_eq!(
        (d.desired, d.scale, d.apply, d.panic_mode),
        (8, 8, Some(8), true)
    );
    // A whole stable window later with no stats: no data, the decision stands.
    let later = ra.tick(
        secs(200),
        PodCounts {
            ready: 8,
            replicas: 8,
        },
        true,
    );
    assert_eq!((later.desired, later.stable), (8, 50.0));
}

#[test]
fn a_changed_annotation_applies_at_the_next_tick() {
    let (cfg, s) = scaling(&[("target", "10")], 0);
    let mut ra = RevisionAutoscaler::new(&cfg, s, Some(1), secs(0));
    let pods = PodCounts {
        ready: 1,
        replicas: 1,
    };
    for t in 0..=2 {
        ra.record(secs(t), Reporter::QueueProxy, load(7.0), false);
    }
    assert_eq!(ra.tick(secs(2), pods, true).desired, 1);
    let (cfg, s) = scaling(&[("target", "1"), ("max-scale", "3")], 0);
    ra.update(&cfg, s);
    ra.record(secs(3), Reporter::QueueProxy, load(7.0), false);
    let d = ra.tick(secs(4), pods, true);
    assert_eq!(
        (d.desired, d.scale),
        (10, 3),
        "target 1 × 70 %: ⌈7 / 0.7⌉, capped at 3"
    );
}

#[test]
fn decider_spec_carries_config_only_knobs() {
    let (cfg, s) = scaling(
        &[
            ("target", "10"),
            ("scale-down-delay", "30s"),
            ("target-burst-capacity", "-1"),
        ],
        0,
    );
    let d = decider_spec(&s, &cfg, true);
    assert_eq!(
        (d.target_value, d.total_value, d.target_burst_capacity),
        (7.0, 10.0, -1.0)
    );
    assert_eq!(
        (
            d.max_scale_up_rate,
            d.max_scale_down_rate,
            d.panic_threshold
        ),
        (1000.0, 2.0, 2.0)
    );
    assert_eq!(
        (d.stable_window, d.scale_down_delay, d.reachable),
        (Duration::from_secs(60), Duration::from_secs(30), true)
    );
}
