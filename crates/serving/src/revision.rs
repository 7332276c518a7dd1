//! One revision's scaling parameters: its `autoscaling.knative.dev/*` annotations and
//! `containerConcurrency` over `config-autoscaler` (reference §3.4, §4.2, §4.4). An
//! annotation overrides the ConfigMap; a bad annotation refuses the revision whole.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{
    AutoscalerConfig, ConfigError, HPA_CLASS, KPA_CLASS, MAX_STABLE_WINDOW, MPA_CLASS, Values,
    stable_window_ok, whole_seconds,
};

pub const ANNOTATION_PREFIX: &str = "autoscaling.knative.dev/";
/// The RPS metric's utilization: fixed in Knative, changed only by the annotation.
const RPS_TARGET_UTILIZATION: f64 = 0.7;
/// Knative's `TargetMin`.
const MIN_TARGET: f64 = 0.01;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Knative's KPA, fed by queue-proxies and activators.
    Kpa,
    /// The KPA's arithmetic on the concurrency a gateway reports.
    Mpa,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    Concurrency,
    Rps,
}

/// How a window averages its per-second sums.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregation {
    /// The plain mean (Knative's default).
    Linear,
    /// Recent seconds weigh exponentially more.
    WeightedExponential,
}

/// A revision's resolved scaling parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct RevisionScaling {
    pub class: Class,
    pub metric: Metric,
    pub aggregation: Aggregation,
    /// Desired load per pod.
    pub target: f64,
    /// What one pod can take.
    pub total: f64,
    pub target_burst_capacity: f64,
    pub stable_window: Duration,
    pub panic_window: Duration,
    /// As a fraction: 2.0 is 200 %.
    pub panic_threshold: f64,
    pub min_scale: u32,
    /// 0: unlimited.
    pub max_scale: u32,
    pub initial_scale: u32,
    pub activation_scale: u32,
    pub scale_down_delay: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
}

// === impl RevisionScaling ===

impl RevisionScaling {
    /// Resolves `annotations` (a revision template's, keys in full) and
    /// `container_concurrency` over `cfg`.
    pub fn resolve(
        cfg: &AutoscalerConfig,
        annotations: &BTreeMap<String, String>,
        container_concurrency: u32,
    ) -> Result<Self, ConfigError> {
        let data = Annotations::new(annotations);
        let mut v = Values::with_prefix(&data.0, ANNOTATION_PREFIX);
        let class = resolve_class(&mut v, cfg);
        let metric = resolve_metric(&mut v);
        let aggregation = match v.raw("metric-aggregation-algorithm") {
            None | Some("linear") => Aggregation::Linear,
            Some("weighted-exponential" | "weightedExponential") => {
                Aggregation::WeightedExponential
            }
            Some(other) => {
                v.problem(
                    "metric-aggregation-algorithm",
                    other,
                    "linear, weighted-exponential or weightedExponential",
                );
                Aggregation::Linear
            }
        };

        let (mut total, mut utilization) = match metric {
            Metric::Concurrency if container_concurrency > 0 => (
                f64::from(container_concurrency),
                cfg.container_concurrency_target_fraction,
            ),
            Metric::Concurrency => (
                cfg.container_concurrency_target_default,
                cfg.container_concurrency_target_fraction,
            ),
            Metric::Rps => (
                cfg.requests_per_second_target_default,
                RPS_TARGET_UTILIZATION,
            ),
        };
        let mut target_annotation = 0.0;
        if v.float(
            "target",
            &mut target_annotation,
            |x| x >= MIN_TARGET,
            "a number of at least 0.01",
        ) {
            total = if metric == Metric::Concurrency && container_concurrency > 0 {
                target_annotation.min(f64::from(container_concurrency))
            } else {
                target_annotation
            };
        }
        let mut tu_pct = 0.0;
        if v.float(
            "target-utilization-percentage",
            &mut tu_pct,
            |x| (1.0..=100.0).contains(&x),
            "a number from 1 to 100",
        ) {
            utilization = tu_pct / 100.0;
        }

        let mut s = Self {
            class,
            metric,
            aggregation,
            target: (total * utilization).max(MIN_TARGET),
            total,
            target_burst_capacity: cfg.target_burst_capacity,
            stable_window: cfg.stable_window,
            panic_window: Duration::ZERO,
            panic_threshold: cfg.panic_threshold_percentage / 100.0,
            min_scale: cfg.min_scale,
            max_scale: cfg.max_scale,
            initial_scale: cfg.initial_scale,
            activation_scale: 0,
            scale_down_delay: cfg.scale_down_delay,
            scale_to_zero_pod_retention_period: cfg.scale_to_zero_pod_retention_period,
        };
        v.float(
            "target-burst-capacity",
            &mut s.target_burst_capacity,
            |x| x >= 0.0 || x == -1.0,
            "a number of at least 0, or -1 (unlimited)",
        );
        v.duration(
            "window",
            &mut s.stable_window,
            stable_window_ok,
            "a duration from 6s to 1h in whole seconds",
        );
        let mut panic_pct = cfg.panic_window_percentage;
        v.float(
            "panic-window-percentage",
            &mut panic_pct,
            |x| (1.0..=100.0).contains(&x),
            "a number from 1 to 100",
        );
        s.panic_window = panic_window(s.stable_window, panic_pct);
        let mut threshold_pct = 0.0;
        if v.float(
            "panic-threshold-percentage",
            &mut threshold_pct,
            |x| (110.0..=1000.0).contains(&x),
            "a number from 110 to 1000",
        ) {
            s.panic_threshold = threshold_pct / 100.0;
        }
        let max_delay = |d: Duration| whole_seconds(d) && d <= MAX_STABLE_WINDOW;
        v.duration(
            "scale-down-delay",
            &mut s.scale_down_delay,
            max_delay,
            "a duration from 0 to 1h in whole seconds",
        );
        v.duration(
            "scale-to-zero-pod-retention-period",
            &mut s.scale_to_zero_pod_retention_period,
            |d| d <= MAX_STABLE_WINDOW,
            "a duration from 0 to 1h",
        );
        resolve_bounds(&mut v, cfg, &mut s);
        v.finish("revision annotations").map(|()| s)
    }
}

/// Stable window × percentage, rounded to whole seconds, at least 1 s.
pub fn panic_window(stable: Duration, percentage: f64) -> Duration {
    let secs = (stable.as_secs_f64() * percentage / 100.0).round().max(1.0);
    Duration::from_secs_f64(secs)
}

fn resolve_class(v: &mut Values<'_>, cfg: &AutoscalerConfig) -> Class {
    let (name, k) = match v.raw("class") {
        Some(c) => (c.to_owned(), format!("{ANNOTATION_PREFIX}class")),
        None => (
            cfg.pod_autoscaler_class.clone(),
            "pod-autoscaler-class".to_owned(),
        ),
    };
    match name.as_str() {
        KPA_CLASS => Class::Kpa,
        MPA_CLASS => Class::Mpa,
        HPA_CLASS => {
            v.problem_as_is(&k, &name, "kpa.autoscaling.knative.dev or mpa.autoscaling.knative.dev: the HPA class needs a Kubernetes HorizontalPodAutoscaler, which Sluice does not run");
            Class::Kpa
        }
        _ => {
            v.problem_as_is(&k, &name, "kpa.autoscaling.knative.dev or mpa.autoscaling.knative.dev (the classes Sluice implements)");
            Class::Kpa
        }
    }
}

fn resolve_metric(v: &mut Values<'_>) -> Metric {
    match v.raw("metric") {
        None | Some("concurrency") => Metric::Concurrency,
        Some("rps") => Metric::Rps,
        Some(m @ ("cpu" | "memory")) => {
            v.problem("metric", m, "concurrency or rps: cpu and memory scaling needs an HPA (class hpa.autoscaling.knative.dev), which Sluice does not run");
            Metric::Concurrency
        }
        Some(m) => {
            v.problem("metric", m, "concurrency or rps");
            Metric::Concurrency
        }
    }
}

/// min-, max-, initial- and activation-scale, with Knative's cross-checks.
fn resolve_bounds(v: &mut Values<'_>, cfg: &AutoscalerConfig, s: &mut RevisionScaling) {
    v.int("min-scale", &mut s.min_scale);
    let max_given = v.int("max-scale", &mut s.max_scale);
    if s.max_scale > 0 && s.max_scale < s.min_scale {
        v.problem(
            "max-scale",
            &s.max_scale.to_string(),
            &format!("at least min-scale ({})", s.min_scale),
        );
    }
    if max_given
        && cfg.max_scale_limit > 0
        && (s.max_scale == 0 || s.max_scale > cfg.max_scale_limit)
    {
        let what = if s.max_scale == 0 {
            format!(
                "max-scale=0 (unlimited), must be less than {}",
                cfg.max_scale_limit
            )
        } else {
            format!("from 1 to max-scale-limit ({})", cfg.max_scale_limit)
        };
        v.problem("max-scale", &s.max_scale.to_string(), &what);
    }
    let mut initial = 0;
    if v.int("initial-scale", &mut initial) {
        if initial > 0 || cfg.allow_zero_initial_scale {
            s.initial_scale = initial;
        } else {
            v.problem(
                "initial-scale",
                "0",
                "0 only with allow-zero-initial-scale: \"true\" in config-autoscaler",
            );
        }
    }
    let mut activation = 0;
    if v.int("activation-scale", &mut activation) {
        let problem = if s.min_scale > activation {
            Some(format!("at least min-scale ({})", s.min_scale))
        } else if s.max_scale != 0 && s.max_scale < activation {
            Some(format!("at most max-scale ({})", s.max_scale))
        } else if activation < 2 {
            Some("a whole number of at least 2".to_owned())
        } else {
            None
        };
        match problem {
            Some(p) => v.problem("activation-scale", &activation.to_string(), &p),
            None => s.activation_scale = activation,
        }
    }
}

/// The annotations by short name, legacy camelCase aliases folded in (kebab-case wins),
/// so that problems can be reported under the full key.
struct Annotations(BTreeMap<String, String>);

const ALIASES: [(&str, &str); 10] = [
    (
        "targetUtilizationPercentage",
        "target-utilization-percentage",
    ),
    ("targetBurstCapacity", "target-burst-capacity"),
    ("panicWindowPercentage", "panic-window-percentage"),
    ("panicThresholdPercentage", "panic-threshold-percentage"),
    ("minScale", "min-scale"),
    ("maxScale", "max-scale"),
    ("initialScale", "initial-scale"),
    ("scaleDownDelay", "scale-down-delay"),
    (
        "scaleToZeroPodRetentionPeriod",
        "scale-to-zero-pod-retention-period",
    ),
    ("metricAggregationAlgorithm", "metric-aggregation-algorithm"),
];

impl Annotations {
    fn new(all: &BTreeMap<String, String>) -> Self {
        let mut short = BTreeMap::new();
        for (k, v) in all {
            let Some(name) = k.strip_prefix(ANNOTATION_PREFIX) else {
                continue;
            };
            let canonical = ALIASES
                .iter()
                .find(|(alias, _)| *alias == name)
                .map_or(name, |(_, kebab)| kebab);
            // The kebab-case key wins over its alias, whatever the order.
            if canonical == name || !short.contains_key(canonical) {
                short.insert(canonical.to_owned(), v.clone());
            }
        }
        Self(short)
    }
}

#[cfg(test)]
mod tests;
