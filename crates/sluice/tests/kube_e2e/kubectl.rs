//! What a user runs: `kubectl` itself (google-cloud-cli's, the oldest and the newest it
//! ships: `kubectl.1.27` and `kubectl.1.33`) against the cluster, fake or real.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::time::Instant;

use super::{Cluster, common::example, run};

/// The kubectl versions the tests use.
const OLDEST: &str = "1.27";
const NEWEST: &str = "1.33";

/// `kubectl.VERSION`: on PATH, or beside the `kubectl` on PATH (google-cloud-cli's
/// dispatcher, a symlink to its `bin/`).
fn kubectl_path(version: &str) -> PathBuf {
    let name = format!("kubectl.{version}");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    for dir in &dirs {
        if dir.join(&name).is_file() {
            return dir.join(&name);
        }
    }
    for dir in &dirs {
        if let Ok(real) = std::fs::canonicalize(dir.join("kubectl"))
            && let Some(bin) = real.parent()
            && bin.join(&name).is_file()
        {
            return bin.join(&name);
        }
    }
    panic!("{name}: not on PATH nor beside kubectl (google-cloud-cli ships kubectl.1.27 to 1.33)")
}

/// What one kubectl command said.
struct Said {
    ok: bool,
    out: String,
    err: String,
}

impl Cluster {
    fn kubectl_command(&self, version: &str, args: &[&str]) -> Command {
        let cache = self
            .kubeconfig
            .with_extension(format!("kubectl-cache-{version}"));
        let mut cmd = Command::new(kubectl_path(version));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--cache-dir={}", cache.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs `kubectl.VERSION ARGS…` (at most 90 s).
    async fn kubectl(&self, version: &str, args: &[&str]) -> Said {
        let child = self
            .kubectl_command(version, args)
            .spawn()
            .unwrap_or_else(|e| panic!("kubectl.{version}: {e}"));
        let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("kubectl.{version} {args:?}: still running after 90 s"))
            .expect("kubectl's output");
        Said {
            ok: out.status.success(),
            out: String::from_utf8_lossy(&out.stdout).into_owned(),
            err: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs kubectl and fails the test unless it succeeds; its stdout.
    async fn kubectl_ok(&self, version: &str, args: &[&str]) -> String {
        let said = self.kubectl(version, args).await;
        assert!(
            said.ok,
            "kubectl.{version} {}: {}{}\n{}",
            args.join(" "),
            said.out,
            said.err,
            self.logs()
        );
        said.out
    }
}

/// The table row of `name` in `kubectl get` output, split on runs of spaces, with the
/// header's columns: `(header, row)`.
fn row<'a>(table: &'a str, name: &str) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut lines = table.lines();
    let header = lines.next().unwrap_or_default();
    let row = lines
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row {name} in\n{table}"));
    let split = |l: &'a str| -> Vec<&'a str> {
        l.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    };
    (split(header), split(row))
}

/// Whether a line of `text` has the words of `words`, spaced any way (`kubectl describe`
/// aligns its values).
fn has_line(text: &str, words: &str) -> bool {
    let words: Vec<&str> = words.split_whitespace().collect();
    text.lines()
        .any(|l| l.split_whitespace().collect::<Vec<_>>() == words)
}

/// Asserts the cells of `name`'s row, by column.
fn assert_cells(table: &str, name: &str, cells: &[(&str, &str)]) {
    let (header, row) = row(table, name);
    for (column, want) in cells {
        let i = header
            .iter()
            .position(|h| h == column)
            .unwrap_or_else(|| panic!("no column {column} in\n{table}"));
        assert_eq!(row.get(i), Some(want), "{name}'s {column} in\n{table}");
    }
}

#[test]
fn kube_e2e_kubectl_1_27_and_1_33_apply_wait_get_describe_watch_scale_and_delete() {
    run(async {
        let c = Cluster::start("kubectl").await;
        kubectl_tour(&c).await;
        c.shutdown().await;
    });
}

async fn kubectl_tour(c: &Cluster) {
    let file = c.kubeconfig.with_file_name("helloworld-go.yaml");
    std::fs::write(&file, example("helloworld-go.yaml")).expect("manifest");
    let file = file.display().to_string();
    c.applied.lock().insert("helloworld-go".to_owned());

    // Discovery: the Knative kinds under their short names, from the CRDs.
    for v in [OLDEST, NEWEST] {
        let resources = c
            .kubectl_ok(v, &["api-resources", "--api-group=serving.knative.dev"])
            .await;
        let (_, ksvc) = row(&resources, "services");
        assert!(ksvc.contains(&"kservice,ksvc"), "{resources}");
        for kind in ["revisions", "configurations", "routes"] {
            assert!(
                resources.lines().any(|l| l.starts_with(kind)),
                "{kind} in {resources}"
            );
        }
    }

    // Create with the oldest (client-side apply), wait with the newest.
    let out = c.kubectl_ok(OLDEST, &["apply", "-f", &file]).await;
    assert_eq!(
        out.trim(),
        "service.serving.knative.dev/helloworld-go created"
    );
    let out = c
        .kubectl_ok(
            NEWEST,
            &[
                "wait",
                "--for=condition=Ready",
                "ksvc/helloworld-go",
                "--timeout=60s",
            ],
        )
        .await;
    assert_eq!(
        out.trim(),
        "service.serving.knative.dev/helloworld-go condition met"
    );

    for v in [OLDEST, NEWEST] {
        // The Service's printer columns, as Knative's CRD defines them.
        let ksvcs = c.kubectl_ok(v, &["get", "ksvc"]).await;
        assert_cells(
            &ksvcs,
            "helloworld-go",
            &[
                ("URL", "http://helloworld-go.default.example.com"),
                ("LATESTREADY", "helloworld-go-00001"),
                ("READY", "True"),
            ],
        );

        // `kubectl get revisions`: ready, its Configuration and generation.
        let revisions = c.kubectl_ok(v, &["get", "revisions"]).await;
        assert_cells(
            &revisions,
            "helloworld-go-00001",
            &[
                ("CONFIG NAME", "helloworld-go"),
                ("GENERATION", "1"),
                ("READY", "True"),
                ("ACTUAL REPLICAS", "1"),
            ],
        );

        // The Service's Configuration and Route, of its name.
        let configurations = c.kubectl_ok(v, &["get", "configurations"]).await;
        assert_cells(
            &configurations,
            "helloworld-go",
            &[
                ("LATESTCREATED", "helloworld-go-00001"),
                ("LATESTREADY", "helloworld-go-00001"),
                ("READY", "True"),
            ],
        );
        let routes = c.kubectl_ok(v, &["get", "rt"]).await;
        assert_cells(
            &routes,
            "helloworld-go",
            &[
                ("URL", "http://helloworld-go.default.example.com"),
                ("READY", "True"),
            ],
        );

        // `-o jsonpath` and `-o json` read the objects as stored.
        let url = c
            .kubectl_ok(
                v,
                &[
                    "get",
                    "ksvc",
                    "helloworld-go",
                    "-o",
                    "jsonpath={.status.url}",
                ],
            )
            .await;
        assert_eq!(url, "http://helloworld-go.default.example.com");
        let json: serde_json::Value =
            serde_json::from_str(&c.kubectl_ok(v, &["get", "rev", "-o", "json"]).await)
                .expect("kubectl's JSON");
        assert_eq!(json["items"][0]["metadata"]["name"], "helloworld-go-00001");

        // `kubectl describe`: the object and the events about it.
        let described = c
            .kubectl_ok(v, &["describe", "ksvc", "helloworld-go"])
            .await;
        assert!(
            has_line(
                &described,
                "Latest Ready Revision Name: helloworld-go-00001"
            ),
            "{described}"
        );
        let events = described
            .split_once("Events:")
            .map(|(_, e)| e)
            .unwrap_or_else(|| panic!("no events in\n{described}"));
        assert!(
            events.contains("Created")
                && events.contains("Created Revision \"helloworld-go-00001\"")
                && events.contains("sluice-control"),
            "{described}"
        );
        let described = c
            .kubectl_ok(v, &["describe", "revision", "helloworld-go-00001"])
            .await;
        assert!(
            has_line(&described, "Type: Ready") && has_line(&described, "Actual Replicas: 1"),
            "{described}"
        );
    }

    // `kubectl get -w` sees the revision an update stamps.
    let mut watch = c
        .kubectl_command(NEWEST, &["get", "revisions", "-w"])
        .spawn()
        .expect("kubectl get -w");
    let mut lines = BufReader::new(watch.stdout.take().expect("stdout")).lines();
    let v2 = example("helloworld-go.yaml").replace("value: \"Knative\"", "value: \"v2\"");
    std::fs::write(&file, v2).expect("manifest v2");
    let out = c.kubectl_ok(OLDEST, &["apply", "-f", &file]).await;
    assert_eq!(
        out.trim(),
        "service.serving.knative.dev/helloworld-go configured"
    );
    let deadline = Instant::now() + c.patience(Duration::from_secs(30));
    let mut seen = Vec::new();
    loop {
        let line = tokio::time::timeout_at(deadline, lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("kubectl get -w: no helloworld-go-00002 in\n{seen:#?}"))
            .expect("kubectl's output")
            .unwrap_or_else(|| panic!("kubectl get -w ended: {seen:#?}"));
        if line.starts_with("helloworld-go-00002") {
            break;
        }
        seen.push(line);
    }
    let _ = watch.start_kill();
    let _ = watch.wait().await;
    assert!(
        seen.iter().any(|l| l.starts_with("NAME"))
            && seen.iter().any(|l| l.starts_with("helloworld-go-00001")),
        "the watch lists first: {seen:#?}"
    );
    c.kubectl_ok(
        NEWEST,
        &[
            "wait",
            "--for=jsonpath={.status.latestReadyRevisionName}=helloworld-go-00002",
            "ksvc/helloworld-go",
            "--timeout=60s",
        ],
    )
    .await;

    let out = c.kubectl_ok(OLDEST, &["get", "cfg", "helloworld-go"]).await;
    assert_cells(
        &out,
        "helloworld-go",
        &[("LATESTREADY", "helloworld-go-00002")],
    );

    // The Route deleted by hand comes back, status and all; the Configuration edited by
    // hand is put back.
    let out = c
        .kubectl_ok(NEWEST, &["delete", "route", "helloworld-go"])
        .await;
    assert_eq!(
        out.trim(),
        "route.serving.knative.dev \"helloworld-go\" deleted"
    );
    let route = async {
        let deadline = Instant::now() + c.patience(Duration::from_secs(20));
        loop {
            let said = c
                .kubectl(
                    NEWEST,
                    &[
                        "get",
                        "route",
                        "helloworld-go",
                        "-o",
                        "jsonpath={.status.url}",
                    ],
                )
                .await;
            if said.ok && !said.out.is_empty() {
                return said.out;
            }
            assert!(
                Instant::now() < deadline,
                "the route is not back: {}",
                said.err
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(route.await, "http://helloworld-go.default.example.com");
    c.kubectl_ok(
        OLDEST,
        &[
            "patch",
            "configuration",
            "helloworld-go",
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"spec":{"containers":[{"image":"hand-edited"}]}}}}"#,
        ],
    )
    .await;
    c.kubectl_ok(
        NEWEST,
        &[
            "wait",
            "--for=jsonpath={.spec.template.spec.containers[0].image}=gcr.io/knative-samples/helloworld-go",
            "configuration/helloworld-go",
            "--timeout=20s",
        ],
    )
    .await;

    // `kubectl scale` goes through the scale subresource; the autoscaler's decision then
    // puts the revision's replicas back.
    let out = c
        .kubectl_ok(
            OLDEST,
            &[
                "scale",
                "deployment/helloworld-go-00002-deployment",
                "--replicas=4",
            ],
        )
        .await;
    assert_eq!(
        out.trim(),
        "deployment.apps/helloworld-go-00002-deployment scaled"
    );
    let replicas = c
        .kubectl_ok(
            NEWEST,
            &[
                "get",
                "deploy",
                "helloworld-go-00002-deployment",
                "-o",
                "jsonpath={.spec.replicas}",
            ],
        )
        .await;
    assert_eq!(replicas, "4");
    c.kubectl_ok(
        NEWEST,
        &[
            "wait",
            "--for=jsonpath={.spec.replicas}=1",
            "deployment/helloworld-go-00002-deployment",
            "--timeout=30s",
        ],
    )
    .await;

    // Deleted: kubectl waits for it to go, and its revisions go with it.
    let out = c
        .kubectl_ok(OLDEST, &["delete", "ksvc", "helloworld-go"])
        .await;
    assert_eq!(
        out.trim(),
        "service.serving.knative.dev \"helloworld-go\" deleted"
    );
    let said = c.kubectl(NEWEST, &["get", "revisions"]).await;
    assert!(said.ok && said.out.is_empty(), "{}{}", said.out, said.err);
    assert_eq!(said.err.trim(), "No resources found in default namespace.");
    let said = c.kubectl(OLDEST, &["get", "configurations,routes"]).await;
    assert!(said.ok && said.out.is_empty(), "{}{}", said.out, said.err);
    let said = c.kubectl(NEWEST, &["get", "ksvc", "helloworld-go"]).await;
    assert!(!said.ok, "{}", said.out);
    assert!(
        said.err.contains("NotFound") && said.err.contains("\"helloworld-go\" not found"),
        "{}",
        said.err
    );
}
