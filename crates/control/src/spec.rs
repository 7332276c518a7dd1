//! The desired state the control plane reconciles: services with their traffic, and
//! revisions with what it takes to run them. Whoever reads users' input (the local
//! runtime's manifest planner, a Kubernetes `Service` watcher) produces these.

use std::collections::BTreeMap;

use sluice_core::RevisionKey;

/// The sample app's program name: a container whose command is this runs the `sluice`
/// binary's own `sample-app`.
pub const SAMPLE_APP: &str = "sample-app";

/// One revision: immutable once created, as in Knative.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionSpec {
    pub pod: PodSpec,
    /// Replicas its workload starts with (Knative creates a revision's Deployment at its
    /// initial scale; the autoscaler takes over from there).
    pub initial_scale: u32,
    /// Class `mpa.autoscaling.knative.dev`: the gateway reports its concurrency.
    pub report: bool,
    /// The revision's annotations, for the autoscaler (`autoscaling.knative.dev/*`).
    pub annotations: BTreeMap<String, String>,
    /// The revision as its Knative `Revision` object keeps it (`{metadata: {labels,
    /// annotations}, spec}`: its template, and the configuration generation it was made
    /// at), for backends that keep revisions as objects (Kubernetes), so that a restarted
    /// control plane finds them again; `None` elsewhere.
    pub template: Option<serde_json::Value>,
}

/// How to run one pod of a revision.
#[derive(Clone, Debug, PartialEq)]
pub struct PodSpec {
    pub namespace: String,
    pub service: String,
    pub revision: String,
    /// The app's command; `argv[0] == sample-app` is Sluice's sample app.
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub container_concurrency: u32,
    pub timeout_seconds: u32,
    pub response_start_timeout_seconds: Option<u32>,
    pub idle_timeout_seconds: Option<u32>,
    /// The container's readiness probe (Kubernetes JSON); `None`: TCP on the app's port.
    pub readiness_probe: Option<serde_json::Value>,
    /// The container as written (Kubernetes `Container` JSON), for backends that run
    /// images (Kubernetes); the local backend runs `argv`.
    pub container: Option<serde_json::Value>,
}

/// One service's traffic split as written: each target a named revision or the latest
/// ready one, which the reconciler resolves to the gateway's wire shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    /// The service's revisions, oldest first (its Configuration's): a target of the
    /// latest revision goes to the newest of them that is ready.
    pub revisions: Vec<String>,
    pub traffic: Vec<TargetSpec>,
}

/// One traffic target as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSpec {
    /// The revision, or `None` for the latest ready one (`latestRevision: true`, or no
    /// `traffic` at all), as Knative routes a Configuration's `latestReadyRevisionName`.
    pub revision: Option<String>,
    pub percent: u32,
    /// Empty for none.
    pub tag: String,
}

impl PodSpec {
    /// `SERVING_READINESS_PROBE` for the queue-proxy: the container's readiness probe
    /// aimed at the app's port on loopback, as Knative's reconciler rewrites it, or a TCP
    /// probe of that port when the container has none.
    pub fn queue_readiness_probe(&self, user_port: u16) -> serde_json::Value {
        let Some(probe) = &self.readiness_probe else {
            return serde_json::json!({
                "tcpSocket": {"port": user_port, "host": "127.0.0.1"},
                "successThreshold": 1
            });
        };
        let mut p = probe.clone();
        for action in ["httpGet", "tcpSocket", "grpc"] {
            if let Some(a) = p.get_mut(action).and_then(serde_json::Value::as_object_mut) {
                a.insert("port".into(), user_port.into());
                if action != "grpc" {
                    a.insert("host".into(), "127.0.0.1".into());
                }
            }
        }
        p
    }
}

impl RevisionSpec {
    pub fn key(&self) -> RevisionKey {
        RevisionKey::new(&self.pod.namespace, &self.pod.revision)
    }
}
