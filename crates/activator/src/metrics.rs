//! The activator's Prometheus metrics, on an explicit registry. Knative's activator names
//! (v1.10's `activator_*` family) where one exists, `sluice_activator_*` otherwise; every
//! series is labelled with `namespace_name` and `revision_name`.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use sluice_core::metrics::{ByStatus, status_families};

const REVISION: [&str; 2] = ["namespace_name", "revision_name"];

/// Every metric family, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    request_concurrency: IntGaugeVec,
    requests: (IntCounterVec, HistogramVec),
    held: IntGaugeVec,
    capacity: IntGaugeVec,
    healthy_pods: IntGaugeVec,
    pod_in_flight: IntGaugeVec,
    cold_start: HistogramVec,
    cold_start_requests: IntCounterVec,
}

/// Buckets of the cold-start histogram, in seconds: an app's start-up from tens of
/// milliseconds to minutes (an image pull).
const COLD_START_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// One revision's series, resolved once so a request costs atomic adds, not label hashing.
#[derive(Debug)]
pub(crate) struct RevisionMetrics {
    families: std::sync::Arc<Metrics>,
    labels: [String; 2],
    pub(crate) concurrency: IntGauge,
    pub(crate) held: IntGauge,
    capacity: IntGauge,
    healthy_pods: IntGauge,
    requests: ByStatus,
    /// From arrival to being sent, for requests that arrived with no pod.
    pub(crate) cold_start: Histogram,
    /// Requests that arrived with no pod (and waited, however that ended).
    pub(crate) cold_start_requests: IntCounter,
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let request_concurrency = gauge(
            "activator_request_concurrency",
            "Requests for the revision in the activator now, held or proxied",
            &REVISION,
        )?;
        let held = gauge(
            "sluice_activator_requests_held",
            "Requests waiting for the revision to have capacity",
            &REVISION,
        )?;
        let capacity = gauge(
            "sluice_activator_revision_capacity",
            "Requests the activator may have in flight to the revision's pods (2147483647: no limit)",
            &REVISION,
        )?;
        let healthy_pods = gauge(
            "sluice_activator_healthy_pods",
            "The revision's pods that passed the activator's probe",
            &REVISION,
        )?;
        let pod_in_flight = gauge(
            "sluice_activator_pod_requests_in_flight",
            "Requests the activator has in flight to one pod",
            &["namespace_name", "revision_name", "pod_address"],
        )?;
        let cold_start = HistogramVec::new(
            HistogramOpts::new(
                "sluice_activator_cold_start_seconds",
                "For requests that arrived when the revision had no ready pod: the time from arrival until the request was sent to a pod",
            )
            .buckets(COLD_START_BUCKETS.to_vec()),
            &REVISION,
        )?;
        registry.register(Box::new(cold_start.clone()))?;
        let cold_start_requests = IntCounterVec::new(
            Opts::new(
                "sluice_activator_cold_start_requests_total",
                "Requests that arrived when the revision had no ready pod and waited for one",
            ),
            &REVISION,
        )?;
        registry.register(Box::new(cold_start_requests.clone()))?;
        let requests = status_families(
            &registry,
            (
                "activator_request_count",
                "Requests answered by the activator, by response code",
            ),
            (
                "activator_request_latencies",
                "Time from a request's arrival to the end of its response, in milliseconds",
            ),
        )?;
        Ok(Self {
            registry,
            request_concurrency,
            requests,
            held,
            capacity,
            healthy_pods,
            pod_in_flight,
            cold_start,
            cold_start_requests,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

// === impl RevisionMetrics ===

impl RevisionMetrics {
    pub(crate) fn new(families: &std::sync::Arc<Metrics>, namespace: &str, revision: &str) -> Self {
        let labels = [namespace, revision];
        Self {
            concurrency: families.request_concurrency.with_label_values(&labels),
            held: families.held.with_label_values(&labels),
            capacity: families.capacity.with_label_values(&labels),
            healthy_pods: families.healthy_pods.with_label_values(&labels),
            requests: ByStatus::new(&families.requests, namespace, revision),
            cold_start: families.cold_start.with_label_values(&labels),
            cold_start_requests: families.cold_start_requests.with_label_values(&labels),
            labels: [namespace.to_owned(), revision.to_owned()],
            families: std::sync::Arc::clone(families),
        }
    }

    /// One finished request.
    pub(crate) fn record(&self, status: u16, latency: Duration) {
        self.requests.record(status, latency);
    }

    pub(crate) fn set_capacity(&self, capacity: usize, healthy: usize) {
        self.capacity
            .set(i64::try_from(capacity).unwrap_or(i64::MAX));
        self.healthy_pods
            .set(i64::try_from(healthy).unwrap_or(i64::MAX));
    }

    pub(crate) fn pod_in_flight(&self, pod: &SocketAddr) -> IntGauge {
        let pod = pod.to_string();
        self.families.pod_in_flight.with_label_values(&[
            self.labels[0].as_str(),
            self.labels[1].as_str(),
            pod.as_str(),
        ])
    }

    pub(crate) fn forget_pod(&self, pod: &SocketAddr) {
        let pod = pod.to_string();
        let _ = self.families.pod_in_flight.remove_label_values(&[
            self.labels[0].as_str(),
            self.labels[1].as_str(),
            pod.as_str(),
        ]);
    }

    /// Removes every series of the revision (it was deleted).
    pub(crate) fn forget(&self) {
        let labels = [self.labels[0].as_str(), self.labels[1].as_str()];
        let f = &self.families;
        for vec in [
            &f.request_concurrency,
            &f.held,
            &f.capacity,
            &f.healthy_pods,
        ] {
            let _ = vec.remove_label_values(&labels);
        }
        let _ = f.cold_start.remove_label_values(&labels);
        let _ = f.cold_start_requests.remove_label_values(&labels);
        self.requests.forget();
    }
}
