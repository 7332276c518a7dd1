//! The control plane with the data plane in other tasks, connected only over gRPC on
//! loopback, as on a cluster: a gateway following its routes, and the control plane
//! following a real autoscaler's decisions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_autoscaler::scaler::{RecordingScaler, RevisionKey};
use sluice_autoscaler::server::{Args as AutoscalerArgs, Server as AutoscalerServer};
use sluice_control::{ControlPlane, PodSpec, RevisionSpec, ServiceSpec, TargetSpec};
use sluice_core::serve::Limits;
use sluice_gateway::{Config, Gateway, RoutesSource};
use sluice_proto::v1;
use sluice_test_support::control::{self, Call};
use sluice_test_support::relay::Relay;
use sluice_test_support::{client, start_pod};

fn spec(service: &str, revision: &str) -> RevisionSpec {
    RevisionSpec {
        pod: PodSpec {
            namespace: "default".into(),
            service: service.into(),
            revision: revision.into(),
            argv: vec!["sample-app".into()],
            env: Vec::new(),
            container_concurrency: 10,
            timeout_seconds: 30,
            response_start_timeout_seconds: None,
            idle_timeout_seconds: None,
            readiness_probe: None,
            container: None,
        },
        initial_scale: 1,
        report: false,
        annotations: BTreeMap::new(),
        template: None,
    }
}

fn all_to(service: &str, revision: &str) -> ServiceSpec {
    ServiceSpec {
        namespace: "default".into(),
        name: service.into(),
        revisions: vec![revision.into()],
        traffic: vec![TargetSpec {
            revision: Some(revision.into()),
            percent: 100,
            tag: String::new(),
        }],
    }
}

fn serve_decision(revision: &str) -> v1::Decision {
    v1::Decision {
        namespace: "default".into(),
        revision: revision.into(),
        mode: v1::Mode::Serve.into(),
        desired_scale: 1,
        replicas: 1,
        ..v1::Decision::default()
    }
}

/// A gateway with no activator whose routes follow the control plane at `control`.
async fn gateway_following(control: SocketAddr) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    gateway_draining(control, Duration::ZERO).await
}

/// [`gateway_following`], draining for `quiet` after it is told to stop.
async fn gateway_draining(
    control: SocketAddr,
    quiet: Duration,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let gw = Gateway::bind(Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        domain: "example.com".into(),
        activator: None,
        autoscaler: None,
        pod_name: "gateway-test".into(),
        metrics_listen: "127.0.0.1:0".parse().expect("addr"),
        limits: Limits::default(),
        activator_local: None,
        routes: Some(RoutesSource::Grpc(
            format!("http://{control}").parse().expect("uri"),
        )),
        drain_quiet_period: quiet,
    })
    .await
    .expect("bind");
    let addr = gw.serving_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gw.run(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

/// An autoscaler on free loopback ports: its handle, its gRPC address, and its stop.
async fn start_autoscaler(
    control: Option<String>,
    scaler: Option<Arc<dyn sluice_autoscaler::scaler::Scaler>>,
) -> (
    sluice_autoscaler::service::Autoscaler,
    http::Uri,
    tokio::sync::oneshot::Sender<()>,
) {
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = AutoscalerServer::bind(
        &AutoscalerArgs {
            listen: loopback,
            metrics_listen: loopback,
            config: None,
            no_auto_register: control.is_none(),
            activator_probe: None,
            control,
        },
        scaler,
    )
    .await
    .expect("autoscaler binds");
    let autoscaler = server.autoscaler().clone();
    let uri = format!("http://{}", server.grpc_addr())
        .parse()
        .expect("uri");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (autoscaler, uri, stop)
}

async fn status(gw: SocketAddr, service: &str) -> u16 {
    client::get_with(
        &format!("http://{gw}/"),
        &[("host", &format!("{service}.default.example.com"))],
    )
    .await
    .status
    .as_u16()
}

async fn until_status(gw: SocketAddr, service: &str, want: u16, what: &str) {
    let mut last = 0;
    for _ in 0..500 {
        last = status(gw, service).await;
        if last == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: {service} answered {last}, not {want}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_follows_the_control_plane_keeps_its_routes_while_it_is_away_and_resyncs() {
    let (_app, qp) = start_pod(10, &[]).await;
    let (first, first_backend) = control::start();
    first
        .add_revision(spec("hello", "hello-00001"))
        .expect("add");
    first
        .set_service(all_to("hello", "hello-00001"))
        .expect("route");
    let (first_addr, first_server) = control::serve(&first).await;
    let relay = Relay::start(first_addr).await;
    let source = relay.addr;
    let (gw, _stop) = gateway_following(source).await;

    // Routed, in proxy mode with no activator: 503 (not 404, which would mean unknown).
    until_status(gw, "hello", 503, "routed before any pod").await;
    // The pod becomes ready and the autoscaler says serve: the gateway sends to it.
    first_backend.set_ready(&RevisionKey::new("default", "hello-00001"), &[qp.serving]);
    first.apply_decision(&serve_decision("hello-00001"));
    until_status(gw, "hello", 200, "served by the pod").await;
    assert!(
        first_backend
            .calls()
            .contains(&Call::Scale(RevisionKey::new("default", "hello-00001"), 1)),
        "the decision's replicas reached the backend: {:?}",
        first_backend.calls()
    );

    // The control plane goes away: the gateway keeps routing with its last table.
    relay.kill().await;
    first_server.abort();
    for _ in 0..20 {
        assert_eq!(
            status(gw, "hello").await,
            200,
            "served while the control plane is away"
        );
    }

    // It comes back knowing only another service: the gateway takes the whole table and
    // forgets what it does not list.
    let (second, second_backend) = control::start();
    second
        .add_revision(spec("other", "other-00001"))
        .expect("add");
    second
        .set_service(all_to("other", "other-00001"))
        .expect("route");
    second_backend.set_ready(&RevisionKey::new("default", "other-00001"), &[qp.serving]);
    second.apply_decision(&serve_decision("other-00001"));
    let (second_addr, _second_server) = control::serve(&second).await;
    let _relay = Relay::start_at(source, second_addr).await;
    until_status(gw, "other", 200, "after the reconnect").await;
    assert_eq!(status(gw, "hello").await, 404, "forgotten after the resync");

    // A change on the reopened stream: the service is removed.
    second.remove_service("default", "other");
    until_status(gw, "other", 404, "a removal on the open stream").await;
}

/// What a kubelet probe of the gateway gets: (status, body); `None`: no connection.
async fn kubelet_probe(gw: SocketAddr) -> Option<(u16, String)> {
    let req = http::Request::get(format!("http://{gw}/"))
        .header("user-agent", "kube-probe/1.33")
        .body(Default::default())
        .expect("request");
    let reply = client::send(&client::http1(), req).await.ok()?;
    Some((reply.status.as_u16(), reply.text()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_is_ready_once_its_routes_arrive_and_drains_before_it_stops() {
    let (plane, _backend) = control::start();
    plane
        .add_revision(spec("hello", "hello-00001"))
        .expect("add");
    plane
        .set_service(all_to("hello", "hello-00001"))
        .expect("route");
    let (plane_addr, _server) = control::serve(&plane).await;
    // The control plane cannot be reached yet.
    let relay = Relay::start(plane_addr).await;
    let source = relay.addr;
    relay.kill().await;
    let quiet = Duration::from_millis(600);
    let (gw, stop) = gateway_draining(source, quiet).await;
    let unready = kubelet_probe(gw).await.expect("serving");
    assert_eq!(
        unready,
        (
            503,
            "gateway: no routes from the control plane yet".to_owned()
        ),
        "not Ready before its routes: every host would be 404"
    );

    let _relay = Relay::start_at(source, plane_addr).await;
    for _ in 0..500 {
        if kubelet_probe(gw).await.is_some_and(|(code, _)| code == 200) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(kubelet_probe(gw).await, Some((200, "gateway".to_owned())));
    until_status(gw, "hello", 503, "routed (no pod yet)").await;

    // Told to stop: probes fail at once, requests are still served while they come,
    // and the port closes once a quiet period passes with none.
    let _ = stop.send(());
    let mut draining = None;
    for _ in 0..200 {
        draining = kubelet_probe(gw).await;
        if draining.as_ref().is_some_and(|(code, _)| *code == 503) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(draining, Some((503, "gateway: draining".to_owned())));
    let mut last_request = tokio::time::Instant::now();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last_request = tokio::time::Instant::now();
        assert_eq!(
            status(gw, "hello").await,
            503,
            "still routed while draining"
        );
    }
    let mut closed = false;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(gw).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "the port closes after the quiet period");
    assert!(
        last_request.elapsed() >= quiet,
        "closed a quiet period after the last request, not sooner: {:?}",
        last_request.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_applies_the_replicas_a_remote_autoscaler_sets() {
    let scaler = Arc::new(RecordingScaler::new());
    let (autoscaler, uri, stop) = start_autoscaler(None, Some(scaler.clone())).await;

    let (cp, backend): (ControlPlane, _) = control::start();
    cp.add_revision(spec("hello", "hello-00001")).expect("add");
    tokio::spawn(cp.clone().follow_decisions(uri));
    let key = RevisionKey::new("default", "hello-00001");
    // min-scale 3 with no pods: the autoscaler sets 3 replicas at its first tick.
    let annotations = BTreeMap::from([(
        "autoscaling.knative.dev/min-scale".to_owned(),
        "3".to_owned(),
    )]);
    autoscaler
        .upsert_revision(&key, annotations, 10)
        .expect("a valid revision");
    until_called(
        &backend,
        &Call::Scale(key.clone(), 3),
        "min-scale 3 applied",
    )
    .await;
    assert_eq!(scaler.calls().first(), Some(&(key.clone(), 3)));
    assert_eq!(cp.decision(&key).map(|d| d.replicas), Some(3));
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autoscaler_learns_revisions_from_the_control_plane_which_applies_its_decisions() {
    // Control plane and autoscaler in separate tasks, connected only over loopback gRPC,
    // each following the other: revisions (with annotations) one way, decisions back.
    let (cp, backend) = control::start();
    let (control_addr, _server) = control::serve(&cp).await;
    let (autoscaler, decisions, stop) =
        start_autoscaler(Some(format!("http://{control_addr}")), None).await;
    tokio::spawn(cp.clone().follow_decisions(decisions));

    let mut hello = spec("hello", "hello-00001");
    hello.initial_scale = 0;
    hello.annotations = BTreeMap::from([(
        "autoscaling.knative.dev/min-scale".to_owned(),
        "2".to_owned(),
    )]);
    cp.add_revision(hello).expect("add");
    let key = RevisionKey::new("default", "hello-00001");
    until_called(
        &backend,
        &Call::Scale(key.clone(), 2),
        "min-scale 2 from the annotations reached the backend",
    )
    .await;
    let registered = autoscaler.decisions(None);
    assert_eq!(registered.len(), 1, "{registered:?}");
    assert_eq!(registered[0].revision, "hello-00001");

    // The revision leaves the control plane: the autoscaler forgets it.
    cp.remove_revision(&key);
    let mut forgotten = false;
    for _ in 0..200 {
        if autoscaler.decisions(None).is_empty() {
            forgotten = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(forgotten, "{:?}", autoscaler.decisions(None));
    assert!(backend.calls().contains(&Call::Delete(key)));
    let _ = stop.send(());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_autoscaler_drops_the_min_scale_of_a_revision_the_rollout_unroutes() {
    let (cp, backend) = control::start();
    let (control_addr, _server) = control::serve(&cp).await;
    let (_autoscaler, decisions, stop) =
        start_autoscaler(Some(format!("http://{control_addr}")), None).await;
    tokio::spawn(cp.clone().follow_decisions(decisions.clone()));
    let mut old = spec("hello", "hello-00001");
    old.annotations = BTreeMap::from([(
        "autoscaling.knative.dev/min-scale".to_owned(),
        "2".to_owned(),
    )]);
    cp.add_revision(old).expect("add");
    cp.set_service(all_to("hello", "hello-00001"))
        .expect("route");
    let key = RevisionKey::new("default", "hello-00001");
    // An idle pod's stats every 100 ms, so the decider has data (desired 0).
    let pusher = sluice_core::push::Pusher::spawn(decisions, 16);
    let stats = tokio::spawn(async move {
        for _ in 0..300 {
            pusher.try_send(sluice_core::push::revision_stat(
                v1::Source::QueueProxy,
                "hello-00001-pod",
                "default",
                "hello-00001",
                0.0,
                0.0,
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    until_called(&backend, &Call::Scale(key.clone(), 2), "min-scale 2 holds").await;
    let pods: Vec<SocketAddr> = ["127.0.0.1:1", "127.0.0.1:2"]
        .iter()
        .map(|a| a.parse().expect("addr"))
        .collect();
    backend.set_ready(&key, &pods);
    // The rollout: all traffic to a new revision. The old one is no longer routed, so its
    // min-scale no longer holds: it keeps one pod for the rest of its stable window.
    cp.add_revision(spec("hello", "hello-00002")).expect("add");
    cp.set_service(all_to("hello", "hello-00002"))
        .expect("route");
    until_called(&backend, &Call::Scale(key, 1), "min-scale dropped").await;
    stats.abort();
    let _ = stop.send(());
}

async fn until_called(backend: &control::TestBackend, call: &Call, what: &str) {
    for _ in 0..500 {
        if backend.calls().contains(call) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: no {call:?} in {:?}", backend.calls());
}
