//! `config-autoscaler`: every key of Knative's ConfigMap with its default and validation
//! (reference §4.1). A ConfigMap is taken whole or not at all: every bad key is reported
//! in one error that names the key, the value and what is allowed.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use sluice_core::duration;

pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";
pub const HPA_CLASS: &str = "hpa.autoscaling.knative.dev";
/// The seeds' gateway-metrics class: the KPA's arithmetic on the gateway's concurrency.
pub const MPA_CLASS: &str = "mpa.autoscaling.knative.dev";

/// Stable windows must lie in [6 s, 1 h], in whole seconds.
pub const MIN_STABLE_WINDOW: Duration = Duration::from_secs(6);
pub const MAX_STABLE_WINDOW: Duration = Duration::from_secs(3600);

/// Knative's `config-autoscaler`, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoscalerConfig {
    pub pod_autoscaler_class: String,
    pub enable_scale_to_zero: bool,
    pub allow_zero_initial_scale: bool,
    pub initial_scale: u32,
    pub min_scale: u32,
    /// 0: unlimited.
    pub max_scale: u32,
    /// 0: none.
    pub max_scale_limit: u32,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    /// `container-concurrency-target-percentage` as a fraction in (0, 1].
    pub container_concurrency_target_fraction: f64,
    pub container_concurrency_target_default: f64,
    pub requests_per_second_target_default: f64,
    /// −1: the activator is always in the path.
    pub target_burst_capacity: f64,
    pub activator_capacity: f64,
    pub stable_window: Duration,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub scale_to_zero_grace_period: Duration,
    pub scale_to_zero_pod_retention_period: Duration,
    pub scale_down_delay: Duration,
}

/// One refused value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub value: String,
    pub allowed: String,
}

/// Every refused value of one ConfigMap or one revision's annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub source: String,
    pub problems: Vec<Problem>,
}

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} refused:", self.source)?;
        for p in &self.problems {
            write!(
                f,
                "\n  - {}: {:?} is not allowed; {}",
                p.key, p.value, p.allowed
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// === impl AutoscalerConfig ===

impl Default for AutoscalerConfig {
    fn default() -> Self {
        Self {
            pod_autoscaler_class: KPA_CLASS.to_owned(),
            enable_scale_to_zero: true,
            allow_zero_initial_scale: false,
            initial_scale: 1,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            container_concurrency_target_fraction: 0.7,
            container_concurrency_target_default: 100.0,
            requests_per_second_target_default: 200.0,
            target_burst_capacity: 211.0,
            activator_capacity: 100.0,
            stable_window: Duration::from_secs(60),
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            scale_to_zero_grace_period: Duration::from_secs(30),
            scale_to_zero_pod_retention_period: Duration::ZERO,
            scale_down_delay: Duration::ZERO,
        }
    }
}

impl AutoscalerConfig {
    /// The ConfigMap's `data`, strings as in Kubernetes. Keys it does not know (such as
    /// `_example`) are ignored, as Knative does; see [`AutoscalerConfig::unknown_keys`].
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut c = Self::default();
        let mut v = Values::new(data);
        if let Some(s) = v.raw("pod-autoscaler-class") {
            c.pod_autoscaler_class = s.to_owned();
        }
        v.boolean("enable-scale-to-zero", &mut c.enable_scale_to_zero);
        v.boolean("allow-zero-initial-scale", &mut c.allow_zero_initial_scale);
        v.int("initial-scale", &mut c.initial_scale);
        v.int("min-scale", &mut c.min_scale);
        v.int("max-scale", &mut c.max_scale);
        v.int("max-scale-limit", &mut c.max_scale_limit);
        v.float(
            "max-scale-up-rate",
            &mut c.max_scale_up_rate,
            |x| x > 1.0,
            "a number greater than 1",
        );
        v.float(
            "max-scale-down-rate",
            &mut c.max_scale_down_rate,
            |x| x > 1.0,
            "a number greater than 1",
        );
        let mut pct = 70.0;
        if v.float(
            "container-concurrency-target-percentage",
            &mut pct,
            |x| x > 0.0 && x <= 100.0,
            "a percentage in (0, 100], or a fraction in (0, 1] (\"1\" is 100%)",
        ) {
            c.container_concurrency_target_fraction = if pct > 1.0 { pct / 100.0 } else { pct };
        }
        v.float(
            "container-concurrency-target-default",
            &mut c.container_concurrency_target_default,
            |x| x >= 0.01,
            "a number of at least 0.01",
        );
        v.float(
            "requests-per-second-target-default",
            &mut c.requests_per_second_target_default,
            |x| x >= 0.01,
            "a number of at least 0.01",
        );
        v.float(
            "target-burst-capacity",
            &mut c.target_burst_capacity,
            |x| x >= 0.0 || x == -1.0,
            "a number of at least 0, or -1 (unlimited)",
        );
        v.float(
            "activator-capacity",
            &mut c.activator_capacity,
            |x| x >= 1.0,
            "a number of at least 1",
        );
        v.duration(
            "stable-window",
            &mut c.stable_window,
            stable_window_ok,
            "a duration from 6s to 1h in whole seconds",
        );
        v.float(
            "panic-window-percentage",
            &mut c.panic_window_percentage,
            |x| (1.0..=100.0).contains(&x),
            "a number from 1 to 100",
        );
        // Knative does not range-check this key in the ConfigMap (only the annotation).
        v.float(
            "panic-threshold-percentage",
            &mut c.panic_threshold_percentage,
            f64::is_finite,
            "a number",
        );
        v.duration(
            "scale-to-zero-grace-period",
            &mut c.scale_to_zero_grace_period,
            |d| !d.is_zero(),
            "a duration greater than 0",
        );
        v.duration(
            "scale-to-zero-pod-retention-period",
            &mut c.scale_to_zero_pod_retention_period,
            |_| true,
            "a duration of at least 0",
        );
        v.duration(
            "scale-down-delay",
            &mut c.scale_down_delay,
            whole_seconds,
            "a duration of at least 0 in whole seconds",
        );

        if c.container_concurrency_target_fraction * c.container_concurrency_target_default < 0.01 {
            v.problem(
                "container-concurrency-target-percentage",
                &format!("{pct}"),
                "times container-concurrency-target-default it must be at least 0.01",
            );
        }
        if c.initial_scale == 0 && !c.allow_zero_initial_scale {
            v.problem(
                "initial-scale",
                "0",
                "0 needs allow-zero-initial-scale: \"true\"",
            );
        }
        if c.max_scale > 0 && c.min_scale > c.max_scale {
            v.problem(
                "min-scale",
                &c.min_scale.to_string(),
                &format!("at most max-scale ({})", c.max_scale),
            );
        }
        if c.max_scale_limit > 0 && (c.max_scale == 0 || c.max_scale > c.max_scale_limit) {
            v.problem(
                "max-scale",
                &c.max_scale.to_string(),
                &format!("from 1 to max-scale-limit ({})", c.max_scale_limit),
            );
        }
        v.finish("config-autoscaler").map(|()| c)
    }

    /// Keys of `data` this ConfigMap does not have (typos, or keys of other ConfigMaps).
    pub fn unknown_keys(data: &BTreeMap<String, String>) -> Vec<&str> {
        data.keys()
            .map(String::as_str)
            .filter(|k| !KEYS.contains(k) && !k.starts_with('_'))
            .collect()
    }
}

/// Every key `config-autoscaler` has.
pub const KEYS: [&str; 20] = [
    "pod-autoscaler-class",
    "enable-scale-to-zero",
    "allow-zero-initial-scale",
    "initial-scale",
    "min-scale",
    "max-scale",
    "max-scale-limit",
    "max-scale-up-rate",
    "max-scale-down-rate",
    "container-concurrency-target-percentage",
    "container-concurrency-target-default",
    "requests-per-second-target-default",
    "target-burst-capacity",
    "activator-capacity",
    "stable-window",
    "panic-window-percentage",
    "panic-threshold-percentage",
    "scale-to-zero-grace-period",
    "scale-to-zero-pod-retention-period",
    "scale-down-delay",
];

pub(crate) fn stable_window_ok(d: Duration) -> bool {
    whole_seconds(d) && (MIN_STABLE_WINDOW..=MAX_STABLE_WINDOW).contains(&d)
}

pub(crate) fn whole_seconds(d: Duration) -> bool {
    d.subsec_nanos() == 0
}

/// Reads typed values out of string data, collecting problems instead of stopping.
pub(crate) struct Values<'a> {
    data: &'a BTreeMap<String, String>,
    /// Put before a key when naming it in a problem (annotations' `autoscaling.knative.dev/`).
    prefix: &'static str,
    problems: Vec<Problem>,
}

impl<'a> Values<'a> {
    pub(crate) fn new(data: &'a BTreeMap<String, String>) -> Self {
        Self::with_prefix(data, "")
    }

    pub(crate) fn with_prefix(data: &'a BTreeMap<String, String>, prefix: &'static str) -> Self {
        Self {
            data,
            prefix,
            problems: Vec::new(),
        }
    }

    pub(crate) fn raw(&self, key: &str) -> Option<&'a str> {
        self.data.get(key).map(|s| s.trim())
    }

    pub(crate) fn problem(&mut self, key: &str, value: &str, allowed: &str) {
        let prefix = self.prefix;
        self.problem_as_is(&format!("{prefix}{key}"), value, allowed);
    }

    /// A problem under a key named in full (one from another source than the data).
    pub(crate) fn problem_as_is(&mut self, key: &str, value: &str, allowed: &str) {
        self.problems.push(Problem {
            key: key.to_owned(),
            value: value.to_owned(),
            allowed: format!("expected {allowed}"),
        });
    }

    pub(crate) fn finish(self, source: &str) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError {
                source: source.to_owned(),
                problems: self.problems,
            })
        }
    }

    /// Go's `strconv.ParseBool`.
    pub(crate) fn boolean(&mut self, key: &str, out: &mut bool) {
        let Some(s) = self.raw(key) else { return };
        match s {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => *out = true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => *out = false,
            _ => self.problem(key, s, "true or false"),
        }
    }

    /// A whole number from 0 to 2147483647 (Knative's int32, negatives refused).
    pub(crate) fn int(&mut self, key: &str, out: &mut u32) -> bool {
        let Some(s) = self.raw(key) else { return false };
        match s.parse::<u32>() {
            Ok(n) if i32::try_from(n).is_ok() => {
                *out = n;
                true
            }
            _ => {
                self.problem(key, s, "a whole number of at least 0");
                false
            }
        }
    }

    /// Returns whether the key was present and valid.
    pub(crate) fn float(
        &mut self,
        key: &str,
        out: &mut f64,
        ok: impl Fn(f64) -> bool,
        allowed: &str,
    ) -> bool {
        let Some(s) = self.raw(key) else { return false };
        match s.parse::<f64>() {
            Ok(x) if x.is_finite() && ok(x) => {
                *out = x;
                true
            }
            _ => {
                self.problem(key, s, allowed);
                false
            }
        }
    }

    pub(crate) fn duration(
        &mut self,
        key: &str,
        out: &mut Duration,
        ok: impl Fn(Duration) -> bool,
        allowed: &str,
    ) -> bool {
        let Some(s) = self.raw(key) else { return false };
        match duration::parse(s) {
            Some(d) if !d.negative && ok(d.magnitude) => {
                *out = d.magnitude;
                true
            }
            _ => {
                self.problem(key, s, allowed);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests;
