//! The part of the API server's validation that Sluice's writes can run into: what a
//! real cluster answers 422 `Invalid` for in a pod template, so that a test sees the
//! refusal a real cluster would give. Only these checks: the double stores anything else
//! as sent.

use serde_json::Value;

/// Why `obj` (a Deployment's pod template, or a Pod) is invalid, in the API server's
/// words, or `None`.
pub(super) fn invalid(kind: &str, obj: &Value) -> Option<String> {
    let (spec, at) = match kind {
        "Deployment" => (&obj["spec"]["template"]["spec"], "spec.template.spec"),
        "Pod" => (&obj["spec"], "spec"),
        _ => return None,
    };
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let group = if kind == "Deployment" { ".apps" } else { "" };
    let errors = pod_spec(spec, at);
    (!errors.is_empty())
        .then(|| format!("{kind}{group} {name:?} is invalid: {}", errors.join(", ")))
}

fn pod_spec(spec: &Value, at: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let volumes: Vec<&str> = items(&spec["volumes"])
        .filter_map(|v| v["name"].as_str())
        .collect();
    let mut names = Vec::new();
    for (list, field) in [
        (&spec["initContainers"], "initContainers"),
        (&spec["containers"], "containers"),
    ] {
        for (i, c) in items(list).enumerate() {
            let at = format!("{at}.{field}[{i}]");
            let name = c["name"].as_str().unwrap_or_default();
            if names.contains(&name) {
                errors.push(format!("{at}.name: Duplicate value: {name:?}"));
            }
            names.push(name);
            for (j, m) in items(&c["volumeMounts"]).enumerate() {
                let mount = m["name"].as_str().unwrap_or_default();
                if !volumes.contains(&mount) {
                    errors.push(format!("{at}.volumeMounts[{j}].name: Not found: {mount:?}"));
                }
            }
            for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
                for action in ["httpGet", "tcpSocket", "grpc"] {
                    let port = &c[probe][action]["port"];
                    if let Some(n) = port.as_i64()
                        && !(1..=65535).contains(&n)
                    {
                        errors.push(format!(
                            "{at}.{probe}.{action}.port: Invalid value: {n}: must be between 1 \
                             and 65535, inclusive"
                        ));
                    }
                }
            }
        }
    }
    errors
}

fn items(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten()
}
