//! The control plane on Kubernetes at scale: `sluice control --kubernetes` (release
//! build, pinned to core 0) against the loopback API server double, reconciling
//! `SLUICE_BENCH_SERVICES` (1,000) Services, each through two revisions.
//!
//! This process plays the API server (the double, on core 1) and the EndpointSlice
//! controller: each revision's private Service gets a slice with one ready pod as soon as
//! it appears, so a Service becomes Ready without pods running. Phases:
//! 1. create every Service (one revision) → all `Ready`, `latestReadyRevisionName` -00001;
//! 2. a new template with a 50/50 split on every Service → all `Ready` on -00002.
//!
//! Printed per phase: the time to all Ready, the control plane's CPU (seconds, and the
//! average in millicores) and its peak RSS, and the API writes per second (every create,
//! change and delete: the bench's, the control plane's own, and its status writes). Knative's controller requests 100m CPU and 100Mi
//! for reference (`config/core/deployments/controller.yaml`).

use std::time::Duration;

use tokio::time::Instant;

use serde_json::{Value, json};
use sluice_benches::{Procs, cpu_seconds, free_addr, release_bin, setting, status_mib};
use sluice_test_support::kube_api::KubeApi;

const KSVCS: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";
const SERVICES: &str = "/api/v1/namespaces/default/services";
const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices";

fn service(name: &str, v2: bool) -> Value {
    let mut s = json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{
            "image": "ghcr.io/knative/autoscale-go:latest",
            "env": [{"name": "VERSION", "value": if v2 { "2" } else { "1" }}]
        }]}}}
    });
    if v2 {
        s["spec"]["traffic"] = json!([
            {"revisionName": format!("{name}-00001"), "percent": 50},
            {"latestRevision": true, "percent": 50}
        ]);
    }
    s
}

/// The EndpointSlice controller's share: one ready endpoint for every private Service
/// that has none yet. Returns how many it made.
fn publish_slices(
    api: &KubeApi,
    done: &mut std::collections::HashSet<String>,
    ip: &mut u32,
) -> usize {
    let mut made = 0;
    for svc in api.list(SERVICES) {
        let name = svc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if !done.insert(name.clone()) {
            continue;
        }
        let mut labels = svc["metadata"]["labels"].clone();
        labels["kubernetes.io/service-name"] = json!(name);
        *ip += 1;
        let addr = std::net::Ipv4Addr::from(0x0a00_0000 + *ip).to_string();
        let slice = json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-x"), "namespace": "default", "labels": labels},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8012, "protocol": "TCP"}],
            "endpoints": [{"addresses": [addr], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "name": format!("{name}-pod")}}]
        });
        assert_eq!(api.create_object(SLICES, slice), 201);
        made += 1;
    }
    made
}

fn ready_on(ksvc: &Value, revision_suffix: &str) -> bool {
    let status = &ksvc["status"];
    status["latestReadyRevisionName"]
        .as_str()
        .is_some_and(|r| r.ends_with(revision_suffix))
        && status["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

struct Phase {
    seconds: f64,
    cpu: f64,
    events: u64,
}

fn main() {
    let n: usize = setting("SLUICE_BENCH_SERVICES", 1_000);
    sluice_benches::pin_self_to("1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let api = rt.block_on(KubeApi::start());
    let mut procs = Procs::default();
    let child = std::process::Command::new("taskset")
        .args(["-c", "0"])
        .arg(release_bin("sluice"))
        .args([
            "control".to_owned(),
            "--kubernetes".to_owned(),
            format!("--kube-api={}", api.url()),
            format!("--listen={}", free_addr()),
            format!("--admin-listen={}", free_addr()),
            // No autoscaler: decisions are not what this measures.
            format!("--autoscaler-address=http://{}", free_addr()),
        ])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sluice control");
    let pid = child.id().to_string();
    procs.0.push(child);
    std::thread::sleep(Duration::from_millis(500));

    let mut slices = std::collections::HashSet::new();
    let mut ip = 0;
    let names: Vec<String> = (0..n).map(|i| format!("svc-{i:04}")).collect();
    let mut phases = Vec::new();
    for (phase, suffix) in [(false, "-00001"), (true, "-00002")] {
        let cpu_before = cpu_seconds(&pid);
        let version_before = api.writes();
        let start = Instant::now();
        for name in &names {
            let code = api.apply_object(KSVCS, service(name, phase));
            assert!(code == 200 || code == 201, "{name}: {code}");
        }
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            publish_slices(&api, &mut slices, &mut ip);
            let ready = api
                .list(KSVCS)
                .iter()
                .filter(|s| ready_on(s, suffix))
                .count();
            if ready == n {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{ready} of {n} Ready after 10 minutes"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        phases.push(Phase {
            seconds: start.elapsed().as_secs_f64(),
            cpu: cpu_seconds(&pid) - cpu_before,
            events: api.writes() - version_before,
        });
    }
    let peak = status_mib(&pid, "VmHWM");
    println!(
        "kube_reconcile: {n} Services, each through 2 revisions, against the API server double"
    );
    for (i, p) in phases.iter().enumerate() {
        println!(
            "  phase {}: all Ready in {:.2} s; control plane CPU {:.2} s ({:.0}m average); {} API writes ({:.0}/s)",
            i + 1,
            p.seconds,
            p.cpu,
            p.cpu / p.seconds * 1000.0,
            p.events,
            p.events as f64 / p.seconds
        );
    }
    println!(
        "  control plane peak RSS {peak:.1} MiB (Knative's controller requests 100m CPU and 100Mi)"
    );
    drop(procs);
    rt.block_on(api.stop());
}
