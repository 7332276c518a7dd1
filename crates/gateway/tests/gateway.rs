//! The gateway alone, over real sockets: a sample app stands in for a pod's queue-proxy
//! and another for the activator (it answers `/headers` with what it received), and a
//! stats sink for the autoscaler. Serve and proxy mode, the fall-back to the activator,
//! the poke, the 503 with nowhere to send, and the metrics.

use std::net::SocketAddr;
use std::time::Duration;

use sluice_core::serve::Limits;
use sluice_gateway::{
    Config, Gateway, Mode, RevisionBackends, Routes, ServiceRoute, TrafficTarget,
};
use sluice_test_support::stats_sink::StatsSink;
use sluice_test_support::{Running, client, start_app};

const HOST: &str = "hello.default.example.com";

struct Setup {
    gateway: SocketAddr,
    metrics: SocketAddr,
    routes: Routes,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn gateway(activator: Option<SocketAddr>, autoscaler: Option<&StatsSink>) -> Setup {
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        domain: "example.com".into(),
        activator,
        autoscaler: autoscaler.map(|s| s.url().parse().expect("uri")),
        pod_name: "gateway-test".into(),
        metrics_listen: "127.0.0.1:0".parse().expect("addr"),
        limits: Limits::default(),
        activator_local: None,
        routes: None,
        drain_quiet_period: std::time::Duration::ZERO,
    };
    let gw = Gateway::bind(config).await.expect("bind");
    let (gateway, metrics, routes) = (gw.serving_addr(), gw.metrics_addr(), gw.routes());
    routes.set_service(ServiceRoute {
        name: "hello".into(),
        namespace: "default".into(),
        traffic: vec![TrafficTarget {
            revision: "hello-00001".into(),
            percent: 100,
            tag: None,
        }],
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gw.run(async {
        let _ = stopped.await;
    }));
    Setup {
        gateway,
        metrics,
        routes,
        _stop: stop,
    }
}

fn backends(mode: Mode, pods: Vec<SocketAddr>, report: bool) -> RevisionBackends {
    RevisionBackends {
        namespace: "default".into(),
        name: "hello-00001".into(),
        mode,
        pods,
        report,
        timeout_seconds: Some(300),
    }
}

/// The `/headers` page of whoever answered: the request as it arrived there.
async fn seen(gw: SocketAddr) -> (u16, String) {
    let reply = client::get_with(&format!("http://{gw}/headers"), &[("host", HOST)]).await;
    (reply.status.as_u16(), reply.text().to_ascii_lowercase())
}

async fn app() -> Running {
    start_app().await
}

#[tokio::test]
async fn serve_mode_goes_to_a_pod_and_proxy_mode_to_the_activator_with_the_revision() {
    let (pod, activator) = (app().await, app().await);
    let s = gateway(Some(activator.addr), None).await;
    s.routes
        .set_backends(backends(Mode::Serve, vec![pod.addr], false));
    let (status, text) = seen(s.gateway).await;
    assert_eq!(status, 200);
    assert!(
        !text.contains("knative-serving-revision"),
        "straight to the pod: {text}"
    );

    s.routes
        .set_backends(backends(Mode::Proxy, vec![pod.addr], false));
    let (status, text) = seen(s.gateway).await;
    assert_eq!(status, 200);
    assert!(
        text.contains("knative-serving-revision: hello-00001")
            && text.contains("knative-serving-namespace: default"),
        "through the activator, told the revision: {text}"
    );
}

#[tokio::test]
async fn a_pod_that_refuses_the_connection_falls_back_to_the_activator() {
    let activator = app().await;
    let gone = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let s = gateway(Some(activator.addr), None).await;
    s.routes
        .set_backends(backends(Mode::Serve, vec![gone], false));
    let (status, text) = seen(s.gateway).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("knative-serving-revision: hello-00001"),
        "{text}"
    );
}

#[tokio::test]
async fn no_pod_and_no_activator_is_a_503_not_a_502() {
    let s = gateway(None, None).await;
    s.routes.set_backends(backends(Mode::Proxy, vec![], false));
    let (status, text) = seen(s.gateway).await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("no ready pod"), "{text}");
}

#[tokio::test]
async fn a_request_for_a_gateway_scaled_revision_at_zero_pokes_the_autoscaler() {
    let (activator, sink) = (app().await, StatsSink::start().await);
    let s = gateway(Some(activator.addr), Some(&sink)).await;
    s.routes.set_backends(backends(Mode::Proxy, vec![], true));
    let (status, _) = seen(s.gateway).await;
    assert_eq!(status, 200);
    let poke = sink
        .wait_for(Duration::from_secs(5), |r| {
            r.poke && r.revision == "hello-00001"
        })
        .await;
    assert!(poke.is_some(), "no poke in {:?}", sink.reports());
}

#[tokio::test]
async fn metrics_count_requests_by_code_and_mode_switches() {
    let (pod, activator) = (app().await, app().await);
    let s = gateway(Some(activator.addr), None).await;
    s.routes.set_backends(backends(Mode::Proxy, vec![], false));
    s.routes
        .set_backends(backends(Mode::Serve, vec![pod.addr], false));
    for _ in 0..3 {
        assert_eq!(seen(s.gateway).await.0, 200);
    }
    let missing = client::get_with(
        &format!("http://{}/status/404", s.gateway),
        &[("host", HOST)],
    )
    .await;
    assert_eq!(missing.status, 404);
    let page = client::get(&format!("http://{}/metrics", s.metrics))
        .await
        .text();
    let has = |line: &str| page.lines().any(|l| l == line);
    let labels = r#"namespace_name="default",response_code="200",response_code_class="2xx",revision_name="hello-00001""#;
    assert!(
        has(&format!("sluice_gateway_requests_total{{{labels}}} 3")),
        "{page}"
    );
    let labels404 = r#"namespace_name="default",response_code="404",response_code_class="4xx",revision_name="hello-00001""#;
    assert!(
        has(&format!("sluice_gateway_requests_total{{{labels404}}} 1")),
        "{page}"
    );
    assert!(
        has(
            r#"sluice_gateway_mode_switches_total{mode="serve",namespace_name="default",revision_name="hello-00001"} 1"#
        ),
        "{page}"
    );
    assert!(
        has(
            r#"sluice_gateway_requests_in_flight{namespace_name="default",revision_name="hello-00001"} 0"#
        ),
        "{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_an_activator_in_another_process_held_requests_share_a_few_http2_connections() {
    use sluice_test_support::activator::{revision, start_activator};
    let activator = start_activator(&[]).await;
    let (_app, qp) = sluice_test_support::start_pod(0, &[]).await;
    activator
        .publisher
        .publish(revision("hello-00001", 0, 60, &[qp.serving]));
    // Through a relay that counts the connections the gateway opens to the activator.
    let relay = sluice_test_support::relay::Relay::start(activator.serving).await;
    let s = gateway(Some(relay.addr), None).await;
    s.routes.set_backends(backends(Mode::Proxy, vec![], false));

    // The app sees the HTTP/1.1 request its client sent, with the client's Host.
    let (status, text) = seen(s.gateway).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.starts_with("get /headers http/1.1"), "{text}");
    assert!(text.contains(&format!("host: {HOST}")), "{text}");
    assert!(
        !text.contains("sluice-client-version"),
        "the hop header stays between hops"
    );

    // 600 requests at once, each 500 ms at the app: 200 streams a connection.
    let url = format!("http://{}/?sleep=500", s.gateway);
    let requests = (0..600).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { client::get_with(&url, &[("host", HOST)]).await.status })
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.expect("request task"), 200);
    }
    let opened = relay.accepted();
    assert!(
        (1..=4).contains(&opened),
        "600 requests in flight, 200 a connection: {opened} connections to the activator"
    );
}
