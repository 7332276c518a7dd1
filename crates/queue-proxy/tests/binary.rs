//! The `queue-proxy` executable as the kubelet runs it: configured by environment
//! variables, stopped by SIGTERM, measured from /proc.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use sluice_test_support::client::{count_body, generated_body, get, get_with, http1_streaming};
use sluice_test_support::{load, loopback_listener, private_loopback_ip, start_app};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_queue-proxy");

/// A port for the queue-proxy to bind on the test's own loopback address.
fn free_port() -> u16 {
    sluice_test_support::free_private_addr().port()
}

/// Knative's env for a pod in front of `user_port`, on free loopback ports.
async fn knative_env(user_port: u16, cc: usize) -> (Vec<(&'static str, String)>, SocketAddr) {
    let serving = free_port();
    let env = vec![
        ("SERVING_NAMESPACE", "default".into()),
        ("SERVING_CONFIGURATION", "hello".into()),
        ("SERVING_REVISION", "hello-00001".into()),
        ("SERVING_POD", "hello-00001-pod".into()),
        ("SERVING_POD_IP", String::new()),
        ("QUEUE_SERVING_PORT", serving.to_string()),
        ("USER_PORT", user_port.to_string()),
        ("CONTAINER_CONCURRENCY", cc.to_string()),
        ("REVISION_TIMEOUT_SECONDS", "300".into()),
        ("SLUICE_ADMIN_PORT", free_port().to_string()),
        ("SLUICE_METRICS_PORT", free_port().to_string()),
        ("SLUICE_USER_METRICS_PORT", free_port().to_string()),
        ("SLUICE_BIND_ADDRESS", private_loopback_ip().to_string()),
        ("SLUICE_DRAIN_QUIET_PERIOD", "300ms".into()),
    ];
    (env, SocketAddr::from((private_loopback_ip(), serving)))
}

fn spawn(env: &[(&str, String)]) -> Child {
    Command::new(BIN)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("queue-proxy never listened on {addr}");
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[tokio::test]
async fn bad_env_exits_64_naming_every_bad_variable_before_binding() {
    // A port we hold: had the queue-proxy tried to bind before validating, it would
    // have failed with a bind error (exit 1) instead.
    let held = loopback_listener().await;
    let env = vec![
        ("SERVING_NAMESPACE", "default".to_owned()),
        ("SERVING_POD_IP", String::new()),
        ("USER_PORT", "eighty".into()),
        ("CONTAINER_CONCURRENCY", "-3".into()),
        (
            "QUEUE_SERVING_PORT",
            held.local_addr().unwrap().port().to_string(),
        ),
        ("SERVING_READINESS_PROBE", "{\"exec\":{}}".into()),
    ];
    let out = spawn(&env).wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for var in [
        "SERVING_CONFIGURATION: missing",
        "SERVING_REVISION: missing",
        "SERVING_POD: missing",
        "USER_PORT: \"eighty\"",
        "CONTAINER_CONCURRENCY: \"-3\"",
        "REVISION_TIMEOUT_SECONDS: missing",
        "SERVING_READINESS_PROBE: exec probes",
    ] {
        assert!(stderr.contains(var), "{var} not in:\n{stderr}");
    }
    assert!(
        !stderr.contains("SERVING_POD_IP"),
        "an empty required value is allowed:\n{stderr}"
    );
    assert!(stderr.contains("7 problems"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_and_exits_cleanly() {
    let app = start_app().await;
    let (env, serving) = knative_env(app.addr.port(), 4).await;
    let mut qp = spawn(&env);
    wait_listening(serving).await;
    let url = format!("http://{serving}/?sleep=20");
    let loader =
        tokio::spawn(async move { load::run(&url, 16, None, Duration::from_millis(1500)).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    signal(&qp, "-TERM");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let probe = get_with(
        &format!("http://{serving}/"),
        &[
            ("user-agent", "kube-probe/1.30"),
            ("k-network-probe", "queue"),
        ],
    )
    .await;
    assert_eq!(probe.status, 503, "not ready once SIGTERM arrived");
    let report = loader.await.unwrap();
    assert!(report.total() > 100, "{report:?}");
    assert_eq!(
        report.count(200),
        report.total(),
        "no request lost: {report:?}"
    );
    let status = tokio::time::timeout(Duration::from_secs(5), qp.wait())
        .await
        .expect("exits after the quiet period")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

/// VmHWM: the most resident memory the process ever had.
fn peak_rss_kib(child: &Child) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id().unwrap())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_each_way_with_flat_memory() {
    let app = start_app().await;
    let (env, serving) = knative_env(app.addr.port(), 2).await;
    let qp = spawn(&env);
    wait_listening(serving).await;
    assert_eq!(get(&format!("http://{serving}/")).await.status, 200);
    let before = peak_rss_kib(&qp);

    let down = count_body(
        http1_streaming(&format!("http://{serving}/stream?mb=100"))
            .await
            .into_body(),
    )
    .await;
    assert_eq!(down, 100 << 20);
    let req = http::Request::post(format!("http://{serving}/echo"))
        .body(generated_body(100))
        .unwrap();
    let rsp = sluice_test_support::client::streaming_client()
        .request(req)
        .await
        .unwrap();
    assert_eq!(count_body(rsp.into_body()).await, 100 << 20);

    let after = peak_rss_kib(&qp);
    assert!(
        after < before + 16 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB while 200 MiB streamed through"
    );
}
