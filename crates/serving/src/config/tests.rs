//! Knative's `config_test.go` cases (reference §5.11 V1–V8) and the defaults of §4.1.

use super::*;

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn parse(pairs: &[(&str, &str)]) -> Result<AutoscalerConfig, ConfigError> {
    AutoscalerConfig::from_data(&data(pairs))
}

fn refused(pairs: &[(&str, &str)]) -> Vec<String> {
    parse(pairs)
        .expect_err("refused")
        .problems
        .into_iter()
        .map(|p| p.key)
        .collect()
}

#[test]
fn empty_configmap_gives_knatives_defaults() {
    let c = parse(&[("_example", "ignored")]).expect("defaults");
    assert_eq!(c, AutoscalerConfig::default());
    assert_eq!(c.pod_autoscaler_class, "kpa.autoscaling.knative.dev");
    assert_eq!(c.container_concurrency_target_fraction, 0.7);
    assert_eq!(
        (c.target_burst_capacity, c.activator_capacity),
        (211.0, 100.0)
    );
    assert_eq!(
        (c.stable_window, c.scale_to_zero_grace_period),
        (Duration::from_secs(60), Duration::from_secs(30))
    );
}

#[test]
fn v1_target_percentage_above_one_is_a_percentage() {
    assert_eq!(
        parse(&[("container-concurrency-target-percentage", "55")])
            .expect("ok")
            .container_concurrency_target_fraction,
        0.55
    );
    assert_eq!(
        parse(&[("container-concurrency-target-percentage", "0.71")])
            .expect("ok")
            .container_concurrency_target_fraction,
        0.71
    );
    assert_eq!(
        parse(&[("container-concurrency-target-percentage", "1")])
            .expect("ok")
            .container_concurrency_target_fraction,
        1.0,
        "\"1\" is 100%"
    );
    assert_eq!(
        refused(&[("container-concurrency-target-percentage", "142.4")]),
        ["container-concurrency-target-percentage"]
    );
    assert_eq!(
        refused(&[("container-concurrency-target-percentage", "-42")]),
        ["container-concurrency-target-percentage"]
    );
}

#[test]
fn v3_scale_rates_must_exceed_one() {
    assert_eq!(
        refused(&[("max-scale-up-rate", "1")]),
        ["max-scale-up-rate"]
    );
    assert_eq!(
        parse(&[("max-scale-up-rate", "1.001")])
            .expect("ok")
            .max_scale_up_rate,
        1.001
    );
    assert_eq!(
        refused(&[("max-scale-down-rate", "1")]),
        ["max-scale-down-rate"]
    );
}

#[test]
fn v4_stable_window() {
    for bad in ["1s", "1h1s", "61984ms", "60"] {
        assert_eq!(
            refused(&[("stable-window", bad)]),
            ["stable-window"],
            "{bad}"
        );
    }
    assert_eq!(
        parse(&[("stable-window", "5m")]).expect("ok").stable_window,
        Duration::from_secs(300)
    );
}

#[test]
fn v5_v6_burst_and_capacities() {
    assert_eq!(
        refused(&[("target-burst-capacity", "-11")]),
        ["target-burst-capacity"]
    );
    assert_eq!(
        parse(&[("target-burst-capacity", "-1")])
            .expect("ok")
            .target_burst_capacity,
        -1.0
    );
    assert_eq!(
        parse(&[("target-burst-capacity", "0")])
            .expect("ok")
            .target_burst_capacity,
        0.0
    );
    assert_eq!(
        refused(&[("activator-capacity", "0.95")]),
        ["activator-capacity"]
    );
    assert_eq!(
        refused(&[("panic-window-percentage", "0.1")]),
        ["panic-window-percentage"]
    );
    assert_eq!(
        refused(&[("panic-window-percentage", "110")]),
        ["panic-window-percentage"]
    );
    assert_eq!(
        parse(&[("panic-threshold-percentage", "50")])
            .expect("not range-checked in the ConfigMap")
            .panic_threshold_percentage,
        50.0
    );
}

#[test]
fn v7_durations() {
    assert_eq!(
        refused(&[("scale-to-zero-grace-period", "0s")]),
        ["scale-to-zero-grace-period"]
    );
    assert_eq!(
        refused(&[("scale-down-delay", "-1m23s")]),
        ["scale-down-delay"]
    );
    assert_eq!(
        refused(&[("scale-to-zero-pod-retention-period", "-4m11s")]),
        ["scale-to-zero-pod-retention-period"]
    );
    assert_eq!(
        refused(&[("scale-down-delay", "1500ms")]),
        ["scale-down-delay"],
        "whole seconds"
    );
}

#[test]
fn v8_initial_scale_zero_needs_the_flag() {
    assert_eq!(refused(&[("initial-scale", "0")]), ["initial-scale"]);
    assert_eq!(
        parse(&[("initial-scale", "0"), ("allow-zero-initial-scale", "true")])
            .expect("ok")
            .initial_scale,
        0
    );
    assert_eq!(refused(&[("initial-scale", "-1")]), ["initial-scale"]);
}

#[test]
fn bounds_and_limits() {
    assert_eq!(
        refused(&[("min-scale", "5"), ("max-scale", "3")]),
        ["min-scale"]
    );
    assert_eq!(
        refused(&[("max-scale-limit", "10")]),
        ["max-scale"],
        "unlimited max-scale above a limit"
    );
    assert_eq!(
        refused(&[("max-scale-limit", "10"), ("max-scale", "11")]),
        ["max-scale"]
    );
    assert!(
        parse(&[
            ("max-scale-limit", "10"),
            ("max-scale", "10"),
            ("min-scale", "2")
        ])
        .is_ok()
    );
}

#[test]
fn every_problem_at_once_naming_key_value_and_what_is_allowed() {
    let err = parse(&[
        ("stable-window", "1s"),
        ("enable-scale-to-zero", "maybe"),
        ("max-scale-up-rate", "fast"),
    ])
    .expect_err("refused");
    assert_eq!(err.problems.len(), 3);
    let text = err.to_string();
    assert!(text.starts_with("config-autoscaler refused:"), "{text}");
    assert!(text.contains("stable-window: \"1s\" is not allowed; expected a duration from 6s to 1h in whole seconds"), "{text}");
    assert!(text.contains("enable-scale-to-zero: \"maybe\""), "{text}");
    assert!(text.contains("max-scale-up-rate: \"fast\""), "{text}");
}

#[test]
fn unknown_keys_are_reported_for_warnings() {
    let d = data(&[
        ("stable-windw", "60s"),
        ("_example", "x"),
        ("max-scale", "3"),
    ]);
    assert_eq!(AutoscalerConfig::unknown_keys(&d), ["stable-windw"]);
}
