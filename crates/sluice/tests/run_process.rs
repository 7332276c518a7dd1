//! `sluice run` as a process, as users and init systems treat it: exit codes, SIGTERM,
//! and SIGKILL. Whatever ends it, no pod process may outlive it.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

/// A fresh state dir, so that this run's `run.json` is its own.
fn state_dir(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn example(name: &str) -> String {
    format!("{}/../../examples/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn start(manifest: &str, state: &Path) -> Child {
    start_with(manifest, state, &[])
}

fn start_with(manifest: &str, state: &Path, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args(["run", "-f", manifest, "--listen", "127.0.0.1:0"])
        .args(extra)
        .arg("--state-dir")
        .arg(state)
        .args(["--drain-quiet-period", "100ms"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out.split_once("\r\n\r\n")?.1.to_owned())
}

/// Waits until the platform in `state` has `want` ready pods in all, reading `run.json`
/// for its admin port as `sluice status` does.
fn wait_ready(state: &Path, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("no run.json yet");
    while Instant::now() < deadline {
        if let Some(body) = std::fs::read_to_string(state.join("run.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|run| run["admin"].as_str()?.parse().ok())
            .and_then(|admin| get(admin, "/status"))
        {
            let status: serde_json::Value = serde_json::from_str(&body).unwrap();
            let ready: u64 = status["services"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|s| s["revisions"].as_array().unwrap())
                .map(|r| r["ready"].as_u64().unwrap())
                .sum();
            if ready == want {
                return;
            }
            last = body;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never {want} ready pods; last status: {last}");
}

/// The processes whose parent is `pid`, with their command names.
fn children(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let ppid: u32 = rest.split_whitespace().nth(1).unwrap().parse().unwrap();
        if ppid == pid {
            let name = head.split_once(" (").map_or("", |(_, n)| n).to_owned();
            out.push((child, name));
        }
    }
    out
}

/// Running, not a zombie waiting for whoever inherited it to reap it.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

fn wait_gone(pids: &[(u32, String)], within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !pids.iter().any(|(p, _)| alive(*p)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<_> = pids.iter().filter(|(p, _)| alive(*p)).collect();
    for (p, _) in &left {
        let _ = kill(Pid::from_raw(i32::try_from(*p).unwrap()), Signal::SIGKILL);
    }
    panic!("still running {within:?} later: {left:?}");
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("sluice run still running {within:?} after it was told to stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// helloworld-go starts one pod: its app and its queue-proxy.
fn running_pod(test: &str) -> (Child, PathBuf, Vec<(u32, String)>) {
    let state = state_dir(test);
    let sluice = start(&example("helloworld-go.yaml"), &state);
    wait_ready(&state, 1);
    let pod = children(sluice.id());
    assert_eq!(pod.len(), 2, "an app and a queue-proxy: {pod:?}");
    (sluice, state, pod)
}

#[test]
fn sigterm_drains_the_pods_and_exits_0() {
    let (mut sluice, state, pod) = running_pod("sigterm");
    stop(&mut sluice);
    wait_gone(&pod, Duration::from_secs(1));
    assert!(
        !state.join("run.json").exists(),
        "run.json is removed on the way out"
    );
}

#[test]
fn sigkill_takes_the_pods_with_it() {
    let (mut sluice, _state, pod) = running_pod("sigkill");
    sluice.kill().unwrap();
    sluice.wait().unwrap();
    // Each pod process gets SIGTERM from the kernel; the queue-proxy drains for its
    // quiet period (100 ms here) first.
    wait_gone(&pod, Duration::from_secs(10));
}

/// `--distributed`: four components and the pod's two processes, all children of
/// `sluice run`.
fn running_distributed(test: &str) -> (Child, Vec<(u32, String)>) {
    let state = state_dir(test);
    let sluice = start_with(&example("helloworld-go.yaml"), &state, &["--distributed"]);
    wait_ready(&state, 1);
    let all = children(sluice.id());
    assert_eq!(
        all.len(),
        6,
        "control, autoscaler, activator, gateway, app, queue-proxy: {all:?}"
    );
    (sluice, all)
}

#[test]
fn distributed_sigterm_stops_every_process_and_exits_0() {
    let (mut sluice, all) = running_distributed("dist-sigterm");
    kill(
        Pid::from_raw(i32::try_from(sluice.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(&mut sluice, Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status}");
    wait_gone(&all, Duration::from_secs(1));
}

#[test]
fn distributed_sigkill_takes_every_process_with_it() {
    let (mut sluice, all) = running_distributed("dist-sigkill");
    sluice.kill().unwrap();
    sluice.wait().unwrap();
    wait_gone(&all, Duration::from_secs(15));
}

#[test]
fn a_malformed_manifest_exits_2_naming_the_field() {
    let state = state_dir("malformed");
    let bad = state.join("bad.yaml");
    let text = std::fs::read_to_string(example("helloworld-go.yaml"))
        .unwrap()
        .replace("containerConcurrency: 5", "containerConcurrency: many");
    std::fs::write(&bad, text).unwrap();
    let mut sluice = start(bad.to_str().unwrap(), &state);
    let status = wait_exit(&mut sluice, Duration::from_secs(20));
    let mut stderr = String::new();
    sluice
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("containerConcurrency") && stderr.contains("bad.yaml"),
        "names the file and the field: {stderr}"
    );
}

#[test]
fn a_gateway_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    for mode in [&[][..], &["--distributed"][..]] {
        let state = state_dir("port-in-use");
        let out = Command::new(BIN)
            .args(["run", "-f", &example("helloworld-go.yaml")])
            .args(["--listen", &addr.to_string()])
            .args(mode)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{mode:?}: {stderr}");
        assert!(
            stderr.contains(&addr.to_string()) && stderr.contains("in use"),
            "{mode:?}: names the address and the reason: {stderr}"
        );
        assert!(
            !state.join("run.json").exists(),
            "{mode:?}: nothing claims to be running"
        );
    }
}

#[test]
fn status_watch_prints_each_change_with_its_time_and_reason() {
    let (mut sluice, state, _pod) = running_pod("watch");
    let mut watch = Command::new(BIN)
        .args(["status", "--watch", "--state-dir"])
        .arg(&state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    // The pod is ready and decided on: a line for the revision, with the rule behind its
    // scale, once the autoscaler's first decision is in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    let line = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains("default/helloworld-go-00001") && l.contains(" why=\"") => break l,
            Ok(l) => seen.push(l),
            Err(_) => panic!("no line with a reason in 20 s: {seen:?}"),
        }
    };
    let (time, rest) = line.split_once(' ').unwrap();
    assert!(
        time.len() == 20 && time.ends_with('Z') && time.as_bytes()[10] == b'T',
        "an RFC 3339 time first: {line}"
    );
    assert!(
        rest.contains(" ready=1 ") && rest.contains(" reason="),
        "{line}"
    );
    watch.kill().unwrap();
    let _ = watch.wait();
    stop(&mut sluice);
}

/// SIGTERM, and the run exits 0.
fn stop(sluice: &mut Child) {
    kill(
        Pid::from_raw(i32::try_from(sluice.id()).unwrap()),
        Signal::SIGTERM,
    )
    .unwrap();
    let status = wait_exit(sluice, Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{status}");
}
