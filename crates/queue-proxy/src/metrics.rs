//! Request metrics in Prometheus text, with Knative's names (v1.10's `revision_*`
//! family, which the Prometheus exporter on :9091 used) and labels.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use sluice_core::metrics::LATENCY_BUCKETS_MS;

use crate::config::Identity;

const STATUS_LABELS: [&str; 2] = ["response_code", "response_code_class"];

/// The queue-proxy's request metrics, registered on their own registry.
#[derive(Debug)]
pub struct RequestMetrics {
    registry: Registry,
    request_count: IntCounterVec,
    request_latencies: HistogramVec,
    app_request_count: IntCounterVec,
    app_request_latencies: HistogramVec,
    /// Set at scrape time from the breaker: no cost per request.
    pub(crate) queue_depth: IntGauge,
    /// Set at scrape time: requests in flight (queued included) now.
    pub(crate) in_flight: IntGauge,
    /// Label lookups resolved once per status code, so a request costs two atomic adds
    /// and a bucket search instead of hashing label values. Boxed: 600 pointers rather
    /// than 600 inline structs resident in every pod.
    by_status: Box<[OnceLock<Box<StatusMetrics>>; 600]>,
}

#[derive(Debug)]
struct StatusMetrics {
    code: String,
    class: String,
    count: IntCounter,
    latency: Histogram,
    /// Resolved on first use: a status the app never produced (a 503 from the queue)
    /// must not show up as an app series.
    app: OnceLock<(IntCounter, Histogram)>,
}

// === impl RequestMetrics ===

impl RequestMetrics {
    pub fn new(identity: &Identity) -> Result<Self, prometheus::Error> {
        let labels = [
            ("namespace_name", &identity.namespace),
            ("service_name", &identity.service),
            ("configuration_name", &identity.configuration),
            ("revision_name", &identity.revision),
            ("pod_name", &identity.pod),
        ];
        let opts = |name: &str, help: &str| {
            let mut o = Opts::new(name, help).const_label("container_name", "queue-proxy");
            for (k, v) in labels {
                o = o.const_label(k, v.as_str());
            }
            o
        };
        let hist = |name: &str, help: &str| {
            HistogramOpts::from(opts(name, help)).buckets(LATENCY_BUCKETS_MS.to_vec())
        };
        let registry = Registry::new();
        let request_count = IntCounterVec::new(
            opts(
                "revision_request_count",
                "The number of requests that are routed to queue-proxy",
            ),
            &STATUS_LABELS,
        )?;
        let request_latencies = HistogramVec::new(
            hist(
                "revision_request_latencies",
                "The response time in millisecond",
            ),
            &STATUS_LABELS,
        )?;
        let app_request_count = IntCounterVec::new(
            opts(
                "revision_app_request_count",
                "The number of requests that are routed to user-container",
            ),
            &STATUS_LABELS,
        )?;
        let app_request_latencies = HistogramVec::new(
            hist(
                "revision_app_request_latencies",
                "The response time in millisecond",
            ),
            &STATUS_LABELS,
        )?;
        let queue_depth = IntGauge::with_opts(opts(
            "revision_queue_depth",
            "The current number of items in the serving and waiting queue, or not reported if unlimited concurrency",
        ))?;
        let in_flight = IntGauge::with_opts(opts(
            "sluice_queue_proxy_in_flight_requests",
            "Requests in the queue-proxy now, queued or running (probes excluded)",
        ))?;
        registry.register(Box::new(request_count.clone()))?;
        registry.register(Box::new(request_latencies.clone()))?;
        registry.register(Box::new(app_request_count.clone()))?;
        registry.register(Box::new(app_request_latencies.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(Self {
            registry,
            request_count,
            request_latencies,
            app_request_count,
            app_request_latencies,
            queue_depth,
            in_flight,
            by_status: Box::new([const { OnceLock::new() }; 600]),
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One finished request. `app`: time it held a slot reaching the app, if it did.
    pub fn record(&self, status: u16, latency: Duration, app: Option<Duration>) {
        let Some(slot) = self.by_status.get(usize::from(status)) else {
            return;
        };
        let m = slot.get_or_init(|| {
            let code = status.to_string();
            let class = format!("{}xx", status / 100);
            let values = [code.as_str(), class.as_str()];
            Box::new(StatusMetrics {
                count: self.request_count.with_label_values(&values),
                latency: self.request_latencies.with_label_values(&values),
                code,
                class,
                app: OnceLock::new(),
            })
        });
        m.count.inc();
        m.latency.observe(latency.as_secs_f64() * 1000.0);
        if let Some(app) = app {
            let (count, hist) = m.app.get_or_init(|| {
                let values = [m.code.as_str(), m.class.as_str()];
                (
                    self.app_request_count.with_label_values(&values),
                    self.app_request_latencies.with_label_values(&values),
                )
            });
            count.inc();
            hist.observe(app.as_secs_f64() * 1000.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_by_status_with_knative_labels() {
        let identity = Identity {
            namespace: "default".into(),
            revision: "hello-00001".into(),
            ..Identity::default()
        };
        let m = RequestMetrics::new(&identity).expect("metrics");
        m.record(
            200,
            Duration::from_millis(12),
            Some(Duration::from_millis(10)),
        );
        m.record(
            200,
            Duration::from_millis(3),
            Some(Duration::from_millis(2)),
        );
        m.record(503, Duration::from_millis(1), None);
        let text =
            String::from_utf8(sluice_core::metrics::encode_text(m.registry())).expect("utf-8");
        let count_200 = text
            .lines()
            .find(|l| {
                l.starts_with("revision_request_count{") && l.contains("response_code=\"200\"")
            })
            .expect("a 200 count line");
        assert!(count_200.ends_with(" 2"), "{count_200}");
        assert!(
            count_200.contains("response_code_class=\"2xx\""),
            "{count_200}"
        );
        assert!(
            count_200.contains("revision_name=\"hello-00001\""),
            "{count_200}"
        );
        assert!(
            count_200.contains("container_name=\"queue-proxy\""),
            "{count_200}"
        );
        assert!(
            text.contains("revision_request_latencies_bucket{"),
            "{text}"
        );
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("revision_app_request_count{") && l.contains("\"503\"")),
            "a request refused before the app is not an app request"
        );
    }
}
