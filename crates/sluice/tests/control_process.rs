//! The topology of a cluster on one machine: the control plane (`ControlServer`, as
//! `sluice control` runs it) with real pods, and the autoscaler, the activator and the
//! gateway each on their own, connected only over loopback gRPC/HTTP. The desired state
//! is kept in a state directory and survives a restart of the control plane.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use sluice::run::control::{ControlOptions, ControlServer};
use sluice::run::images::ImageMap;
use sluice_autoscaler::server::{Args as AutoscalerArgs, Server as AutoscalerServer};
use sluice_core::serve::Limits;
use sluice_test_support::activator::start_activator_following;
use sluice_test_support::client;
use tokio::time::Instant;

mod common;

const HOST: &str = "helloworld-go.default.example.com";

fn free_addr() -> SocketAddr {
    sluice_test_support::free_private_addr()
}

fn options(
    listen: SocketAddr,
    admin: SocketAddr,
    autoscaler: SocketAddr,
    state: &std::path::Path,
) -> ControlOptions {
    ControlOptions {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
        listen,
        admin_listen: admin,
        autoscaler: format!("http://{autoscaler}").parse().expect("uri"),
        domain: "example.com".into(),
        gateway: String::new(),
        images: ImageMap::default(),
        ready_timeout: Duration::from_secs(30),
        drain_quiet_period: Duration::from_millis(100),
        limits: Limits::default(),
        state_dir: Some(state.to_path_buf()),
        node: None,
        kube: None,
    }
}

async fn until_200(gw: SocketAddr, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let reply = tokio::time::timeout(
            Duration::from_secs(10),
            client::get_with(&format!("http://{gw}/"), &[("host", HOST)]),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer in 10 s"));
        if reply.status == 200 {
            return reply.text();
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {} {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_plane_alone_runs_a_service_and_its_state_survives_a_restart() {
    let state = std::env::temp_dir().join(format!("sluice-control-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let (control_addr, admin_addr) = (free_addr(), free_addr());
    let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let autoscaler = AutoscalerServer::bind(
        &AutoscalerArgs {
            listen: loopback,
            metrics_listen: loopback,
            config: None,
            control: Some(format!("http://{control_addr}")),
            no_auto_register: false,
            activator_probe: None,
        },
        None,
    )
    .await
    .expect("autoscaler binds");
    let autoscaler_addr = autoscaler.grpc_addr();
    let (stop_autoscaler, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(autoscaler.run(async {
        let _ = stopped.await;
    }));
    let control = ControlServer::start(options(control_addr, admin_addr, autoscaler_addr, &state))
        .await
        .expect("control plane starts");
    let activator = start_activator_following(control_addr).await;
    let gw = sluice_gateway::Gateway::bind(sluice_gateway::Config {
        listen: loopback,
        domain: "example.com".into(),
        activator: Some(activator.addr),
        autoscaler: None,
        pod_name: "gateway".into(),
        metrics_listen: loopback,
        limits: Limits::default(),
        activator_local: None,
        routes: Some(sluice_gateway::RoutesSource::Grpc(
            format!("http://{control_addr}").parse().expect("uri"),
        )),
        drain_quiet_period: std::time::Duration::ZERO,
    })
    .await
    .expect("gateway binds");
    let gateway = gw.serving_addr();
    let (stop_gateway, gateway_stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(gw.run(async {
        let _ = gateway_stopped.await;
    }));

    // `sluice apply` to the control plane's admin port.
    let manifest = common::example("helloworld-go.yaml");
    let apply = http::Request::post(format!("http://{admin_addr}/apply"))
        .body(Full::new(Bytes::from(manifest)))
        .expect("request");
    let applied = client::send(&client::http1(), apply)
        .await
        .expect("applied");
    assert_eq!(applied.status, 200, "{}", applied.text());
    assert_eq!(
        until_200(gateway, "served through the gateway").await,
        "Hello Knative!\n"
    );
    // config-autoscaler is served to the autoscaler's process (its config feed), and kept.
    let config = http::Request::post(format!("http://{admin_addr}/apply"))
        .body(Full::new(Bytes::from(common::FAST_CONFIG)))
        .expect("request");
    let configured = client::send(&client::http1(), config)
        .await
        .expect("answered");
    assert_eq!(configured.status, 200, "{}", configured.text());
    assert!(
        configured.text().contains("config-autoscaler configured"),
        "{}",
        configured.text()
    );
    let kept: Vec<_> = std::fs::read_dir(state.join("applied"))
        .expect("the applies were kept")
        .collect();
    assert_eq!(kept.len(), 2);

    // The control plane stops (its pods drain) and starts again on the same ports: it
    // replays what was applied, and the gateway, the activator and the autoscaler, which
    // kept their last state meanwhile, follow it again.
    control.shutdown().await;
    let control = ControlServer::start(options(control_addr, admin_addr, autoscaler_addr, &state))
        .await
        .expect("control plane restarts");
    let status = client::get(&format!("http://{admin_addr}/status")).await;
    assert!(
        status.text().contains("helloworld-go-00001"),
        "replayed: {}",
        status.text()
    );
    assert_eq!(
        until_200(gateway, "served after the restart").await,
        "Hello Knative!\n"
    );

    control.shutdown().await;
    let _ = stop_gateway.send(());
    let _ = stop_autoscaler.send(());
    let _ = std::fs::remove_dir_all(&state);
}
