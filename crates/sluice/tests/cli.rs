//! `sluice simulate` as users run it: JSON Lines on stdout, a summary on stderr, exit 2
//! naming the field on bad input.

#![allow(clippy::unwrap_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn example(name: &str) -> String {
    format!(
        "{}/../../examples/simulate/{name}.yaml",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[test]
fn simulate_prints_json_lines_and_a_summary() {
    let out = Command::new(BIN)
        .args(["simulate", &example("container-concurrency-10")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().count(),
        60,
        "one line per 2 s tick over 120 s"
    );
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(
        (
            last["t"].as_u64(),
            last["ready"].as_u64(),
            last["mode"].as_str()
        ),
        (Some(120), Some(15), Some("proxy"))
    );
    assert_eq!(
        String::from_utf8(out.stderr).unwrap().trim(),
        "peak pods 15, pod-seconds 1745, seconds in panic 64"
    );
}

#[test]
fn simulate_writes_a_plot() {
    let dir = std::env::temp_dir().join(format!("sluice-plot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let svg = dir.join("plot.svg");
    let out = Command::new(BIN)
        .args(["simulate", &example("panic-burst"), "--plot"])
        .arg(&svg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = std::fs::read_to_string(&svg).unwrap();
    // The README's chart is this example's plot (kept current by a unit test).
    let readme_chart = format!(
        "{}/../../docs/simulate-panic-burst.svg",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(text.starts_with("<svg"), "{text}");
    assert!(
        text == std::fs::read_to_string(readme_chart).unwrap(),
        "the CLI draws what the README shows"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bad_input_exits_2_naming_the_field() {
    let dir = std::env::temp_dir().join(format!("sluice-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(&bad, "config: {max-scale-up-rate: \"1\"}\ntraffic: [{from: 0s, to: 5s, concurrency: 1}]\nduration: 5s\n").unwrap();
    let out = Command::new(BIN)
        .arg("simulate")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("max-scale-up-rate: \"1\" is not allowed; expected a number greater than 1"),
        "{err}"
    );
    let missing = Command::new(BIN)
        .args(["simulate", "/nonexistent/scenario.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn control_names_every_bad_flag_and_exits_64_before_binding() {
    let out = Command::new(BIN)
        .args([
            "control",
            "--autoscaler-address=ftp://x",
            "--drain-quiet-period=soon",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for flag in ["--autoscaler-address", "--drain-quiet-period"] {
        assert!(stderr.contains(flag), "{flag} in {stderr}");
    }
}

#[test]
fn an_elected_replica_refuses_a_leader_service_without_its_pod_ip_and_health_without_election() {
    let out = Command::new(BIN)
        .args([
            "control",
            "--kubernetes",
            "--kube-api=http://127.0.0.1:1",
            "--leader-elect",
            "--leader-service=control",
            "--autoscaler-address=http://127.0.0.1:1",
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
        ])
        .env_remove("POD_IP")
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--leader-service needs --pod-ip"),
        "{stderr}"
    );

    let out = Command::new(BIN)
        .args(["autoscaler", "--health-listen=127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("--health-listen and --leader-service need --leader-elect"),
        "{stderr}"
    );
}
