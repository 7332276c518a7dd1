//! Property tests of `config-autoscaler` and the `autoscaling.knative.dev/*` annotations:
//! no value may panic, and every refusal names the key it refused.

use std::collections::BTreeMap;

use proptest::prelude::*;
use sluice_autoscaler::config::{AutoscalerConfig, KEYS};
use sluice_autoscaler::revision::RevisionScaling;

const CONFIG_KEYS: &[&str] = &KEYS;

const ANNOTATION_KEYS: &[&str] = &[
    "class",
    "metric",
    "target",
    "target-utilization-percentage",
    "target-burst-capacity",
    "min-scale",
    "max-scale",
    "initial-scale",
    "activation-scale",
    "window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "scale-down-delay",
    "scale-to-zero-pod-retention-period",
    "metric-aggregation-algorithm",
];

/// Rules that read two keys, as Knative's: a refusal may name the other key of the pair
/// (e.g. `max-scale-limit: "1"` alone refuses the default `max-scale: "0"`).
const PAIRS: &[(&str, &str)] = &[
    ("max-scale", "max-scale-limit"),
    ("initial-scale", "allow-zero-initial-scale"),
    (
        "container-concurrency-target-percentage",
        "container-concurrency-target-default",
    ),
];

fn given_or_paired(key: &str, given: &BTreeMap<String, String>) -> bool {
    given.contains_key(key)
        || PAIRS.iter().any(|&(a, b)| {
            (a == key && given.contains_key(b)) || (b == key && given.contains_key(a))
        })
}

/// Values a user might write, right or wrong.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{1,12}(\\.[0-9]{1,4})?",
        "-?[0-9]{1,5}(ms|s|m|h)",
        "(true|false|True|yes|on|)",
        "\\PC{0,16}",
        Just("kpa.autoscaling.knative.dev".to_owned()),
        Just("concurrency".to_owned()),
        Just("rps".to_owned()),
    ]
}

proptest! {
    #[test]
    fn config_values_never_panic_and_refusals_name_their_keys(
        entries in prop::collection::btree_map(prop::sample::select(CONFIG_KEYS), value(), 1..6)
    ) {
        let data: BTreeMap<String, String> =
            entries.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
        if let Err(e) = AutoscalerConfig::from_data(&data) {
            prop_assert!(!e.problems.is_empty());
            for p in &e.problems {
                prop_assert!(given_or_paired(&p.key, &data), "{} names no given key: {e}", p.key);
            }
        }
    }

    #[test]
    fn annotations_never_panic_and_refusals_name_their_keys(
        entries in prop::collection::btree_map(prop::sample::select(ANNOTATION_KEYS), value(), 1..6),
        cc in 0u32..2000,
    ) {
        let annotations: BTreeMap<String, String> = entries
            .iter()
            .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), v.clone()))
            .collect();
        let cfg = AutoscalerConfig::default();
        if let Err(e) = RevisionScaling::resolve(&cfg, &annotations, cc) {
            prop_assert!(!e.problems.is_empty());
            for p in &e.problems {
                prop_assert!(
                    annotations.keys().any(|k| k.ends_with(p.key.trim_start_matches("autoscaling.knative.dev/"))),
                    "{} names no given annotation: {e}", p.key
                );
            }
        }
    }
}
