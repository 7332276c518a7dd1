//! Whether an object the API server holds is still as Sluice made it: every field Sluice
//! sets has the value it set. Fields the API server adds (defaults: `protocol: TCP`,
//! `terminationMessagePath`, a probe's thresholds) are not Sluice's and do not count, nor
//! do empty lists and maps it drops; quantities compare by value (`0.5` is `500m`, as the
//! API server rewrites it). A field changed or removed by hand, a container or an env var
//! added or taken away, does count.

use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};
use serde_json::Value;

/// `actual` holds every field of `want` with `want`'s value.
pub fn covers(actual: &Value, want: &Value) -> bool {
    match (actual, want) {
        (_, Value::Null) => true,
        (Value::Object(a), Value::Object(w)) => w.iter().all(|(k, wv)| match a.get(k) {
            Some(av) => covers(av, wv),
            None => empty(wv),
        }),
        (Value::Array(a), Value::Array(w)) => {
            a.len() == w.len() && a.iter().zip(w).all(|(av, wv)| covers(av, wv))
        }
        (Value::String(a), Value::String(w)) => {
            a == w || matches!((quantity(a), quantity(w)), (Some(x), Some(y)) if same(x, y))
        }
        (Value::Null, w) => empty(w),
        (a, w) => a == w,
    }
}

/// A private Service's spec still routes as Sluice made it: the same selector (a key
/// added by hand would select no pod, one removed other pods), and its ports as made.
/// What the API server fills in (`clusterIP`, `type`, `sessionAffinity`) does not count.
pub fn service_covers(actual: &ServiceSpec, want: &ServiceSpec) -> bool {
    let json = |v: &Option<Vec<ServicePort>>| serde_json::to_value(v).unwrap_or_default();
    actual.selector == want.selector && covers(&json(&actual.ports), &json(&want.ports))
}

/// What the API server may leave out when it is given: an empty list or map, or null.
fn empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.values().all(empty),
        _ => false,
    }
}

fn same(x: f64, y: f64) -> bool {
    (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0)
}

/// A Kubernetes quantity's value (`500m`, `1.5Gi`, `2e3`, `128974848`); `None` for
/// anything else.
fn quantity(s: &str) -> Option<f64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1_048_576.0),
        ("Gi", 1_073_741_824.0),
        ("Ti", 1_099_511_627_776.0),
        ("Pi", 1_125_899_906_842_624.0),
        ("Ei", 1_152_921_504_606_846_976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let s = s.trim();
    let (number, scale) = SUFFIXES
        .iter()
        .find_map(|(suffix, scale)| s.strip_suffix(suffix).map(|n| (n, *scale)))
        .or_else(|| s.strip_suffix('P').map(|n| (n, 1e15)))
        .or_else(|| s.strip_suffix('E').map(|n| (n, 1e18)))
        .unwrap_or((s, 1.0));
    let plain = number
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '.' | '+' | '-' | 'e' | 'E'));
    // Rust's float syntax beyond these characters (`inf`, `NaN`) is no quantity.
    if !plain {
        return None;
    }
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn what_the_api_server_adds_does_not_count() {
        let want = json!({"containers": [{
            "name": "user-container", "image": "app:1",
            "ports": [{"containerPort": 8080}],
            "env": [{"name": "A", "value": "1"}],
            "volumeMounts": [],
            "resources": {"requests": {"cpu": "0.5", "memory": "129e6"}}
        }]});
        let stored = json!({"containers": [{
            "name": "user-container", "image": "app:1",
            "imagePullPolicy": "IfNotPresent",
            "terminationMessagePath": "/dev/termination-log",
            "ports": [{"containerPort": 8080, "protocol": "TCP"}],
            "env": [{"name": "A", "value": "1"}],
            "resources": {"requests": {"cpu": "500m", "memory": "129M"}}
        }], "dnsPolicy": "ClusterFirst"});
        assert!(covers(&stored, &want));
    }

    #[test]
    fn a_hand_edit_counts() {
        let want = json!({"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "queue-proxy", "image": "qp:1"}
        ]});
        for (edit, what) in [
            (
                json!({"containers": [
                    {"name": "app", "image": "app:2", "env": [{"name": "A", "value": "1"}]},
                    {"name": "queue-proxy", "image": "qp:1"}
                ]}),
                "an image",
            ),
            (
                json!({"containers": [
                    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]},
                    {"name": "queue-proxy", "image": "qp:1"}
                ]}),
                "an env var added",
            ),
            (
                json!({"containers": [
                    {"name": "app", "image": "app:1"},
                    {"name": "queue-proxy", "image": "qp:1"}
                ]}),
                "the env taken away",
            ),
            (
                json!({"containers": [
                    {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]}
                ]}),
                "the sidecar removed",
            ),
        ] {
            assert!(!covers(&edit, &want), "{what}");
        }
    }

    #[test]
    fn quantities_compare_by_value_and_other_strings_do_not() {
        for (a, b) in [
            ("500m", "0.5"),
            ("1Gi", "1073741824"),
            ("1k", "1000"),
            ("2e3", "2k"),
        ] {
            assert!(covers(&json!(a), &json!(b)), "{a} = {b}");
        }
        for (a, b) in [
            ("500m", "0.6"),
            ("1Gi", "1G"),
            ("app:1", "app:2"),
            ("Mi", "Ki"),
        ] {
            assert!(!covers(&json!(a), &json!(b)), "{a} ≠ {b}");
        }
    }

    #[test]
    fn a_private_service_routes_as_made_until_its_selector_or_ports_change() {
        let want: ServiceSpec = serde_json::from_value(json!({
            "selector": {"serving.knative.dev/revision": "hello-00001"},
            "ports": [{"name": "http", "port": 80, "targetPort": 8012, "protocol": "TCP"}]
        }))
        .expect("spec");
        let stored = |selector: Value, target: i32| -> ServiceSpec {
            serde_json::from_value(json!({
                "selector": selector,
                "ports": [{"name": "http", "port": 80, "targetPort": target, "protocol": "TCP"}],
                "clusterIP": "10.96.0.12", "type": "ClusterIP", "sessionAffinity": "None"
            }))
            .expect("spec")
        };
        let made = json!({"serving.knative.dev/revision": "hello-00001"});
        assert!(service_covers(&stored(made.clone(), 8012), &want));
        assert!(!service_covers(&stored(made, 8080), &want), "a target port");
        let added = json!({"serving.knative.dev/revision": "hello-00001", "x": "y"});
        assert!(!service_covers(&stored(added, 8012), &want), "a key added");
        assert!(
            !service_covers(&stored(json!({}), 8012), &want),
            "the selector gone"
        );
    }
}
