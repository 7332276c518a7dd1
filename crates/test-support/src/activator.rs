//! An activator started in-process, with an in-process endpoint source or following one
//! over gRPC.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser as _;
use sluice_activator::{Activator, Args, Config, EndpointsSource};
use sluice_core::feed::Feed;
use sluice_proto::v1::RevisionEndpoints;

use crate::Running;

/// The routing headers the gateway sets for `default/{revision}`.
pub fn routing(revision: &str) -> [(&'static str, String); 2] {
    [
        ("knative-serving-namespace", "default".to_owned()),
        ("knative-serving-revision", revision.to_owned()),
    ]
}

/// `default/{revision}` with `container_concurrency`, a timeout and these pods.
pub fn revision(
    name: &str,
    container_concurrency: u32,
    timeout_seconds: u32,
    pods: &[SocketAddr],
) -> RevisionEndpoints {
    RevisionEndpoints {
        namespace: "default".into(),
        revision: name.into(),
        removed: false,
        container_concurrency,
        timeout_seconds,
        addresses: pods.iter().map(ToString::to_string).collect(),
        ..RevisionEndpoints::default()
    }
}

pub struct ActivatorHandle {
    pub serving: SocketAddr,
    pub metrics: SocketAddr,
    pub publisher: Feed<RevisionEndpoints>,
    pub running: Running,
}

impl ActivatorHandle {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.serving)
    }

    /// The value of the metric line starting with `prefix` (name and labels), if present.
    pub async fn metric(&self, prefix: &str) -> Option<f64> {
        let text = crate::client::get(&format!("http://{}/metrics", self.metrics))
            .await
            .text();
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }

    /// Waits (at most `limit`) until the metric satisfies `pred`.
    pub async fn wait_metric(&self, prefix: &str, limit: Duration, pred: impl Fn(f64) -> bool) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let value = self.metric(prefix).await;
            if value.is_some_and(&pred) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{prefix} is {value:?} after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// `publisher` served as `sluice.v1.EndpointsService` (with an empty routes feed beside
/// it), the control plane's gRPC server on a free loopback port, as a remote endpoint
/// source; stopped when the returned task is aborted.
pub async fn serve_endpoints(
    publisher: &Feed<RevisionEndpoints>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = crate::loopback_listener().await;
    let addr = listener.local_addr().expect("addr");
    let endpoints = publisher.clone();
    let task = tokio::spawn(async move {
        sluice_control::grpc::serve(
            listener,
            sluice_control::grpc::Feeds {
                endpoints,
                ..Default::default()
            },
            std::future::pending(),
        )
        .await
        .expect("endpoints server");
    });
    (addr, task)
}

/// An activator on free loopback ports with a short drain; `extra` flags override.
pub async fn start_activator(extra: &[&str]) -> ActivatorHandle {
    let publisher = Feed::new();
    let (running, metrics) =
        run_activator(extra, Some(EndpointsSource::InProcess(publisher.clone()))).await;
    ActivatorHandle {
        serving: running.addr,
        metrics,
        publisher,
        running,
    }
}

/// An activator that follows the `EndpointsService` at `endpoints` over gRPC, as a
/// standalone activator does (`--control`); `running.addr` is its serving port.
pub async fn start_activator_following(endpoints: SocketAddr) -> Running {
    let flag = format!("--control=http://{endpoints}");
    run_activator(&[&flag], None).await.0
}

/// Binds and runs an activator; `source` None: the one its flags name.
async fn run_activator(extra: &[&str], source: Option<EndpointsSource>) -> (Running, SocketAddr) {
    let mut argv = vec![
        "activator",
        "--listen=127.0.0.1:0",
        "--metrics-listen=127.0.0.1:0",
        "--drain-quiet-period=200ms",
    ];
    argv.extend_from_slice(extra);
    let config =
        Config::try_from(Args::try_parse_from(argv).expect("flags")).expect("valid config");
    let activator = Activator::bind(config, source).await.expect("bind");
    let (serving, metrics) = (activator.serving_addr(), activator.metrics_addr());
    let (stop, stopped) = crate::stop_channel();
    let task = tokio::spawn(activator.run(stopped));
    let running = Running {
        addr: serving,
        stop: Some(stop),
        task,
    };
    (running, metrics)
}
