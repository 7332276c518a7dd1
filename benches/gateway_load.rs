//! The gateway in serve mode, against reverse proxies doing the same job: the release
//! `sample-app` and a `queue-proxy` (CC 0) in front of it, then the gateway routing
//! `Host: bench.default.example.com` to that pod; nginx and HAProxy (Debian's packages,
//! when installed) route the same host to the same queue-proxy over keep-alive
//! connections. Every server runs on core 0, `hey` on core 1.
//!
//! Prints, for `hey -c 50` and for a steady 1,000 requests/s: requests per second, p50/p99
//! and each front proxy's CPU per request (utime + stime from `/proc`), then ratios
//! against the peers measured in the same run (target: the gateway ≤ 15 µs per request).
//!
//! `make release && cargo bench -p sluice-benches --bench gateway_load`
//! (`SLUICE_BENCH_SECONDS` changes the 20 s per closed-loop run, 10 s at 1,000/s.)

#![allow(missing_docs, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice_benches::{
    Hey, Procs, cpu_split, free_addr, get, hey, pin_self_to, queue_proxy_env, setting,
    spawn_pinned, spawn_sample_app, status_mib, wait_port,
};

const HOST: &str = "bench.default.example.com";

/// A front proxy under test: where it listens and the processes whose CPU it spends.
struct Front {
    name: &'static str,
    addr: SocketAddr,
    pids: Vec<String>,
}

fn routes_file(dir: &Path, qp: SocketAddr) -> std::path::PathBuf {
    let path = dir.join("routes.yaml");
    std::fs::write(
        &path,
        format!(
            "services:\n  - name: bench\n    namespace: default\n    traffic:\n      \
             - revision: bench-00001\n        percent: 100\n\
             revisions:\n  - namespace: default\n    name: bench-00001\n    mode: serve\n    \
             pods: [\"{qp}\"]\n"
        ),
    )
    .unwrap();
    path
}

fn nginx(dir: &Path, qp: SocketAddr, procs: &mut Procs) -> Option<Front> {
    let bin = which("nginx")?;
    let addr = free_addr();
    let conf = dir.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1; daemon off; pid {dir}/nginx.pid; error_log {dir}/nginx.err warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off;\n  \
               upstream pod {{ server {qp}; keepalive 128; }}\n  \
               server {{ listen {addr} default_server; return 404; }}\n  \
               server {{ listen {addr}; server_name {HOST};\n    \
                 location / {{ proxy_pass http://pod; proxy_http_version 1.1; \
                 proxy_set_header Connection \"\"; proxy_buffering off; }} }} }}\n",
            dir = dir.display()
        ),
    )
    .unwrap();
    let master = Command::new("taskset")
        .args(["-c", "0"])
        .arg(bin)
        .arg("-c")
        .arg(&conf)
        .arg("-p")
        .arg(dir)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let master_pid = master.id().to_string();
    procs.0.push(master);
    wait_port(addr);
    let mut pids = vec![master_pid.clone()];
    let children = Command::new("pgrep")
        .args(["-P", &master_pid])
        .output()
        .unwrap();
    pids.extend(
        String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_owned),
    );
    Some(Front {
        name: "nginx",
        addr,
        pids,
    })
}

fn haproxy(dir: &Path, qp: SocketAddr, procs: &mut Procs) -> Option<Front> {
    let bin = which("haproxy")?;
    let addr = free_addr();
    let conf = dir.join("haproxy.cfg");
    std::fs::write(
        &conf,
        format!(
            "global\n  nbthread 1\n\
             defaults\n  mode http\n  timeout connect 5s\n  timeout client 60s\n  \
             timeout server 60s\n  http-reuse always\n\
             frontend fe\n  bind {addr}\n  use_backend pod if {{ req.hdr(host) -m str {HOST} }}\n\
             backend pod\n  server qp {qp}\n"
        ),
    )
    .unwrap();
    let child = Command::new("taskset")
        .args(["-c", "0"])
        .arg(bin)
        .args(["-q", "-f"])
        .arg(&conf)
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    procs.0.push(child);
    wait_port(addr);
    Some(Front {
        name: "haproxy",
        addr,
        pids: vec![pid],
    })
}

fn which(bin: &str) -> Option<String> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| format!("{d}/{bin}"))
        .find(|p| Path::new(p).exists())
        .or_else(|| {
            eprintln!("gateway_load: {bin} not installed; its row is skipped");
            None
        })
}

/// CPU per answered request, in µs: user space and kernel.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    user: f64,
    system: f64,
}

impl Cpu {
    fn total(self) -> f64 {
        self.user + self.system
    }
}

/// One hey run through `front`, with the CPU its processes spent per answered request.
fn measure(front: &Front, args: &[&str]) -> (Hey, Cpu) {
    let cpu = || {
        front
            .pids
            .iter()
            .map(|p| cpu_split(p))
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let before = cpu();
    let mut all = vec!["-host", HOST];
    all.extend_from_slice(args);
    let h = hey(&all, &format!("http://{}/", front.addr));
    let after = cpu();
    let per = |a: f64, b: f64| (a - b) * 1e6 / h.ok.max(1.0);
    (
        h,
        Cpu {
            user: per(after.0, before.0),
            system: per(after.1, before.1),
        },
    )
}

fn main() {
    let seconds: u64 = setting("SLUICE_BENCH_SECONDS", 20);
    pin_self_to("1");
    let dir = std::env::temp_dir().join(format!("sluice-gateway-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let (qp, gw) = (free_addr(), free_addr());
    let mut procs = Procs::default();
    let app = spawn_sample_app(&mut procs);
    procs.0.push(spawn_pinned(
        "queue-proxy",
        &[],
        &queue_proxy_env(qp, app, 0),
    ));
    wait_port(qp);
    let gateway = spawn_pinned(
        "gateway",
        &[
            format!("--listen={gw}"),
            format!("--routes={}", routes_file(&dir, qp).display()),
        ],
        &[],
    );
    let gateway_pid = gateway.id().to_string();
    procs.0.push(gateway);
    wait_port(gw);
    let (status, body) = get(gw, HOST, "/").unwrap();
    assert_eq!(status, 200, "the gateway does not route {HOST}: {body}");

    let mut fronts = vec![Front {
        name: "gateway",
        addr: gw,
        pids: vec![gateway_pid.clone()],
    }];
    fronts.extend(nginx(&dir, qp, &mut procs));
    fronts.extend(haproxy(&dir, qp, &mut procs));
    let direct = Front {
        name: "queue-proxy (no front)",
        addr: qp,
        pids: Vec::new(),
    };

    let closed = format!("{seconds}s");
    let steady = format!("{}s", (seconds / 2).max(1));
    let closed_args = ["-z", closed.as_str(), "-c", "50"];
    let steady_args = ["-z", steady.as_str(), "-c", "10", "-q", "100"];
    for f in &fronts {
        measure(f, &["-z", "2s", "-c", "50"]); // warm pools and caches
    }
    let rss_idle = status_mib(&gateway_pid, "VmRSS:");

    println!("gateway_load: serve mode, servers on core 0, hey on core 1");
    let header = |first: &str, count: &str| {
        println!(
            "  {first:<24} {count:>10} {:>8} {:>8} {:>12} {:>16}",
            "p50 ms", "p99 ms", "CPU µs/req", "user / kernel"
        );
    };
    let row = |name: &str, count: f64, h: &Hey, cpu: Option<Cpu>| {
        let (total, split) = cpu.map_or_else(
            || ("-".to_owned(), "-".to_owned()),
            |c| {
                (
                    format!("{:.1}", c.total()),
                    format!("{:.1} / {:.1}", c.user, c.system),
                )
            },
        );
        println!(
            "  {name:<24} {count:>10.0} {:>8.2} {:>8.2} {total:>12} {split:>16}",
            h.p50_ms, h.p99_ms
        );
        if h.failed > 0.0 {
            println!("    ({} requests not answered 200)", h.failed);
        }
    };
    header(&format!("hey -c 50, {seconds}s"), "req/s");
    let (d, _) = measure(&direct, &closed_args);
    row(direct.name, d.rps, &d, None);
    let mut closed = Vec::new();
    for f in &fronts {
        let (h, cpu) = measure(f, &closed_args);
        row(f.name, h.rps, &h, Some(cpu));
        closed.push((f.name, h.rps, cpu.total()));
    }
    let rss_load = status_mib(&gateway_pid, "VmRSS:");
    header(&format!("1,000 req/s, {steady}"), "requests");
    let mut steady_cpu = Vec::new();
    for f in &fronts {
        let (h, cpu) = measure(f, &steady_args);
        row(f.name, h.ok, &h, Some(cpu));
        steady_cpu.push(cpu.total());
    }
    println!("  gateway RSS: {rss_idle:.1} MiB idle, {rss_load:.1} MiB after the closed-loop runs");

    let (_, gw_rps, gw_closed) = closed[0];
    let gw_steady = steady_cpu[0];
    println!(
        "  gateway CPU per request: {gw_closed:.1} µs at -c 50, {gw_steady:.1} µs at 1,000/s (target ≤ 15)"
    );
    println!(
        "  throughput through the gateway vs straight to the queue-proxy: {:.2}x",
        gw_rps / d.rps
    );
    for (i, (name, rps, us)) in closed.iter().enumerate().skip(1) {
        println!(
            "  vs {name}: CPU/req {:.2}x at -c 50, {:.2}x at 1,000/s; throughput {:.2}x",
            gw_closed / us,
            gw_steady / steady_cpu[i],
            gw_rps / rps
        );
    }
    drop(procs);
    std::thread::sleep(Duration::from_millis(100));
    let _ = std::fs::remove_dir_all(&dir);
}
