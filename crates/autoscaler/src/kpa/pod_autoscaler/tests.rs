//! Knative's scaler cases (reference §5.10 Z1–Z22) with its test configuration: stable
//! window 5 min, grace 60 s, activation timeout 151 s, TBC 200, activator probe passing.

use super::*;
use crate::kpa::ReasonKind;

const WINDOW: Duration = Duration::from_secs(300);
const GRACE: Duration = Duration::from_secs(60);
const NOW: Duration = Duration::from_secs(10_000);

fn bounds() -> ScaleBounds {
    ScaleBounds {
        min_scale: 0,
        max_scale: 0,
        initial_scale: 1,
        enable_scale_to_zero: true,
        stable_window: WINDOW,
        grace_period: GRACE,
        pod_retention: Duration::ZERO,
        activation_timeout: Duration::from_secs(151),
        reachable: true,
        unlimited_burst: false,
    }
}

fn ago(d: Duration) -> Duration {
    NOW - d
}

fn pa(activity: Activity, for_: Duration) -> PodAutoscaler {
    PodAutoscaler::with_state(activity, ago(for_), true, None)
}

fn run(pa: &mut PodAutoscaler, b: &ScaleBounds, desired: i32, replicas: u32) -> Step {
    pa.reconcile(NOW, b, desired, -1, replicas, replicas, true)
}

#[test]
fn z1_z2_active_less_than_a_window_keeps_one_pod() {
    let secs_1 = Duration::from_secs(1);
    let z1 = run(&mut pa(Activity::Active, WINDOW - secs_1), &bounds(), 0, 1);
    assert_eq!(
        (z1.want, z1.apply, z1.requeue_after),
        (1, None, Some(secs_1))
    );
    let z2 = run(&mut pa(Activity::Active, WINDOW - secs_1), &bounds(), 0, 10);
    assert_eq!((z2.want, z2.apply), (1, Some(1)));
}

#[test]
fn z3_active_a_whole_window_goes_inactive_without_removing_pods() {
    let mut p = pa(Activity::Active, WINDOW);
    let s = run(&mut p, &bounds(), 0, 1);
    assert_eq!(
        (s.want, s.apply, s.mode, s.activity),
        (0, None, Mode::Proxy, Activity::Inactive)
    );
    // Already behind the activator: look again in 3 s.
    let mut proxied =
        PodAutoscaler::with_state(Activity::Active, ago(WINDOW), true, Some(ago(WINDOW)));
    assert_eq!(
        run(&mut proxied, &bounds(), 0, 1).requeue_after,
        Some(Duration::from_secs(3))
    );
}

#[test]
fn z4_inactive_for_the_grace_period_scales_to_zero() {
    let s = run(&mut pa(Activity::Inactive, GRACE), &bounds(), 0, 1);
    assert_eq!((s.want, s.apply), (0, Some(0)));
}

#[test]
fn z5_z6_grace_counts_from_when_the_activator_took_over() {
    let just_under = GRACE - Duration::from_secs(1);
    let z5 = run(&mut pa(Activity::Inactive, just_under), &bounds(), 0, 1);
    assert_eq!(
        (z5.want, z5.apply, z5.requeue_after),
        (0, None, Some(GRACE)),
        "not proxying yet"
    );
    let mut z6 =
        PodAutoscaler::with_state(Activity::Inactive, ago(just_under), true, Some(ago(GRACE)));
    assert_eq!(
        run(&mut z6, &bounds(), 0, 1).apply,
        Some(0),
        "the fast path"
    );
}

#[test]
fn z9_retention_equal_to_grace() {
    let b = ScaleBounds {
        pod_retention: GRACE,
        ..bounds()
    };
    assert_eq!(
        run(&mut pa(Activity::Inactive, GRACE), &b, 0, 1).apply,
        Some(0)
    );
    let kept = run(
        &mut pa(Activity::Inactive, Duration::from_secs(30)),
        &b,
        0,
        1,
    );
    assert_eq!(
        (kept.apply, kept.requeue_after),
        (None, Some(Duration::from_secs(30))),
        "retained"
    );
}

#[test]
fn z11_z12_the_activator_must_answer_unless_always_in_the_path() {
    let mut p = pa(Activity::Inactive, GRACE);
    let s = p.reconcile(NOW, &bounds(), 0, -1, 1, 1, false);
    assert_eq!(
        s.apply, None,
        "no pod removed while the activator does not answer"
    );
    let b = ScaleBounds {
        unlimited_burst: true,
        ..bounds()
    };
    let s = pa(Activity::Inactive, GRACE).reconcile(NOW, &b, 0, -1, 1, 1, false);
    assert_eq!(s.apply, Some(0), "TBC -1: no probe needed");
}

#[test]
fn z13_z14_activation_gives_up_after_the_timeout() {
    let z13 = run(
        &mut pa(Activity::Activating, Duration::from_secs(75)),
        &bounds(),
        0,
        1,
    );
    assert_eq!((z13.want, z13.apply), (-1, None));
    let z14 = run(
        &mut pa(Activity::Activating, Duration::from_secs(152)),
        &bounds(),
        0,
        1,
    );
    assert_eq!((z14.want, z14.apply), (0, Some(0)));
}

#[test]
fn z18_max_scale_caps() {
    let b = ScaleBounds {
        max_scale: 8,
        ..bounds()
    };
    assert_eq!(
        run(&mut pa(Activity::Active, WINDOW), &b, 10, 3).apply,
        Some(8)
    );
}

#[test]
fn z19_no_decision_yet_applies_nothing() {
    for activity in [Activity::Inactive, Activity::Active] {
        let s = run(&mut pa(activity, WINDOW), &bounds(), -1, 1);
        assert_eq!((s.want, s.apply), (-1, None), "{activity:?}");
    }
}

#[test]
fn z20_z21_initial_scale_until_initialized() {
    let b = ScaleBounds {
        initial_scale: 2,
        ..bounds()
    };
    let mut fresh = PodAutoscaler::new(NOW);
    assert_eq!(fresh.reconcile(NOW, &b, 1, -1, 0, 0, true).apply, Some(2));
    let b5 = ScaleBounds {
        initial_scale: 5,
        ..bounds()
    };
    let mut starting = PodAutoscaler::new(ago(Duration::from_secs(10)));
    let s = starting.reconcile(NOW, &b5, 1, -1, 0, 5, true);
    assert_eq!((s.want, s.apply), (5, None), "already at 5: no patch");
}

#[test]
fn z22_initialized_initial_scale_no_longer_holds_pods() {
    let b = ScaleBounds {
        initial_scale: 2,
        ..bounds()
    };
    let s = run(
        &mut pa(Activity::Active, Duration::from_secs(120)),
        &b,
        0,
        2,
    );
    assert_eq!(
        (s.want, s.apply),
        (1, Some(1)),
        "down to 1 first, then the deactivation path"
    );
}

#[test]
fn scale_to_zero_disabled_keeps_one() {
    let b = ScaleBounds {
        enable_scale_to_zero: false,
        ..bounds()
    };
    assert_eq!(
        run(&mut pa(Activity::Inactive, GRACE), &b, 0, 3).apply,
        Some(1)
    );
}

#[test]
fn min_scale_holds_pods_unless_unreachable() {
    let b = ScaleBounds {
        min_scale: 1,
        ..bounds()
    };
    let s = run(&mut pa(Activity::Active, WINDOW), &b, 0, 1);
    assert_eq!(
        (s.want, s.activity),
        (1, Activity::Active),
        "min-scale 1 is kept when idle"
    );
    let unreachable = ScaleBounds {
        reachable: false,
        ..b
    };
    assert_eq!(
        run(&mut pa(Activity::Inactive, GRACE), &unreachable, 0, 1).apply,
        Some(0)
    );
}

#[test]
fn an_unreachable_revision_is_active_with_one_ready_pod_whatever_its_min_scale() {
    // Knative's active threshold is max(ScaleBounds' min, 1), and ScaleBounds' min is 0
    // when unreachable: 1 ready pod of a min-scale-2 revision is enough. Counting the
    // annotation instead left it Activating, held at 1 pod until the activation timeout.
    let unreachable = ScaleBounds {
        min_scale: 2,
        reachable: false,
        ..bounds()
    };
    let secs_1 = Duration::from_secs(1);
    // Idle, active for less than a stable window: one pod kept, and still active.
    let s = run(
        &mut pa(Activity::Active, WINDOW - secs_1),
        &unreachable,
        0,
        1,
    );
    assert_eq!((s.want, s.activity), (1, Activity::Active));
    let reachable = ScaleBounds {
        reachable: true,
        ..unreachable
    };
    let s = run(&mut pa(Activity::Active, WINDOW - secs_1), &reachable, 0, 1);
    assert_eq!(
        (s.want, s.activity),
        (2, Activity::Activating),
        "routed, 1 ready of min-scale 2 is still activating"
    );
}

#[test]
fn mode_serves_only_with_pods_and_spare_capacity() {
    let mut p = PodAutoscaler::new(NOW);
    let b = bounds();
    assert_eq!(
        p.reconcile(NOW, &b, 3, -5, 3, 3, true).mode,
        Mode::Proxy,
        "EBC < 0"
    );
    let s = p.reconcile(NOW, &b, 3, 0, 3, 3, true);
    assert_eq!((s.mode, s.activity), (Mode::Serve, Activity::Active));
}

#[test]
fn the_whole_way_down_from_active_to_zero() {
    // Defaults: 60 s window, 30 s grace. Traffic stops; the decider says 0 from then on.
    let b = ScaleBounds {
        stable_window: Duration::from_secs(60),
        grace_period: Duration::from_secs(30),
        ..bounds()
    };
    let t = |s: u64| Duration::from_secs(1_000 + s);
    let mut p = PodAutoscaler::with_state(Activity::Active, t(0), true, None);
    let s = p.reconcile(t(70), &b, 0, 0, 1, 1, true);
    assert_eq!(
        (s.want, s.apply, s.activity, s.mode),
        (0, None, Activity::Inactive, Mode::Proxy),
        "inactive, pod kept"
    );
    let s = p.reconcile(t(90), &b, 0, 0, 1, 1, true);
    assert_eq!(s.apply, None, "20 s into the grace period");
    let s = p.reconcile(t(100), &b, 0, 0, 1, 1, true);
    assert_eq!(s.apply, Some(0), "30 s behind the activator: removed");
}

// Reasons: each bound and scale-to-zero rule of the reconcile names itself.

fn reason(s: &Step) -> (ReasonKind, String) {
    let r = s.reason.expect("a rule set the scale");
    (r.kind(), r.to_string())
}

#[test]
fn reason_min_and_max_scale() {
    let b = ScaleBounds {
        min_scale: 2,
        ..bounds()
    };
    let s = run(&mut pa(Activity::Active, WINDOW), &b, 1, 2);
    assert_eq!(s.want, 2);
    assert_eq!(
        reason(&s),
        (
            ReasonKind::MinScale,
            "held at min-scale 2 (1 wanted)".to_owned()
        )
    );
    let b = ScaleBounds {
        max_scale: 3,
        ..bounds()
    };
    let s = run(&mut pa(Activity::Active, WINDOW), &b, 8, 3);
    assert_eq!(s.want, 3);
    assert_eq!(
        reason(&s),
        (
            ReasonKind::MaxScale,
            "capped at max-scale 3 (8 wanted)".to_owned()
        )
    );
    // Within the bounds, the decider's count stands and so does its reason.
    assert_eq!(
        run(&mut pa(Activity::Active, WINDOW), &b, 2, 2).reason,
        None
    );
}

#[test]
fn reason_initial_scale_until_first_ready() {
    let b = ScaleBounds {
        initial_scale: 3,
        ..bounds()
    };
    let mut fresh = PodAutoscaler::new(NOW);
    let s = fresh.reconcile(NOW, &b, 1, -1, 0, 0, true);
    assert_eq!(s.want, 3);
    assert_eq!(
        reason(&s),
        (
            ReasonKind::InitialScale,
            "initial-scale 3, until the revision is first ready".to_owned()
        )
    );
}

#[test]
fn reason_scale_to_zero_after_grace_and_while_waiting() {
    let s = run(&mut pa(Activity::Inactive, GRACE), &bounds(), 0, 1);
    assert_eq!((s.want, s.apply), (0, Some(0)));
    assert_eq!(
        reason(&s),
        (
            ReasonKind::ScaleToZero,
            "scale to zero after grace 1m".to_owned()
        )
    );
    let thirty = Duration::from_secs(30);
    let mut waiting =
        PodAutoscaler::with_state(Activity::Inactive, ago(thirty), true, Some(ago(thirty)));
    let s = run(&mut waiting, &bounds(), 0, 1);
    assert_eq!((s.want, s.apply), (0, None));
    assert_eq!(
        reason(&s),
        (
            ReasonKind::ScaleToZeroGrace,
            "to zero after the 1m grace period with the activator in the path (30s left)"
                .to_owned()
        )
    );
}

#[test]
fn reason_pod_retention() {
    let b = ScaleBounds {
        pod_retention: Duration::from_secs(300),
        ..bounds()
    };
    let s = run(&mut pa(Activity::Inactive, GRACE), &b, 0, 1);
    assert_eq!(s.apply, None);
    assert_eq!(
        reason(&s),
        (
            ReasonKind::ScaleToZeroGrace,
            "scale-to-zero-pod-retention-period 5m: keeping the pods 4m more".to_owned()
        )
    );
}

#[test]
fn reason_last_activity_keeps_one_pod() {
    let s = run(
        &mut pa(Activity::Active, WINDOW - Duration::from_secs(1)),
        &bounds(),
        0,
        1,
    );
    assert_eq!(s.want, 1);
    assert_eq!(
        reason(&s),
        (
            ReasonKind::LastActivity,
            "last activity: keeping 1 pod for the rest of the 5m stable window (1s left)"
                .to_owned()
        )
    );
}

#[test]
fn reason_activator_not_ready_and_scale_to_zero_disabled() {
    let mut p = pa(Activity::Inactive, GRACE);
    let s = p.reconcile(NOW, &bounds(), 0, -1, 1, 1, false);
    assert_eq!((s.want, s.apply), (0, None));
    assert_eq!(reason(&s).0, ReasonKind::ActivatorNotReady);
    let b = ScaleBounds {
        enable_scale_to_zero: false,
        ..bounds()
    };
    let s = run(&mut pa(Activity::Inactive, GRACE), &b, 0, 1);
    assert_eq!(s.want, 1);
    assert_eq!(
        reason(&s),
        (
            ReasonKind::ScaleToZeroDisabled,
            "enable-scale-to-zero is false: keeping 1 pod".to_owned()
        )
    );
}
