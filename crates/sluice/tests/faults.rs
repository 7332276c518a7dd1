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
    let p = start().await;
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
