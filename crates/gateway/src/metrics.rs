//! The gateway's Prometheus metrics, on an explicit registry: requests by revision and
//! response code with their latency, requests in flight, and switches between serve and
//! proxy mode. Every series is labelled with `namespace_name` and `revision_name`.

use std::sync::Arc;

use prometheus::{HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use sluice_core::metrics::{ByStatus, status_families};

use crate::routes::Mode;

const REVISION: [&str; 2] = ["namespace_name", "revision_name"];

/// Every metric family, registered once.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: (IntCounterVec, HistogramVec),
    in_flight: IntGaugeVec,
    mode_switches: IntCounterVec,
}

/// One revision's series, resolved once so a request costs atomic adds.
#[derive(Debug)]
pub(crate) struct RevisionMetrics {
    families: Arc<Metrics>,
    labels: [String; 2],
    pub(crate) in_flight: IntGauge,
    requests: ByStatus,
    to_serve: IntCounter,
    to_proxy: IntCounter,
}

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = status_families(
            &registry,
            (
                "sluice_gateway_requests_total",
                "Requests the gateway answered for the revision, by response code",
            ),
            (
                "sluice_gateway_request_latencies",
                "Time from a request's arrival to the end of its response, in milliseconds",
            ),
        )?;
        let in_flight = IntGaugeVec::new(
            Opts::new(
                "sluice_gateway_requests_in_flight",
                "Requests for the revision in the gateway now",
            ),
            &REVISION,
        )?;
        registry.register(Box::new(in_flight.clone()))?;
        let mode_switches = IntCounterVec::new(
            Opts::new(
                "sluice_gateway_mode_switches_total",
                "Times the revision's requests switched to `mode` (serve: straight to pods; \
                 proxy: through the activator)",
            ),
            &["namespace_name", "revision_name", "mode"],
        )?;
        registry.register(Box::new(mode_switches.clone()))?;
        Ok(Self {
            registry,
            requests,
            in_flight,
            mode_switches,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn revision(self: &Arc<Self>, namespace: &str, revision: &str) -> RevisionMetrics {
        let switch = |mode: &str| {
            self.mode_switches
                .with_label_values(&[namespace, revision, mode])
        };
        RevisionMetrics {
            families: Arc::clone(self),
            labels: [namespace.to_owned(), revision.to_owned()],
            in_flight: self.in_flight.with_label_values(&[namespace, revision]),
            requests: ByStatus::new(&self.requests, namespace, revision),
            to_serve: switch("serve"),
            to_proxy: switch("proxy"),
        }
    }
}

// === impl RevisionMetrics ===

impl RevisionMetrics {
    pub(crate) fn record(&self, status: u16, latency: std::time::Duration) {
        self.requests.record(status, latency);
    }

    pub(crate) fn switched(&self, to: Mode) {
        match to {
            Mode::Serve => self.to_serve.inc(),
            Mode::Proxy | Mode::Unspecified => self.to_proxy.inc(),
        }
    }

    /// Removes every series of the revision (no service routes to it any more).
    pub(crate) fn forget(&self) {
        let [ns, rev] = [self.labels[0].as_str(), self.labels[1].as_str()];
        let f = &self.families;
        let _ = f.in_flight.remove_label_values(&[ns, rev]);
        for mode in ["serve", "proxy"] {
            let _ = f.mode_switches.remove_label_values(&[ns, rev, mode]);
        }
        self.requests.forget();
    }
}
