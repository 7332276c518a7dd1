//! The autoscaler's Prometheus metrics. Per revision, Knative's autoscaler names
//! (`autoscaler_desired_pods`, …, labelled `namespace_name` and `revision_name`); for the
//! service itself, `sluice_autoscaler_*`.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::Rejected;
use crate::kpa::{Decision, ReasonKind, Reporter};
use crate::revision::Metric;
use crate::scaler::RevisionKey;

const LABELS: [&str; 2] = ["namespace_name", "revision_name"];

/// Every metric the autoscaler exports, in its own registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    desired: GaugeVec,
    requested: GaugeVec,
    actual: GaugeVec,
    excess_burst_capacity: GaugeVec,
    panic_mode: GaugeVec,
    stable_concurrency: GaugeVec,
    panic_concurrency: GaugeVec,
    target_concurrency: GaugeVec,
    stable_rps: GaugeVec,
    panic_rps: GaugeVec,
    target_rps: GaugeVec,
    stats: [IntCounter; 3],
    rejected: IntCounterVec,
    decisions: IntCounterVec,
    pub(super) pokes: IntCounter,
    pub(super) decision_lag: Histogram,
    pub(super) revisions: IntGauge,
    pub(crate) watchers: IntGauge,
}

/// One revision's gauges, looked up once.
#[derive(Debug)]
pub(super) struct RevisionGauges {
    metrics: Metrics,
    key: RevisionKey,
    metric: Metric,
    desired: Gauge,
    requested: Gauge,
    actual: Gauge,
    excess_burst_capacity: Gauge,
    panic_mode: Gauge,
    stable: Gauge,
    panic: Gauge,
    target: Gauge,
}

// === impl Metrics ===

impl Metrics {
    pub(super) fn new() -> Self {
        let registry = Registry::new();
        let gauges = |name: &str, help: &str| {
            let g = GaugeVec::new(Opts::new(name, help), &LABELS).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let desired = gauges(
            "autoscaler_desired_pods",
            "Pods the decider wants, before min/max and scale-to-zero rules.",
        );
        let requested = gauges(
            "autoscaler_requested_pods",
            "Pods asked of the scaler, after min/max and scale-to-zero rules.",
        );
        let actual = gauges("autoscaler_actual_pods", "Ready pods.");
        let excess_burst_capacity = gauges(
            "autoscaler_excess_burst_capacity",
            "Spare capacity beyond the load and the target burst capacity.",
        );
        let panic_mode = gauges("autoscaler_panic_mode", "1 while in panic mode.");
        let stable_concurrency = gauges(
            "autoscaler_stable_request_concurrency",
            "Average concurrency over the stable window.",
        );
        let panic_concurrency = gauges(
            "autoscaler_panic_request_concurrency",
            "Average concurrency over the panic window.",
        );
        let target_concurrency = gauges(
            "autoscaler_target_concurrency_per_pod",
            "Desired concurrency per pod.",
        );
        let stable_rps = gauges(
            "autoscaler_stable_requests_per_second",
            "Average requests per second over the stable window.",
        );
        let panic_rps = gauges(
            "autoscaler_panic_requests_per_second",
            "Average requests per second over the panic window.",
        );
        let target_rps = gauges(
            "autoscaler_target_requests_per_second",
            "Desired requests per second per pod.",
        );
        let stats_vec = IntCounterVec::new(
            Opts::new(
                "sluice_autoscaler_stats_total",
                "Stats recorded, by who measured them.",
            ),
            &["source"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "sluice_autoscaler_stats_rejected_total",
                "Stats refused, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let decisions = IntCounterVec::new(
            Opts::new(
                "sluice_autoscaler_decisions_total",
                "Decisions (one per tick), by revision and the kind of rule that set the scale.",
            ),
            &["namespace_name", "revision_name", "reason"],
        )
        .expect("valid metric");
        let pokes = IntCounter::new(
            "sluice_autoscaler_pokes_total",
            "Stats that made a revision at zero decide at once.",
        )
        .expect("valid metric");
        let decision_lag = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_autoscaler_decision_lag_seconds",
                "From when a tick was due to its decision being made.",
            )
            .buckets(vec![
                0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5,
            ]),
        )
        .expect("valid metric");
        let revisions = IntGauge::new("sluice_autoscaler_revisions", "Revisions being scaled.")
            .expect("valid metric");
        let watchers = IntGauge::new(
            "sluice_autoscaler_decision_watchers",
            "Open decision streams.",
        )
        .expect("valid metric");
        for m in [
            Box::new(stats_vec.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(rejected.clone()),
            Box::new(decisions.clone()),
            Box::new(pokes.clone()),
            Box::new(decision_lag.clone()),
            Box::new(revisions.clone()),
            Box::new(watchers.clone()),
        ] {
            registry.register(m).expect("unique metric");
        }
        let stats = ["queue-proxy", "activator", "gateway"]
            .map(|source| stats_vec.with_label_values(&[source]));
        Self {
            registry,
            desired,
            requested,
            actual,
            excess_burst_capacity,
            panic_mode,
            stable_concurrency,
            panic_concurrency,
            target_concurrency,
            stable_rps,
            panic_rps,
            target_rps,
            stats,
            rejected,
            decisions,
            pokes,
            decision_lag,
            revisions,
            watchers,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Every metric in Prometheus text format.
    pub fn text(&self) -> Vec<u8> {
        sluice_core::metrics::encode_text(&self.registry)
    }

    pub(super) fn stat(&self, reporter: Reporter) {
        let i = match reporter {
            Reporter::QueueProxy => 0,
            Reporter::Activator => 1,
            Reporter::Gateway => 2,
        };
        self.stats[i].inc();
    }

    pub(super) fn rejected(&self, why: &Rejected) {
        let reason = match why {
            Rejected::Missing(_) => "missing_field",
            Rejected::UnknownSource(_) => "unknown_source",
            Rejected::UnknownRevision(_) => "unknown_revision",
        };
        self.rejected.with_label_values(&[reason]).inc();
    }

    pub(super) fn revision(&self, key: &RevisionKey, metric: Metric) -> RevisionGauges {
        let labels = [key.namespace.as_str(), key.name.as_str()];
        let (stable, panic, target) = self.by_metric(metric);
        RevisionGauges {
            desired: self.desired.with_label_values(&labels),
            requested: self.requested.with_label_values(&labels),
            actual: self.actual.with_label_values(&labels),
            excess_burst_capacity: self.excess_burst_capacity.with_label_values(&labels),
            panic_mode: self.panic_mode.with_label_values(&labels),
            stable: stable.with_label_values(&labels),
            panic: panic.with_label_values(&labels),
            target: target.with_label_values(&labels),
            metrics: self.clone(),
            key: key.clone(),
            metric,
        }
    }

    fn by_metric(&self, metric: Metric) -> (&GaugeVec, &GaugeVec, &GaugeVec) {
        match metric {
            Metric::Concurrency => (
                &self.stable_concurrency,
                &self.panic_concurrency,
                &self.target_concurrency,
            ),
            Metric::Rps => (&self.stable_rps, &self.panic_rps, &self.target_rps),
        }
    }
}

// === impl RevisionGauges ===

impl RevisionGauges {
    pub(super) fn set(&mut self, d: &Decision, metric: Metric, target: f64) {
        if metric != self.metric {
            self.remove();
            *self = self.metrics.revision(&self.key, metric);
        }
        self.desired.set(f64::from(d.desired));
        self.requested.set(f64::from(d.scale));
        self.actual.set(f64::from(d.ready));
        self.excess_burst_capacity
            .set(f64::from(d.excess_burst_capacity));
        self.panic_mode.set(f64::from(u8::from(d.panic_mode)));
        self.stable.set(d.stable);
        self.panic.set(d.panic);
        self.target.set(target);
    }

    /// Counts a tick's decision under the kind of its reason.
    pub(super) fn decided(&self, d: &Decision) {
        let labels = [
            self.key.namespace.as_str(),
            self.key.name.as_str(),
            d.reason.kind().as_str(),
        ];
        self.metrics.decisions.with_label_values(&labels).inc();
    }

    /// Drops the revision's series (it is no longer scaled here).
    pub(super) fn remove(&self) {
        let m = &self.metrics;
        let labels = [self.key.namespace.as_str(), self.key.name.as_str()];
        for kind in ReasonKind::ALL {
            let _ = m
                .decisions
                .remove_label_values(&[labels[0], labels[1], kind.as_str()]);
        }
        let (stable, panic, target) = m.by_metric(self.metric);
        for vec in [
            &m.desired,
            &m.requested,
            &m.actual,
            &m.excess_burst_capacity,
            &m.panic_mode,
            stable,
            panic,
            target,
        ] {
            let _ = vec.remove_label_values(&labels);
        }
    }
}
