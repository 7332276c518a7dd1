//! The activator under load, against the pod it fronts: the release `sample-app`,
//! `queue-proxy` and `activator` run pinned to core 0; `hey` (50 concurrent) and this
//! client (which serves the activator's endpoint source over gRPC) run on core 1.
//!
//! Prints, for `hey` straight to the queue-proxy and through the activator: requests per
//! second and the activator's CPU per request; then the activator's memory with 10,000
//! requests held for a revision with no pod (over 50 h2c connections, as a gateway's
//! pooled connections would carry them), per held request.
//!
//! `make release && cargo bench -p sluice-benches --bench activator_load`
//! (`SLUICE_BENCH_SECONDS` changes the 20 s per hey run.)

#![allow(missing_docs, clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use sluice_activator::EndpointsPublisher;
use sluice_benches::{cpu_seconds, free_addr, pin_self_to, sample, scrape, status_mib};
use sluice_proto::v1::RevisionEndpoints;

const HELD: usize = 10_000;
const HELD_CONNECTIONS: usize = 50;

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_pinned(bin: &str, args: &[String], env: &[(&str, String)]) -> Child {
    let path = format!("{}/../target/release/{bin}", env!("CARGO_MANIFEST_DIR"));
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: run `make release` first"
    );
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0", &path]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn wait_port(addr: std::net::SocketAddr) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on {addr}");
}

/// hey's requests/second and number of answered requests.
fn hey(seconds: u64, url: &str, headers: &[&str]) -> (f64, f64) {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "1", "hey", "-z", &format!("{seconds}s"), "-c", "50"]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    let out = cmd.arg(url).output().expect("hey is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0);
    let ok = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("[200]"))
        .and_then(|v| v.split_whitespace().next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0);
    (rps, ok)
}

fn revision(name: &str, cc: u32, pods: &[std::net::SocketAddr]) -> RevisionEndpoints {
    RevisionEndpoints {
        namespace: "default".into(),
        revision: name.into(),
        container_concurrency: cc,
        addresses: pods.iter().map(ToString::to_string).collect(),
        ..RevisionEndpoints::default()
    }
}

fn main() {
    let seconds: u64 = std::env::var("SLUICE_BENCH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    pin_self_to("1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (app, qp, act, act_metrics, source) = (
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
        free_addr(),
    );

    let publisher = EndpointsPublisher::new();
    let service = publisher.service();
    rt.spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve(source)
            .await
            .unwrap();
    });

    let mut procs = Procs(Vec::new());
    procs.0.push(spawn_pinned(
        "sample-app",
        &[],
        &[
            ("PORT", app.port().to_string()),
            ("SAMPLE_APP_BIND", "127.0.0.1".into()),
        ],
    ));
    wait_port(app);
    let qp_env: Vec<(&str, String)> = vec![
        ("SERVING_NAMESPACE", "default".into()),
        ("SERVING_CONFIGURATION", "bench".into()),
        ("SERVING_REVISION", "bench-00001".into()),
        ("SERVING_POD", "bench-pod".into()),
        ("SERVING_POD_IP", "127.0.0.1".into()),
        ("QUEUE_SERVING_PORT", qp.port().to_string()),
        ("USER_PORT", app.port().to_string()),
        ("CONTAINER_CONCURRENCY", "0".into()),
        ("REVISION_TIMEOUT_SECONDS", "300".into()),
        ("SLUICE_BIND_ADDRESS", "127.0.0.1".into()),
        ("SLUICE_ADMIN_PORT", "0".into()),
        ("SLUICE_METRICS_PORT", "0".into()),
        ("SLUICE_USER_METRICS_PORT", "0".into()),
    ];
    procs.0.push(spawn_pinned("queue-proxy", &[], &qp_env));
    wait_port(qp);
    let activator = spawn_pinned(
        "activator",
        &[
            format!("--listen={act}"),
            format!("--metrics-listen={act_metrics}"),
            format!("--endpoints-address=http://{source}"),
            "--drain-quiet-period=1ms".into(),
        ],
        &[],
    );
    let act_pid = activator.id().to_string();
    procs.0.push(activator);
    wait_port(act);
    publisher.publish(revision("bench-00001", 0, &[qp]));
    publisher.publish(revision("held-00001", 10, &[]));
    let healthy =
        "sluice_activator_healthy_pods{namespace_name=\"default\",revision_name=\"bench-00001\"}";
    for _ in 0..500 {
        if sample(&scrape(act_metrics), healthy) == 1.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        sample(&scrape(act_metrics), healthy),
        1.0,
        "the pod never passed its probe"
    );

    // Warm both paths, then measure.
    let headers = [
        "Knative-Serving-Namespace: default",
        "Knative-Serving-Revision: bench-00001",
    ];
    hey(3, &format!("http://{qp}/"), &[]);
    hey(3, &format!("http://{act}/"), &headers);
    let (direct_rps, _) = hey(seconds, &format!("http://{qp}/"), &[]);
    let cpu0 = cpu_seconds(&act_pid);
    let (via_rps, via_ok) = hey(seconds, &format!("http://{act}/"), &headers);
    let cpu = cpu_seconds(&act_pid) - cpu0;
    let us_per_req = cpu * 1e6 / via_ok.max(1.0);

    println!("activator_load: hey -c 50 for {seconds}s, servers on core 0, hey on core 1");
    println!("  straight to the queue-proxy  {direct_rps:>9.0} req/s");
    println!(
        "  through the activator        {via_rps:>9.0} req/s  ({:.2} of direct)",
        via_rps / direct_rps
    );
    println!("  activator CPU per request    {us_per_req:>9.1} µs   (target ≤ 20)");

    // 10,000 requests held for a revision with no pod.
    let rss_before = status_mib(&act_pid, "VmRSS:");
    let held_series =
        "sluice_activator_requests_held{namespace_name=\"default\",revision_name=\"held-00001\"}";
    let conns = rt.block_on(async {
        let mut senders = Vec::new();
        for _ in 0..HELD_CONNECTIONS {
            let stream = tokio::net::TcpStream::connect(act).await.unwrap();
            let (sender, conn) = hyper::client::conn::http2::handshake(
                hyper_util::rt::TokioExecutor::new(),
                TokioIo::new(stream),
            )
            .await
            .unwrap();
            tokio::spawn(conn);
            senders.push(sender);
        }
        for i in 0..HELD {
            let mut sender = senders[i % HELD_CONNECTIONS].clone();
            tokio::spawn(async move {
                let req = http::Request::get(format!("http://{act}/"))
                    .header("knative-serving-namespace", "default")
                    .header("knative-serving-revision", "held-00001")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let _ = sender.send_request(req).await;
            });
        }
        senders
    });
    let mut held = 0.0;
    for _ in 0..600 {
        held = sample(&scrape(act_metrics), held_series);
        if held >= HELD as f64 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let rss_held = status_mib(&act_pid, "VmRSS:");
    let per_held_kib = (rss_held - rss_before) * 1024.0 / held.max(1.0);
    println!(
        "  {held:.0} requests held: RSS {rss_before:.1} → {rss_held:.1} MiB, {per_held_kib:.2} KiB per held request (target ≤ 4)"
    );
    drop(conns);
    drop(procs);
}
