//! Helpers shared by the end-to-end tests of `sluice run`: a platform in-process on
//! ephemeral ports, with real pods, and ways to apply manifests and wait on its status.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::time::Duration;

use sluice::run::images::ImageMap;
use sluice::run::manifest::Manifests;
use sluice::run::platform::RevisionStatus;
use sluice::run::{Options, Platform, Status};
use sluice_core::serve::Limits;
use sluice_test_support::{client, hey, load};
use tokio::time::Instant;

pub const FAST_CONFIG: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
  namespace: knative-serving
data:
  stable-window: "6s"
  scale-to-zero-grace-period: "6s"
"#;

pub async fn start() -> Platform {
    start_with_ready_timeout(Duration::from_secs(30)).await
}

pub fn example(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub async fn apply(p: &Platform, yaml: &str) -> Vec<String> {
    let m = Manifests::parse("test", yaml).expect("manifests parse");
    p.apply(&m).await.expect("applied")
}

pub fn revision(s: &Status, name: &str) -> RevisionStatus {
    s.services
        .iter()
        .flat_map(|svc| &svc.revisions)
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("no revision {name} in {s:?}"))
        .clone()
}

/// Polls the status until `done` holds for `name`, or panics after `limit`.
pub async fn wait_for(
    p: &Platform,
    name: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&RevisionStatus) -> bool,
) -> RevisionStatus {
    let deadline = Instant::now() + limit;
    loop {
        let r = revision(&p.status(), name);
        if done(&r) {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{name}: not {what} after {limit:?}: {r:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn start_with_ready_timeout(ready_timeout: Duration) -> Platform {
    start_with(ready_timeout, test_limits()).await
}

pub async fn start_with(ready_timeout: Duration, limits: Limits) -> Platform {
    Platform::start(Options {
        exe: PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
        gateway_listen: "127.0.0.1:0".parse().expect("addr"),
        admin_listen: "127.0.0.1:0".parse().expect("addr"),
        domain: "example.com".into(),
        images: ImageMap::default(),
        ready_timeout,
        drain_quiet_period: Duration::from_millis(500),
        limits,
    })
    .await
    .expect("the platform starts")
}

/// Seconds instead of nginx's minute, so that tests of the timeouts stay short.
pub fn test_limits() -> Limits {
    Limits {
        header_read_timeout: Duration::from_secs(2),
        idle_timeout: Duration::from_secs(3),
        ..Limits::default()
    }
}

/// Every request of a load run answered, and with 200.
pub fn assert_all_200(report: &load::LoadReport) {
    assert_eq!(report.errors, 0, "{:?}", report.sample_errors);
    assert_eq!(
        report.statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{:?}",
        report.statuses
    );
}

/// 8 clients sending `GET /` for `host` through the gateway for `time`, in the background.
pub fn background_load(
    gw: std::net::SocketAddr,
    host: &'static str,
    time: Duration,
) -> tokio::task::JoinHandle<load::LoadReport> {
    let target = format!("http://{gw}/");
    tokio::spawn(async move {
        load::run_with_headers(
            client::http1(),
            &target,
            &[("host", host)],
            8,
            Some(200_000),
            time,
        )
        .await
    })
}

/// `examples/traffic-split.yaml` with all of its traffic back on blue (`hello-v1`).
pub fn rolled_back(split: &str) -> String {
    split
        .replace(
            "      percent: 50\n      tag: blue",
            "      percent: 100\n      tag: blue",
        )
        .replace(
            "      percent: 50\n      tag: green",
            "      percent: 0\n      tag: green",
        )
}

/// The seed scenario's load in the background: `hey -z 20s -c 50` of `GET /?sleep=100`
/// for autoscale-go through the gateway at `gw`.
pub fn seed_load(gw: std::net::SocketAddr) -> tokio::task::JoinHandle<hey::HeyReport> {
    let target = format!("http://{gw}/?sleep=100");
    tokio::task::spawn_blocking(move || {
        hey::run(
            &[
                "-z",
                "20s",
                "-c",
                "50",
                "-host",
                "autoscale-go.default.example.com",
            ],
            &target,
        )
    })
}

/// Every request of a `hey` run answered, and with 200.
pub fn assert_hey_all_200(report: &hey::HeyReport) {
    assert_eq!(report.errors, 0, "{}", report.output);
    assert_eq!(
        report.statuses.keys().copied().collect::<Vec<_>>(),
        [200],
        "{}",
        report.output
    );
}
