//! Knative HEAD's three timers (§1.8): response start, idle, and the total as a hard
//! maximum; the breaker wait counts towards them.

use std::time::Duration;

use sluice_test_support::client::{app_stats, get};
use sluice_test_support::start_pod;
use tokio::time::Instant;

#[tokio::test]
async fn response_start_timeout_gives_504() {
    let (_app, qp) = start_pod(0, &["--revision-response-start-timeout-seconds=1".into()]).await;
    let start = Instant::now();
    let reply = get(&qp.url("/?sleep=3000")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (504, "request timeout")
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(950) && took < Duration::from_millis(2500),
        "{took:?}"
    );
}

#[tokio::test]
async fn idle_timeout_cuts_a_stalled_stream_but_not_a_dripping_one() {
    let (_app, qp) = start_pod(0, &["--revision-idle-timeout-seconds=1".into()]).await;
    let stalled = get(&qp.url("/drip?chunks=3&interval=2000")).await;
    assert_eq!(stalled.status, 200, "headers were already sent");
    assert_eq!(stalled.text(), "chunk 0\nrequest timeout");
    let dripping = get(&qp.url("/drip?chunks=5&interval=300")).await;
    assert_eq!(
        dripping.text(),
        "chunk 0\nchunk 1\nchunk 2\nchunk 3\nchunk 4\n",
        "each write resets the idle timer"
    );
}

#[tokio::test]
async fn total_timeout_is_a_hard_maximum_even_while_streaming() {
    let (_app, qp) = start_pod(0, &["--revision-timeout-seconds=2".into()]).await;
    let reply = get(&qp.url("/drip?chunks=20&interval=300")).await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(text.ends_with("request timeout"), "{text}");
    let chunks = text.matches("chunk").count();
    assert!(
        (4..=8).contains(&chunks),
        "cut near 2 s: {chunks} chunks\n{text}"
    );
}

#[tokio::test]
async fn time_waiting_for_a_slot_counts() {
    // The holder's headers go out at once (its response started), but its body holds the
    // only slot for 2.5 s; the waiter's response-start timer runs while it queues.
    let (app, qp) = start_pod(1, &["--revision-response-start-timeout-seconds=1".into()]).await;
    let holder = tokio::spawn({
        let url = qp.url("/drip?chunks=2&interval=2500");
        async move { get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let queued = get(&qp.url("/")).await;
    assert_eq!(
        (queued.status.as_u16(), queued.text().as_str()),
        (504, "request timeout")
    );
    assert!(
        start.elapsed() < Duration::from_millis(2000),
        "timed out in the queue: {:?}",
        start.elapsed()
    );
    let held = holder.await.unwrap();
    assert_eq!(
        (held.status.as_u16(), held.text().as_str()),
        (200, "chunk 0\nchunk 1\n")
    );
    assert_eq!(
        app_stats(app.addr).await.2,
        1,
        "the queued request never reached the app"
    );
}
