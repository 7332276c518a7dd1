//! Knative's breaker cases B1, B4–B6 (reference §5.4), plus cancellation and FIFO order.

use std::time::Duration;

use super::*;

fn breaker(queue_depth: usize, max: usize, initial: usize) -> Arc<Breaker> {
    Breaker::new(BreakerParams {
        queue_depth,
        max_concurrency: max,
        initial_capacity: initial,
    })
    .expect("valid params")
}

#[test]
fn b1_container_concurrency_params_admit_eleven_times_cc() {
    let p = BreakerParams::for_container_concurrency(5);
    assert_eq!(
        (p.queue_depth, p.max_concurrency, p.initial_capacity),
        (50, 5, 5)
    );
}

#[test]
fn b4_reserve_overload() {
    let b = breaker(1, 1, 1);
    let first = b.reserve().expect("free slot");
    assert!(
        b.reserve().is_none(),
        "second reserve must fail while the slot is held"
    );
    drop(first);
    assert!(b.reserve().is_some(), "slot is free again");
    assert_eq!(b.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn b5_queueing_with_zero_initial_capacity() {
    let b = breaker(1, 1, 0);
    let (b1, b2) = (Arc::clone(&b), Arc::clone(&b));
    let t1 = tokio::spawn(async move { b1.acquire().await.map(drop) });
    let t2 = tokio::spawn(async move { b2.acquire().await.map(drop) });
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(b.in_flight(), 2, "both admitted and waiting");
    assert!(!t1.is_finished() && !t2.is_finished());
    b.update_concurrency(1);
    assert_eq!(t1.await.expect("join"), Ok(()));
    assert_eq!(t2.await.expect("join"), Ok(()));
    assert_eq!(b.in_flight(), 0);
}

#[test]
fn b6_invalid_params_are_refused() {
    let zero_depth = Breaker::new(BreakerParams {
        queue_depth: 0,
        max_concurrency: 1,
        initial_capacity: 1,
    });
    assert_eq!(zero_depth.err(), Some(InvalidBreaker::QueueDepth(0)));
    let too_big = Breaker::new(BreakerParams {
        queue_depth: 1,
        max_concurrency: 5,
        initial_capacity: 6,
    });
    assert_eq!(
        too_big.err(),
        Some(InvalidBreaker::InitialCapacity { initial: 6, max: 5 })
    );
}

#[tokio::test]
async fn queue_full_fails_at_once() {
    let b = breaker(1, 1, 1);
    let running = b.acquire().await.expect("slot");
    let b2 = Arc::clone(&b);
    let waiting = tokio::spawn(async move { b2.acquire().await.map(drop) });
    tokio::task::yield_now().await;
    assert_eq!(b.in_flight(), 2);
    assert_eq!(b.acquire().await.err(), Some(QueueFull));
    drop(running);
    assert_eq!(waiting.await.expect("join"), Ok(()));
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_gives_its_place_back() {
    let b = breaker(1, 1, 1);
    let _running = b.acquire().await.expect("slot");
    let waiter = tokio::time::timeout(Duration::from_millis(5), b.acquire()).await;
    assert!(waiter.is_err(), "waiter timed out");
    assert_eq!(b.in_flight(), 1, "the cancelled waiter left the queue");
    let b2 = Arc::clone(&b);
    let again = tokio::spawn(async move { b2.acquire().await.map(drop) });
    tokio::task::yield_now().await;
    assert!(
        !again.is_finished(),
        "a new waiter is admitted, not refused"
    );
    again.abort();
}

#[tokio::test(start_paused = true)]
async fn waiters_run_in_arrival_order() {
    let b = breaker(10, 1, 1);
    let first = b.acquire().await.expect("slot");
    let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..5 {
        let (b, order) = (Arc::clone(&b), Arc::clone(&order));
        tasks.push(tokio::spawn(async move {
            let _p = b.acquire().await.expect("admitted");
            order.lock().push(i);
            tokio::time::sleep(Duration::from_millis(1)).await;
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    drop(first);
    for t in tasks {
        t.await.expect("join");
    }
    assert_eq!(*order.lock(), vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn capacity_decrease_waits_for_running_requests() {
    let b = breaker(10, 3, 3);
    let p1 = b.acquire().await.expect("slot");
    let p2 = b.acquire().await.expect("slot");
    b.update_concurrency(1);
    assert_eq!(b.capacity(), 1);
    assert!(b.reserve().is_none(), "two running, capacity one");
    drop(p1);
    assert!(b.reserve().is_none(), "still one running, capacity one");
    drop(p2);
    let p3 = b.reserve().expect("one may run now");
    assert!(b.reserve().is_none());
    drop(p3);
    b.update_concurrency(10);
    assert_eq!(b.capacity(), 3, "clamped to max concurrency");
    let held: Vec<_> = (0..3).map(|_| b.reserve().expect("slot")).collect();
    assert!(b.reserve().is_none());
    drop(held);
}
