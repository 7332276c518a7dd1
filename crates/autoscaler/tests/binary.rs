//! The `autoscaler` executable: config refused with exit 64, served, stopped by SIGTERM
//! with a watch stream open.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use sluice_proto::Stat;
use sluice_proto::v1::decision_service_client::DecisionServiceClient;
use sluice_proto::v1::stats_service_client::StatsServiceClient;
use sluice_proto::v1::{Source, StatReport, WatchDecisionsRequest};
use sluice_test_support::client::get;
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_autoscaler");

/// A port for the child to bind, on the test's own loopback address.
fn free_addr() -> SocketAddr {
    sluice_test_support::free_private_addr()
}

fn write_config(name: &str, text: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn spawn(args: &[String]) -> Child {
    Command::new(BIN)
        .args(args)
        .env_clear()
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

fn sigterm(child: &Child) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -TERM {pid}");
}

#[tokio::test]
async fn a_bad_config_exits_64_naming_every_bad_key() {
    let config = write_config(
        "bad-config-autoscaler.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\ndata:\n  max-scale-up-rate: \"0.5\"\n  stable-window: \"2h\"\n",
    );
    let out = spawn(&[
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        free_addr().to_string(),
        "--metrics-listen".into(),
        free_addr().to_string(),
    ])
    .wait_with_output()
    .await
    .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in ["max-scale-up-rate", "0.5", "stable-window", "2h"] {
        assert!(stderr.contains(needle), "{needle} missing from: {stderr}");
    }
}

#[tokio::test]
async fn serves_stats_and_decisions_and_stops_on_sigterm_with_a_watch_open() {
    let (grpc, metrics) = (free_addr(), free_addr());
    let config = write_config(
        "config-autoscaler.yaml",
        "stable-window: \"6s\"\ncontainer-concurrency-target-default: \"10\"\n",
    );
    let child = spawn(&[
        "--config".into(),
        config.display().to_string(),
        "--listen".into(),
        grpc.to_string(),
        "--metrics-listen".into(),
        metrics.to_string(),
    ]);
    let url = format!("http://{grpc}");
    let mut up = false;
    for _ in 0..300 {
        if tokio::net::TcpStream::connect(metrics).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up, "the metrics port never listened");
    assert_eq!(
        get(&format!("http://{metrics}/healthz")).await.text(),
        "autoscaler"
    );

    // A queue-proxy reports for a revision nobody registered: the standalone binary
    // scales it with the config's defaults (target 10 × 70 %).
    let mut stats = StatsServiceClient::connect(url.clone()).await.unwrap();
    let report = StatReport {
        namespace: "default".into(),
        revision: "hello-00001".into(),
        source: Source::QueueProxy.into(),
        stat: Some(Stat {
            pod_name: "hello-00001-a".into(),
            average_concurrent_requests: 20.0,
            request_count: 20.0,
            ..Stat::default()
        }),
        poke: false,
    };
    let summary = stats
        .report(tokio_stream::iter(vec![report]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(summary.accepted, 1);

    let mut watch = DecisionServiceClient::connect(url)
        .await
        .unwrap()
        .watch(WatchDecisionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let decided = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let d = watch.message().await.unwrap().unwrap();
            if d.decider_desired >= 0 {
                return d;
            }
        }
    })
    .await
    .expect("decided within a tick or two");
    assert_eq!(
        (decided.revision.as_str(), decided.decider_desired),
        ("hello-00001", 3)
    );
    let text = get(&format!("http://{metrics}/metrics")).await.text();
    assert!(text.contains("sluice_autoscaler_revisions 1"), "{text}");

    // SIGTERM with the watch still open: the stream ends and the process exits 0.
    sigterm(&child);
    let out = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits promptly")
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let end = tokio::time::timeout(Duration::from_secs(1), watch.message())
        .await
        .expect("the watch ended");
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}
