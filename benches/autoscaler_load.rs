//! The whole autoscaler process under the load: 10,000 revisions × 10 pods, each
//! pod reporting one stat a second over gRPC, one decision watcher attached. The release
//! `autoscaler` binary runs pinned to core 0; this client pins itself to core 1.
//!
//! Prints the autoscaler's CPU (fraction of one core) and memory over the measured
//! period, the stats and decisions it handled per second, and how late decisions were
//! against their tick (from its own `sluice_autoscaler_decision_lag_seconds` histogram).
//!
//! `make release && cargo bench -p sluice-benches --bench autoscaler_load`
//! (`SLUICE_BENCH_WARMUP` / `SLUICE_BENCH_SECONDS` change the 15 s warm-up / 30 s run.)

#![allow(missing_docs, clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_benches::{cpu_seconds, free_addr, pin_self_to, sample, scrape, setting, status_mib};
use sluice_proto::Stat;
use sluice_proto::v1::decision_service_client::DecisionServiceClient;
use sluice_proto::v1::stats_service_client::StatsServiceClient;
use sluice_proto::v1::{Source, StatReport, WatchDecisionsRequest};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

const REVISIONS: usize = 10_000;
const PODS: usize = 10;
/// Reporter streams; each carries REVISIONS / STREAMS revisions' pods.
const STREAMS: usize = 100;

/// Cumulative decision-lag buckets (upper bound, count) and the total count.
fn lag_buckets(text: &str) -> (Vec<(f64, f64)>, f64) {
    let prefix = "sluice_autoscaler_decision_lag_seconds_bucket{le=\"";
    let buckets = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, v.trim().parse().ok()?))
        })
        .collect();
    (
        buckets,
        sample(text, "sluice_autoscaler_decision_lag_seconds_count"),
    )
}

fn main() {
    let bin = std::env::var("SLUICE_AUTOSCALER_BIN").unwrap_or_else(|_| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../target/release/autoscaler").to_owned()
    });
    if !std::path::Path::new(&bin).exists() {
        eprintln!("autoscaler_load: {bin} not found; run `make release` first");
        std::process::exit(2);
    }
    let warmup = setting("SLUICE_BENCH_WARMUP", 15);
    let seconds = setting("SLUICE_BENCH_SECONDS", 30);
    pin_self_to("1");
    let (grpc, metrics) = (free_addr(), free_addr());
    let mut child = Command::new("taskset")
        .args(["-c", "0", &bin])
        .args(["--listen", &grpc.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let url = format!("http://{grpc}");
        let mut up = false;
        for _ in 0..500 {
            if tokio::net::TcpStream::connect(metrics).await.is_ok() {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(up, "the autoscaler never listened");
        let start = Instant::now();
        let end = start + Duration::from_secs(warmup + seconds);
        // One watcher, as the local runtime or a gateway would be.
        let mut watch = DecisionServiceClient::connect(url.clone())
            .await
            .unwrap()
            .watch(WatchDecisionsRequest::default())
            .await
            .unwrap()
            .into_inner();
        let watcher = tokio::spawn(async move {
            let mut seen = 0u64;
            while let Ok(Some(_)) = watch.message().await {
                seen += 1;
            }
            seen
        });
        let per_stream = REVISIONS / STREAMS;
        let mut reporters = Vec::new();
        for s in 0..STREAMS {
            let mut client = StatsServiceClient::connect(url.clone()).await.unwrap();
            let (tx, rx) = mpsc::channel::<StatReport>(2 * per_stream * PODS);
            let call = tokio::spawn(async move { client.report(ReceiverStream::new(rx)).await });
            // Streams report at evenly spread phases of the second, as pods do.
            let phase = Duration::from_secs(1) * u32::try_from(s).unwrap() / STREAMS as u32;
            reporters.push(tokio::spawn(async move {
                let names: Vec<(String, Vec<String>)> = (0..per_stream)
                    .map(|r| {
                        let rev = format!("rev-{:05}", s * per_stream + r);
                        let pods = (0..PODS).map(|p| format!("{rev}-pod-{p}")).collect();
                        (rev, pods)
                    })
                    .collect();
                let mut next = start + phase;
                let mut sec = 0u64;
                while next < end {
                    tokio::time::sleep_until(next).await;
                    for (r, (rev, pods)) in names.iter().enumerate() {
                        for (p, pod) in pods.iter().enumerate() {
                            // Load that moves: each revision's total steps between
                            // about 240, 480 and 720 every 20 s, so its stable average
                            // (and desired scale, 70 per pod) keeps changing.
                            let step = (r + (sec / 20) as usize) % 3 + 1;
                            let c = (((r + p) % 7 + 5) * 3 * step) as f64;
                            let report = StatReport {
                                namespace: "default".into(),
                                revision: rev.clone(),
                                source: Source::QueueProxy.into(),
                                stat: Some(Stat {
                                    pod_name: pod.clone(),
                                    average_concurrent_requests: c,
                                    request_count: c * 10.0,
                                    ..Stat::default()
                                }),
                                poke: false,
                            };
                            if tx.send(report).await.is_err() {
                                return;
                            }
                        }
                    }
                    sec += 1;
                    next += Duration::from_secs(1);
                }
                drop(tx);
                let _ = call.await;
            }));
        }

        tokio::time::sleep_until(start + Duration::from_secs(warmup)).await;
        let (cpu0, own0, before) = (cpu_seconds(&pid), cpu_seconds("self"), scrape(metrics));
        let t0 = Instant::now();
        tokio::time::sleep_until(end).await;
        let (cpu1, own1, after) = (cpu_seconds(&pid), cpu_seconds("self"), scrape(metrics));
        let elapsed = t0.elapsed().as_secs_f64();
        let (rss, hwm) = (status_mib(&pid, "VmRSS:"), status_mib(&pid, "VmHWM:"));
        for r in reporters {
            let _ = r.await;
        }

        let rate = |series: &str| (sample(&after, series) - sample(&before, series)) / elapsed;
        let (b0, n0) = lag_buckets(&before);
        let (b1, n1) = lag_buckets(&after);
        let decisions = n1 - n0;
        let within = |limit: f64| {
            let at = |b: &[(f64, f64)]| {
                b.iter()
                    .filter(|(le, _)| *le <= limit)
                    .map(|(_, v)| *v)
                    .fold(0.0, f64::max)
            };
            at(&b1) - at(&b0)
        };
        let all_within = b1
            .iter()
            .zip(&b0)
            .find(|((_, v1), (_, v0))| v1 - v0 >= decisions)
            .map_or(f64::INFINITY, |((le, _), _)| *le);
        let core = (cpu1 - cpu0) / elapsed;
        println!(
            "autoscaler_load: {REVISIONS} revisions x {PODS} pods over {STREAMS} gRPC streams, 1 watcher; {seconds} s measured after {warmup} s"
        );
        println!(
            "  revisions registered {}, stats {:.0}/s (offered {}/s), rejected {}",
            sample(&after, "sluice_autoscaler_revisions"),
            rate("sluice_autoscaler_stats_total{source=\"queue-proxy\"}"),
            REVISIONS * PODS,
            sample(&after, "sluice_autoscaler_stats_rejected_total{reason=\"unknown_revision\"}")
                + sample(&after, "sluice_autoscaler_stats_rejected_total{reason=\"missing_field\"}"),
        );
        println!(
            "  autoscaler CPU {core:.3} of a core ({:.2}x the 0.25 target); client CPU {:.3}",
            core / 0.25,
            (own1 - own0) / elapsed
        );
        println!(
            "  autoscaler memory: RSS {rss:.1} MiB, peak {hwm:.1} MiB ({:.2}x the 256 MiB target)",
            hwm / 256.0
        );
        println!(
            "  decisions {:.0}/s; within 10 ms of their tick: {:.2}% ({} of {}); all within {} s",
            decisions / elapsed,
            100.0 * within(0.01) / decisions.max(1.0),
            within(0.01),
            decisions,
            all_within
        );
        child.kill().ok();
        let _ = child.wait();
        let published = watcher.await.unwrap_or(0);
        println!("  decisions published to the watcher over the run: {published}");
    });
}
