//! `containerConcurrency`: N running, 10×N waiting, 503 past that; CC=0 unlimited.

use std::time::Duration;

use sluice_test_support::client::{app_stats, get, get_with};
use sluice_test_support::{hey, load, start_pod};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc5_never_lets_more_than_5_reach_the_app() {
    let (app, qp) = start_pod(5, &[]).await;
    let report = load::run(&qp.url("/?sleep=100"), 50, None, Duration::from_secs(3)).await;
    let (_, max_in_flight, seen) = app_stats(app.addr).await;
    assert_eq!(
        max_in_flight, 5,
        "the app saw at most (and reached) 5 at once"
    );
    assert_eq!(
        report.count(200),
        report.total(),
        "all answered 200: {report:?}"
    );
    // 5 slots × 100 ms = 50/s; waiting requests finish after the loop's 3 s.
    let per_sec = report.total() as f64 / report.elapsed.as_secs_f64();
    assert!(
        per_sec <= 56.0,
        "more than 5 at a time got through: {per_sec:.1}/s"
    );
    assert!(
        per_sec >= 30.0,
        "slots sat idle: {per_sec:.1}/s ({report:?})"
    );
    assert_eq!(
        seen,
        report.total(),
        "every request reached the app exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc1_queues_ten_and_refuses_the_twelfth_at_once() {
    let (app, qp) = start_pod(1, &[]).await;
    let url = qp.url("/?sleep=200");
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let reply = get(&url).await;
            (reply.status.as_u16(), reply.text(), start.elapsed())
        }));
    }
    let mut ok = 0;
    let mut refused = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            (200, _, _) => ok += 1,
            (503, body, took) => refused.push((body, took)),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(ok, 11, "1 running + 10 queued");
    assert_eq!(refused.len(), 1, "{refused:?}");
    let (body, took) = &refused[0];
    assert_eq!(body, "pending request queue full");
    assert!(
        *took < Duration::from_millis(150),
        "refused at once, not after waiting: {took:?}"
    );
    assert_eq!(app_stats(app.addr).await.1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc0_is_unlimited() {
    let (app, qp) = start_pod(0, &[]).await;
    let report = load::run(
        &qp.url("/?sleep=300"),
        40,
        Some(40),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(report.count(200), 40, "{report:?}");
    assert_eq!(app_stats(app.addr).await.1, 40, "all 40 ran at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubelet_probes_bypass_the_breaker() {
    // Knative's TestIgnoreProbe (B7): with one slot, three probes reach the app at once.
    let (app, qp) = start_pod(1, &[]).await;
    let url = qp.url("/?sleep=300");
    let probes: Vec<_> = (0..3)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                get_with(&url, &[("k-kubelet-probe", "queue")])
                    .await
                    .status
                    .as_u16()
            })
        })
        .collect();
    for p in probes {
        assert_eq!(p.await.unwrap(), 200);
    }
    assert_eq!(app_stats(app.addr).await.1, 3);
}

/// The seed scenario: `hey -n 100000 -c 50` against containerConcurrency 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hey_100k_requests_at_50_concurrent_with_cc5_all_200() {
    let (app, qp) = start_pod(5, &[]).await;
    let url = qp.url("/");
    let report = tokio::task::spawn_blocking(move || {
        hey::run(&["-n", "100000", "-c", "50", "-t", "30"], &url)
    })
    .await
    .unwrap();
    assert_eq!(
        report.statuses.get(&200),
        Some(&100_000),
        "{}",
        report.output
    );
    assert_eq!(report.statuses.len(), 1, "{}", report.output);
    assert_eq!(report.errors, 0, "{}", report.output);
    let (_, max_in_flight, seen) = app_stats(app.addr).await;
    assert!(max_in_flight <= 5, "app saw {max_in_flight} at once");
    assert_eq!(seen, 100_000);
}

#[tokio::test]
async fn upstream_connections_are_reused() {
    let (app, qp) = start_pod(0, &[]).await;
    let client = sluice_test_support::client::http1();
    for path in ["/", "/status/204", "/stream?mb=1", "/?sleep=1"] {
        for _ in 0..50 {
            let req = http::Request::get(qp.url(path))
                .body(http_body_util::Full::default())
                .unwrap();
            let reply = sluice_test_support::client::send(&client, req)
                .await
                .unwrap();
            assert!(reply.status.is_success(), "{path}: {}", reply.status);
        }
    }
    // One connection for 200 sequential requests, plus the one this check opens.
    assert_eq!(
        sluice_test_support::client::app_connections(app.addr).await,
        2
    );
}

/// An HTTP/1.1 app that closes a keep-alive connection after `idle` without a request,
/// as Node.js does after its 5 s `keepAliveTimeout`, without saying so in its response.
async fn closing_app(idle: Duration) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = sluice_test_support::loopback_listener().await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut have = 0;
                loop {
                    match tokio::time::timeout(idle, conn.read(&mut buf[have..])).await {
                        Ok(Ok(n)) if n > 0 => have += n,
                        _ => return, // idle too long, or the peer closed: drop the connection
                    }
                    if buf[..have].windows(4).any(|w| w == b"\r\n\r\n") {
                        have = 0;
                        let ok = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                        if ok.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn app_closing_idle_connections_costs_no_request() {
    let app = closing_app(Duration::from_millis(100)).await;
    let qp = sluice_test_support::start_queue_proxy(sluice_test_support::queue_proxy_args(
        app.port(),
        0,
        &[],
    ))
    .await;
    let mut failed = Vec::new();
    // Spaced around the app's idle timeout, so some requests meet a connection the app
    // is closing at that very moment.
    for i in 0..40u64 {
        tokio::time::sleep(Duration::from_millis(90 + (i * 7) % 25)).await;
        let reply = get(&qp.url("/")).await;
        if reply.status != 200 {
            failed.push((i, reply.status, reply.text()));
        }
    }
    assert!(failed.is_empty(), "{failed:?}");
}
