//! Decision reasons, cold starts and the Grafana dashboard, on the running platform: a
//! revision created at zero pods is woken by a request (held by the activator, measured as
//! a cold start), and then every metric the dashboard (`docker/grafana/sluice.json`)
//! queries is found among those the binaries serve: the autoscaler, the activator and the
//! gateway of the platform, and a queue-proxy's request metrics.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sluice_test_support::{client, start_pod};

mod common;

const COLD: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
  namespace: knative-serving
data:
  allow-zero-initial-scale: "true"
  stable-window: "6s"
  scale-to-zero-grace-period: "6s"
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: cold
  namespace: default
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/initial-scale: "0"
    spec:
      containers:
        - image: gcr.io/knative-samples/helloworld-go
"#;

async fn scrape(addr: SocketAddr) -> String {
    client::get(&format!("http://{addr}/metrics")).await.text()
}

/// The metric names a Prometheus text exposes, with a histogram's `_bucket`, `_sum` and
/// `_count` series.
fn names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        out.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{suffix}"));
            }
        }
    }
    out
}

/// Every metric a PromQL query names: the identifier before each selector's `{`, and
/// `label_values`'s first argument.
fn queried(expr: &str) -> Vec<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (i, _) in expr.match_indices('{') {
        let before = &expr[..i];
        let start = before.rfind(|c: char| !ident(c)).map_or(0, |j| j + 1);
        if start < i {
            out.push(before[start..].to_owned());
        }
    }
    if let Some(rest) = expr.split("label_values(").nth(1) {
        let name: String = rest.chars().take_while(|c| ident(*c)).collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_is_measured_and_the_dashboard_queries_only_exposed_metrics() {
    let p = common::start().await;
    common::apply(&p, COLD).await;
    let addrs = p.addresses();

    // At zero pods, a request waits in the activator for the revision's first pod.
    let reply = tokio::time::timeout(
        Duration::from_secs(30),
        client::get_with(
            &format!("http://{}/", addrs.gateway),
            &[("host", "cold.default.example.com")],
        ),
    )
    .await
    .expect("answered within 30 s");
    assert_eq!(reply.status, 200, "{}", reply.text());

    // The activator measured it, as a cold start of the revision.
    let activator = scrape(addrs.activator_metrics).await;
    let labels = r#"{namespace_name="default",revision_name="cold-00001"}"#;
    for series in [
        format!("sluice_activator_cold_start_seconds_count{labels} 1"),
        format!("sluice_activator_cold_start_requests_total{labels} 1"),
    ] {
        assert!(
            activator.lines().any(|l| l == series),
            "no `{series}` in:\n{activator}"
        );
    }
    // The control plane measured its own: from asking for a pod to the pod ready.
    let r = common::wait_for(
        &p,
        "cold-00001",
        Duration::from_secs(10),
        "with a reason and a cold start",
        |r| r.reason.is_some() && r.last_cold_start_seconds.is_some(),
    )
    .await;
    let cold = r.last_cold_start_seconds.unwrap_or_default();
    assert!(cold > 0.0 && cold < 30.0, "{cold}");
    let status = serde_json::to_value(p.status()).expect("json");
    let json_revision = &status["services"][0]["revisions"][0];
    assert!(
        json_revision["reason"]["kind"].is_string(),
        "{json_revision}"
    );
    assert!(
        json_revision["last_cold_start_seconds"].is_number(),
        "{json_revision}"
    );

    // The autoscaler counts its decisions by the kind of rule behind them.
    let autoscaler = scrape(addrs.autoscaler_metrics).await;
    assert!(
        autoscaler.lines().any(|l| l
            .starts_with(r#"sluice_autoscaler_decisions_total{namespace_name="default",reason=""#)
            && l.contains(r#"revision_name="cold-00001""#)),
        "no decisions counted by reason:\n{autoscaler}"
    );

    // A queue-proxy's request metrics (:9091), after a request.
    let (_app, qp) = start_pod(0, &[]).await;
    let served = client::get(&qp.url("/")).await;
    assert_eq!(served.status, 200);
    let queue_proxy = scrape(qp.user_metrics).await;

    let mut exposed = BTreeSet::new();
    for text in [
        &activator,
        &autoscaler,
        &scrape(addrs.gateway_metrics).await,
        &queue_proxy,
    ] {
        exposed.extend(names(text));
    }
    assert!(exposed.contains("revision_request_count"), "{exposed:?}");

    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docker/grafana/sluice.json");
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
    )
    .expect("the dashboard is JSON");
    let mut exprs: Vec<String> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let targets = panel["targets"].as_array().expect("targets");
        assert!(
            !targets.is_empty(),
            "a panel with no query: {}",
            panel["title"]
        );
        exprs.extend(
            targets
                .iter()
                .map(|t| t["expr"].as_str().expect("expr").to_owned()),
        );
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            exprs.push(q.to_owned());
        }
    }
    let mut checked = 0;
    for expr in &exprs {
        let names = queried(expr);
        assert!(!names.is_empty(), "no metric in `{expr}`");
        for name in names {
            assert!(
                exposed.contains(&name),
                "the dashboard queries `{name}` (in `{expr}`), which no binary exposes"
            );
            checked += 1;
        }
    }
    println!(
        "{checked} metric references in {} queries checked",
        exprs.len()
    );
    p.shutdown().await;
}
