//! Drain: probes fail at once, requests keep being served until a quiet period passes,
//! and none is lost. `/wait-for-drain` without a shutdown is undone after a second.

use std::time::Duration;

use sluice_test_support::client::{get, get_with};
use sluice_test_support::{load, start_pod};

const HEALTH: [(&str, &str); 2] = [
    ("user-agent", "kube-probe/1.29"),
    ("k-network-probe", "queue"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_is_lost_across_shutdown_under_load() {
    let (_app, mut qp) = start_pod(4, &[]).await;
    let url = qp.url("/?sleep=20");
    let loader =
        tokio::spawn(async move { load::run(&url, 16, None, Duration::from_millis(1500)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    qp.running.signal_stop();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let probe = get_with(&qp.url("/"), &HEALTH).await;
    assert_eq!(
        (probe.status.as_u16(), probe.text().as_str()),
        (503, "shutting down"),
        "probes fail at once"
    );
    let net = get_with(
        &qp.url("/"),
        &[("k-network-probe", "probe"), ("k-network-hash", "h")],
    )
    .await;
    assert_eq!(net.status, 503);
    let served = get(&qp.url("/")).await;
    assert_eq!(
        served.status, 200,
        "requests are still served while draining"
    );

    let report = loader.await.unwrap();
    assert!(report.total() > 100, "the load ran: {report:?}");
    assert_eq!(
        report.count(200),
        report.total(),
        "no request lost: {report:?}"
    );
    // The drain ends a quiet period (200 ms) after the last request.
    tokio::time::timeout(Duration::from_secs(5), qp.running.task)
        .await
        .expect("exited after the quiet period")
        .unwrap();
    assert!(
        tokio::net::TcpStream::connect(qp.serving).await.is_err(),
        "port closed after the drain"
    );
}

#[tokio::test]
async fn wait_for_drain_without_sigterm_is_reset() {
    let (_app, qp) = start_pod(1, &["--drain-quiet-period=30s".into()]).await;
    let admin = format!("http://{}/wait-for-drain", qp.admin);
    let hook = tokio::spawn(async move { get(&admin).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        get_with(&qp.url("/"), &HEALTH).await.status,
        503,
        "draining after the preStop hook"
    );
    let reply = tokio::time::timeout(Duration::from_secs(3), hook)
        .await
        .expect("hook returns")
        .unwrap();
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "drain reset")
    );
    assert_eq!(
        get_with(&qp.url("/"), &HEALTH).await.status,
        200,
        "healthy again"
    );
    assert_eq!(get(&format!("http://{}/other", qp.admin)).await.status, 404);
}

#[tokio::test]
async fn wait_for_drain_returns_when_the_drain_completes() {
    let (_app, mut qp) = start_pod(1, &[]).await;
    let admin = format!("http://{}/wait-for-drain", qp.admin);
    qp.running.signal_stop();
    let reply = tokio::time::timeout(Duration::from_secs(3), get(&admin))
        .await
        .expect("drained");
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "drained")
    );
}
