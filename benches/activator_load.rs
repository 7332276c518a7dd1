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

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use sluice_benches::{
    Procs, cpu_seconds, free_addr, hey, pin_self_to, queue_proxy_env, sample, scrape, setting,
    spawn_pinned, spawn_sample_app, status_mib, wait_port,
};
use sluice_core::feed::Feed;
use sluice_proto::v1::RevisionEndpoints;

const HELD: usize = 10_000;
const HELD_CONNECTIONS: usize = 50;

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
    let seconds: u64 = setting("SLUICE_BENCH_SECONDS", 20);
    pin_self_to("1");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (qp, act, act_metrics, source) = (free_addr(), free_addr(), free_addr(), free_addr());

    let publisher = Feed::new();
    let endpoints = publisher.clone();
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::bind(source).await.unwrap();
        sluice_control::grpc::serve(
            listener,
            sluice_control::grpc::Feeds {
                endpoints,
                ..Default::default()
            },
            std::future::pending(),
        )
        .await
        .unwrap();
    });

    let mut procs = Procs::default();
    let app = spawn_sample_app(&mut procs);
    let qp_env = queue_proxy_env(qp, app, 0);
    procs.0.push(spawn_pinned("queue-proxy", &[], &qp_env));
    wait_port(qp);
    let activator = spawn_pinned(
        "activator",
        &[
            format!("--listen={act}"),
            format!("--metrics-listen={act_metrics}"),
            format!("--control=http://{source}"),
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
    let run = |secs: u64, url: String, headers: &[&str]| {
        let duration = format!("{secs}s");
        let mut args = vec!["-z", &duration, "-c", "50"];
        for h in headers {
            args.extend(["-H", h]);
        }
        hey(&args, &url)
    };
    run(3, format!("http://{qp}/"), &[]);
    run(3, format!("http://{act}/"), &headers);
    let direct_rps = run(seconds, format!("http://{qp}/"), &[]).rps;
    let cpu0 = cpu_seconds(&act_pid);
    let via = run(seconds, format!("http://{act}/"), &headers);
    let (via_rps, via_ok) = (via.rps, via.ok);
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
