//! The `fake-cluster` binary as a user runs it: started with a kubeconfig path, `ready`
//! on stdout, `kubectl` (the one on PATH) pointed at it, stopped with SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

#[tokio::test]
async fn kubectl_applies_gets_and_deletes_against_the_fake_cluster_which_stops_on_sigterm() {
    let dir = std::env::temp_dir().join(format!("fake-cluster-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let kubeconfig = dir.join("kubeconfig");
    let mut cluster = Command::new(env!("CARGO_BIN_EXE_fake-cluster"))
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("fake-cluster");
    let mut lines = BufReader::new(cluster.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("ready within 20 s")
        .expect("stdout");
    assert_eq!(first.as_deref(), Some("ready"));

    let kubectl = async |args: &[&str]| {
        let out = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg(format!("--cache-dir={}", dir.join("cache").display()))
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), out)
            .await
            .expect("kubectl within 60 s")
            .expect("kubectl on PATH");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "kubectl {args:?}: {text}{err}");
        text
    };
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/serving-crd.yaml");
    let out = kubectl(&["apply", "-f", crds]).await;
    assert!(
        out.contains("services.serving.knative.dev created"),
        "{out}"
    );
    let manifest = dir.join("cm.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hello\ndata:\n  a: \"1\"\n",
    )
    .expect("manifest");
    let manifest = manifest.display().to_string();
    assert_eq!(
        kubectl(&["apply", "-f", &manifest]).await.trim(),
        "configmap/hello created"
    );
    let a = kubectl(&["get", "configmap", "hello", "-o", "jsonpath={.data.a}"]).await;
    assert_eq!(a, "1");
    let names = kubectl(&["get", "crd", "-o", "name"]).await;
    assert!(
        names.contains(
            "customresourcedefinition.apiextensions.k8s.io/revisions.serving.knative.dev"
        ),
        "{names}"
    );
    let out = kubectl(&["delete", "configmap", "hello"]).await;
    assert_eq!(out.trim(), "configmap \"hello\" deleted");

    let pid = nix::unistd::Pid::from_raw(i32::try_from(cluster.id().expect("pid")).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(10), cluster.wait())
        .await
        .expect("exits within 10 s of SIGTERM")
        .expect("status");
    assert!(status.success(), "{status}");
    let _ = std::fs::remove_dir_all(&dir);
}
