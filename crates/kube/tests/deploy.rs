//! `deploy/` checked offline against Kubernetes' OpenAPI types (k8s-openapi's, generated
//! from the API server's schema): every document parses as its kind, and says nothing the
//! schema does not know (a misspelt or misplaced field would be dropped by the typed
//! parse, so the round trip differs). Then what a platform team expects of an install:
//! the restricted security profile, probes, resource requests, disruption budgets, and
//! RBAC without wildcards.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Deserialize;
use serde_json::Value;

fn documents(file: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// Parses `doc` as `K` and back: the same JSON, or the schema does not know a field.
fn round_trip<K: serde::de::DeserializeOwned + serde::Serialize>(doc: &Value) -> K {
    let typed: K = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", doc["kind"], doc["metadata"]["name"]));
    let back = serde_json::to_value(&typed).expect("serialises");
    let mut differences = Vec::new();
    diff(doc, &back, "", &mut differences);
    assert!(
        differences.is_empty(),
        "{} {}: fields the schema does not know (dropped by the typed parse): {differences:?}",
        doc["kind"],
        doc["metadata"]["name"]
    );
    typed
}

/// The paths at which `written` and `parsed` differ (numbers compared by value: the
/// schema's `minimum: 0` comes back as 0.0).
fn diff(written: &Value, parsed: &Value, path: &str, out: &mut Vec<String>) {
    match (written, parsed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => diff(v, w, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}")),
                }
            }
            out.extend(
                b.keys()
                    .filter(|k| !a.contains_key(*k))
                    .map(|k| format!("{path}.{k} (added)")),
            );
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (v, w)) in a.iter().zip(b).enumerate() {
                diff(v, w, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) if a == b => {}
        _ => out.push(path.to_owned()),
    }
}

#[test]
fn every_document_is_a_valid_object_of_its_kind() {
    let mut kinds = BTreeMap::new();
    for file in ["sluice.yaml", "serving-crd.yaml"] {
        for doc in documents(file) {
            let kind = doc["kind"].as_str().expect("kind").to_owned();
            match kind.as_str() {
                "Namespace" => drop(round_trip::<Namespace>(&doc)),
                "ConfigMap" => drop(round_trip::<ConfigMap>(&doc)),
                "ServiceAccount" => drop(round_trip::<ServiceAccount>(&doc)),
                "ClusterRole" => drop(round_trip::<ClusterRole>(&doc)),
                "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(&doc)),
                "Role" => drop(round_trip::<Role>(&doc)),
                "RoleBinding" => drop(round_trip::<RoleBinding>(&doc)),
                "Deployment" => drop(round_trip::<Deployment>(&doc)),
                "Service" => drop(round_trip::<Service>(&doc)),
                "PodDisruptionBudget" => drop(round_trip::<PodDisruptionBudget>(&doc)),
                "CustomResourceDefinition" => drop(round_trip::<CustomResourceDefinition>(&doc)),
                other => panic!("{file}: a {other} is not checked here"),
            }
            *kinds.entry(kind).or_insert(0) += 1;
        }
    }
    assert_eq!(
        kinds["Deployment"], 4,
        "control, autoscaler, activator, gateway"
    );
    assert_eq!(
        kinds["CustomResourceDefinition"], 4,
        "services, revisions, configurations, routes"
    );
}

#[test]
fn a_misspelt_field_is_caught() {
    let mut doc = documents("sluice.yaml")
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("a deployment");
    doc["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] =
        doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].clone();
    let caught = std::panic::catch_unwind(|| drop(round_trip::<Deployment>(&doc)));
    assert!(caught.is_err(), "readinesProbe must not pass");
}

#[test]
fn every_component_runs_restricted_with_probes_requests_and_budgets() {
    let docs = documents("sluice.yaml");
    let budgets: Vec<PodDisruptionBudget> = docs
        .iter()
        .filter(|d| d["kind"] == "PodDisruptionBudget")
        .map(round_trip)
        .collect();
    for doc in docs.iter().filter(|d| d["kind"] == "Deployment") {
        let d: Deployment = round_trip(doc);
        let name = d.metadata.name.clone().expect("name");
        assert_eq!(d.metadata.namespace.as_deref(), Some("sluice-system"));
        let spec = d.spec.expect("spec");
        let pod = spec.template.spec.expect("pod spec");
        let pod_sc = pod.security_context.expect("pod security context");
        assert_eq!(pod_sc.run_as_non_root, Some(true), "{name}");
        assert!(
            pod_sc.run_as_user.is_some_and(|u| u > 0),
            "{name}: a numeric non-root user"
        );
        for c in &pod.containers {
            let sc = c
                .security_context
                .as_ref()
                .expect("container security context");
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{name}");
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{name}");
            assert_eq!(sc.run_as_non_root, Some(true), "{name}");
            assert_eq!(
                sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
                Some(vec!["ALL".to_owned()]),
                "{name}"
            );
            assert_eq!(
                sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
                Some("RuntimeDefault"),
                "{name}"
            );
            assert!(c.readiness_probe.is_some(), "{name}: a readiness probe");
            let requests = c
                .resources
                .as_ref()
                .and_then(|r| r.requests.clone())
                .unwrap_or_default();
            assert!(
                requests.contains_key("cpu") && requests.contains_key("memory"),
                "{name}: requests"
            );
        }
        let replicas = spec.replicas.unwrap_or(1);
        let labels = spec.selector.match_labels.clone().unwrap_or_default();
        let budgeted = budgets.iter().any(|b| {
            b.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.match_labels.clone())
                == Some(labels.clone())
        });
        assert_eq!(
            budgeted,
            replicas > 1,
            "{name}: a PodDisruptionBudget when replicated"
        );
        assert!(replicas >= 2, "{name}: at least 2 replicas");
        let api_access = pod.automount_service_account_token != Some(false);
        assert_eq!(
            api_access,
            name == "control" || name == "autoscaler",
            "{name}: only the control plane and the autoscaler (its Lease) reach the API"
        );
    }
}

#[test]
fn rbac_names_every_verb_and_resource() {
    for doc in documents("sluice.yaml") {
        let rules = match doc["kind"].as_str() {
            Some("ClusterRole") => round_trip::<ClusterRole>(&doc).rules.unwrap_or_default(),
            Some("Role") => round_trip::<Role>(&doc).rules.unwrap_or_default(),
            _ => continue,
        };
        for r in rules {
            let all = r
                .verbs
                .iter()
                .chain(r.resources.iter().flatten())
                .chain(r.api_groups.iter().flatten());
            assert!(
                all.clone().all(|s| s != "*"),
                "{}: no wildcards: {r:?}",
                doc["metadata"]["name"]
            );
        }
    }
}

/// The printer columns of the CRD's first version, by name.
fn columns(crd: &CustomResourceDefinition) -> Vec<&str> {
    crd.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect()
}

#[test]
fn the_crd_shows_knatives_columns() {
    let crd: CustomResourceDefinition = round_trip(&documents("serving-crd.yaml")[0]);
    assert_eq!(crd.spec.group, "serving.knative.dev");
    assert_eq!(
        crd.spec.names.short_names,
        Some(vec!["kservice".into(), "ksvc".into()])
    );
    let v1 = &crd.spec.versions[0];
    assert!(
        v1.subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    assert_eq!(
        columns(&crd),
        ["URL", "LatestCreated", "LatestReady", "Ready", "Reason"]
    );
}

#[test]
fn the_revision_crd_shows_knatives_columns_and_the_control_plane_may_write_revisions() {
    let crd: CustomResourceDefinition = round_trip(&documents("serving-crd.yaml")[1]);
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("revisions.serving.knative.dev")
    );
    assert_eq!(crd.spec.names.short_names, Some(vec!["rev".into()]));
    assert_eq!(
        columns(&crd),
        [
            "Config Name",
            "Generation",
            "Ready",
            "Reason",
            "Actual Replicas",
            "Desired Replicas"
        ]
    );
    let verbs: Vec<String> = documents("sluice.yaml")
        .iter()
        .filter(|d| d["kind"] == "ClusterRole")
        .flat_map(|d| round_trip::<ClusterRole>(d).rules.unwrap_or_default())
        .filter(|r| r.resources.iter().flatten().any(|x| x == "revisions"))
        .flat_map(|r| r.verbs)
        .collect();
    for verb in ["list", "create", "delete"] {
        assert!(
            verbs.iter().any(|v| v == verb),
            "revisions {verb}: {verbs:?}"
        );
    }
}

/// The verbs `sluice-control`'s ClusterRole grants on `resource` of API group `group`.
fn control_verbs(group: &str, resource: &str) -> Vec<String> {
    documents("sluice.yaml")
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "sluice-control")
        .flat_map(|d| round_trip::<ClusterRole>(d).rules.unwrap_or_default())
        .filter(|r| {
            r.api_groups.iter().flatten().any(|g| g == group)
                && r.resources.iter().flatten().any(|x| x == resource)
        })
        .flat_map(|r| r.verbs)
        .collect()
}

#[test]
fn the_control_plane_may_read_pods_and_create_events_and_nothing_more_of_them() {
    assert_eq!(control_verbs("", "pods"), ["list", "watch"]);
    assert_eq!(control_verbs("events.k8s.io", "events"), ["create"]);
}

/// The port a `--flag=0.0.0.0:PORT` argument names.
fn flag_port(args: &[String], flag: &str) -> Option<i32> {
    args.iter()
        .find_map(|a| a.strip_prefix(&format!("{flag}=")))
        .and_then(|v| v.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
}

#[test]
fn elected_components_are_ready_as_standbys_and_their_services_reach_the_leader_alone() {
    let docs = documents("sluice.yaml");
    for (name, account) in [
        ("control", "sluice-control"),
        ("autoscaler", "sluice-autoscaler"),
    ] {
        let doc = docs
            .iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == name)
            .expect("the Deployment");
        let d: Deployment = round_trip(doc);
        let pod = d.spec.expect("spec").template.spec.expect("pod spec");
        let c = &pod.containers[0];
        let args = c.args.clone().unwrap_or_default();
        assert!(
            args.contains(&format!("--leader-service={name}")),
            "{name}: {args:?}"
        );
        // Readiness from the health port, which standbys serve too.
        let health = flag_port(&args, "--health-listen").expect("--health-listen");
        let ports = c.ports.clone().unwrap_or_default();
        let port = |n: &str| {
            ports
                .iter()
                .find(|p| p.name.as_deref() == Some(n))
                .map(|p| p.container_port)
        };
        assert_eq!(port("health"), Some(health), "{name}");
        let probe = c
            .readiness_probe
            .as_ref()
            .and_then(|p| p.http_get.clone())
            .expect("an HTTP readiness probe");
        assert_eq!(probe.path.as_deref(), Some("/readyz"), "{name}");
        assert_eq!(
            serde_json::to_value(&probe.port).expect("port"),
            serde_json::json!("health"),
            "{name}"
        );
        // The leader's address, from the downward API.
        let pod_ip = c
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "POD_IP")
            .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
            .map(|f| f.field_path.clone());
        assert_eq!(pod_ip.as_deref(), Some("status.podIP"), "{name}");
        // No selector: the slice the leader writes is the Service's only endpoint, on the
        // ports it listens on.
        let svc: Service = round_trip(
            docs.iter()
                .find(|d| d["kind"] == "Service" && d["metadata"]["name"] == name)
                .expect("the Service"),
        );
        let spec = svc.spec.expect("spec");
        assert_eq!(
            spec.selector, None,
            "{name}: a selector would reach standbys"
        );
        let grpc = flag_port(&args, "--listen").expect("--listen");
        let target =
            serde_json::to_value(&spec.ports.unwrap_or_default()[0].target_port).expect("json");
        assert_eq!(
            target,
            serde_json::json!(grpc),
            "{name}: a number (a slice has no port names to resolve)"
        );
        // One replica may go at a time (a drain, a rolling update).
        let budget: PodDisruptionBudget = round_trip(
            docs.iter()
                .find(|d| d["kind"] == "PodDisruptionBudget" && d["metadata"]["name"] == name)
                .expect("the budget"),
        );
        let b = budget.spec.expect("spec");
        assert_eq!(
            (
                b.min_available,
                b.max_unavailable
                    .map(|v| serde_json::to_value(v).expect("json"))
            ),
            (None, Some(serde_json::json!(1))),
            "{name}"
        );
        // Its account may write EndpointSlices in sluice-system, and no more of them.
        let verbs: Vec<String> = docs
            .iter()
            .filter(|d| d["kind"] == "RoleBinding" && d["subjects"][0]["name"] == account)
            .filter_map(|b| {
                docs.iter().find(|r| {
                    r["kind"] == "Role"
                        && r["metadata"]["name"] == b["roleRef"]["name"]
                        && r["metadata"]["namespace"] == "sluice-system"
                })
            })
            .flat_map(|r| round_trip::<Role>(r).rules.unwrap_or_default())
            .filter(|r| r.resources.iter().flatten().any(|x| x == "endpointslices"))
            .flat_map(|r| r.verbs)
            .collect();
        assert_eq!(verbs, ["get", "create", "update"], "{name}");
    }
}

#[test]
fn the_gateway_is_ready_by_its_own_answer_and_drains_on_sigterm() {
    let docs = documents("sluice.yaml");
    let d: Deployment = round_trip(
        docs.iter()
            .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "gateway")
            .expect("the gateway"),
    );
    let pod = d.spec.expect("spec").template.spec.expect("pod spec");
    let c = &pod.containers[0];
    // The kubelet's probe reaches the gateway's own answer: 503 until its routes have
    // arrived and once it drains (a TCP probe would pass at once).
    let probe = c
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.clone())
        .expect("an HTTP readiness probe");
    assert_eq!(
        serde_json::to_value(&probe.port).expect("port"),
        serde_json::json!("http")
    );
    let args = c.args.clone().unwrap_or_default();
    let quiet = args
        .iter()
        .find_map(|a| a.strip_prefix("--drain-quiet-period="))
        .expect("--drain-quiet-period");
    let grace = pod.termination_grace_period_seconds.unwrap_or(30);
    let quiet: i64 = quiet.trim_end_matches('s').parse().expect("seconds");
    assert!(
        quiet > 0 && quiet < grace,
        "{quiet} s of quiet within {grace} s of grace"
    );
}

#[test]
fn the_configuration_and_route_crds_show_knatives_columns_and_the_control_plane_may_write_them() {
    let docs = documents("serving-crd.yaml");
    let crd = |name: &str| -> CustomResourceDefinition {
        docs.iter()
            .map(round_trip::<CustomResourceDefinition>)
            .find(|c| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{name} in serving-crd.yaml"))
    };
    let configurations = crd("configurations.serving.knative.dev");
    assert_eq!(
        configurations.spec.names.short_names,
        Some(vec!["config".into(), "cfg".into()])
    );
    assert_eq!(
        columns(&configurations),
        ["LatestCreated", "LatestReady", "Ready", "Reason"]
    );
    let routes = crd("routes.serving.knative.dev");
    assert_eq!(routes.spec.names.short_names, Some(vec!["rt".into()]));
    assert_eq!(columns(&routes), ["URL", "Ready", "Reason"]);
    for c in [&configurations, &routes] {
        assert!(
            c.spec.versions[0]
                .subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{:?} has a status subresource",
            c.metadata.name
        );
    }
    let rules: Vec<_> = documents("sluice.yaml")
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "sluice-control")
        .flat_map(|d| round_trip::<ClusterRole>(d).rules.unwrap_or_default())
        .collect();
    let verbs = |resource: &str| -> Vec<String> {
        rules
            .iter()
            .filter(|r| r.resources.iter().flatten().any(|x| x == resource))
            .flat_map(|r| r.verbs.clone())
            .collect()
    };
    for resource in ["configurations", "routes"] {
        // list and watch: the Service controller's caches of them.
        for verb in ["get", "list", "watch", "create", "update"] {
            assert!(
                verbs(resource).iter().any(|v| v == verb),
                "{resource} {verb}"
            );
        }
        assert!(
            verbs(&format!("{resource}/status"))
                .iter()
                .any(|v| v == "patch"),
            "{resource}/status patch"
        );
    }
}

#[test]
fn the_control_plane_may_put_a_deployment_back() {
    let verbs: Vec<String> = documents("sluice.yaml")
        .iter()
        .filter(|d| d["kind"] == "ClusterRole" && d["metadata"]["name"] == "sluice-control")
        .flat_map(|d| round_trip::<ClusterRole>(d).rules.unwrap_or_default())
        .filter(|r| {
            r.api_groups.iter().flatten().any(|g| g == "apps")
                && r.resources.iter().flatten().any(|x| x == "deployments")
        })
        .flat_map(|r| r.verbs)
        .collect();
    for verb in ["get", "watch", "create", "update", "delete"] {
        assert!(
            verbs.iter().any(|v| v == verb),
            "deployments {verb}: {verbs:?}"
        );
    }
}
