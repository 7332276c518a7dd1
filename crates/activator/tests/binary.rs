//! The `activator` binary: bad configuration exits 64 before binding, naming every bad
//! value; SIGTERM drains and exits 0.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_activator");

#[test]
fn bad_flags_exit_64_naming_each_before_binding() {
    let out = Command::new(BIN)
        .args([
            "--listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            "--queue-depth=0",
            "--probe-frequency=often",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--queue-depth") && err.contains("--probe-frequency"),
        "{err}"
    );
}

#[test]
fn sigterm_drains_then_exits_0() {
    let mut child = Command::new(BIN)
        .args([
            "--listen=127.0.0.1:0",
            "--metrics-listen=127.0.0.1:0",
            "--drain-quiet-period=100ms",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    for _ in 0..500 {
        if let Some(status) = child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(0));
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("still running 10 s after SIGTERM");
}
