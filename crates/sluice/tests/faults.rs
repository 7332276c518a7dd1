//! Hostile clients against `sluice run` (gateway, activator, autoscaler in-process; real
//! pods over loopback): every request ends and frees its slot, slow and idle clients are
//! cut off, overload answers 503, and bad input gets a 4xx. Raw sockets throughout, so
//! each test does exactly what a misbehaving client does.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

mod common;

use common::*;

/// One pod that runs one request at a time (`containerConcurrency: 1`), always there.
fn one_slot(name: &str, timeout_seconds: u32) -> String {
    format!(
        r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {name}
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "1"
        autoscaling.knative.dev/max-scale: "1"
    spec:
      containerConcurrency: 1
      timeoutSeconds: {timeout_seconds}
      containers:
        - image: gcr.io/knative-samples/helloworld-go
"#
    )
}

async fn one_slot_platform(
    name: &str,
    timeout_seconds: u32,
) -> (sluice::run::Platform, SocketAddr) {
    one_slot_platform_with(name, timeout_seconds, test_limits()).await
}

async fn one_slot_platform_with(
    name: &str,
    timeout_seconds: u32,
    limits: sluice_core::serve::Limits,
) -> (sluice::run::Platform, SocketAddr) {
    let p = start_with(Duration::from_secs(30), limits).await;
    apply(&p, FAST_CONFIG).await;
    apply(&p, &one_slot(name, timeout_seconds)).await;
    wait_for(
        &p,
        &format!("{name}-00001"),
        Duration::from_secs(30),
        "ready",
        |r| r.ready >= 1,
    )
    .await;
    let gw = p.addresses().gateway;
    (p, gw)
}

/// The status line of a raw HTTP/1.1 exchange, or `None` if the connection ended first.
async fn status_of(stream: &mut TcpStream, limit: Duration) -> Option<u16> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                return line.split(' ').nth(1).and_then(|s| s.parse().ok());
            }
        }
    };
    tokio::time::timeout(limit, read).await.ok().flatten()
}

/// A GET through the gateway; its status, or `None` if none came within `limit`.
async fn get_status(gw: SocketAddr, host: &str, path: &str, limit: Duration) -> Option<u16> {
    let mut s = TcpStream::connect(gw).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    status_of(&mut s, limit).await
}

/// Starts uploading a large body to `/echo` and never reads the answer; returns once the
/// upload is stuck (the chain's buffers are full), with the socket still open.
async fn stuck_upload(gw: SocketAddr, host: &str) -> TcpStream {
    let mut s = TcpStream::connect(gw).await.expect("connect");
    let len = 512 * 1024 * 1024;
    let head = format!("POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len}\r\n\r\n");
    s.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b'x'; 64 * 1024];
    let mut sent = 0usize;
    // Bounded: at most 256 MiB, and each write gets a second before the upload counts as stuck.
    while sent < len / 2 {
        match tokio::time::timeout(Duration::from_secs(1), s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += chunk.len(),
            Ok(Err(e)) => panic!("the upload failed before it got stuck: {e}"),
            Err(_) => break,
        }
    }
    assert!(sent < len / 2, "the upload never got stuck");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_an_abandoned_upload_frees_its_slot_within_a_second() {
    let (p, gw) = one_slot_platform("upload", 300).await;
    let host = "upload.default.example.com";
    assert_eq!(
        get_status(gw, host, "/", Duration::from_secs(10)).await,
        Some(200)
    );
    // Two stuck uploads: the first holds the pod's one slot, the second waits for it.
    let a = stuck_upload(gw, host).await;
    let b = stuck_upload(gw, host).await;
    drop((a, b));
    let left = Instant::now();
    // Within a second or so of the clients leaving, the slot is free again.
    let status = get_status(gw, host, "/", Duration::from_secs(3)).await;
    assert_eq!(
        status,
        Some(200),
        "a request after the uploads were abandoned ({:?} after)",
        left.elapsed()
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_a_client_that_stops_reading_is_ended_by_the_revision_timeout() {
    let (p, gw) = one_slot_platform("stall", 2).await;
    let host = "stall.default.example.com";
    // A response far larger than every buffer on the way, never read.
    let mut s = TcpStream::connect(gw).await.expect("connect");
    let req = format!("GET /stream?mb=1024 HTTP/1.1\r\nHost: {host}\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("request");
    // timeoutSeconds 2, and a second's slack for the hops' own timers: by 3.5 s the
    // stalled exchange is over and the slot is free (a request queued behind it before
    // then would get its own 504 at 2 s).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let status = get_status(gw, host, "/", Duration::from_secs(5)).await;
    assert_eq!(
        status,
        Some(200),
        "the slot came back after the revision timeout"
    );
    drop(s);
    p.shutdown().await;
}

/// Sends `raw` as is and returns the status of the answer.
async fn raw_status(gw: SocketAddr, raw: &str) -> Option<u16> {
    let mut s = TcpStream::connect(gw).await.expect("connect");
    s.write_all(raw.as_bytes()).await.expect("write");
    status_of(&mut s, Duration::from_secs(5)).await
}

/// Whether the server closed `s` within `limit` (end of stream or reset).
async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, read).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_bad_input_gets_a_400_and_the_pod_is_not_blamed() {
    let (p, gw) = one_slot_platform("badinput", 300).await;
    let host = "badinput.default.example.com";
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\n\r\n\
         5\r\nhello\r\nzz-not-hex\r\n\r\n"
    );
    assert_eq!(
        raw_status(gw, &chunked).await,
        Some(400),
        "malformed chunked body"
    );
    assert_eq!(
        raw_status(gw, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n").await,
        Some(400),
        "no Host"
    );
    let two = format!("GET / HTTP/1.1\r\nHost: {host}\r\nHost: other.example\r\n\r\n");
    assert_eq!(raw_status(gw, &two).await, Some(400), "two different Hosts");
    let absolute = format!(
        "GET http://{host}/ HTTP/1.1\r\nHost: nothing.example\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(
        raw_status(gw, &absolute).await,
        Some(200),
        "the absolute-form authority wins over Host"
    );
    // The pod was not taken for broken: it still answers at once.
    assert_eq!(
        get_status(gw, host, "/", Duration::from_secs(3)).await,
        Some(200)
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_slowloris_and_idle_connections_are_closed_by_their_timeouts() {
    let (p, gw) = one_slot_platform("slow", 300).await;
    let host = "slow.default.example.com";
    // test_limits: header-read timeout 2 s, idle timeout 3 s.
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(gw).await.expect("connect");
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\nX-a: ").as_bytes())
            .await
            .expect("partial head");
        slow.push(s);
    }
    let mut idle = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(gw).await.expect("connect");
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .expect("request");
        assert_eq!(status_of(&mut s, Duration::from_secs(5)).await, Some(200));
        idle.push(s);
    }
    let started = Instant::now();
    // Trickle one byte a second into the slow heads: the whole head is still late.
    for s in &mut slow {
        let _ = s.write_all(b"x").await;
    }
    for s in &mut slow {
        assert!(
            closed_within(s, Duration::from_secs(6)).await,
            "a slowloris connection is closed by the header-read timeout"
        );
    }
    for s in &mut idle {
        assert!(
            closed_within(s, Duration::from_secs(6)).await,
            "an idle keep-alive connection is closed"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_past_the_connection_bound_the_answer_is_503_naming_it() {
    let limits = sluice_core::serve::Limits {
        max_connections: Some(100),
        ..test_limits()
    };
    let (p, gw) = one_slot_platform_with("bound", 300, limits).await;
    let host = "bound.default.example.com";
    // 300 clients hold a request each (the pod's one slot, then the activator's and the
    // queue-proxy's queues); the gateway serves 100 connections, the rest get 503 at once.
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(gw).await.expect("connect");
        s.write_all(format!("GET /?sleep=4000 HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .expect("request");
        held.push(s);
    }
    let mut refused = 0;
    for _ in 0..200 {
        let mut s = TcpStream::connect(gw).await.expect("connect");
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .expect("request");
        let mut text = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_string(&mut text)).await;
        if text.starts_with("HTTP/1.1 503") {
            assert!(text.contains("connection limit"), "{text}");
            refused += 1;
        }
    }
    assert_eq!(refused, 200, "every connection past the bound gets its 503");
    drop(held);
    // Once they are gone, the gateway serves again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if get_status(gw, host, "/", Duration::from_secs(10)).await == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway serves again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    p.shutdown().await;
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_idle_connections_give_back_their_fds_and_memory() {
    let (p, gw) = one_slot_platform("burst", 300).await;
    let host = "burst.default.example.com";
    assert_eq!(
        get_status(gw, host, "/", Duration::from_secs(5)).await,
        Some(200)
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (fds0, rss0) = (open_fds(), rss_mib());
    // This process is the platform and the clients: each connection costs two fds here.
    let n = 1000;
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(gw).await.expect("connect");
        s.write_all(format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())
            .await
            .expect("request");
        assert_eq!(status_of(&mut s, Duration::from_secs(5)).await, Some(200));
        conns.push(s);
    }
    let held = open_fds();
    assert!(held >= fds0 + 2 * n - 10, "{held} fds held, {fds0} before");
    // test_limits: idle timeout 3 s. The gateway closes its side; the clients' stay.
    let deadline = Instant::now() + Duration::from_secs(8);
    while open_fds() > fds0 + n + 20 {
        assert!(
            Instant::now() < deadline,
            "the gateway still holds idle connections: {} fds, {fds0} + {n} clients'",
            open_fds()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(conns);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (fds1, rss1) = (open_fds(), rss_mib());
    // The bound the README documents: fds back within 20 of the baseline, and memory
    // within 32 MiB of it (allocator caches keep some).
    assert!(fds1 <= fds0 + 20, "{fds1} fds after, {fds0} before");
    assert!(
        rss1 <= rss0 + 32.0,
        "{rss1:.1} MiB after, {rss0:.1} MiB before"
    );
    p.shutdown().await;
}
