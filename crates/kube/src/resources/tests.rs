use std::collections::BTreeMap;

use serde_json::json;
use sluice_control::{PodSpec, RevisionSpec};

use super::*;

pub(crate) fn revision(container: serde_json::Value) -> RevisionSpec {
    RevisionSpec {
        pod: PodSpec {
            namespace: "default".to_owned(),
            service: "autoscale-go".to_owned(),
            revision: "autoscale-go-00001".to_owned(),
            argv: Vec::new(),
            env: Vec::new(),
            container_concurrency: 10,
            timeout_seconds: 300,
            response_start_timeout_seconds: None,
            idle_timeout_seconds: Some(60),
            readiness_probe: container.get("readinessProbe").cloned(),
            container: Some(container),
        },
        initial_scale: 1,
        report: false,
        annotations: BTreeMap::from([(
            "autoscaling.knative.dev/target".to_owned(),
            "10".to_owned(),
        )]),
        template: None,
    }
}

pub(crate) fn owner() -> Owner {
    Owner {
        name: "autoscale-go".to_owned(),
        uid: "6d1f2c7e-0000-4000-8000-000000000001".to_owned(),
    }
}

fn env_of(c: &Container) -> BTreeMap<String, serde_json::Value> {
    c.env
        .iter()
        .flatten()
        .map(|e| {
            let v = match (&e.value, &e.value_from) {
                (Some(v), _) => json!(v),
                (None, Some(from)) => json!(from.field_ref.as_ref().map(|f| &f.field_path)),
                (None, None) => json!(null),
            };
            (e.name.clone(), v)
        })
        .collect()
}

#[test]
fn the_deployment_runs_the_app_beside_an_injected_queue_proxy() {
    let spec = revision(json!({
        "image": "ghcr.io/knative/autoscale-go:latest",
        "ports": [{"containerPort": 8081}],
        "env": [{"name": "TARGET", "value": "Sluice"}],
        "readinessProbe": {"httpGet": {"path": "/ready"}, "periodSeconds": 2},
        "resources": {"requests": {"cpu": "100m"}}
    }));
    let d = deployment(&spec, &owner(), &Injection::default()).expect("deployment");
    assert_eq!(
        d.metadata.name.as_deref(),
        Some("autoscale-go-00001-deployment")
    );
    let refs = d.metadata.owner_references.as_deref().expect("owner");
    assert_eq!(
        (refs[0].kind.as_str(), refs[0].controller),
        ("Service", Some(true))
    );
    let labels = d.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels[REVISION_LABEL], "autoscale-go-00001");
    assert_eq!(labels[SERVICE_LABEL], "autoscale-go");
    let ds = d.spec.as_ref().expect("spec");
    assert_eq!(ds.replicas, Some(1));
    assert_eq!(
        ds.selector.match_labels.as_ref().expect("selector")[REVISION_LABEL],
        "autoscale-go-00001"
    );
    let pod = ds.template.spec.as_ref().expect("pod");
    assert_eq!(pod.termination_grace_period_seconds, Some(300));
    let [user, qp] = pod.containers.as_slice() else {
        panic!("two containers: {:?}", pod.containers)
    };

    // The app: its port named, Knative's env added to its own, probe moved, preStop set,
    // and what Sluice does not read (resources) kept as written.
    assert_eq!(user.name, USER_CONTAINER);
    assert_eq!(
        user.image.as_deref(),
        Some("ghcr.io/knative/autoscale-go:latest")
    );
    let ports = user.ports.as_deref().expect("ports");
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].container_port),
        (Some("user-port"), 8081)
    );
    let env = env_of(user);
    assert_eq!(env["TARGET"], "Sluice");
    assert_eq!(env["PORT"], "8081");
    assert_eq!(env["K_REVISION"], "autoscale-go-00001");
    assert!(user.readiness_probe.is_none(), "the queue-proxy runs it");
    assert_eq!(
        user.termination_message_policy.as_deref(),
        Some("FallbackToLogsOnError"),
        "Knative's default: a crash's last log lines are its message"
    );
    let pre_stop = user
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .expect("preStop");
    let get = pre_stop.http_get.as_ref().expect("httpGet");
    assert_eq!(
        (get.path.as_deref(), &get.port),
        (Some("/wait-for-drain"), &IntOrString::Int(8022))
    );
    assert_eq!(
        user.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .map(|r| r["cpu"].0.as_str()),
        Some("100m")
    );

    // The queue-proxy: Knative's contract.
    assert_eq!(qp.name, QUEUE_CONTAINER);
    assert_eq!(qp.image.as_deref(), Some("sluice-queue-proxy:latest"));
    let env = env_of(qp);
    for (k, v) in [
        ("SERVING_NAMESPACE", "default"),
        ("SERVING_CONFIGURATION", "autoscale-go"),
        ("SERVING_REVISION", "autoscale-go-00001"),
        ("QUEUE_SERVING_PORT", "8012"),
        ("USER_PORT", "8081"),
        ("CONTAINER_CONCURRENCY", "10"),
        ("REVISION_TIMEOUT_SECONDS", "300"),
        ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", ""),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "60"),
        ("SERVING_POD", "metadata.name"),
        ("SERVING_POD_IP", "status.podIP"),
    ] {
        assert_eq!(env[k], json!(v), "{k}");
    }
    let probe: serde_json::Value =
        serde_json::from_str(env["SERVING_READINESS_PROBE"].as_str().expect("probe"))
            .expect("json");
    assert_eq!(
        probe["httpGet"],
        json!({"path": "/ready", "port": 8081, "host": "127.0.0.1"})
    );
    let ports: Vec<(Option<&str>, i32)> = qp
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            (Some("queue-port"), 8012),
            (Some("queue-admin"), 8022),
            (Some("http-autometric"), 9090),
            (Some("http-usermetric"), 9091)
        ]
    );
    let ready = qp.readiness_probe.as_ref().expect("probe");
    let get = ready.http_get.as_ref().expect("httpGet");
    assert_eq!(get.port, IntOrString::Int(8012));
    assert_eq!(
        get.http_headers
            .as_deref()
            .map(|h| (h[0].name.as_str(), h[0].value.as_str())),
        Some(("K-Network-Probe", "queue"))
    );
    assert_eq!(ready.period_seconds, Some(2), "the user's timing is copied");
    let sc = qp.security_context.as_ref().expect("security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
        Some(vec!["ALL".to_owned()])
    );
}

#[test]
fn the_default_port_is_8080_and_an_exec_probe_stays_with_the_app() {
    let spec = revision(json!({
        "name": "app",
        "image": "example.com/app",
        "readinessProbe": {"exec": {"command": ["true"]}}
    }));
    let d = deployment(&spec, &owner(), &Injection::default()).expect("deployment");
    let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
    let user = &pod.containers[0];
    assert_eq!(user.name, "app");
    assert_eq!(
        user.ports.as_deref().map(|p| p[0].container_port),
        Some(8080)
    );
    assert!(
        user.readiness_probe
            .as_ref()
            .is_some_and(|p| p.exec.is_some())
    );
}

#[test]
fn a_container_that_cannot_run_is_named() {
    let no_image = revision(json!({"command": ["/app"]}));
    assert_eq!(
        deployment(&no_image, &owner(), &Injection::default()).err(),
        Some(ResourceError::NoImage)
    );
    let bad_port = revision(json!({"image": "x", "ports": [{"containerPort": 70000}]}));
    let e = deployment(&bad_port, &owner(), &Injection::default()).expect_err("bad port");
    assert!(e.to_string().contains("containerPort 70000"), "{e}");
    let mut local = revision(json!({"image": "x"}));
    local.pod.container = None;
    assert_eq!(
        deployment(&local, &owner(), &Injection::default()).err(),
        Some(ResourceError::NoContainer)
    );
}

#[test]
fn the_private_service_selects_the_revisions_pods_on_the_queue_port() {
    let spec = revision(json!({"image": "x"}));
    let s = service(&spec, &owner());
    assert_eq!(
        s.metadata.name.as_deref(),
        Some("autoscale-go-00001-private")
    );
    let labels = s.metadata.labels.as_ref().expect("labels");
    assert_eq!(labels[SERVICE_TYPE_LABEL], "Private");
    let ss = s.spec.as_ref().expect("spec");
    assert_eq!(
        ss.selector.as_ref().expect("selector"),
        &BTreeMap::from([(REVISION_LABEL.to_owned(), "autoscale-go-00001".to_owned())])
    );
    let http = &ss.ports.as_deref().expect("ports")[0];
    assert_eq!(
        (http.port, &http.target_port),
        (80, &Some(IntOrString::Int(8012)))
    );
}

#[test]
fn a_container_from_the_local_planner_is_accepted_as_written() {
    // The planner serialises its typed container: absent fields are nulls and empty lists.
    let spec = revision(json!({
        "name": null, "image": "x", "command": [], "args": [],
        "env": [{"name": "A", "value": "1", "valueFrom": null}],
        "ports": [{"containerPort": null, "name": null}],
        "readinessProbe": null
    }));
    let d = deployment(&spec, &owner(), &Injection::default()).expect("deployment");
    let user = &d
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod")
        .containers[0];
    assert_eq!(
        user.ports.as_deref().map(|p| p[0].container_port),
        Some(8080)
    );
    assert_eq!(env_of(user)["A"], "1");
}
