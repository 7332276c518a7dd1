//! Knative's target-resolution and annotation-validation cases (reference §5.9 M1–M8,
//! §5.11 V10–V15), plus Sluice's refusals of what it does not run.

use super::*;

fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (format!("{ANNOTATION_PREFIX}{k}"), (*v).to_owned()))
        .collect()
}

fn resolve(pairs: &[(&str, &str)], cc: u32) -> RevisionScaling {
    RevisionScaling::resolve(&AutoscalerConfig::default(), &ann(pairs), cc).expect("valid")
}

fn refused_with(cfg: &AutoscalerConfig, pairs: &[(&str, &str)]) -> Vec<String> {
    RevisionScaling::resolve(cfg, &ann(pairs), 0)
        .expect_err("refused")
        .problems
        .into_iter()
        .map(|p| p.key.trim_start_matches(ANNOTATION_PREFIX).to_owned())
        .collect()
}

fn refused(pairs: &[(&str, &str)]) -> Vec<String> {
    refused_with(&AutoscalerConfig::default(), pairs)
}

fn target_total(s: &RevisionScaling) -> (f64, f64) {
    ((s.target * 1e9).round() / 1e9, s.total)
}

#[test]
fn m1_stock_config() {
    let s = resolve(&[], 0);
    assert_eq!((s.class, s.metric), (Class::Kpa, Metric::Concurrency));
    assert_eq!(target_total(&s), (70.0, 100.0));
}

#[test]
fn m2_container_concurrency_is_the_total() {
    let cfg = AutoscalerConfig {
        container_concurrency_target_fraction: 0.8,
        ..AutoscalerConfig::default()
    };
    let r =
        |cc| target_total(&RevisionScaling::resolve(&cfg, &BTreeMap::new(), cc).expect("valid"));
    assert_eq!(r(10), (8.0, 10.0));
    assert_eq!(r(1), (0.8, 1.0));
}

#[test]
fn m4_target_floored_at_the_minimum() {
    let cfg = AutoscalerConfig {
        container_concurrency_target_fraction: 0.001,
        ..AutoscalerConfig::default()
    };
    let s = RevisionScaling::resolve(&cfg, &ann(&[("target", "1")]), 0).expect("valid");
    assert_eq!(target_total(&s), (0.01, 1.0));
}

#[test]
fn m6_target_annotation_capped_by_container_concurrency() {
    let s = resolve(
        &[("target", "1"), ("target-utilization-percentage", "100")],
        10,
    );
    assert_eq!(target_total(&s), (1.0, 1.0));
    let capped = resolve(&[("target", "50")], 10);
    assert_eq!(target_total(&capped), (7.0, 10.0), "min(annotation, CC)");
}

#[test]
fn m7_rps() {
    let r = |pairs: &[(&str, &str)]| {
        let mut all = vec![("metric", "rps")];
        all.extend_from_slice(pairs);
        target_total(&resolve(&all, 10))
    };
    assert_eq!(r(&[]), (140.0, 200.0));
    assert_eq!(r(&[("target", "300")]), (210.0, 300.0), "not capped by CC");
    assert_eq!(
        r(&[("target-utilization-percentage", "75")]),
        (150.0, 200.0)
    );
    assert_eq!(r(&[("target", "1")]), (0.7, 1.0));
}

#[test]
fn m8_panic_window() {
    assert_eq!(resolve(&[], 0).panic_window, Duration::from_secs(6));
    assert_eq!(
        resolve(&[("window", "10s")], 0).panic_window,
        Duration::from_secs(1),
        "minimum 1 s"
    );
    assert_eq!(
        resolve(&[("panic-window-percentage", "51")], 0).panic_window,
        Duration::from_secs(31),
        "30.6 rounds"
    );
    assert_eq!(
        resolve(&[("window", "10m")], 0).panic_window,
        Duration::from_secs(60)
    );
}

#[test]
fn seed_scenarios_targets() {
    // autoscale-go with target 10 at the default 70 %: 7 per pod, so 50 concurrent → 8 pods.
    let s = resolve(&[("target", "10")], 0);
    assert_eq!(target_total(&s), (7.0, 10.0));
    assert_eq!((50.0_f64 / s.target).ceil(), 8.0);
    // With 100 % utilization, the 5 pods of Knative's documentation.
    let s = resolve(
        &[("target", "10"), ("target-utilization-percentage", "100")],
        0,
    );
    assert_eq!((50.0_f64 / s.target).ceil(), 5.0);
    // containerConcurrency 10 at 70 %, 100 concurrent → 15 pods.
    let s = resolve(&[], 10);
    assert_eq!((100.0_f64 / s.target).ceil(), 15.0);
}

#[test]
fn v10_window() {
    for bad in ["1s", "365h", "1m9s82ms"] {
        assert_eq!(refused(&[("window", bad)]), ["window"], "{bad}");
    }
    assert_eq!(
        resolve(&[("window", "7s")], 0).stable_window,
        Duration::from_secs(7)
    );
}

#[test]
fn v11_panic_percentages() {
    assert_eq!(
        refused(&[("panic-threshold-percentage", "109")]),
        ["panic-threshold-percentage"]
    );
    assert_eq!(
        refused(&[("panic-threshold-percentage", "10009")]),
        ["panic-threshold-percentage"]
    );
    assert_eq!(
        resolve(&[("panic-threshold-percentage", "210")], 0).panic_threshold,
        2.1
    );
    assert_eq!(
        refused(&[("panic-window-percentage", "-1")]),
        ["panic-window-percentage"]
    );
    assert_eq!(
        refused(&[("panic-window-percentage", "202")]),
        ["panic-window-percentage"]
    );
}

#[test]
fn v12_target_and_utilization() {
    assert_eq!(refused(&[("target", "0")]), ["target"]);
    assert_eq!(refused(&[("target", "-11")]), ["target"]);
    assert_eq!(resolve(&[("target", "11")], 0).total, 11.0);
    assert_eq!(
        refused(&[("target-utilization-percentage", "0")]),
        ["target-utilization-percentage"]
    );
    assert_eq!(
        refused(&[("target-utilization-percentage", "101")]),
        ["target-utilization-percentage"]
    );
}

#[test]
fn v14_max_scale_limit() {
    let cfg = AutoscalerConfig {
        max_scale_limit: 10,
        max_scale: 5,
        ..AutoscalerConfig::default()
    };
    assert_eq!(refused_with(&cfg, &[("max-scale", "11")]), ["max-scale"]);
    assert_eq!(
        refused_with(&cfg, &[("max-scale", "0")]),
        ["max-scale"],
        "unlimited is not allowed"
    );
    assert_eq!(
        RevisionScaling::resolve(&cfg, &ann(&[("max-scale", "9")]), 0)
            .expect("valid")
            .max_scale,
        9
    );
}

#[test]
fn v15_classes_and_metrics_sluice_runs() {
    assert_eq!(refused(&[("class", "unsupported.knative.dev")]), ["class"]);
    assert_eq!(
        resolve(&[("class", "mpa.autoscaling.knative.dev")], 0).class,
        Class::Mpa
    );
    let hpa = RevisionScaling::resolve(
        &AutoscalerConfig::default(),
        &ann(&[("class", "hpa.autoscaling.knative.dev")]),
        0,
    )
    .expect_err("no HPA here")
    .to_string();
    assert!(hpa.contains("HorizontalPodAutoscaler"), "{hpa}");
    let cpu = RevisionScaling::resolve(&AutoscalerConfig::default(), &ann(&[("metric", "cpu")]), 0)
        .expect_err("cpu needs an HPA")
        .to_string();
    assert!(
        cpu.contains("autoscaling.knative.dev/metric: \"cpu\"") && cpu.contains("needs an HPA"),
        "{cpu}"
    );
    let cfg = AutoscalerConfig {
        pod_autoscaler_class: HPA_CLASS.into(),
        ..AutoscalerConfig::default()
    };
    assert_eq!(
        refused_with(&cfg, &[]),
        ["pod-autoscaler-class"],
        "a default class Sluice cannot run"
    );
}

#[test]
fn bounds_and_activation_scale() {
    let s = resolve(
        &[
            ("min-scale", "1"),
            ("max-scale", "3"),
            ("initial-scale", "2"),
            ("activation-scale", "2"),
        ],
        0,
    );
    assert_eq!(
        (
            s.min_scale,
            s.max_scale,
            s.initial_scale,
            s.activation_scale
        ),
        (1, 3, 2, 2)
    );
    assert_eq!(
        refused(&[("min-scale", "4"), ("max-scale", "3")]),
        ["max-scale"]
    );
    assert_eq!(
        refused(&[("min-scale", "3"), ("activation-scale", "2")]),
        ["activation-scale"]
    );
    assert_eq!(
        refused(&[("max-scale", "3"), ("activation-scale", "4")]),
        ["activation-scale"]
    );
    assert_eq!(refused(&[("activation-scale", "1")]), ["activation-scale"]);
    assert_eq!(refused(&[("initial-scale", "0")]), ["initial-scale"]);
    let zero_ok = AutoscalerConfig {
        allow_zero_initial_scale: true,
        ..AutoscalerConfig::default()
    };
    let s =
        RevisionScaling::resolve(&zero_ok, &ann(&[("initial-scale", "0")]), 0).expect("allowed");
    assert_eq!(s.initial_scale, 0);
}

#[test]
fn legacy_aliases_and_kebab_case_wins() {
    assert_eq!(resolve(&[("minScale", "2")], 0).min_scale, 2);
    assert_eq!(
        resolve(&[("minScale", "2"), ("min-scale", "3")], 0).min_scale,
        3
    );
    assert_eq!(
        resolve(&[("min-scale", "3"), ("minScale", "2")], 0).min_scale,
        3
    );
    assert_eq!(refused(&[("maxScale", "x")]), ["max-scale"]);
}

#[test]
fn every_problem_at_once_and_the_rest_untouched() {
    let err = RevisionScaling::resolve(
        &AutoscalerConfig::default(),
        &ann(&[("window", "1s"), ("target", "0"), ("metric", "memory")]),
        0,
    )
    .expect_err("refused");
    assert_eq!(err.problems.len(), 3, "{err}");
    assert!(err.to_string().starts_with("revision annotations refused:"));
    assert_eq!(
        refused(&[("metric-aggregation-algorithm", "exponential")]),
        ["metric-aggregation-algorithm"]
    );
}

#[test]
fn aggregation_algorithms() {
    for (value, expected) in [
        ("linear", Aggregation::Linear),
        ("weighted-exponential", Aggregation::WeightedExponential),
        ("weightedExponential", Aggregation::WeightedExponential),
    ] {
        let s = resolve(&[("metric-aggregation-algorithm", value)], 0);
        assert_eq!(s.aggregation, expected, "{value}");
    }
    assert_eq!(resolve(&[], 0).aggregation, Aggregation::Linear);
}
