//! Scale from zero through the whole local platform: `sluice run` (release build, pinned
//! to core 0 with every pod it starts) serves services of `sluice sample-app` that have
//! scaled to zero; this client (core 1) sends one request to each and times it, from
//! `connect` to the last byte of the answer.
//!
//! The request goes gateway → activator (held) → poke → autoscaler decision → supervisor
//! starts the app and its queue-proxy → ready → activator → pod. The app's own start-up
//! (exec of `sluice sample-app` to its first 200, measured here the same way) is what any
//! platform pays; the rest is Sluice's overhead (target ≤ 10 ms). The queue-proxy's own
//! start-up (exec to its first ready answer to `K-Network-Probe: queue`) is printed too:
//! pinned to one core, the pod's two processes start one after the other.
//!
//! Each revision is first woken once (a brand-new revision waits for its first 2 s tick,
//! as in Knative), then left to scale to zero (6 s stable window, 6 s grace); only the
//! requests that find it at zero are timed, one at a time.
//!
//! `make release && cargo bench -p sluice-benches --bench cold_start`
//! (`SLUICE_BENCH_SERVICES`, default 8, and `SLUICE_BENCH_ROUNDS`, default 3: samples are
//! services × rounds.)

#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::time::Instant;

use sluice_benches::{
    Procs, free_addr, get, get_with, pin_self_to, queue_proxy_env, release_bin, setting,
    spawn_sample_app, spawn_sluice_run, wait_port,
};

const APP_STARTS: usize = 20;

fn manifest(services: usize) -> String {
    let mut out = String::from(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  \
         namespace: knative-serving\ndata:\n  allow-zero-initial-scale: \"true\"\n  \
         stable-window: \"6s\"\n  scale-to-zero-grace-period: \"6s\"\n",
    );
    for i in 0..services {
        out.push_str(&format!(
            "---\napiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  \
             name: cold-{i}\nspec:\n  template:\n    metadata:\n      annotations:\n        \
             autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n        \
             - image: gcr.io/knative-samples/helloworld-go\n"
        ));
    }
    out
}

/// Milliseconds from `connect` to the whole answer, which must be a 200.
fn timed_get(addr: SocketAddr, host: &str) -> f64 {
    let start = Instant::now();
    let (status, body) = get(addr, host, "/").unwrap();
    let ms = start.elapsed().as_secs_f64() * 1e3;
    assert_eq!(status, 200, "{host}: {body}");
    ms
}

/// Milliseconds from the exec of `sluice ARGS` to the first 200 of `GET /` with
/// `headers`, on a port nothing listened on before.
fn start_ms(args: &[&str], env: &[(&str, String)], addr: SocketAddr, headers: &[&str]) -> f64 {
    let start = Instant::now();
    let mut child = Command::new(release_bin("sluice"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = start + Duration::from_secs(5);
    let ms = loop {
        if let Ok((200, _)) = get_with(addr, "bench", "/", headers) {
            break start.elapsed().as_secs_f64() * 1e3;
        }
        assert!(Instant::now() < deadline, "sluice {args:?} never answered");
        std::thread::sleep(Duration::from_micros(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    ms
}

/// The app alone, as the pod runs it.
fn app_start_ms() -> f64 {
    let app = free_addr();
    let env = [
        ("PORT", app.port().to_string()),
        ("SAMPLE_APP_BIND", "127.0.0.1".to_owned()),
    ];
    start_ms(&["sample-app"], &env, app, &[])
}

/// A queue-proxy alone, in front of an app already up, until it says the pod is ready.
fn queue_proxy_start_ms(app: SocketAddr) -> f64 {
    let qp = free_addr();
    start_ms(
        &["queue-proxy"],
        &queue_proxy_env(qp, app, 0),
        qp,
        &["K-Network-Probe: queue"],
    )
}

/// `(desired, ready)` of each service's one revision, from the admin port's status JSON.
fn scales(admin: SocketAddr) -> Vec<(i64, i64)> {
    let (_, body) = get(admin, "admin", "/status").unwrap();
    let status: serde_json::Value = serde_json::from_str(&body).unwrap();
    status["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["revisions"].as_array().unwrap())
        .map(|r| (r["desired"].as_i64().unwrap(), r["ready"].as_i64().unwrap()))
        .collect()
}

fn wait_all(admin: SocketAddr, services: usize, what: &str, ok: impl Fn(i64, i64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let now = scales(admin);
        if now.len() == services && now.iter().all(|&(d, r)| ok(d, r)) {
            return;
        }
        assert!(Instant::now() < deadline, "never {what}: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i]
}

fn summary(samples: &mut [f64]) -> (f64, f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    (
        samples[0],
        percentile(samples, 0.5),
        percentile(samples, 0.9),
        samples[samples.len() - 1],
    )
}

fn main() {
    let services = setting("SLUICE_BENCH_SERVICES", 8);
    let rounds = setting("SLUICE_BENCH_ROUNDS", 3);
    pin_self_to("1");

    let dir = std::env::temp_dir().join(format!("sluice-cold-start-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest_path = dir.join("services.yaml");
    std::fs::write(&manifest_path, manifest(services)).unwrap();
    let (gateway, admin) = (free_addr(), free_addr());
    let mut procs = Procs::default();
    procs
        .0
        .push(spawn_sluice_run(&manifest_path, gateway, admin, &dir, &[]));
    wait_port(admin);
    wait_port(gateway);
    let host = |i: usize| format!("cold-{i}.default.example.com");

    // The pod's two processes alone, on core 0 like the pods.
    let app_addr = spawn_sample_app(&mut procs);
    pin_self_to("0");
    let mut app: Vec<f64> = (0..APP_STARTS).map(|_| app_start_ms()).collect();
    let mut qp: Vec<f64> = (0..APP_STARTS)
        .map(|_| queue_proxy_start_ms(app_addr))
        .collect();
    pin_self_to("1");

    // Wake every revision once: its first decision (and pod) is the 2 s tick's.
    wait_all(admin, services, "listed", |_, _| true);
    std::thread::scope(|s| {
        for i in 0..services {
            let host = host(i);
            s.spawn(move || timed_get(gateway, &host));
        }
    });

    // A warm request through the same path, for scale.
    let mut warm: Vec<f64> = (0..50)
        .map(|i| timed_get(gateway, &host(i % services)))
        .collect();

    let mut cold = Vec::new();
    for round in 0..rounds {
        eprintln!(
            "cold_start: round {}/{rounds}: waiting for {services} revisions to scale to zero",
            round + 1
        );
        wait_all(admin, services, "at zero", |d, r| d == 0 && r == 0);
        for i in 0..services {
            cold.push(timed_get(gateway, &host(i)));
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);

    let (qmin, qmed, q90, qmax) = summary(&mut qp);
    let (amin, amed, a90, amax) = summary(&mut app);
    let (wmin, wmed, w90, wmax) = summary(&mut warm);
    let (cmin, cmed, c90, cmax) = summary(&mut cold);
    println!(
        "cold_start: sluice run on core 0 (pods too), client on core 1; {} cold requests",
        cold.len()
    );
    println!(
        "  {:<34} {:>8} {:>8} {:>8} {:>8}",
        "ms", "min", "median", "p90", "max"
    );
    let row = |name: &str, (a, b, c, d): (f64, f64, f64, f64)| {
        println!("  {name:<34} {a:>8.2} {b:>8.2} {c:>8.2} {d:>8.2}");
    };
    row(
        &format!("sample-app start-up ({APP_STARTS} runs)"),
        (amin, amed, a90, amax),
    );
    row(
        &format!("queue-proxy start-up ({APP_STARTS} runs)"),
        (qmin, qmed, q90, qmax),
    );
    row("warm request through the gateway", (wmin, wmed, w90, wmax));
    row("request at zero pods", (cmin, cmed, c90, cmax));
    println!(
        "  overhead (median cold − median app start-up): {:.2} ms (target ≤ 10); \
         the queue-proxy's start-up, on the same core, is part of it",
        cmed - amed
    );
}
