//! One revision's whole KPA, as the service and `sluice simulate` both run it: the
//! windows fed by every reporter, the decider on each tick, and the reconcile that turns
//! its status into a scale, a mode and an Active condition (Knative's multiscaler entry
//! plus the KPA reconciler, reference §3.5, §3.6). A plain struct fed `now`.

use std::time::Duration;

use super::{
    Activity, Collector, Decider, DeciderSpec, Mode, PodAutoscaler, Reason, Reporter, ScaleBounds,
    StatSample,
};
use crate::config::AutoscalerConfig;
use crate::revision::RevisionScaling;

/// Knative's default progress deadline (600 s) plus the 30 s it adds for activation.
pub const ACTIVATION_TIMEOUT: Duration = Duration::from_secs(630);

/// The decider's spec from a revision's scaling; `reachable`: the revision is routed
/// traffic.
pub fn decider_spec(s: &RevisionScaling, cfg: &AutoscalerConfig, reachable: bool) -> DeciderSpec {
    DeciderSpec {
        target_value: s.target,
        total_value: s.total,
        target_burst_capacity: s.target_burst_capacity,
        panic_threshold: s.panic_threshold,
        max_scale_up_rate: cfg.max_scale_up_rate,
        max_scale_down_rate: cfg.max_scale_down_rate,
        stable_window: s.stable_window,
        scale_down_delay: s.scale_down_delay,
        activation_scale: s.activation_scale,
        reachable,
    }
}

/// The pod counts a reconcile reads from the scaler.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PodCounts {
    /// Pods that pass their readiness probe.
    pub ready: u32,
    /// Replicas currently asked for (ready or not).
    pub replicas: u32,
}

/// Where a revision stands after a tick or a reconcile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    /// The window averages this tick used (revision totals, in the revision's metric).
    pub stable: f64,
    pub panic: f64,
    /// The decider's latest count, before bounds and scale-to-zero rules (−1: none yet).
    pub desired: i32,
    /// After bounds and scale-to-zero rules (−1: unknown yet).
    pub scale: i32,
    /// Replicas to set now, when they differ from the current ones.
    pub apply: Option<u32>,
    /// Reconcile again after this, even without a tick (grace periods ending).
    pub requeue_after: Option<Duration>,
    /// The ready pods the decider used.
    pub ready: u32,
    pub panic_mode: bool,
    pub excess_burst_capacity: i32,
    pub mode: Mode,
    pub activity: Activity,
    /// The rule that set `scale`: a bound or scale-to-zero rule of the reconcile, or
    /// else the decider's.
    pub reason: Reason,
}

/// One revision's KPA state.
#[derive(Clone, Debug)]
pub struct RevisionAutoscaler {
    scaling: RevisionScaling,
    bounds: ScaleBounds,
    collector: Collector,
    decider: Decider,
    pa: PodAutoscaler,
    /// Knative's decider status: −1 until the first decision with data.
    desired: i32,
    excess_burst_capacity: i32,
    averages: (f64, f64),
    /// Why the decider's latest count is what it is.
    reason: Reason,
    last: Option<Decision>,
}

// === impl RevisionAutoscaler ===

impl RevisionAutoscaler {
    /// A revision created at `now` while `ready` pods are ready (`None`: unknown).
    pub fn new(
        cfg: &AutoscalerConfig,
        scaling: RevisionScaling,
        ready: Option<u32>,
        now: Duration,
    ) -> Self {
        let decider = Decider::new(decider_spec(&scaling, cfg, true), ready, now);
        Self {
            bounds: bounds(cfg, &scaling, true),
            collector: collector(&scaling),
            excess_burst_capacity: initial_excess_burst_capacity(&scaling),
            scaling,
            decider,
            pa: PodAutoscaler::new(now),
            desired: -1,
            averages: (0.0, 0.0),
            reason: Reason::NoData,
            last: None,
        }
    }

    pub fn scaling(&self) -> &RevisionScaling {
        &self.scaling
    }

    /// New annotations or config. Panic state and activity are kept; the windows start
    /// over only when their class or sizes change.
    pub fn update(&mut self, cfg: &AutoscalerConfig, scaling: RevisionScaling) {
        let s = &self.scaling;
        let windows =
            |s: &RevisionScaling| (s.class, s.stable_window, s.panic_window, s.aggregation);
        if windows(s) != windows(&scaling) {
            self.collector = collector(&scaling);
        }
        let reachable = self.bounds.reachable;
        self.decider.update(decider_spec(&scaling, cfg, reachable));
        self.bounds = bounds(cfg, &scaling, reachable);
        self.scaling = scaling;
    }

    /// Whether the revision is routed traffic (new revisions are).
    pub fn reachable(&self) -> bool {
        self.bounds.reachable
    }

    /// Whether the revision is routed traffic (an unreachable one has no min-scale and no
    /// scale-down limits).
    pub fn set_reachable(&mut self, cfg: &AutoscalerConfig, reachable: bool) {
        self.bounds.reachable = reachable;
        self.decider
            .update(decider_spec(&self.scaling, cfg, reachable));
    }

    /// Records a stat received at `now`. Returns true when it should be decided at once:
    /// a poke, i.e. load (or the activator's poke flag) while the latest desired scale is
    /// 0. As in Knative, a revision not decided yet (−1) waits for its tick: its first
    /// stats are likely a partial second.
    pub fn record(&mut self, now: Duration, reporter: Reporter, s: StatSample, poke: bool) -> bool {
        let counted = self.collector.record(now, reporter, s);
        counted && self.desired == 0 && (poke || s.average_concurrency != 0.0)
    }

    /// One tick: decide from the windows (when they hold data), then reconcile.
    pub fn tick(&mut self, now: Duration, pods: PodCounts, activator_ok: bool) -> Decision {
        if let Some((stable, panic)) = self.collector.stable_and_panic(now, self.scaling.metric) {
            let r = self.decider.scale(now, stable, panic, pods.ready);
            self.desired = r.desired;
            self.excess_burst_capacity = r.excess_burst_capacity;
            self.averages = (stable, panic);
            self.reason = r.reason;
        }
        self.reconcile(now, pods, activator_ok)
    }

    /// A reconcile without a new decision (a requeue, a pod count change).
    pub fn reconcile(&mut self, now: Duration, pods: PodCounts, activator_ok: bool) -> Decision {
        let step = self.pa.reconcile(
            now,
            &self.bounds,
            self.desired,
            self.excess_burst_capacity,
            pods.ready,
            pods.replicas,
            activator_ok,
        );
        // A transient −1 does not hide a known scale (Knative's PA status rule).
        let scale = match (step.want, &self.last) {
            (-1, Some(last)) if last.scale >= 0 => last.scale,
            (want, _) => want,
        };
        let decision = Decision {
            stable: self.averages.0,
            panic: self.averages.1,
            desired: self.desired,
            scale,
            apply: step.apply,
            requeue_after: step.requeue_after,
            ready: pods.ready,
            panic_mode: self.decider.in_panic(),
            excess_burst_capacity: self.excess_burst_capacity,
            mode: step.mode,
            activity: step.activity,
            reason: step.reason.unwrap_or(self.reason),
        };
        self.last = Some(decision);
        decision
    }

    /// The latest decision, if any.
    pub fn last(&self) -> Option<&Decision> {
        self.last.as_ref()
    }

    /// The decider's status: desired scale (−1 before the first decision) and EBC.
    pub fn status(&self) -> (i32, i32) {
        (self.desired, self.excess_burst_capacity)
    }

    /// How many activators should carry this revision (Knative's `numActivators`).
    pub fn activator_count(&self, cfg: &AutoscalerConfig, ready: u32) -> u32 {
        activator_count(&self.scaling, cfg.activator_capacity, ready)
    }
}

fn collector(s: &RevisionScaling) -> Collector {
    Collector::new(s.class, s.stable_window, s.panic_window, s.aggregation)
}

fn bounds(cfg: &AutoscalerConfig, s: &RevisionScaling, reachable: bool) -> ScaleBounds {
    ScaleBounds {
        min_scale: s.min_scale,
        max_scale: s.max_scale,
        initial_scale: s.initial_scale,
        enable_scale_to_zero: cfg.enable_scale_to_zero,
        stable_window: s.stable_window,
        grace_period: cfg.scale_to_zero_grace_period,
        pod_retention: s.scale_to_zero_pod_retention_period,
        activation_timeout: ACTIVATION_TIMEOUT,
        reachable,
        unlimited_burst: s.target_burst_capacity < 0.0,
    }
}

/// A new decider's EBC: TBC itself at −1 or 0, otherwise what the initial pods leave.
fn initial_excess_burst_capacity(s: &RevisionScaling) -> i32 {
    let tbc = s.target_burst_capacity;
    if tbc <= 0.0 {
        tbc as i32
    } else {
        // Truncation toward zero, as Knative's int32 conversion.
        (f64::from(s.initial_scale) * s.total - tbc).clamp(f64::from(i32::MIN), f64::from(i32::MAX))
            as i32
    }
}

/// At least 2 activators; with a burst capacity, enough to hold the ready pods' capacity
/// plus the burst at `activator_capacity` each.
fn activator_count(s: &RevisionScaling, activator_capacity: f64, ready: u32) -> u32 {
    const MIN_ACTIVATORS: u32 = 2;
    if s.target_burst_capacity == 0.0 {
        return MIN_ACTIVATORS;
    }
    let load = f64::from(ready) * s.total + s.target_burst_capacity.max(0.0);
    let n = (load / activator_capacity).ceil();
    MIN_ACTIVATORS.max(n.clamp(0.0, f64::from(u32::MAX)) as u32)
}

#[cfg(test)]
mod tests;
