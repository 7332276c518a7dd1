//! Prometheus text exposition of an explicit registry (never a global one), and the
//! per-revision request series the proxies share.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry,
    TextEncoder,
};

/// The labels of a request series: the revision, the code and its class (`2xx`).
pub const STATUS_LABELS: [&str; 4] = [
    "namespace_name",
    "revision_name",
    "response_code",
    "response_code_class",
];

/// A request count and a latency histogram (milliseconds) by revision and response code,
/// registered on `registry` under `count` and `latencies`.
pub fn status_families(
    registry: &Registry,
    (count, count_help): (&str, &str),
    (latencies, latencies_help): (&str, &str),
) -> Result<(IntCounterVec, HistogramVec), prometheus::Error> {
    let count = IntCounterVec::new(Opts::new(count, count_help), &STATUS_LABELS)?;
    registry.register(Box::new(count.clone()))?;
    let latencies = HistogramVec::new(
        HistogramOpts::new(latencies, latencies_help).buckets(LATENCY_BUCKETS_MS.to_vec()),
        &STATUS_LABELS,
    )?;
    registry.register(Box::new(latencies.clone()))?;
    Ok((count, latencies))
}

/// One revision's request series by status: 200's resolved up front, others on first
/// use, so a request costs two atomic adds rather than hashing its labels.
#[derive(Debug)]
pub struct ByStatus {
    count: IntCounterVec,
    latencies: HistogramVec,
    revision: [String; 2],
    ok: (IntCounter, Histogram),
    /// Rare statuses; a lock is fine.
    others: Mutex<HashMap<u16, (IntCounter, Histogram)>>,
}

impl ByStatus {
    pub fn new(
        (count, latencies): &(IntCounterVec, HistogramVec),
        namespace: &str,
        revision: &str,
    ) -> Self {
        let revision = [namespace.to_owned(), revision.to_owned()];
        Self {
            ok: series(count, latencies, &revision, 200),
            count: count.clone(),
            latencies: latencies.clone(),
            revision,
            others: Mutex::new(HashMap::new()),
        }
    }

    /// One finished request.
    pub fn record(&self, status: u16, latency: Duration) {
        let ms = latency.as_secs_f64() * 1000.0;
        if status == 200 {
            self.ok.0.inc();
            self.ok.1.observe(ms);
            return;
        }
        let mut others = self.others.lock();
        let (count, hist) = others
            .entry(status)
            .or_insert_with(|| series(&self.count, &self.latencies, &self.revision, status));
        count.inc();
        hist.observe(ms);
    }

    /// Removes the revision's series (it was deleted).
    pub fn forget(&self) {
        let mut statuses: Vec<u16> = self.others.lock().keys().copied().collect();
        statuses.push(200);
        for status in statuses {
            let (code, class) = (status.to_string(), format!("{}xx", status / 100));
            let values = [
                self.revision[0].as_str(),
                self.revision[1].as_str(),
                code.as_str(),
                class.as_str(),
            ];
            let _ = self.count.remove_label_values(&values);
            let _ = self.latencies.remove_label_values(&values);
        }
    }
}

/// Knative's request latency buckets, in milliseconds.
pub const LATENCY_BUCKETS_MS: [f64; 26] = [
    5.0, 10.0, 20.0, 40.0, 60.0, 80.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0, 400.0, 450.0,
    500.0, 600.0, 700.0, 800.0, 900.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0, 50000.0, 100000.0,
];

/// `Content-Type` of the Prometheus text format.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry's metrics in Prometheus text format.
pub fn encode_text(registry: &Registry) -> Vec<u8> {
    let mut buf = Vec::with_capacity(4096);
    // Encoding into a Vec only fails on inconsistent metric families, which the
    // registry refuses at registration.
    if let Err(error) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(%error, "encoding metrics");
    }
    buf
}

fn series(
    count: &IntCounterVec,
    latencies: &HistogramVec,
    revision: &[String; 2],
    status: u16,
) -> (IntCounter, Histogram) {
    let (code, class) = (status.to_string(), format!("{}xx", status / 100));
    let values = [
        revision[0].as_str(),
        revision[1].as_str(),
        code.as_str(),
        class.as_str(),
    ];
    (
        count.with_label_values(&values),
        latencies.with_label_values(&values),
    )
}

/// A metrics port's answer: the registry as Prometheus text on `/metrics`, 404 elsewhere.
pub fn page<B: From<bytes::Bytes>>(registry: &Registry, path: &str) -> http::Response<B> {
    if path != "/metrics" {
        return crate::respond::text(http::StatusCode::NOT_FOUND, "try /metrics");
    }
    let mut rsp = http::Response::new(B::from(bytes::Bytes::from(encode_text(registry))));
    rsp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(TEXT_CONTENT_TYPE),
    );
    rsp
}

/// Whether a scraper's `Accept` asks for Prometheus text rather than protobuf.
pub fn wants_text(accept: Option<&[u8]>) -> bool {
    let Some(accept) = accept else { return false };
    let has = |needle: &[u8]| {
        accept
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    (has(b"text/plain") || has(b"openmetrics-text")) && !has(b"application/protobuf")
}

#[cfg(test)]
mod tests {
    use prometheus::{IntCounter, Opts};

    use super::*;

    #[test]
    fn encodes_registered_metrics() {
        let registry = Registry::new();
        let c = IntCounter::with_opts(Opts::new("things_total", "Things.")).expect("valid");
        registry.register(Box::new(c.clone())).expect("unique");
        c.inc_by(3);
        let text = String::from_utf8(encode_text(&registry)).expect("utf-8");
        assert!(text.contains("things_total 3"), "{text}");
    }

    #[test]
    fn text_only_when_asked_for() {
        assert!(!wants_text(None));
        assert!(!wants_text(Some(b"application/protobuf")));
        assert!(!wants_text(Some(b"*/*")));
        assert!(wants_text(Some(
            b"text/plain;version=0.0.4;q=0.9,*/*;q=0.1"
        )));
        assert!(wants_text(Some(
            b"application/openmetrics-text;version=1.0.0,text/plain;q=0.5"
        )));
        assert!(!wants_text(Some(b"application/protobuf, text/plain;q=0.1")));
    }
}
