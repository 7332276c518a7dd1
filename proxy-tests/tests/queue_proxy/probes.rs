//! Probes: kubelet and activator health checks answered by the queue-proxy with the
//! app's readiness, network probes, and the app's readiness probe itself.

use std::time::Duration;

use sluice_test_support::client::get_with;
use sluice_test_support::{queue_proxy_args, start_app, start_pod, start_queue_proxy};

const KUBELET: (&str, &str) = ("user-agent", "kube-probe/1.29");
const QUEUE_PROBE: (&str, &str) = ("k-network-probe", "queue");

#[tokio::test]
async fn health_checks_need_the_queue_probe_header() {
    let (app, qp) = start_pod(1, &[]).await;
    for ua in [
        "kube-probe/1.29",
        "Knative-Activator-Probe",
        "Knative-Autoscaling-Probe",
    ] {
        let ok = get_with(&qp.url("/healthz"), &[("user-agent", ua), QUEUE_PROBE]).await;
        assert_eq!(
            (ok.status.as_u16(), ok.text().as_str()),
            (200, "queue"),
            "{ua}"
        );
    }
    let bad = get_with(&qp.url("/"), &[KUBELET]).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.text(), "unexpected probe header value: ");
    let (_, _, seen) = sluice_test_support::client::app_stats(app.addr).await;
    assert_eq!(seen, 0, "health checks never reach the app");
}

#[tokio::test]
async fn network_probe_echoes_the_hash() {
    let (_app, qp) = start_pod(0, &[]).await;
    let ok = get_with(
        &qp.url("/"),
        &[("k-network-probe", "probe"), ("k-network-hash", "abc123")],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.headers["k-network-hash"], "abc123");
    let no_hash = get_with(&qp.url("/"), &[("k-network-probe", "probe")]).await;
    assert_eq!(no_hash.status, 400);
}

#[tokio::test]
async fn readiness_follows_the_apps_probe() {
    // A TCP readiness probe (the webhook's default) on a port where nothing listens yet:
    // on a loopback address of this test's own, so that no other test's listener can take
    // the port between its choice and the probe (seen once on 127.0.0.1).
    let app = start_app().await;
    let pid = std::process::id();
    let ip = std::net::Ipv4Addr::new(127, 201, (pid >> 8) as u8, (pid as u8).max(1));
    let spare = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = spare.local_addr().unwrap().port();
    drop(spare);
    let probe = format!(
        r#"--serving-readiness-probe={{"tcpSocket":{{"port":{port},"host":"{ip}"}},"periodSeconds":1}}"#
    );
    let qp = start_queue_proxy(queue_proxy_args(app.addr.port(), 0, &[probe])).await;
    let not_ready = get_with(&qp.url("/"), &[KUBELET, QUEUE_PROBE]).await;
    assert_eq!(not_ready.status, 503, "nothing listens on the probed port");
    let _now_listening = tokio::net::TcpListener::bind((ip, port)).await.unwrap();
    let ready = get_with(&qp.url("/"), &[KUBELET, QUEUE_PROBE]).await;
    assert_eq!(
        (ready.status.as_u16(), ready.text().as_str()),
        (200, "queue")
    );
}

#[tokio::test]
async fn aggressive_probing_answers_as_soon_as_the_app_is_up() {
    let spare = sluice_test_support::loopback_listener().await;
    let port = spare.local_addr().unwrap().port();
    drop(spare);
    let probe = format!(
        r#"--serving-readiness-probe={{"httpGet":{{"port":{port},"path":"/","host":"127.0.0.1"}}}}"#
    );
    let qp = start_queue_proxy(queue_proxy_args(port, 0, &[probe])).await;
    let url = qp.url("/");
    let asked = tokio::spawn(async move { get_with(&url, &[KUBELET, QUEUE_PROBE]).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        !asked.is_finished(),
        "the probe waits (polling every 50 ms) for the app"
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sluice_sample_app_serve(listener, stop_rx));
    let reply = tokio::time::timeout(Duration::from_secs(2), asked)
        .await
        .expect("answered soon")
        .unwrap();
    assert_eq!(reply.status, 200);
    let _ = stop_tx.send(());
}

/// The real sample app, started late on a port chosen before.
async fn sluice_sample_app_serve(
    listener: tokio::net::TcpListener,
    stop: tokio::sync::oneshot::Receiver<()>,
) {
    sluice_test_support::serve_sample_app(listener, async move {
        let _ = stop.await;
    })
    .await;
}

#[tokio::test]
async fn app_down_gives_502_and_the_queue_proxy_stays_up() {
    let spare = sluice_test_support::loopback_listener().await;
    let port = spare.local_addr().unwrap().port();
    drop(spare);
    let qp = start_queue_proxy(queue_proxy_args(port, 2, &[])).await;
    for _ in 0..3 {
        let reply = sluice_test_support::client::get(&qp.url("/")).await;
        assert_eq!(reply.status, 502);
        assert!(
            reply.text().starts_with("error reaching the app: dial tcp"),
            "{}",
            reply.text()
        );
    }
    let app = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    let (_stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(sluice_sample_app_serve(app, stop_rx));
    let reply = sluice_test_support::client::get(&qp.url("/")).await;
    assert_eq!(
        (reply.status.as_u16(), reply.text().as_str()),
        (200, "Hello World!\n")
    );
}
