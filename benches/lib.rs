//! Benchmarks live in `hot_paths.rs` (criterion), `queue-proxy.sh`, the `*_load.rs` load
//! benchmarks and `cold_start.rs`; this library holds what they share: the release binaries
//! started pinned to a core, `hey` pinned to the other, a process's CPU and memory from
//! `/proc`, and plain HTTP/1 exchanges (metrics pages, timed requests).

#![allow(missing_docs, clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Child processes, stopped when dropped (a panicking benchmark leaves nothing behind):
/// SIGTERM, so that nginx stops its workers and `sluice run` its pods, then SIGKILL for
/// any still running after 10 s.
#[derive(Debug, Default)]
pub struct Procs(pub Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &self.0 {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
        let mut waits = 1_000; // × 10 ms
        for c in &mut self.0 {
            while waits > 0 && matches!(c.try_wait(), Ok(None)) {
                waits -= 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `target/release/{bin}`, which `make release` builds.
pub fn release_bin(bin: &str) -> PathBuf {
    let path = PathBuf::from(format!(
        "{}/../target/release/{bin}",
        env!("CARGO_MANIFEST_DIR")
    ));
    assert!(
        path.exists(),
        "{} is missing: run `make release` first",
        path.display()
    );
    path
}

/// A release binary started on core 0, its output discarded, logging at `warn`.
pub fn spawn_pinned(bin: &str, args: &[String], env: &[(&str, String)]) -> Child {
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"]).arg(release_bin(bin)).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// A `SLUICE_BENCH_*` setting from the environment, or `default`.
pub fn setting<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The release `sample-app` on core 0, answering on the returned address.
pub fn spawn_sample_app(procs: &mut Procs) -> SocketAddr {
    let app = free_addr();
    procs.0.push(spawn_pinned(
        "sample-app",
        &[],
        &[
            ("PORT", app.port().to_string()),
            ("SAMPLE_APP_BIND", "127.0.0.1".into()),
        ],
    ));
    wait_port(app);
    app
}

/// The environment the reconciler gives a queue-proxy, for a pod of revision
/// `bench-00001` whose app listens on `app`.
pub fn queue_proxy_env(
    listen: SocketAddr,
    app: SocketAddr,
    cc: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("SERVING_NAMESPACE", "default".into()),
        ("SERVING_CONFIGURATION", "bench".into()),
        ("SERVING_REVISION", "bench-00001".into()),
        ("SERVING_POD", "bench-pod".into()),
        ("SERVING_POD_IP", "127.0.0.1".into()),
        ("QUEUE_SERVING_PORT", listen.port().to_string()),
        ("USER_PORT", app.port().to_string()),
        ("CONTAINER_CONCURRENCY", cc.to_string()),
        ("REVISION_TIMEOUT_SECONDS", "300".into()),
        ("SLUICE_BIND_ADDRESS", "127.0.0.1".into()),
        ("SLUICE_ADMIN_PORT", "0".into()),
        ("SLUICE_METRICS_PORT", "0".into()),
        ("SLUICE_USER_METRICS_PORT", "0".into()),
    ]
}

/// Waits (≤ 5 s) until something accepts connections on `addr`.
pub fn wait_port(addr: SocketAddr) {
    for _ in 0..500 {
        if TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on {addr}");
}

/// What `hey` printed of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Hey {
    pub rps: f64,
    /// Requests answered 200.
    pub ok: f64,
    /// Requests that got any other answer or none.
    pub failed: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// `hey` on core 1 with `args` (duration, concurrency, headers…) against `url`.
pub fn hey(args: &[&str], url: &str) -> Hey {
    let out = Command::new("taskset")
        .args(["-c", "1", "hey"])
        .args(args)
        .arg(url)
        .output()
        .expect("hey is installed (apt-get install -y hey)");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|v| v.split_whitespace().next())
            .map_or(0.0, |v| v.parse().unwrap_or(0.0))
    };
    let mut ok = 0.0;
    let mut failed = 0.0;
    for (answer, n) in hey_answers(&text) {
        if answer == "200" {
            ok += n as f64
        } else {
            failed += n as f64
        }
    }
    Hey {
        rps: field("Requests/sec:"),
        ok,
        failed,
        p50_ms: field("50% in") * 1000.0,
        p99_ms: field("99% in") * 1000.0,
    }
}

/// What `hey` printed of each answer: a status code (`"[200]\t123 responses"`) or, under
/// "Error distribution:", an error (`"[12]\tGet …: connection reset"`, as `error: …`).
pub fn hey_answers(text: &str) -> Vec<(String, u64)> {
    let mut errors = false;
    let mut out = Vec::new();
    for l in text.lines().map(str::trim) {
        errors |= l.starts_with("Error distribution");
        let Some((code, rest)) = l.strip_prefix('[').and_then(|l| l.split_once(']')) else {
            continue;
        };
        let n = rest
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let answer = if errors {
            format!(
                "error: {}",
                rest.trim().chars().take(60).collect::<String>()
            )
        } else {
            code.to_owned()
        };
        out.push((answer, n));
    }
    out
}

/// One HTTP/1.1 `GET` on a new connection (`Connection: close`): the status code and body.
pub fn get(addr: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    get_with(addr, host, path, &[])
}

/// [`get`] with more header lines (`"Name: value"`).
pub fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[&str],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: sluice-bench\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("Connection: close\r\n\r\n");
    s.write_all(head.as_bytes())?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// A loopback address nothing listens on right now.
pub fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: &str) -> f64 {
    let (user, system) = cpu_split(pid);
    user + system
}

/// utime and stime of `pid` (user space, kernel), in seconds.
pub fn cpu_split(pid: &str) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f[i].parse::<f64>().unwrap() / 100.0;
    (ticks(11), ticks(12))
}

pub fn status_mib(pid: &str, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<f64>()
        .unwrap()
        / 1024.0
}

/// The metrics page.
pub fn scrape(addr: SocketAddr) -> String {
    get(addr, "bench", "/metrics").unwrap().1
}

/// The value of the sample whose name and labels are exactly `series`.
pub fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// `sluice run -f manifest` (release build) pinned to core 0, its gateway and admin port
/// on the given addresses, its state in `dir`, with `extra` flags.
pub fn spawn_sluice_run(
    manifest: &std::path::Path,
    gateway: SocketAddr,
    admin: SocketAddr,
    dir: &std::path::Path,
    extra: &[&str],
) -> Child {
    Command::new("taskset")
        .args(["-c", "0"])
        .arg(release_bin("sluice"))
        .arg("run")
        .arg("-f")
        .arg(manifest)
        .args(["--listen", &gateway.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args(extra)
        .arg("--state-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("sluice run starts")
}

pub fn pin_self_to(core: &str) {
    let pid = std::process::id().to_string();
    let pinned = Command::new("taskset")
        .args(["-a", "-cp", core, &pid])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pinned {
        eprintln!("bench: taskset unavailable; the client is not pinned");
    }
}
