//! What happens to a decision (Knative's KPA reconciler, reference §3.6): min/max and
//! initial scale, the scale-to-zero state machine (the "last activity" rule, grace period,
//! pod retention), whether the activator sits in the path (serve or proxy mode), and the
//! revision's Active condition. A plain struct fed `now`.

use std::time::Duration;

use super::reason::Reason;

/// The revision's Active condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Pods are wanted but fewer than needed are ready.
    Activating,
    Active,
    /// No traffic: the activator is in the path and the pods are on their way out.
    Inactive,
}

/// Serve: requests go straight to the pods. Proxy: through the activator. The wire's
/// enum; the KPA only ever decides one of those two.
pub use sluice_proto::v1::Mode;

/// A revision's bounds and scale-to-zero settings, resolved for this reconcile.
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleBounds {
    pub min_scale: u32,
    /// 0: unlimited.
    pub max_scale: u32,
    pub initial_scale: u32,
    pub enable_scale_to_zero: bool,
    pub stable_window: Duration,
    pub grace_period: Duration,
    pub pod_retention: Duration,
    /// Progress deadline + 30 s: how long activation may take before giving up.
    pub activation_timeout: Duration,
    pub reachable: bool,
    /// TBC −1: the activator is always in the path, so it need not be probed.
    pub unlimited_burst: bool,
}

/// The outcome of one reconcile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// The desired scale reported (−1: unknown yet).
    pub want: i32,
    /// Replicas to set, when they differ from the current ones.
    pub apply: Option<u32>,
    /// Reconcile again after this, even without a new decision.
    pub requeue_after: Option<Duration>,
    pub mode: Mode,
    pub activity: Activity,
    /// The bound or scale-to-zero rule that set `want`, when one did (`None`: the
    /// decider's count stands).
    pub reason: Option<Reason>,
}

/// Per-revision reconcile state (Knative's PodAutoscaler status).
#[derive(Clone, Debug)]
pub struct PodAutoscaler {
    activity: Activity,
    activity_since: Duration,
    initialized: bool,
    mode: Mode,
    /// Since when the activator has been in the path.
    proxy_since: Option<Duration>,
}

/// Re-check soon when the activator is already in the path but the revision is still
/// marked active (Knative's 3 s).
const PROXY_RECHECK: Duration = Duration::from_secs(3);

// === impl ScaleBounds ===

impl ScaleBounds {
    /// The lower bound in force: `min_scale`, or 0 for an unreachable revision (Knative's
    /// `ScaleBounds`, which the scale and the active threshold both use).
    fn effective_min(&self) -> u32 {
        if self.reachable { self.min_scale } else { 0 }
    }
}

// === impl PodAutoscaler ===

impl PodAutoscaler {
    /// A new revision at `now`: activating, behind the activator.
    pub fn new(now: Duration) -> Self {
        Self {
            activity: Activity::Activating,
            activity_since: now,
            initialized: false,
            mode: Mode::Proxy,
            proxy_since: Some(now),
        }
    }

    /// A revision in a given state since `since` (restarts, tests).
    pub fn with_state(
        activity: Activity,
        since: Duration,
        initialized: bool,
        proxy_since: Option<Duration>,
    ) -> Self {
        Self {
            activity,
            activity_since: since,
            initialized,
            mode: if proxy_since.is_some() {
                Mode::Proxy
            } else {
                Mode::Serve
            },
            proxy_since,
        }
    }

    pub fn activity(&self) -> Activity {
        self.activity
    }

    /// One reconcile: the decider's `desired` (−1: none yet) and `ebc`, the ready pods,
    /// the replicas currently set, and whether the activator answered its probe.
    #[allow(clippy::too_many_arguments)]
    pub fn reconcile(
        &mut self,
        now: Duration,
        b: &ScaleBounds,
        desired: i32,
        ebc: i32,
        ready: u32,
        replicas: u32,
        activator_ok: bool,
    ) -> Step {
        let (want, apply, requeue_after, reason) =
            self.scale(now, b, desired, replicas, activator_ok);
        let mode = if want > 0 && ebc >= 0 {
            Mode::Serve
        } else {
            Mode::Proxy
        };
        if mode != self.mode {
            self.mode = mode;
            self.proxy_since = (mode == Mode::Proxy).then_some(now);
        }
        self.update_activity(now, b, want, ready);
        Step {
            want,
            apply,
            requeue_after,
            mode,
            activity: self.activity,
            reason,
        }
    }

    fn scale(
        &self,
        now: Duration,
        b: &ScaleBounds,
        desired: i32,
        replicas: u32,
        activator_ok: bool,
    ) -> (i32, Option<u32>, Option<Duration>, Option<Reason>) {
        if desired < 0 && self.activity != Activity::Activating {
            return (desired, None, None, None);
        }
        let mut reason = None;
        let floor = b.effective_min();
        let mut min = floor;
        if b.initial_scale > 1 && !self.initialized && b.reachable {
            min = min.max(b.initial_scale);
        }
        let wanted = desired;
        let mut x = desired.max(i32::try_from(min).unwrap_or(i32::MAX));
        if x > wanted && x > 0 {
            reason = Some(if min > floor {
                Reason::InitialScale { scale: min }
            } else {
                Reason::MinScale { min, wanted }
            });
        }
        if b.max_scale != 0 && x > i32::try_from(b.max_scale).unwrap_or(i32::MAX) {
            x = i32::try_from(b.max_scale).unwrap_or(i32::MAX);
            reason = Some(Reason::MaxScale {
                max: b.max_scale,
                wanted,
            });
        }
        let (x, apply, requeue) = if x == 0 {
            let (x, apply, requeue, why) = self.scale_to_zero(now, b, activator_ok);
            reason = Some(why);
            (x, apply, requeue)
        } else {
            (x, true, None)
        };
        let apply = apply
            .then(|| u32::try_from(x).ok())
            .flatten()
            .filter(|&n| n != replicas);
        (x, apply, requeue, reason)
    }

    /// Knative's `handleScaleToZero`: (scale, apply it, re-check after, why).
    fn scale_to_zero(
        &self,
        now: Duration,
        b: &ScaleBounds,
        activator_ok: bool,
    ) -> (i32, bool, Option<Duration>, Reason) {
        if !b.enable_scale_to_zero {
            return (1, true, None, Reason::ScaleToZeroDisabled);
        }
        let since = now.saturating_sub(self.activity_since);
        let grace = b.grace_period;
        match self.activity {
            Activity::Activating if since > b.activation_timeout => (
                0,
                true,
                None,
                Reason::ActivationTimeout {
                    timeout: b.activation_timeout,
                },
            ),
            Activity::Activating => (-1, false, Some(b.activation_timeout), Reason::Activating),
            // The last activity rule: a revision active for less than a stable window keeps
            // one pod for the rest of it.
            Activity::Active if since >= b.stable_window => (
                0,
                false,
                (self.mode == Mode::Proxy).then_some(PROXY_RECHECK),
                Reason::Inactive { grace },
            ),
            Activity::Active => (
                1,
                true,
                Some(b.stable_window - since),
                Reason::LastActivity {
                    window: b.stable_window,
                    left: b.stable_window - since,
                },
            ),
            Activity::Inactive if !(activator_ok || b.unlimited_burst) => {
                (0, false, None, Reason::ActivatorNotReady)
            }
            Activity::Inactive => {
                let retention = if b.reachable {
                    b.pod_retention
                } else {
                    Duration::ZERO
                };
                let proxied_for = self
                    .proxy_since
                    .map_or(Duration::ZERO, |p| now.saturating_sub(p));
                let to_zero = Reason::ScaleToZero { grace };
                if since >= grace.max(retention) {
                    (0, true, None, to_zero)
                } else if !retention.is_zero() && since < retention {
                    let left = retention - since;
                    (0, false, Some(left), Reason::Retention { retention, left })
                } else if proxied_for >= grace {
                    (0, true, None, to_zero)
                } else {
                    let left = grace - proxied_for;
                    (0, false, Some(left), Reason::Grace { grace, left })
                }
            }
        }
    }

    /// Knative's `computeActiveCondition`.
    fn update_activity(&mut self, now: Duration, b: &ScaleBounds, want: i32, ready: u32) {
        let min_ready = if self.initialized {
            b.effective_min().max(1)
        } else {
            b.effective_min().max(b.initial_scale)
        };
        if ready >= min_ready {
            self.initialized = true;
        }
        // An inactive revision stays so until pods are wanted again.
        let stays_inactive = self.activity == Activity::Inactive && want <= 0;
        let next = if want == 0 || min_ready == 0 || stays_inactive {
            Activity::Inactive
        } else if ready < min_ready {
            Activity::Activating
        } else {
            Activity::Active
        };
        if next != self.activity {
            self.activity = next;
            self.activity_since = now;
        }
    }
}

#[cfg(test)]
mod tests;
