//! Hostile clients at full size against `sluice run` (release build, pinned to core 0 with
//! its pods; clients on core 1), the figures behind the README's "Reliability" section:
//!
//! 1. 10,000 idle keep-alive connections: the process's memory and file descriptors while
//!    they are held, how long until the idle timeout has closed them all, and what is left
//!    once they are gone;
//! 2. 2,000 slowloris connections (a partial head, trickled): how many the header-read
//!    timeout closed, and when;
//! 3. 11,000 concurrent clients on a revision with `containerConcurrency: 1`,
//!    `max-scale: 2` and `timeoutSeconds: 10`, each request taking 200 ms (`hey -c 11000`):
//!    every answer by status (200, 503, 504, and any 502 or error, which must be none),
//!    and that the process is still up.
//!
//! `make release && cargo bench -p sluice-benches --bench faults`
//! (`SLUICE_BENCH_IDLE_CONNS`, default 10000; `SLUICE_BENCH_SLOW_CONNS`, 2000;
//! `SLUICE_BENCH_CLIENTS`, 11000.) Timeouts are set to 10 s to keep the run short.

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use tokio::time::Instant;

use sluice_benches::{
    Procs, free_addr, get, hey_answers, pin_self_to, setting, spawn_sluice_run, status_mib,
    wait_port,
};

const TIMEOUT: &str = "10s";
const HOST: &str = "jam.default.example.com";

const MANIFEST: &str = r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
  namespace: knative-serving
data:
  stable-window: "6s"
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: jam
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
        autoscaling.knative.dev/max-scale: "2"
    spec:
      containerConcurrency: 1
      timeoutSeconds: 10
      containers:
        - image: gcr.io/knative-samples/helloworld-go
"#;

fn fds(pid: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn snapshot(pid: &str) -> (f64, usize) {
    (status_mib(pid, "VmRSS"), fds(pid))
}

fn ready(admin: SocketAddr) -> bool {
    let Ok((_, body)) = get(admin, "admin", "/status") else {
        return false;
    };
    let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    status["services"][0]["revisions"][0]["ready"].as_i64() >= Some(1)
}

/// Whether the server has closed `s` (end of stream or reset), without waiting.
fn closed(s: &mut TcpStream) -> bool {
    s.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Waits (bounded) until every connection is closed; seconds it took, and how many were.
fn wait_closed(conns: &mut [TcpStream], limit: Duration) -> (f64, usize) {
    let start = Instant::now();
    let mut open: Vec<usize> = (0..conns.len()).collect();
    while !open.is_empty() && start.elapsed() < limit {
        open.retain(|&i| !closed(&mut conns[i]));
        std::thread::sleep(Duration::from_millis(100));
    }
    (start.elapsed().as_secs_f64(), conns.len() - open.len())
}

/// Each status code (or error) `hey` printed, with its count.
fn hey_codes(clients: usize, url: &str) -> (BTreeMap<String, u64>, String) {
    let clients = clients.to_string();
    let out = Command::new("taskset")
        .args(["-c", "1", "hey", "-n", &clients, "-c", &clients, "-t", "60"])
        .args(["-host", HOST])
        .arg(url)
        .output()
        .expect("hey is installed (apt-get install -y hey)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut codes = BTreeMap::new();
    for (answer, n) in hey_answers(&text) {
        *codes.entry(answer).or_default() += n;
    }
    (codes, text)
}

fn main() {
    let idle_conns = setting("SLUICE_BENCH_IDLE_CONNS", 10_000usize);
    let slow_conns = setting("SLUICE_BENCH_SLOW_CONNS", 2_000usize);
    let clients = setting("SLUICE_BENCH_CLIENTS", 11_000usize);
    sluice_core::serve::limits::raise_fd_limit();
    pin_self_to("1");

    let dir = std::env::temp_dir().join(format!("sluice-faults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let manifest = dir.join("jam.yaml");
    std::fs::write(&manifest, MANIFEST).unwrap();
    let (gateway, admin) = (free_addr(), free_addr());
    let mut procs = Procs::default();
    procs.0.push(spawn_sluice_run(
        &manifest,
        gateway,
        admin,
        &dir,
        &["--idle-timeout", TIMEOUT, "--header-read-timeout", TIMEOUT],
    ));
    let pid = procs.0[0].id().to_string();
    wait_port(admin);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready(admin) {
        assert!(Instant::now() < deadline, "the revision never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
    let request = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    // Warm the path once, then the baseline.
    assert_eq!(get(gateway, HOST, "/").unwrap().0, 200);
    std::thread::sleep(Duration::from_secs(1));
    let base = snapshot(&pid);

    // 1. Idle keep-alive connections.
    let mut idle = Vec::with_capacity(idle_conns);
    let mut idle_answers: BTreeMap<String, u64> = BTreeMap::new();
    for _ in 0..idle_conns {
        let mut s = TcpStream::connect(gateway).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap_or(0);
        let status = String::from_utf8_lossy(&buf[..n.min(12)]).into_owned();
        *idle_answers.entry(status).or_default() += 1;
        idle.push(s);
    }
    let held = snapshot(&pid);
    let (idle_secs, idle_closed) = wait_closed(&mut idle, Duration::from_secs(30));
    drop(idle);
    // Past one period of the task that hands freed memory back (5 s).
    std::thread::sleep(Duration::from_secs(6));
    let after_idle = snapshot(&pid);

    // 2. Slowloris.
    let mut slow = Vec::with_capacity(slow_conns);
    for _ in 0..slow_conns {
        let mut s = TcpStream::connect(gateway).unwrap();
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ").as_bytes())
            .unwrap();
        slow.push(s);
    }
    for s in &mut slow {
        let _ = s.write_all(b"a");
    }
    let (slow_secs, slow_closed) = wait_closed(&mut slow, Duration::from_secs(30));
    drop(slow);
    std::thread::sleep(Duration::from_secs(6));
    let after_slow = snapshot(&pid);

    // 3. A flood on one slot.
    // Each request takes 200 ms on a pod that runs one at a time, at most 2 pods: nearly
    // every client is held until the revision timeout (10 s) or refused at a bound.
    let (codes, text) = hey_codes(clients, &format!("http://{gateway}/?sleep=200"));
    let peak = status_mib(&pid, "VmHWM");
    let alive = procs.0[0].try_wait().unwrap().is_none();
    // Past the idle timeout (the pooled connections of the flood close) and a trim period.
    std::thread::sleep(Duration::from_secs(20));
    let after_flood = snapshot(&pid);
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);

    println!("faults: sluice run on core 0 (pods too), clients on core 1; timeouts {TIMEOUT}");
    let row = |what: &str, (rss, fds): (f64, usize)| {
        println!("  {what:<48} {rss:>8.1} MiB RSS {fds:>7} fds");
    };
    row("baseline (one pod ready)", base);
    row(
        &format!("{idle_conns} idle keep-alive connections held"),
        held,
    );
    println!("  their first answers: {idle_answers:?}");
    println!(
        "  idle timeout closed {idle_closed} of {idle_conns} within {idle_secs:.1} s of the last one opening"
    );
    row("6 s after they were closed", after_idle);
    println!(
        "  header-read timeout closed {slow_closed} of {slow_conns} slowloris connections within {slow_secs:.1} s"
    );
    row("6 s after the slowloris connections", after_slow);
    println!("  {clients} concurrent clients on containerConcurrency 1, max-scale 2:");
    for (code, n) in &codes {
        println!("    {code:<56} {n:>7}");
    }
    let bad: u64 = codes
        .iter()
        .filter(|(c, _)| !matches!(c.as_str(), "200" | "503" | "504"))
        .map(|(_, n)| n)
        .sum();
    println!(
        "    answers other than 200/503/504: {bad}; process still up: {alive}; peak RSS {peak:.1} MiB"
    );
    row("20 s after the flood", after_flood);
    if bad > 0 {
        eprintln!("{text}");
    }
}
