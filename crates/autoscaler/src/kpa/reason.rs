//! Why a decision came out as it did: the rule that bound it, named by the code that
//! applied it (the decider or the reconcile), with the numbers it used. Nothing here
//! re-derives a decision; each rule states its own reason where it acts. A reason is
//! plain data (no allocation per decision); its sentence is written only when shown.

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

/// The rule that bound a decision, with the numbers it used: plain data, so a decision
/// costs no allocation; `Display` writes the sentence a person reads, and [`Reason::kind`]
/// the rule's stable name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    NoData,
    /// ⌈average / target⌉ over the stable window.
    Stable {
        window: Duration,
        average: f64,
        target: f64,
        pods: f64,
    },
    /// The panic window's count reached `threshold` × the ready pods.
    PanicEntry {
        average: f64,
        target: f64,
        pods: f64,
        threshold: f64,
        ready: u32,
        desired: i32,
    },
    /// In panic, the most pods since it began are kept.
    PanicHold {
        desired: i32,
        window: Duration,
    },
    MaxScaleUpRate {
        rate: f64,
        ready: u32,
        limit: f64,
        wanted: f64,
    },
    MaxScaleDownRate {
        rate: f64,
        ready: u32,
        limit: f64,
        wanted: f64,
    },
    ActivationScale {
        scale: u32,
        average: f64,
        target: f64,
        wanted: f64,
    },
    ScaleDownDelay {
        kept: i32,
        delay: Duration,
        wanted: i32,
    },
    MinScale {
        min: u32,
        wanted: i32,
    },
    InitialScale {
        scale: u32,
    },
    MaxScale {
        max: u32,
        wanted: i32,
    },
    Activating,
    ActivationTimeout {
        timeout: Duration,
    },
    ScaleToZeroDisabled,
    LastActivity {
        window: Duration,
        left: Duration,
    },
    /// No load for a stable window: inactive now, to zero after the grace period.
    Inactive {
        grace: Duration,
    },
    Retention {
        retention: Duration,
        left: Duration,
    },
    Grace {
        grace: Duration,
        left: Duration,
    },
    ActivatorNotReady,
    ScaleToZero {
        grace: Duration,
    },
}

impl Reason {
    pub fn kind(&self) -> ReasonKind {
        use ReasonKind as K;
        match self {
            Self::NoData => K::NoData,
            Self::Stable { .. } => K::Stable,
            Self::PanicEntry { .. } | Self::PanicHold { .. } => K::Panic,
            Self::MaxScaleUpRate { .. } => K::MaxScaleUpRate,
            Self::MaxScaleDownRate { .. } => K::MaxScaleDownRate,
            Self::ActivationScale { .. } => K::ActivationScale,
            Self::ScaleDownDelay { .. } => K::ScaleDownDelay,
            Self::MinScale { .. } => K::MinScale,
            Self::InitialScale { .. } => K::InitialScale,
            Self::MaxScale { .. } => K::MaxScale,
            Self::Activating => K::Activating,
            Self::ActivationTimeout { .. } => K::ActivationTimeout,
            Self::ScaleToZeroDisabled => K::ScaleToZeroDisabled,
            Self::LastActivity { .. } => K::LastActivity,
            Self::Inactive { .. } | Self::Retention { .. } | Self::Grace { .. } => {
                K::ScaleToZeroGrace
            }
            Self::ActivatorNotReady => K::ActivatorNotReady,
            Self::ScaleToZero { .. } => K::ScaleToZero,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::NoData => f.write_str("no stats yet: nothing decided"),
            Self::Stable {
                window,
                average,
                target,
                pods,
            } => write!(
                f,
                "stable: {} average {}; desired ⌈{}/{}⌉ = {}",
                span(window),
                avg(average),
                avg(average),
                num(target),
                num(pods)
            ),
            Self::PanicEntry {
                average,
                target,
                pods,
                threshold,
                ready,
                desired,
            } => write!(
                f,
                "panic: panic-window average {} wants ⌈{}/{}⌉ = {} pods ≥ {} × {ready} ready; desired {desired}",
                avg(average),
                avg(average),
                num(target),
                num(pods),
                num(threshold)
            ),
            Self::PanicHold { desired, window } => write!(
                f,
                "panic: holding {desired}, the most since panic began (it ends after a {} stable window without a panic reading)",
                span(window)
            ),
            Self::MaxScaleUpRate {
                rate,
                ready,
                limit,
                wanted,
            } => write!(
                f,
                "scale-up limited by max-scale-up-rate {}: {ready} → {} (wanted {})",
                num(rate),
                num(limit),
                num(wanted)
            ),
            Self::MaxScaleDownRate {
                rate,
                ready,
                limit,
                wanted,
            } => write!(
                f,
                "scale-down limited by max-scale-down-rate {}: {ready} → {} (wanted {})",
                num(rate),
                num(limit),
                num(wanted)
            ),
            Self::ActivationScale {
                scale,
                average,
                target,
                wanted,
            } => write!(
                f,
                "activation-scale {scale}: the load wants ⌈{}/{}⌉ = {}",
                avg(average),
                num(target),
                num(wanted)
            ),
            Self::ScaleDownDelay {
                kept,
                delay,
                wanted,
            } => write!(
                f,
                "scale-down delay: keeping {kept} (peak of the last {}); {wanted} wanted now",
                span(delay)
            ),
            Self::MinScale { min, wanted } => {
                write!(f, "held at min-scale {min} ({} wanted)", wanted.max(0))
            }
            Self::InitialScale { scale } => {
                write!(
                    f,
                    "initial-scale {scale}, until the revision is first ready"
                )
            }
            Self::MaxScale { max, wanted } => {
                write!(f, "capped at max-scale {max} ({wanted} wanted)")
            }
            Self::Activating => f.write_str("activating: waiting for a pod to be ready"),
            Self::ActivationTimeout { timeout } => write!(
                f,
                "no pod ready within the {} activation timeout: to zero",
                span(timeout)
            ),
            Self::ScaleToZeroDisabled => {
                f.write_str("enable-scale-to-zero is false: keeping 1 pod")
            }
            Self::LastActivity { window, left } => write!(
                f,
                "last activity: keeping 1 pod for the rest of the {} stable window ({} left)",
                span(window),
                span(left)
            ),
            Self::Inactive { grace } => write!(
                f,
                "no load: inactive now, to zero after the {} grace period",
                span(grace)
            ),
            Self::Retention { retention, left } => write!(
                f,
                "scale-to-zero-pod-retention-period {}: keeping the pods {} more",
                span(retention),
                span(left)
            ),
            Self::Grace { grace, left } => write!(
                f,
                "to zero after the {} grace period with the activator in the path ({} left)",
                span(grace),
                span(left)
            ),
            Self::ActivatorNotReady => {
                f.write_str("to zero once the activator, probed first, is in the path")
            }
            Self::ScaleToZero { grace } => {
                write!(f, "scale to zero after grace {}", span(grace))
            }
        }
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
