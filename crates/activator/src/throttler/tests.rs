//! Knative's throttler cases (§5.7: T1–T7, T10–T12, T14–T16) and the holding rules.

use std::time::Duration;

use tokio::time::Instant;

use super::capacity::{Activators, INFINITE, assign_slice, capacity, pick_indices};
use super::*;

fn addr(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9000 + i))
}

fn upstream(dest: SocketAddr) -> Arc<Upstream> {
    Upstream::new(dest, 1)
}

fn throttler(cc: u32, pods: u16) -> Throttler {
    let t = Throttler::new(cc, 10_000);
    t.update(&(0..pods).map(addr).collect::<Vec<_>>(), upstream);
    t
}

fn trackers(cc: u32, n: u16) -> Vec<Arc<PodTracker>> {
    let t = throttler(cc, n);
    t.assigned.load().as_ref().clone()
}

fn unknown() -> Activators {
    Activators::default()
}

fn acts(count: usize, index: usize) -> Activators {
    Activators {
        count,
        index: Some(index),
    }
}

#[test]
fn t1_to_t5_capacity_through_a_cluster_ip() {
    for (backends, want) in [(1, 10), (10, 100), (100, 1000)] {
        assert_eq!(capacity(10, backends, 0, false, unknown()), want, "T1");
    }
    assert_eq!(capacity(10, 10, 0, false, acts(5, 0)), 20, "T2");
    assert_eq!(
        capacity(10, 10, 0, false, acts(200, 0)),
        1,
        "T3: at least 1"
    );
    assert_eq!(capacity(10, 0, 0, false, acts(200, 0)), 0, "T4");
    for (backends, want) in [(0, 0), (1, INFINITE), (10, INFINITE)] {
        // Knative's infinite breaker turns this into 0 / open / open.
        assert_eq!(capacity(0, backends, 0, false, unknown()), want, "T5");
    }
}

#[test]
fn t6_t7_t11_capacity_pod_direct() {
    assert_eq!(capacity(10, 1, 1, true, acts(1, 0)), 10, "T6");
    let two = trackers(10, 2);
    let assigned = assign_slice(&two, 10, acts(2, 0));
    assert_eq!(assigned.len(), 1, "T7: one tracker each");
    assert_eq!(capacity(10, 2, assigned.len(), true, acts(2, 0)), 10, "T7");

    let t = throttler(0, 3);
    assert_eq!(t.assigned().len(), 3, "T11: CC 0 uses every pod");
    assert_eq!(t.capacity(), INFINITE, "T11: the gate is open");
}

#[test]
fn t8_t10_slices_and_remnants() {
    let three = trackers(10, 3);
    let dests = |v: Vec<Arc<PodTracker>>| v.iter().map(|t| t.dest).collect::<Vec<_>>();
    assert_eq!(
        dests(assign_slice(&three, 10, acts(2, 0))),
        [addr(0), addr(2)],
        "T8"
    );
    assert_eq!(dests(assign_slice(&three, 10, acts(2, 1))), [addr(1)], "T8");

    let t = throttler(42, 6);
    t.set_activators(acts(4, 0));
    assert_eq!(t.assigned(), [addr(0), addr(4)], "T10");
    assert_eq!(t.capacity(), 84, "T10");
    t.update(&[], upstream);
    assert!(t.assigned().is_empty());
    assert_eq!(t.capacity(), 0, "T10: no pods, no capacity");
}

#[test]
fn t12_pick_indices() {
    for ((pods, index, activators), want) in [
        ((1, 0, 1), (0, 1, 0)),
        ((1, 1, 2), (0, 1, 0)),
        ((2, 1, 3), (1, 2, 0)),
        ((2, 2, 3), (0, 1, 0)),
        ((10, 0, 3), (0, 3, 1)),
        ((10, 2, 3), (6, 9, 1)),
        ((150, 4, 5), (120, 150, 0)),
    ] {
        assert_eq!(
            pick_indices(pods, index, activators),
            want,
            "{pods} {index} {activators}"
        );
    }
}

#[test]
fn t14_round_robin() {
    let ts = trackers(1, 3);
    let rr = Policy::for_container_concurrency(4);
    let dest = |p: &Option<PodPermit>| p.as_ref().map(|p| p.tracker().dest());
    let p0 = rr.pick(&ts);
    let p1 = rr.pick(&ts);
    assert_eq!((dest(&p0), dest(&p1)), (Some(addr(0)), Some(addr(1))));
    assert_eq!(dest(&rr.pick(&ts[..1])), None, "t0 is busy");
    let p2 = rr.pick(&ts);
    assert_eq!(dest(&p2), Some(addr(2)));
    assert_eq!(dest(&rr.pick(&ts)), None, "all busy");
    drop(p2);
    assert_eq!(dest(&rr.pick(&ts)), Some(addr(2)));
    drop((p0, p1));
}

#[test]
fn t15_first_available() {
    let ts = trackers(1, 2);
    let fa = Policy::for_container_concurrency(1);
    let a = fa.pick(&ts).expect("t0");
    let b = fa.pick(&ts).expect("t1");
    assert_eq!((a.tracker().dest(), b.tracker().dest()), (addr(0), addr(1)));
    assert!(fa.pick(&ts).is_none());
    drop(a);
    assert_eq!(fa.pick(&ts).expect("t0 again").tracker().dest(), addr(0));
}

#[test]
fn t16_random_choice_of_two() {
    let ts = trackers(0, 2);
    let p2c = Policy::for_container_concurrency(0);
    let first = p2c.pick(&ts).expect("a pod");
    let second = p2c.pick(&ts).expect("a pod");
    assert_ne!(
        first.tracker().dest(),
        second.tracker().dest(),
        "the less loaded one"
    );
    let freed = second.tracker().dest();
    drop(second);
    let third = p2c.pick(&ts).expect("a pod");
    assert_eq!(third.tracker().dest(), freed);

    let one = trackers(0, 1);
    let held: Vec<_> = (0..3).map(|_| p2c.pick(&one).expect("the pod")).collect();
    assert_eq!(one[0].in_flight(), 3, "weight counts the picks still held");
    drop(held);
    assert_eq!(one[0].in_flight(), 0);
    drop((first, third));
}

#[test]
fn policies_follow_container_concurrency() {
    assert!(matches!(
        Policy::for_container_concurrency(0),
        Policy::RandomChoice2
    ));
    for cc in 1..=3 {
        assert!(matches!(
            Policy::for_container_concurrency(cc),
            Policy::FirstAvailable
        ));
    }
    assert!(matches!(
        Policy::for_container_concurrency(4),
        Policy::RoundRobin { .. }
    ));
}

#[tokio::test(start_paused = true)]
async fn requests_wait_for_a_pod_then_go_in_arrival_order() {
    let t = Arc::new(Throttler::new(1, 10_000));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..5 {
        let (t, tx) = (Arc::clone(&t), tx.clone());
        tokio::spawn(async move {
            let grant = t.acquire().await.expect("a slot");
            tx.send(i).expect("open");
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(grant);
        });
        tokio::task::yield_now().await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(t.held(), 5, "no pod: all held");
    assert!(rx.try_recv().is_err());
    t.update(&[addr(0)], upstream);
    let mut order = Vec::new();
    for _ in 0..5 {
        order.push(rx.recv().await.expect("released"));
    }
    assert_eq!(order, [0, 1, 2, 3, 4]);
    assert_eq!(t.held(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_held_bound_refuses_at_once_and_a_dropped_waiter_frees_its_place() {
    let t = Arc::new(Throttler::new(10, 3));
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let t = Arc::clone(&t);
            tokio::spawn(async move { t.acquire().await.map(drop) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(t.held(), 3);
    assert_eq!(t.acquire().await.err(), Some(ThrottleError::QueueFull));
    waiters[0].abort();
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(t.held(), 2, "the client went away");
    let t2 = Arc::clone(&t);
    let fourth = tokio::spawn(async move { t2.acquire().await.map(drop) });
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(t.held(), 3);
    t.close();
    assert_eq!(fourth.await.expect("join"), Err(ThrottleError::Removed));
}

#[tokio::test(start_paused = true)]
async fn no_request_waits_while_a_pod_is_idle() {
    // CC 1, 3 pods, 30 requests of exactly 10 ms each: with no idle gap, the last one
    // ends at 100 ms; any wait with a pod free would push it later.
    let t = Arc::new(throttler(1, 3));
    let start = Instant::now();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let t = Arc::clone(&t);
            tokio::spawn(async move {
                let grant = t.acquire().await.expect("a slot");
                let pod = grant.pod.tracker().dest();
                assert!(grant.pod.tracker().in_flight() <= 1);
                tokio::time::sleep(Duration::from_millis(10)).await;
                pod
            })
        })
        .collect();
    let mut per_pod = std::collections::HashMap::new();
    for task in tasks {
        *per_pod.entry(task.await.expect("join")).or_insert(0) += 1;
    }
    assert_eq!(Instant::now() - start, Duration::from_millis(100));
    assert_eq!(per_pod.len(), 3);
    assert!(per_pod.values().all(|&n| n == 10), "{per_pod:?}");
}

#[tokio::test(start_paused = true)]
async fn a_repick_keeps_its_place_and_avoids_a_pod_taken_out() {
    let t = Arc::new(throttler(1, 2));
    let grant = t.acquire().await.expect("a slot");
    let failed = grant.pod.tracker().dest();
    let others: Vec<_> = t.assigned().into_iter().filter(|d| *d != failed).collect();
    t.update(&others, upstream);
    let again = t.repick(grant).await.expect("the other pod");
    assert_ne!(again.pod.tracker().dest(), failed);
}
