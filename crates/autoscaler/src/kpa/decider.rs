//! Knative's KPA decision (`Scale(now)`, reference §3.5): from the stable and panic window
//! averages (revision totals) and the ready pod count to a desired pod count and the
//! excess burst capacity (EBC), with panic mode, rate limits, activation scale and the
//! scale-down delay.

use std::time::Duration;

use super::MaxWindow;
use super::reason::Reason;

/// What one revision's decisions are made of (Knative's `DeciderSpec`).
#[derive(Clone, Debug, PartialEq)]
pub struct DeciderSpec {
    /// Desired load per pod: total × target utilization, at least 0.01.
    pub target_value: f64,
    /// What one pod can take: containerConcurrency or the configured default.
    pub total_value: f64,
    /// Spare capacity to keep beyond the load; 0: the activator only at zero; −1: always.
    pub target_burst_capacity: f64,
    /// Panic when the panic-window pod count reaches this many times the ready pods.
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub stable_window: Duration,
    pub scale_down_delay: Duration,
    /// Above 1: a revision with any load gets at least this many pods.
    pub activation_scale: u32,
    /// False when the revision takes no traffic: no scale-down limit, no delay.
    pub reachable: bool,
}

/// One decision.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ScaleResult {
    pub desired: i32,
    pub excess_burst_capacity: i32,
    /// The rule that set `desired`, with its numbers.
    pub reason: Reason,
}

/// The per-revision decider: its spec plus the panic state it carries between ticks.
#[derive(Clone, Debug)]
pub struct Decider {
    spec: DeciderSpec,
    /// When panic mode was last entered or extended; `None` outside panic.
    panic_time: Option<Duration>,
    max_panic_pods: i32,
    /// Made once, at creation, as Knative does: a later delay change is not picked up.
    delay_window: Option<MaxWindow>,
}

// === impl Decider ===

impl Decider {
    /// A decider created at `now` while `ready` pods are ready (`None`: unknown, taken as
    /// 0). With more than one ready pod it starts in panic, so a restarted autoscaler
    /// does not scale down before it has data.
    pub fn new(spec: DeciderSpec, ready: Option<u32>, now: Duration) -> Self {
        let ready = ready.unwrap_or(0);
        let delay_window =
            (!spec.scale_down_delay.is_zero()).then(|| MaxWindow::new(spec.scale_down_delay));
        let (panic_time, max_panic_pods) = if ready > 1 {
            (Some(now), i32::try_from(ready).unwrap_or(i32::MAX))
        } else {
            (None, 0)
        };
        Self {
            spec,
            panic_time,
            max_panic_pods,
            delay_window,
        }
    }

    pub fn spec(&self) -> &DeciderSpec {
        &self.spec
    }

    /// Replaces the spec (a changed annotation, reachability); panic state is kept.
    pub fn update(&mut self, spec: DeciderSpec) {
        self.spec = spec;
    }

    pub fn in_panic(&self) -> bool {
        self.panic_time.is_some()
    }

    /// Decides at `now` from the stable and panic averages and the ready pod count.
    pub fn scale(&mut self, now: Duration, stable: f64, panic: f64, ready: u32) -> ScaleResult {
        let spec = &self.spec;
        let r = f64::from(ready.max(1));
        let max_up = (spec.max_scale_up_rate * r).ceil();
        let max_down = if spec.reachable {
            (r / spec.max_scale_down_rate).floor()
        } else {
            0.0
        };
        let raw_stable = (stable / spec.target_value).ceil();
        let raw_panic = (panic / spec.target_value).ceil();
        // Clamp into [max_down, max_up]; the upper bound wins.
        let clamp = |n: f64| n.max(max_down).min(max_up);
        let activation = f64::from(spec.activation_scale);
        let lift = |clamped: f64, raw: f64| {
            if spec.activation_scale > 1 && raw > 0.0 && clamped < activation {
                activation
            } else {
                clamped
            }
        };
        let stable_pods = to_pods(lift(clamp(raw_stable), raw_stable));
        let panic_pods = to_pods(lift(clamp(raw_panic), raw_panic));

        // Panic compares the unclamped panic-window pod count with the pods there are.
        let over = raw_panic / r >= spec.panic_threshold;
        match self.panic_time {
            _ if over => self.panic_time = Some(now),
            Some(since) if since + spec.stable_window < now => {
                self.panic_time = None;
                self.max_panic_pods = 0;
            }
            _ => {}
        }

        let target = spec.target_value;
        let (mut desired, mut reason) = if self.panic_time.is_some() {
            // The count never goes down while in panic.
            self.max_panic_pods = self.max_panic_pods.max(stable_pods.max(panic_pods));
            let desired = self.max_panic_pods;
            let reason = if over {
                Reason::PanicEntry {
                    average: panic,
                    target,
                    pods: raw_panic,
                    threshold: spec.panic_threshold,
                    ready,
                    desired,
                }
            } else {
                Reason::PanicHold {
                    desired,
                    window: spec.stable_window,
                }
            };
            (desired, reason)
        } else {
            let reason = if spec.activation_scale > 1
                && raw_stable > 0.0
                && clamp(raw_stable) < activation
            {
                Reason::ActivationScale {
                    scale: spec.activation_scale,
                    average: stable,
                    target,
                    wanted: raw_stable,
                }
            } else if raw_stable > max_up {
                Reason::MaxScaleUpRate {
                    rate: spec.max_scale_up_rate,
                    ready,
                    limit: max_up,
                    wanted: raw_stable,
                }
            } else if raw_stable < max_down {
                Reason::MaxScaleDownRate {
                    rate: spec.max_scale_down_rate,
                    ready,
                    limit: max_down,
                    wanted: raw_stable,
                }
            } else {
                Reason::Stable {
                    window: spec.stable_window,
                    average: stable,
                    target,
                    pods: raw_stable,
                }
            };
            (stable_pods, reason)
        };
        if spec.reachable
            && let Some(window) = self.delay_window.as_mut()
        {
            let kept = window.record(now, desired);
            if kept > desired {
                reason = Reason::ScaleDownDelay {
                    kept,
                    delay: spec.scale_down_delay,
                    wanted: desired,
                };
            }
            desired = kept;
        }

        ScaleResult {
            desired,
            excess_burst_capacity: excess_burst_capacity(&self.spec, ready, panic),
            reason,
        }
    }
}

/// EBC from the raw ready count and the panic average: how much spare capacity the
/// ready pods have beyond the load and the burst to absorb. Serve mode needs it ≥ 0.
pub(crate) fn excess_burst_capacity(spec: &DeciderSpec, ready: u32, panic: f64) -> i32 {
    let tbc = spec.target_burst_capacity;
    if tbc == 0.0 {
        0
    } else if tbc < 0.0 {
        -1
    } else {
        to_pods((f64::from(ready) * spec.total_value - tbc - panic).floor())
    }
}

/// A whole, finite f64 to i32, saturating.
fn to_pods(n: f64) -> i32 {
    if n.is_nan() {
        0
    } else {
        // Saturating by construction: the value is clamped into i32's range first.
        n.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
    }
}

#[cfg(test)]
mod tests;
