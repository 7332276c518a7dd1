//! `sluice run` end to end: the platform in-process (gateway, activator, autoscaler,
//! supervisor) with real pods (`sluice sample-app` behind `sluice queue-proxy`, separate
//! processes) over loopback, driven through the gateway. The stable window is Knative's
//! minimum, 6 s, to keep the tests short; the README gives a manual run at the defaults.

use std::net::SocketAddr;
use std::time::Duration;

use sluice::run::Platform;
use sluice::run::manifest::Manifests;
use sluice_test_support::{client, hey};
use tokio::time::Instant;

mod common;

use common::*;

/// A platform with the 6 s window, one example applied, and its first revision ready.
async fn serving(example_file: &str, revision_name: &str) -> (Platform, SocketAddr) {
    let p = start().await;
    let gw = p.addresses().gateway;
    apply(&p, FAST_CONFIG).await;
    apply(&p, &example(example_file)).await;
    wait_for(&p, revision_name, Duration::from_secs(30), "ready", |r| {
        r.ready >= 1
    })
    .await;
    (p, gw)
}

fn url(gw: SocketAddr, path: &str) -> String {
    format!("http://{gw}{path}")
}

async fn get(gw: SocketAddr, host: &str, path: &str) -> client::Reply {
    client::get_with(&url(gw, path), &[("host", host)]).await
}

/// Runs hey against the gateway on a blocking thread.
async fn hey(args: &[&str], gw: SocketAddr, host: &str, path: &str) -> hey::HeyReport {
    let mut argv: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    argv.extend(["-host".to_owned(), host.to_owned()]);
    let target = url(gw, path);
    tokio::task::spawn_blocking(move || {
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        hey::run(&argv, &target)
    })
    .await
    .expect("hey ran")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_autoscale_go_target_10_at_50_concurrent_makes_8_pods() {
    let (p, gw) = serving("autoscale-go.yaml", "autoscale-go-00001").await;
    let host = "autoscale-go.default.example.com";

    let load = hey(&["-z", "20s", "-c", "50"], gw, host, "/?sleep=100");
    tokio::pin!(load);
    let mut most = 0;
    let report = loop {
        tokio::select! {
            report = &mut load => break report,
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                most = most.max(revision(&p.status(), "autoscale-go-00001").desired);
            }
        }
    };
    let r = revision(&p.status(), "autoscale-go-00001");
    println!(
        "desired {} (most {most}), ready {}, stable concurrency {:.1}",
        r.desired, r.ready, r.concurrency
    );
    assert_hey_all_200(&report);
    assert_eq!(r.desired, 8, "ceil(50 / (10 x 0.7)) = 8: {r:?}");
    assert_eq!(most, 8, "never above 8 on the way: {r:?}");
    assert_eq!(r.ready, 8, "{r:?}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_min_scale_1_max_scale_3_caps_at_3_and_keeps_1() {
    let name = "autoscale-go-00001";
    let (p, gw) = serving("autoscale-go-bounded.yaml", name).await;
    let load = hey(
        &["-z", "10s", "-c", "50"],
        gw,
        "autoscale-go.default.example.com",
        "/?sleep=100",
    );
    tokio::pin!(load);
    let (mut most_desired, mut most_ready) = (0, 0);
    let report = loop {
        tokio::select! {
            report = &mut load => break report,
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                let r = revision(&p.status(), name);
                most_desired = most_desired.max(r.desired);
                most_ready = most_ready.max(r.ready);
            }
        }
    };
    assert_eq!(report.errors, 0, "{}", report.output);
    assert_eq!(most_desired, 3, "scaled out, to max-scale and no further");
    assert!(
        most_ready <= 3,
        "never more than 3 pods ready: {most_ready}"
    );
    // Idle: down to min-scale, and it stays there.
    wait_for(&p, name, Duration::from_secs(60), "back to 1", |r| {
        r.desired == 1 && r.ready == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let r = revision(&p.status(), name);
    assert_eq!(
        (r.desired, r.ready),
        (1, 1),
        "min-scale keeps one pod: {r:?}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_helloworld_hey_100k_all_answered_200() {
    let (p, gw) = serving("helloworld-go.yaml", "helloworld-go-00001").await;
    let host = "helloworld-go.default.example.com";
    let reply = get(gw, host, "/").await;
    assert_eq!(reply.text(), "Hello Knative!\n");
    let report = hey(&["-n", "100000", "-c", "50"], gw, host, "/").await;
    assert_eq!(report.errors, 0, "{}", report.output);
    assert_eq!(
        report.statuses.get(&200),
        Some(&100_000),
        "{}",
        report.output
    );
    let r = revision(&p.status(), "helloworld-go-00001");
    println!(
        "{:.0} req/s; desired {} ready {}",
        report.requests_per_sec, r.desired, r.ready
    );
    assert!(r.desired <= 20, "max-scale 20: {r:?}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_50_50_split_alternates_and_100_0_rolls_back_without_a_failure() {
    let p = start().await;
    let gw = p.addresses().gateway;
    apply(&p, FAST_CONFIG).await;
    let split = example("traffic-split.yaml");
    apply(&p, &split).await;
    for rev in ["hello-v1", "hello-v2"] {
        wait_for(&p, rev, Duration::from_secs(30), "ready", |r| r.ready >= 1).await;
    }
    let host = "hello.default.example.com";
    let mut answers = Vec::new();
    for _ in 0..20 {
        let reply = get(gw, host, "/").await;
        assert_eq!(reply.status, 200);
        answers.push(reply.text());
    }
    let blue = answers.iter().filter(|a| a.contains("blue")).count();
    assert_eq!(blue, 10, "half each: {answers:?}");
    assert!(
        answers.windows(2).all(|w| w[0] != w[1]),
        "they alternate: {answers:?}"
    );
    assert!(
        get(gw, "green-hello.default.example.com", "/")
            .await
            .text()
            .contains("green")
    );

    // Roll back under load.
    let background = background_load(gw, host, Duration::from_secs(6));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rollback = rolled_back(&split);
    let summary = apply(&p, &rollback).await;
    assert!(
        !summary.iter().any(|l| l.contains("created")),
        "no new revision: {summary:?}"
    );
    assert!(
        summary
            .iter()
            .any(|l| l.contains("traffic hello-v1 100%, hello-v2 0%")),
        "{summary:?}"
    );
    for _ in 0..10 {
        assert!(
            get(gw, host, "/").await.text().contains("blue"),
            "only the old revision answers"
        );
    }
    assert_all_200(&background.await.expect("load ran"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_idle_scales_to_zero_and_the_next_request_waits_for_a_pod() {
    let name = "helloworld-go-00001";
    let (p, gw) = serving("helloworld-go.yaml", name).await;
    wait_for(&p, name, Duration::from_secs(90), "at zero", |r| {
        r.ready == 0 && r.desired == 0
    })
    .await;
    let start = Instant::now();
    let reply = get(gw, "helloworld-go.default.example.com", "/").await;
    println!("answered from zero in {:?}", start.elapsed());
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello Knative!\n");
    let r = revision(&p.status(), name);
    assert!(r.ready >= 1, "a pod came up for it: {r:?}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_status_concurrency_follows_the_stable_window_live() {
    let name = "helloworld-go-00001";
    let (p, gw) = serving("helloworld-go.yaml", name).await;
    let load = background_load(
        gw,
        "helloworld-go.default.example.com",
        Duration::from_secs(5),
    );
    let busy = wait_for(&p, name, Duration::from_secs(10), "busy", |r| {
        r.concurrency > 0.5
    })
    .await;
    let peak = busy.concurrency;
    // `status --json` lists each pod with its queue-proxy's address and state.
    assert!(
        busy.pods.iter().filter(|p| p.state == "ready").count() >= busy.ready as usize
            && busy.pods.iter().all(|p| p.address.ip().is_loopback()),
        "{busy:?}"
    );
    load.await.expect("load ran");
    // The 6 s window drains once the load is gone: the figure falls with it, tick by
    // tick, though no decision (scale, mode, panic) changes.
    let later = wait_for(&p, name, Duration::from_secs(8), "draining", |r| {
        r.concurrency < peak / 2.0
    })
    .await;
    assert!(later.concurrency >= 0.0, "{later:?}");
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_apply_of_a_new_revision_under_load_drops_nothing() {
    let (p, gw) = serving("helloworld-go.yaml", "helloworld-go-00001").await;
    let v1 = example("helloworld-go.yaml");
    let host = "helloworld-go.default.example.com";
    let background = background_load(gw, host, Duration::from_secs(8));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let summary = apply(&p, &v1.replace("value: \"Knative\"", "value: \"v2\"")).await;
    assert!(
        summary
            .iter()
            .any(|l| l.contains("revision helloworld-go-00002 created")),
        "{summary:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(gw, host, "/").await.text() != "Hello v2!\n" {
        assert!(Instant::now() < deadline, "the new revision never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_all_200(&background.await.expect("load ran"));
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_revision_no_longer_routed_drops_its_min_scale() {
    let (p, _gw) = serving("autoscale-go-bounded.yaml", "autoscale-go-00001").await;
    // A new template: the new revision takes all the traffic (latestRevision).
    let next = example("autoscale-go-bounded.yaml").replace(
        "        - image: ghcr.io/knative/autoscale-go:latest",
        "        - image: ghcr.io/knative/autoscale-go:latest\n          env:\n            - name: V\n              value: \"2\"",
    );
    apply(&p, &next).await;
    wait_for(
        &p,
        "autoscale-go-00002",
        Duration::from_secs(30),
        "ready",
        |r| r.ready == 1,
    )
    .await;
    // min-scale 1 held the old one while routed; unrouted, it goes to zero when idle.
    wait_for(
        &p,
        "autoscale-go-00001",
        Duration::from_secs(60),
        "at zero",
        |r| r.ready == 0 && r.desired == 0,
    )
    .await;
    // The routed one keeps its min-scale.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(revision(&p.status(), "autoscale-go-00002").ready, 1);
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_an_mpa_revision_scales_on_the_gateway_count_out_and_back_to_zero() {
    let p = start().await;
    let gw = p.addresses().gateway;
    apply(&p, FAST_CONFIG).await;
    let mpa = example("autoscale-go.yaml").replace(
        "autoscaling.knative.dev/target: \"10\"",
        "autoscaling.knative.dev/target: \"10\"\n        autoscaling.knative.dev/class: mpa.autoscaling.knative.dev",
    );
    apply(&p, &mpa).await;
    let name = "autoscale-go-00001";
    wait_for(&p, name, Duration::from_secs(30), "ready", |r| r.ready == 1).await;
    let report = hey(
        &["-z", "10s", "-c", "30"],
        gw,
        "autoscale-go.default.example.com",
        "/?sleep=100",
    )
    .await;
    assert_eq!(report.errors, 0, "{}", report.output);
    let r = revision(&p.status(), name);
    assert_eq!(
        r.desired, 5,
        "ceil(30 / 7) = 5 from the gateway's count: {r:?}"
    );
    wait_for(&p, name, Duration::from_secs(90), "at zero", |r| {
        r.desired == 0 && r.ready == 0
    })
    .await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_bad_manifest_is_refused_whole_and_nothing_changes() {
    let p = start().await;
    let gw = p.addresses().gateway;
    apply(&p, &example("helloworld-go.yaml")).await;
    let before = p.status();
    let bad = format!(
        "{}\n---\n{}  traffic:\n    - revisionName: nope-00001\n      percent: 100\n",
        example("autoscale-go.yaml"),
        example("helloworld-go.yaml").replace("\"Knative\"", "\"changed\"")
    );
    let errors = p
        .apply(&Manifests::parse("bad", &bad).expect("parses"))
        .await
        .expect_err("refused");
    assert!(
        errors.iter().any(|e| e
            .to_string()
            .contains("spec.traffic[0].revisionName: no revision nope-00001")),
        "{errors:?}"
    );
    // Pods come and go on their own (this one is starting): the rest must not change.
    let without_pods = |mut s: sluice::run::Status| {
        for r in s.services.iter_mut().flat_map(|s| &mut s.revisions) {
            r.pods.clear();
        }
        s
    };
    assert_eq!(
        without_pods(p.status()),
        without_pods(before),
        "nothing was added or changed"
    );
    // An unknown host lists the known ones.
    let reply = get(gw, "nope.default.example.com", "/").await;
    assert_eq!(reply.status, 404);
    assert!(
        reply.text().contains("helloworld-go.default.example.com"),
        "{}",
        reply.text()
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_an_app_that_never_becomes_ready_is_reported_with_its_output() {
    let p = start_with_ready_timeout(Duration::from_secs(2)).await;
    apply(
        &p,
        r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: broken
spec:
  template:
    spec:
      containers:
        - image: local/broken
          command: ["sh", "-c", "echo starting up; echo cannot open the database >&2; sleep 600"]
"#,
    )
    .await;
    let r = wait_for(
        &p,
        "broken-00001",
        Duration::from_secs(20),
        "reported",
        |r| r.error.is_some(),
    )
    .await;
    let error = r.error.expect("an error");
    assert!(error.contains("not ready after 2s"), "{error}");
    assert!(
        error.contains("cannot open the database"),
        "the app's last lines are shown: {error}"
    );
    assert!(
        error.contains("last output of the queue-proxy") && error.contains("queue-proxy serving"),
        "and its queue-proxy's: {error}"
    );
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_standalone_gateway_follows_the_platforms_control_plane_over_grpc() {
    let p = start().await;
    let addrs = p.addresses();
    apply(&p, FAST_CONFIG).await;
    let split = example("traffic-split.yaml");
    apply(&p, &split).await;
    // A second gateway in its own task, connected only over loopback: routes from the
    // control plane's RoutesService, proxy mode to the platform's activator over TCP.
    let gw = sluice_gateway::Gateway::bind(sluice_gateway::Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        domain: "example.com".into(),
        activator: Some(addrs.activator),
        autoscaler: None,
        pod_name: "standalone".into(),
        metrics_listen: "127.0.0.1:0".parse().expect("addr"),
        limits: sluice_core::serve::Limits::default(),
        activator_local: None,
        routes: Some(sluice_gateway::RoutesSource::Grpc(
            format!("http://{}", addrs.control).parse().expect("uri"),
        )),
        drain_quiet_period: std::time::Duration::ZERO,
    })
    .await
    .expect("gateway binds");
    let standalone = gw.serving_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(gw.run(async {
        let _ = stopped.await;
    }));
    for rev in ["hello-v1", "hello-v2"] {
        wait_for(&p, rev, Duration::from_secs(30), "ready", |r| r.ready >= 1).await;
    }
    let host = "hello.default.example.com";
    let mut answers = Vec::new();
    for _ in 0..20 {
        let reply = get(standalone, host, "/").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        answers.push(reply.text());
    }
    assert_eq!(
        answers.iter().filter(|a| a.contains("blue")).count(),
        10,
        "half each through the standalone gateway: {answers:?}"
    );

    // A traffic change applied to the platform reaches the standalone gateway.
    let rollback = rolled_back(&split);
    apply(&p, &rollback).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut all_blue = true;
        for _ in 0..4 {
            let reply = get(standalone, host, "/").await;
            assert_eq!(reply.status, 200);
            all_blue &= reply.text().contains("blue");
        }
        if all_blue {
            break;
        }
        assert!(Instant::now() < deadline, "the rollback never reached it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    let _ = running.await;
    p.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_new_revision_that_never_becomes_ready_leaves_the_old_one_serving() {
    let p = start_with_ready_timeout(Duration::from_secs(2)).await;
    let gw = p.addresses().gateway;
    apply(&p, FAST_CONFIG).await;
    let v1 = example("helloworld-go.yaml");
    apply(&p, &v1).await;
    wait_for(
        &p,
        "helloworld-go-00001",
        Duration::from_secs(30),
        "ready",
        |r| r.ready >= 1,
    )
    .await;
    let host = "helloworld-go.default.example.com";

    // v2 listens nowhere: its pods never become ready.
    let v2 = v1.replace(
        "        - image: gcr.io/knative-samples/helloworld-go\n",
        "        - image: gcr.io/knative-samples/helloworld-go\n          command: [\"sh\", \"-c\", \"echo no port for you; sleep 600\"]\n",
    );
    assert_ne!(v1, v2);
    let summary = apply(&p, &v2).await;
    assert!(
        summary
            .iter()
            .any(|l| l.contains("traffic helloworld-go-00002 100% (latest, once ready)")),
        "{summary:?}"
    );
    // Every request on the way is answered by v1, until and after v2 is reported failed.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let reply = answer(gw, host).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "Hello Knative!\n".to_owned())
        );
        if revision(&p.status(), "helloworld-go-00002").error.is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "v2's failure never reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = p.status();
    let error = revision(&status, "helloworld-go-00002")
        .error
        .expect("v2's reason");
    assert!(error.contains("no port for you"), "{error}");
    let s = &status.services[0];
    assert_eq!(
        s.traffic
            .iter()
            .map(|t| (t.revision.as_str(), t.percent))
            .collect::<Vec<_>>(),
        [("helloworld-go-00001", 100)],
        "the status shows what is served"
    );
    for _ in 0..5 {
        assert_eq!(answer(gw, host).await.text(), "Hello Knative!\n");
    }

    // A fixed v3 takes the traffic once ready.
    apply(&p, &v1.replace("value: \"Knative\"", "value: \"v3\"")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = answer(gw, host).await.text();
        if text == "Hello v3!\n" {
            break;
        }
        assert_eq!(text, "Hello Knative!\n", "v1 until v3 is ready");
        assert!(Instant::now() < deadline, "v3 never took the traffic");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p.shutdown().await;
}

/// `GET /` for `host`; no answer in 10 s fails the test (a request held for a revision
/// that never becomes ready would wait for the revision's timeout).
async fn answer(gw: SocketAddr, host: &str) -> client::Reply {
    tokio::time::timeout(Duration::from_secs(10), get(gw, host, "/"))
        .await
        .unwrap_or_else(|_| panic!("{host}: no answer in 10 s"))
}
