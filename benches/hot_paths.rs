//! Micro-benchmarks of what every request through a queue-proxy pays, each beside the
//! naive alternative it replaced where a choice was at stake.
//!
//! `cargo bench -p sluice-benches` (or `make bench`).

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue};
use sluice_autoscaler::kpa::{Decider, DeciderSpec, Window};
use sluice_core::breaker::{Breaker, BreakerParams};
use sluice_core::headers::{self as kh, classify};
use sluice_core::stats::{ReqEvent, RequestStats};
use tokio::time::Instant;

/// The headers `hey` sends, plus the ones the activator adds to a proxied request.
fn request_headers(proxied: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "host",
        HeaderValue::from_static("hello.default.example.com"),
    );
    h.insert("user-agent", HeaderValue::from_static("hey/0.0.1"));
    h.insert("content-type", HeaderValue::from_static("text/html"));
    h.insert("accept-encoding", HeaderValue::from_static("gzip"));
    if proxied {
        h.insert(kh::PROXY, HeaderValue::from_static("activator"));
        h.insert(
            kh::ORIGINAL_HOST,
            HeaderValue::from_static("hello.default.example.com"),
        );
    }
    h
}

/// The naive classification: one hash lookup per question.
fn classify_by_lookups(h: &HeaderMap) -> (bool, bool, bool, bool) {
    let ua = h.get("user-agent").map_or(&[][..], |v| v.as_bytes());
    let kube = ua.starts_with(b"kube-probe/");
    let health = kube
        || ua.starts_with(b"Knative-Activator-Probe")
        || ua.starts_with(b"Knative-Autoscaling-Probe");
    let network = h.get(kh::PROBE).is_some_and(|v| v == "probe");
    let kubelet = kube || h.contains_key(kh::KUBELET_PROBE);
    let proxied = h.get(kh::PROXY).is_some_and(|v| v == "activator");
    (health, network, kubelet, proxied)
}

fn headers(c: &mut Criterion) {
    let mut g = c.benchmark_group("classify");
    for proxied in [false, true] {
        let h = request_headers(proxied);
        let label = if proxied { "proxied" } else { "direct" };
        g.bench_function(format!("one_pass/{label}"), |b| {
            b.iter(|| classify(black_box(&h)))
        });
        g.bench_function(format!("lookups/{label}"), |b| {
            b.iter(|| classify_by_lookups(black_box(&h)))
        });
    }
    g.finish();
}

fn breaker(c: &mut Criterion) {
    let mut g = c.benchmark_group("breaker");
    let b = Breaker::new(BreakerParams::for_container_concurrency(10)).unwrap();
    g.bench_function("reserve_release", |bench| {
        bench.iter(|| drop(black_box(b.reserve())))
    });
    // Baseline: a bare semaphore, i.e. what the pending-count admission check costs on top.
    let sem = Arc::new(tokio::sync::Semaphore::new(10));
    g.bench_function("semaphore_baseline", |bench| {
        bench.iter(|| drop(black_box(Arc::clone(&sem).try_acquire_owned())));
    });
    // Contention: 8 tasks on a 2-thread runtime through 4 slots, 1,000 acquisitions each.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .unwrap();
    g.bench_function("contended_8x1000_cc4", |bench| {
        bench.iter(|| {
            rt.block_on(async {
                let b = Breaker::new(BreakerParams::for_container_concurrency(4)).unwrap();
                let tasks: Vec<_> = (0..8)
                    .map(|_| {
                        let b = Arc::clone(&b);
                        tokio::spawn(async move {
                            for _ in 0..1000 {
                                let p = b.acquire().await.unwrap();
                                tokio::task::yield_now().await;
                                drop(p);
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            });
        });
    });
    g.finish();
}

fn stats(c: &mut Criterion) {
    let mut g = c.benchmark_group("request_stats");
    let t0 = Instant::now();
    let mut s = RequestStats::new(t0);
    let mut now = t0;
    g.bench_function("in_out_pair", |b| {
        b.iter(|| {
            now += Duration::from_micros(10);
            s.handle(ReqEvent::In, now);
            s.handle(ReqEvent::Out, now + Duration::from_micros(5));
        });
    });
    g.bench_function("report", |b| {
        b.iter(|| {
            now += Duration::from_secs(1);
            black_box(s.report(now))
        });
    });
    g.finish();
}

fn kpa(c: &mut Criterion) {
    let mut g = c.benchmark_group("kpa");
    let mut w = Window::new(Duration::from_secs(60));
    let mut sec = 0u64;
    g.bench_function("window_record_10_pods_and_average", |b| {
        b.iter(|| {
            sec += 1;
            let now = Duration::from_secs(sec);
            for pod in 0..10 {
                w.record(now, f64::from(pod));
            }
            black_box(w.average(now))
        });
    });
    let spec = DeciderSpec {
        target_value: 7.0,
        total_value: 10.0,
        target_burst_capacity: 211.0,
        panic_threshold: 2.0,
        max_scale_up_rate: 1000.0,
        max_scale_down_rate: 2.0,
        stable_window: Duration::from_secs(60),
        scale_down_delay: Duration::from_secs(30),
        activation_scale: 0,
        reachable: true,
    };
    let mut d = Decider::new(spec, Some(5), Duration::ZERO);
    let mut t = 0u64;
    g.bench_function("decider_scale", |b| {
        b.iter(|| {
            t += 2;
            black_box(d.scale(Duration::from_secs(t), 35.0 + (t % 7) as f64, 40.0, 5))
        });
    });
    g.finish();
}

criterion_group!(benches, headers, breaker, stats, kpa);
criterion_main!(benches);
