//! The activator over real sockets: real queue-proxies in front of real sample apps, an
//! in-process endpoint source, a test stats server for the poke.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use sluice_core::feed::Feed;
use sluice_test_support::activator::{
    ActivatorHandle, revision, routing, serve_endpoints, start_activator, start_activator_following,
};
use sluice_test_support::client::{self, app_stats};
use sluice_test_support::relay::Relay;
use sluice_test_support::stats_sink::StatsSink;
use sluice_test_support::{load, start_pod};
use tokio::time::Instant;

const REV: &str = "hello-00001";
/// How long the app works on each request in the scale-from-zero test.
const APP_MS: Duration = Duration::from_millis(20);

fn get(url: &str, rev: &str) -> Request<Full<Bytes>> {
    let mut req = Request::get(url);
    for (k, v) in routing(rev) {
        req = req.header(k, v);
    }
    req.body(Full::default()).expect("request")
}

/// Waits until the pod's queue-proxy says it is ready, as the activator's probe asks.
async fn until_ready(qp: SocketAddr) {
    for _ in 0..200 {
        let r = client::get_with(
            &format!("http://{qp}/healthz"),
            &[
                ("k-network-probe", "queue"),
                ("user-agent", "Knative-Activator-Probe"),
            ],
        )
        .await;
        if r.status == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("queue-proxy {qp} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_from_zero_releases_100_held_requests_within_capacity() {
    let act = start_activator(&[]).await;
    act.publisher.publish(revision(REV, 10, 0, &[]));
    let client = client::http1();
    // Each request keeps the app busy 20 ms, so capacity is what orders them.
    let url = act.url(&format!("/?sleep={}", APP_MS.as_millis()));
    let requests: Vec<_> = (0..100)
        .map(|_| {
            let (client, req) = (client.clone(), get(&url, REV));
            tokio::spawn(async move {
                let reply = client::send(&client, req).await;
                (reply, Instant::now())
            })
        })
        .collect();
    act.wait_metric(
        "sluice_activator_requests_held{",
        Duration::from_secs(5),
        |v| v == 100.0,
    )
    .await;

    tokio::time::sleep(Duration::from_secs(2)).await;
    let (app, qp) = start_pod(10, &[]).await;
    until_ready(qp.serving).await;
    let ready = Instant::now();
    act.publisher.publish(revision(REV, 10, 0, &[qp.serving]));

    let mut first = None::<Instant>;
    for r in requests {
        let (reply, at) = r.await.expect("join");
        let reply = reply.expect("a response");
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(at >= ready, "answered before the pod was ready");
        first = Some(first.map_or(at, |f| f.min(at)));
    }
    // The app's own 20 ms is not the activator's: what is left is probe + release + proxy.
    let first_after = first.expect("responses") - ready;
    let overhead = first_after.saturating_sub(APP_MS);
    println!(
        "first response {first_after:?} after the pod was ready ({overhead:?} beyond the app's {APP_MS:?})"
    );
    assert!(
        overhead <= Duration::from_millis(50),
        "first response {first_after:?} after the pod became ready"
    );
    let (_, max_in_flight, requests) = app_stats(app.addr).await;
    assert_eq!(requests, 100);
    assert!(max_in_flight <= 10, "the app saw {max_in_flight} at once");

    // Each of the 100 arrived with no pod and waited for one: 100 cold-start samples,
    // every one over the 2 s before the pod was started, none over the 5 s bucket.
    let labels = r#"{namespace_name="default",revision_name="hello-00001""#;
    let exact = |v: f64| move |x: f64| x == v;
    act.wait_metric(
        &format!("sluice_activator_cold_start_requests_total{labels}}}"),
        Duration::from_secs(1),
        exact(100.0),
    )
    .await;
    let histogram = "sluice_activator_cold_start_seconds";
    act.wait_metric(
        &format!("{histogram}_count{labels}}}"),
        Duration::from_secs(1),
        exact(100.0),
    )
    .await;
    for (le, count) in [("1", 0.0), ("5", 100.0)] {
        act.wait_metric(
            &format!("{histogram}_bucket{labels},le=\"{le}\"}}"),
            Duration::from_secs(1),
            exact(count),
        )
        .await;
    }
    act.wait_metric(
        &format!("{histogram}_sum{labels}}}"),
        Duration::from_secs(1),
        |sum| sum >= 200.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holding_limits_queue_depth_timeout_and_client_gone() {
    let act = start_activator(&["--queue-depth=10000"]).await;
    act.publisher.publish(revision(REV, 1, 0, &[]));
    act.publisher.publish(revision("slow-00001", 1, 1, &[]));
    let held =
        "sluice_activator_requests_held{namespace_name=\"default\",revision_name=\"hello-00001\"}";

    // 10,000 held requests on h2c connections (200 streams each, so 50 connections).
    let url = act.url("/");
    let mut conns = Vec::new();
    for _ in 0..50 {
        conns.push(client::h2c());
    }
    let waiting: Vec<_> = (0..10_000)
        .map(|i| {
            let (client, req) = (conns[i % 50].clone(), get(&url, REV));
            tokio::spawn(async move { client::send(&client, req).await })
        })
        .collect();
    act.wait_metric(held, Duration::from_secs(30), |v| v == 10_000.0)
        .await;

    let sent = Instant::now();
    let refused = client::send(&client::http1(), get(&url, REV))
        .await
        .expect("a response");
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.text().contains("queue full"), "{}", refused.text());
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "refused at once, not after waiting"
    );
    for w in &waiting {
        w.abort();
    }
    drop(conns);
    act.wait_metric(held, Duration::from_secs(30), |v| v == 0.0)
        .await;

    // Past the revision's timeout (1 s): 504.
    let reply = client::send(&client::http1(), get(&url, "slow-00001"))
        .await
        .expect("a response");
    assert_eq!(reply.status, 504);
    assert_eq!(reply.text(), "activator request timeout");

    // A client that goes away leaves the queue at once.
    let gone = tokio::spawn({
        let req = get(&url, REV);
        async move { client::send(&client::http1(), req).await }
    });
    act.wait_metric(held, Duration::from_secs(5), |v| v == 1.0)
        .await;
    gone.abort();
    act.wait_metric(held, Duration::from_secs(5), |v| v == 0.0)
        .await;

    // Without routing headers, or for an unknown revision: 404 saying which.
    let none = client::get(&url).await;
    assert_eq!(none.status, 404);
    assert!(
        none.text().contains("Knative-Serving-Revision"),
        "{}",
        none.text()
    );
    let unknown = client::send(&client::http1(), get(&url, "nope-00001"))
        .await
        .expect("a response");
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.text().contains("default/nope-00001"),
        "{}",
        unknown.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cc1_three_pods_share_20000_requests_fairly() {
    let act = start_activator(&[]).await;
    let mut pods = Vec::new();
    for _ in 0..3 {
        let (app, qp) = start_pod(1, &[]).await;
        until_ready(qp.serving).await;
        pods.push((app, qp));
    }
    let addrs: Vec<SocketAddr> = pods.iter().map(|(_, qp)| qp.serving).collect();
    act.publisher.publish(revision(REV, 1, 0, &addrs));
    act.wait_metric(
        "sluice_activator_healthy_pods{",
        Duration::from_secs(5),
        |v| v == 3.0,
    )
    .await;

    let headers = routing(REV);
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let report = load::run_with_headers(
        client::http1(),
        &act.url("/"),
        &headers,
        12,
        Some(20_000),
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(report.count(200), 20_000, "{report:?}");
    let third = 20_000.0 / 3.0;
    for (app, _) in &pods {
        let (_, max_in_flight, requests) = app_stats(app.addr).await;
        assert!(max_in_flight <= 1, "a CC 1 pod saw {max_in_flight} at once");
        let share = requests as f64;
        assert!(
            (share - third).abs() <= third * 0.1,
            "a pod got {requests} of 20,000 (a third is {third:.0})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_dies_mid_run_costs_only_the_requests_it_had() {
    let act = start_activator(&[]).await;
    let mut pods = Vec::new();
    let mut relays = Vec::new();
    for _ in 0..3 {
        let (app, qp) = start_pod(5, &[]).await;
        until_ready(qp.serving).await;
        relays.push(Relay::start(qp.serving).await);
        pods.push((app, qp));
    }
    let addrs: Vec<SocketAddr> = relays.iter().map(|r| r.addr).collect();
    act.publisher.publish(revision(REV, 5, 0, &addrs));
    act.wait_metric(
        "sluice_activator_healthy_pods{",
        Duration::from_secs(5),
        |v| v == 3.0,
    )
    .await;

    let headers = routing(REV);
    let url = act.url("/?sleep=5");
    let run = tokio::spawn(async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        load::run_with_headers(
            client::http1(),
            &url,
            &headers,
            10,
            Some(3_000),
            Duration::from_secs(120),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // The endpoint source is not told: the activator finds out by itself.
    relays.remove(0).kill().await;
    let report = run.await.expect("join");
    let failed = report.total() - report.count(200);
    println!("after a pod died: {report:?}");
    assert_eq!(report.total(), 3_000);
    assert!(
        failed <= 5,
        "{failed} failed; at most the 5 the dead pod was running may (CC 5): {report:?}"
    );
    assert!(
        report.statuses.keys().all(|&s| s == 200 || s == 502),
        "{report:?}"
    );
    act.wait_metric(
        "sluice_activator_healthy_pods{",
        Duration::from_secs(5),
        |v| v == 2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_pokes_the_autoscaler_at_once() {
    let sink = StatsSink::start().await;
    let autoscaler = format!("--autoscaler-address={}", sink.url());
    let act = start_activator(&[autoscaler.as_str()]).await;
    act.publisher.publish(revision(REV, 10, 0, &[]));
    // Healthy means the stats stream is up.
    for _ in 0..500 {
        if client::get(&act.url("/healthz")).await.status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let health = client::get(&act.url("/healthz")).await;
    assert_eq!(
        (health.status.as_u16(), health.text().as_str()),
        (200, "activator")
    );

    let sent = Instant::now();
    let held = tokio::spawn({
        let req = get(&act.url("/"), REV);
        async move { client::send(&client::http1(), req).await }
    });
    let poke = sink
        .wait_for(Duration::from_secs(2), |r| r.poke && r.revision == REV)
        .await
        .expect("a poke");
    let latency = sent.elapsed();
    println!("poke reached the stats server {latency:?} after the request was sent");
    let stat = poke.stat.expect("a stat");
    assert_eq!(stat.average_concurrent_requests, 1.0);
    assert_eq!(stat.request_count, 1.0);
    assert!(
        latency <= Duration::from_millis(10),
        "the poke took {latency:?}"
    );
    // Then the per-second reports: the held request counts, minus the poked one.
    let tick = sink
        .wait_for(Duration::from_secs(3), |r| !r.poke && r.revision == REV)
        .await
        .expect("a per-second report");
    let tick = tick.stat.expect("a stat");
    assert!(tick.average_concurrent_requests <= 1.0, "{tick:?}");
    assert_eq!(
        tick.request_count, 0.0,
        "the poked request is not counted twice"
    );
    held.abort();
}

/// Polls the activator's `/healthz` until it answers `want`, or panics after 10 s.
async fn until_health(act: &ActivatorHandle, want: u16, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client::get(&act.url("/healthz")).await;
        if r.status.as_u16() == want {
            return r.text();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: /healthz answered {} {}",
            r.status,
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_the_autoscaler_stream_and_requests_flow_without_it() {
    let sink = StatsSink::start().await;
    let sink_addr = sink.addr;
    let autoscaler = format!("--autoscaler-address={}", sink.url());
    let act = start_activator(&[autoscaler.as_str()]).await;
    let (_app, qp) = start_pod(10, &[]).await;
    until_ready(qp.serving).await;
    act.publisher.publish(revision(REV, 10, 0, &[qp.serving]));
    assert_eq!(until_health(&act, 200, "stream up").await, "activator");

    // The autoscaler goes away: 500, as Knative's activator answers its probes then (so
    // Kubernetes stops sending it new work), but the requests it gets are still proxied.
    sink.kill().await;
    let why = until_health(&act, 500, "stream down").await;
    assert!(why.contains("not connected to the autoscaler"), "{why}");
    until_status(act.serving, REV, 200, "while the autoscaler is away").await;

    // It comes back at the same address: the stream reconnects and health returns.
    let sink = StatsSink::start_on(sink_addr).await;
    until_health(&act, 200, "stream back").await;
    assert_eq!(status_via(act.serving, REV).await, 200);
    assert!(
        sink.wait_for(Duration::from_secs(5), |r| r.revision == REV)
            .await
            .is_some(),
        "reports reach the autoscaler again"
    );
}

/// `GET /` for `revision` through the activator at `act`: its status.
async fn status_via(act: SocketAddr, revision: &str) -> u16 {
    let client = client::http1();
    client::send(&client, get(&format!("http://{act}/"), revision))
        .await
        .map_or(0, |r| r.status.as_u16())
}

/// Polls until a request for `revision` gets `want`, or panics after 10 s.
async fn until_status(act: SocketAddr, revision: &str, want: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = status_via(act, revision).await;
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {revision} answered {got}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_over_grpc_are_followed_and_resynced_after_the_source_restarts() {
    let (_app, qp) = start_pod(10, &[]).await;
    until_ready(qp.serving).await;
    // Two sources that disagree: the first knows REV, the second only "other-00001".
    let first = Feed::new();
    first.publish(revision(REV, 10, 0, &[qp.serving]));
    let second = Feed::new();
    second.publish(revision("other-00001", 10, 0, &[qp.serving]));
    let (first_addr, first_server) = serve_endpoints(&first).await;
    let (second_addr, _second_server) = serve_endpoints(&second).await;
    // The activator reaches its source through a relay, which can die and come back at
    // the same address in front of the other source.
    let relay = Relay::start(first_addr).await;
    let source = relay.addr;
    let act = start_activator_following(source).await;

    until_status(act.addr, REV, 200, "from the first source").await;
    // A change on the open stream: a revision published now is served.
    first.publish(revision("late-00001", 10, 0, &[qp.serving]));
    until_status(act.addr, "late-00001", 200, "a change on the open stream").await;
    assert_eq!(
        status_via(act.addr, "other-00001").await,
        404,
        "not known yet"
    );

    // The source dies and comes back with another state: the activator reconnects and
    // takes that whole state, forgetting what the new source does not list.
    relay.kill().await;
    first_server.abort();
    let _relay = Relay::start_at(source, second_addr).await;
    until_status(act.addr, "other-00001", 200, "after the reconnect").await;
    assert_eq!(
        status_via(act.addr, REV).await,
        404,
        "forgotten after the resync"
    );
    assert_eq!(
        status_via(act.addr, "late-00001").await,
        404,
        "forgotten after the resync"
    );
}
