//! Prometheus text exposition of an explicit registry (never a global one).

use prometheus::{Encoder, Registry, TextEncoder};

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
