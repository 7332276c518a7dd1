//! The activator's Prometheus metrics, on an explicit registry. Knative's activator names
//! (v1.10's `activator_*` family) where one exists, `sluice_activator_*` otherwise; every
//! series is labelled with `namespace_name` and `revision_name`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use sluice_core::metrics::LATENCY_BUCKETS_MS;

const REVISION: [&str; 2] = ["namespace_name", "revision_name"];
const STATUS: [&str; 4] = [
    "namespace_name",
    "revision_name",
    "response_code",
    "response_code_class",
];

/// Every metric family, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    request_concurrency: IntGaugeVec,
    request_count: IntCounterVec,
    request_latencies: HistogramVec,
    held: IntGaugeVec,
    capacity: IntGaugeVec,
    healthy_pods: IntGaugeVec,
    pod_in_flight: IntGaugeVec,
}

/// One revision's series, resolved once so a request costs atomic adds, not label hashing.
#[derive(Debug)]
pub(crate) struct RevisionMetrics {
    families: std::sync::Arc<Metrics>,
    labels: [String; 2],
    pub(crate) concurrency: IntGauge,
    pub(crate) held: IntGauge,
    capacity: IntGauge,
    healthy_pods: IntGauge,
    ok: (IntCounter, Histogram),
    /// Other statuses, resolved on first use (rare, so a lock is fine).
    by_status: Mutex<HashMap<u16, (IntCounter, Histogram)>>,
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
        let request_count = IntCounterVec::new(
            Opts::new(
                "activator_request_count",
                "Requests answered by the activator, by response code",
            ),
            &STATUS,
        )?;
        registry.register(Box::new(request_count.clone()))?;
        let request_latencies = HistogramVec::new(
            HistogramOpts::new(
                "activator_request_latencies",
                "Time from a request's arrival to the end of its response, in milliseconds",
            )
            .buckets(LATENCY_BUCKETS_MS.to_vec()),
            &STATUS,
        )?;
        registry.register(Box::new(request_latencies.clone()))?;
        Ok(Self {
            registry,
            request_concurrency,
            request_count,
            request_latencies,
            held,
            capacity,
            healthy_pods,
            pod_in_flight,
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
        let status = |code: u16| {
            let (code, class) = (code.to_string(), format!("{}xx", code / 100));
            let values = [namespace, revision, code.as_str(), class.as_str()];
            (
                families.request_count.with_label_values(&values),
                families.request_latencies.with_label_values(&values),
            )
        };
        Self {
            concurrency: families.request_concurrency.with_label_values(&labels),
            held: families.held.with_label_values(&labels),
            capacity: families.capacity.with_label_values(&labels),
            healthy_pods: families.healthy_pods.with_label_values(&labels),
            ok: status(200),
            by_status: Mutex::new(HashMap::new()),
            labels: [namespace.to_owned(), revision.to_owned()],
            families: std::sync::Arc::clone(families),
        }
    }

    /// One finished request.
    pub(crate) fn record(&self, status: u16, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        if status == 200 {
            self.ok.0.inc();
            self.ok.1.observe(ms);
            return;
        }
        let mut by_status = self.by_status.lock();
        let (count, hist) = by_status.entry(status).or_insert_with(|| {
            let (code, class) = (status.to_string(), format!("{}xx", status / 100));
            let values = [
                self.labels[0].as_str(),
                self.labels[1].as_str(),
                code.as_str(),
                class.as_str(),
            ];
            (
                self.families.request_count.with_label_values(&values),
                self.families.request_latencies.with_label_values(&values),
            )
        });
        count.inc();
        hist.observe(ms);
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
        let mut statuses: Vec<u16> = self.by_status.lock().keys().copied().collect();
        statuses.push(200);
        for code in statuses {
            let (code, class) = (code.to_string(), format!("{}xx", code / 100));
            let values = [labels[0], labels[1], code.as_str(), class.as_str()];
            let _ = f.request_count.remove_label_values(&values);
            let _ = f.request_latencies.remove_label_values(&values);
        }
    }
}
