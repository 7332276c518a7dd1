//! The service glue on a paused clock: ticks, pokes, the registry, observed pods and
//! decisions to subscribers. No network here (see `tests/grpc.rs` for that).

use std::collections::BTreeMap;

use sluice_proto::Stat;

use super::*;
use crate::scaler::{ObservedPods, RecordingScaler};

const NS: &str = "default";

fn key(name: &str) -> RevisionKey {
    RevisionKey::new(NS, name)
}

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (format!("autoscaling.knative.dev/{k}"), (*v).to_owned()))
        .collect()
}

fn report(name: &str, source: Source, pod: &str, concurrency: f64) -> StatReport {
    StatReport {
        namespace: NS.into(),
        revision: name.into(),
        source: source.into(),
        stat: Some(Stat {
            pod_name: pod.into(),
            average_concurrent_requests: concurrency,
            request_count: concurrency,
            ..Stat::default()
        }),
        poke: false,
    }
}

fn autoscaler(scaler: Arc<dyn Scaler>, auto_register: bool) -> Autoscaler {
    Autoscaler::new(
        AutoscalerConfig::default(),
        scaler,
        Options {
            tick: TICK,
            auto_register,
            wall_clock: false,
        },
    )
}

/// Lets spawned tasks run without moving the paused clock.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// Sleeps (virtual time) and lets tick tasks run.
async fn advance(d: Duration) {
    tokio::time::sleep(d).await;
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn ticks_every_two_seconds_and_scales_as_the_kpa_says() {
    let scaler = Arc::new(RecordingScaler::new());
    let a = autoscaler(scaler.clone(), false);
    let rev = key("hello-00001");
    scaler.set_pods(&rev, 1, 1);
    a.upsert_revision(&rev, annotations(&[("target", "10")]), 0)
        .expect("valid");
    let mut changes = a.subscribe();

    // 5 pods × 10 = 50 each second, from t = 0.5 s: one bucket per second.
    advance(Duration::from_millis(500)).await;
    for _ in 0..3 {
        for pod in 0..5 {
            a.record(&report(
                "hello-00001",
                Source::QueueProxy,
                &format!("p{pod}"),
                10.0,
            ))
            .expect("registered");
        }
        advance(Duration::from_secs(1)).await;
    }
    // The tick at 2 s decided: ⌈50 / (10 × 0.7)⌉ = 8, in panic (8 ≥ 2 × 1 ready).
    assert_eq!(scaler.calls(), [(rev.clone(), 8)]);
    let d = changes.try_recv().expect("a decision was published");
    assert_eq!(
        (d.desired_scale, d.decider_desired, d.panic, d.stable_value),
        (8, 8, true, 50.0)
    );
    // The tick at 4 s changes nothing (replicas are 8 now): no new scale call, and no
    // new publication either.
    advance(Duration::from_secs(1)).await;
    assert_eq!(scaler.calls().len(), 1);
    assert!(changes.try_recv().is_err());
    let text = String::from_utf8(a.metrics().text()).expect("utf-8");
    assert!(
        text.contains(
            "autoscaler_desired_pods{namespace_name=\"default\",revision_name=\"hello-00001\"} 8"
        ),
        "{text}"
    );
    assert!(text.contains(
        "autoscaler_panic_mode{namespace_name=\"default\",revision_name=\"hello-00001\"} 1"
    ));
    assert!(text.contains("autoscaler_target_concurrency_per_pod{namespace_name=\"default\",revision_name=\"hello-00001\"} 7"));
    assert!(text.contains("sluice_autoscaler_stats_total{source=\"queue-proxy\"} 15"));
}

#[tokio::test(start_paused = true)]
async fn a_poke_at_zero_decides_without_waiting_for_the_tick() {
    let scaler = Arc::new(RecordingScaler::new());
    let a = autoscaler(scaler.clone(), false);
    let rev = key("zero-00001");
    a.upsert_revision(&rev, BTreeMap::new(), 0).expect("valid");
    // An idle second, then the tick at 2 s: the decider says 0.
    a.record(&report("zero-00001", Source::Activator, "", 0.0))
        .expect("registered");
    advance(TICK).await;
    assert_eq!(a.decisions(None)[0].decider_desired, 0);

    let mut changes = a.subscribe();
    let poked_at = tokio::time::Instant::now();
    let mut poke = report("zero-00001", Source::Activator, "", 1.0);
    poke.poke = true;
    a.record(&poke).expect("registered");
    settle().await;
    assert_eq!(
        tokio::time::Instant::now(),
        poked_at,
        "no virtual time passed"
    );
    let d = changes.try_recv().expect("decided at once");
    assert_eq!((d.decider_desired, d.desired_scale), (1, 1));
    assert_eq!(scaler.calls(), [(rev, 1)]);
    assert_eq!(a.metrics().pokes.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn stats_for_unknown_revisions_are_refused_unless_auto_registered() {
    let strict = autoscaler(Arc::new(ObservedPods), false);
    let r = report("nobody-00001", Source::QueueProxy, "p", 1.0);
    assert_eq!(
        strict.record(&r),
        Err(Rejected::UnknownRevision(key("nobody-00001")))
    );
    let mut no_stat = r.clone();
    no_stat.stat = None;
    assert_eq!(strict.record(&no_stat), Err(Rejected::Missing("stat")));
    let mut no_ns = r.clone();
    no_ns.namespace.clear();
    assert_eq!(strict.record(&no_ns), Err(Rejected::Missing("namespace")));
    let mut bad_source = r.clone();
    bad_source.source = 42;
    assert_eq!(strict.record(&bad_source), Err(Rejected::UnknownSource(42)));
    let text = String::from_utf8(sluice_core::metrics::encode_text(
        strict.metrics().registry(),
    ))
    .expect("utf-8");
    assert!(text.contains("sluice_autoscaler_stats_rejected_total{reason=\"missing_field\"} 2"));

    let open = autoscaler(Arc::new(ObservedPods), true);
    open.record(&r).expect("registered on the fly");
    assert_eq!(open.decisions(None)[0].revision, "nobody-00001");
}

#[tokio::test(start_paused = true)]
async fn observed_pods_are_the_queue_proxies_still_reporting() {
    let a = autoscaler(Arc::new(ObservedPods), true);
    for t in 0..6 {
        for pod in ["a", "b", "c"] {
            // Pod c stops after 1 s.
            if pod != "c" || t < 1 {
                a.record(&report("obs-00001", Source::QueueProxy, pod, 1.0))
                    .expect("valid");
            }
        }
        advance(Duration::from_secs(1)).await;
    }
    // Ticks at 2 s and 4 s (from registration at 0): c last reported at 0 s, stale by 4 s.
    assert_eq!(a.decisions(None)[0].ready_pods, 2);
}

#[tokio::test(start_paused = true)]
async fn a_bad_annotation_or_config_changes_nothing() {
    let scaler = Arc::new(RecordingScaler::new());
    let a = autoscaler(scaler, false);
    let rev = key("cfg-00001");
    a.upsert_revision(&rev, annotations(&[("max-scale", "50")]), 0)
        .expect("valid");
    let err = a
        .upsert_revision(&rev, annotations(&[("max-scale", "-3")]), 0)
        .expect_err("negative");
    assert!(err.to_string().contains("max-scale"), "{err}");

    let limited = AutoscalerConfig {
        max_scale_limit: 10,
        ..AutoscalerConfig::default()
    };
    let refused = a
        .set_config(limited)
        .expect_err("max-scale 50 is over the limit");
    assert_eq!(refused.0.len(), 1);
    assert!(refused.to_string().contains("cfg-00001"), "{refused}");
    // The old config still holds: a revision without max-scale registers fine.
    a.upsert_revision(&key("cfg-00002"), BTreeMap::new(), 0)
        .expect("no limit in force");
}

#[tokio::test(start_paused = true)]
async fn removing_a_revision_tells_watchers_and_stops_its_ticks() {
    let scaler = Arc::new(RecordingScaler::following());
    let a = autoscaler(scaler.clone(), false);
    let rev = key("gone-00001");
    a.upsert_revision(&rev, BTreeMap::new(), 0).expect("valid");
    let mut changes = a.subscribe();
    assert!(a.remove_revision(&rev));
    assert!(!a.remove_revision(&rev));
    let d = changes.try_recv().expect("removal published");
    assert!(d.removed);
    a.record(&report("gone-00001", Source::QueueProxy, "p", 5.0))
        .expect_err("no longer registered");
    advance(TICK * 3).await;
    assert!(scaler.calls().is_empty());
    assert!(changes.try_recv().is_err(), "no ticks after removal");
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_revision_drops_its_min_scale_and_a_routed_one_gets_it_back() {
    let scaler = Arc::new(RecordingScaler::following());
    let a = autoscaler(scaler.clone(), false);
    let rev = key("old-00001");
    a.upsert_revision(&rev, annotations(&[("min-scale", "2")]), 0)
        .expect("valid");
    assert!(!a.set_reachable(&key("nobody-00001"), false), "unknown");
    let idle = |a: &Autoscaler| {
        for pod in ["p0", "p1"] {
            a.record(&report("old-00001", Source::QueueProxy, pod, 0.0))
                .expect("registered");
        }
    };
    // Idle, but routed: min-scale holds it at 2.
    for _ in 0..40 {
        idle(&a);
        advance(Duration::from_secs(1)).await;
    }
    assert_eq!(scaler.calls().last(), Some(&(rev.clone(), 2)));
    let routed_calls = scaler.calls().len();

    // No route sends it traffic any more: down to zero once idle for a stable window and
    // the grace period, not held at one pod until the activation timeout.
    assert!(a.set_reachable(&rev, false));
    for _ in 0..120 {
        idle(&a);
        advance(Duration::from_secs(1)).await;
    }
    let calls = scaler.calls();
    assert!(calls.len() > routed_calls, "{calls:?}");
    assert_eq!(calls.last(), Some(&(rev.clone(), 0)), "{calls:?}");

    // Routed again: min-scale is back, decided at once.
    assert!(a.set_reachable(&rev, true));
    settle().await;
    assert_eq!(scaler.calls().last(), Some(&(rev.clone(), 2)));
}
