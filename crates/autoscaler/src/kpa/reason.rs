//! Why a decision came out as it did: the rule that bound it, named by the code that
//! applied it (the decider or the reconcile), with the numbers it used. Nothing here
//! re-derives a decision; each rule states its own reason where it acts.

use std::fmt;
use std::time::Duration;

/// The rule that bound a decision. `as_str` is the stable name (metrics, JSON).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReasonKind {
    /// No decision yet: the windows hold no data.
    NoData,
    /// The stable window's average over the target.
    Stable,
    /// Panic mode: the panic window's average, or the panic peak held.
    Panic,
    /// The scale-up limit (`max-scale-up-rate`).
    MaxScaleUpRate,
    /// The scale-down limit (`max-scale-down-rate`).
    MaxScaleDownRate,
    /// `activation-scale`: a revision with load gets at least this many pods.
    ActivationScale,
    /// `scale-down-delay`: the peak of the delay window is kept.
    ScaleDownDelay,
    /// `min-scale`.
    MinScale,
    /// `max-scale`.
    MaxScale,
    /// `initial-scale`, until the revision has first been ready.
    InitialScale,
    /// Pods are wanted and not yet ready.
    Activating,
    /// The activation timed out: to zero.
    ActivationTimeout,
    /// `enable-scale-to-zero: false` keeps one pod.
    ScaleToZeroDisabled,
    /// The last-activity rule: a revision active for less than a stable window keeps a pod.
    LastActivity,
    /// Going to zero, held for the grace period or the pod retention period.
    ScaleToZeroGrace,
    /// Going to zero, held until the activator answers its probe.
    ActivatorNotReady,
    /// Scaled to zero.
    ScaleToZero,
}

impl ReasonKind {
    pub const ALL: [ReasonKind; 17] = [
        Self::NoData,
        Self::Stable,
        Self::Panic,
        Self::MaxScaleUpRate,
        Self::MaxScaleDownRate,
        Self::ActivationScale,
        Self::ScaleDownDelay,
        Self::MinScale,
        Self::MaxScale,
        Self::InitialScale,
        Self::Activating,
        Self::ActivationTimeout,
        Self::ScaleToZeroDisabled,
        Self::LastActivity,
        Self::ScaleToZeroGrace,
        Self::ActivatorNotReady,
        Self::ScaleToZero,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoData => "no-data",
            Self::Stable => "stable",
            Self::Panic => "panic",
            Self::MaxScaleUpRate => "max-scale-up-rate",
            Self::MaxScaleDownRate => "max-scale-down-rate",
            Self::ActivationScale => "activation-scale",
            Self::ScaleDownDelay => "scale-down-delay",
            Self::MinScale => "min-scale",
            Self::MaxScale => "max-scale",
            Self::InitialScale => "initial-scale",
            Self::Activating => "activating",
            Self::ActivationTimeout => "activation-timeout",
            Self::ScaleToZeroDisabled => "scale-to-zero-disabled",
            Self::LastActivity => "last-activity",
            Self::ScaleToZeroGrace => "scale-to-zero-grace",
            Self::ActivatorNotReady => "activator-not-ready",
            Self::ScaleToZero => "scale-to-zero",
        }
    }
}

impl fmt::Display for ReasonKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rule and a sentence a person can read, with the numbers it used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reason {
    pub kind: ReasonKind,
    pub message: String,
}

impl Reason {
    pub fn new(kind: ReasonKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn no_data() -> Self {
        Self::new(ReasonKind::NoData, "no stats yet: nothing decided")
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A window or period as Knative writes it: `6s`, `1m`, `5m30s`, `1.5s`.
pub(crate) fn span(d: Duration) -> String {
    let ms = d.as_millis();
    if !ms.is_multiple_of(1000) {
        return format!("{}s", d.as_secs_f64());
    }
    let s = d.as_secs();
    match (s / 60, s % 60) {
        (0, s) => format!("{s}s"),
        (m, 0) => format!("{m}m"),
        (m, s) => format!("{m}m{s}s"),
    }
}

/// A window average: one decimal.
pub(crate) fn avg(v: f64) -> String {
    format!("{v:.1}")
}

/// A count, rate or target as a person writes it: at most two decimals, no trailing
/// zeros (`7`, `2.1`, `0.01`).
pub(crate) fn num(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}
