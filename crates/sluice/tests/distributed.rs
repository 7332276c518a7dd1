//! `sluice run --distributed` end to end: this test process is the machine (ports and
//! pods, the node), and the control plane, autoscaler, activator and gateway each run as
//! their own `sluice` process, connected only over loopback as on a cluster. The seed
//! scenarios run through them, and the control plane is killed under load.

use std::path::PathBuf;
use std::time::Duration;

use sluice::run::distributed::{Distributed, Files};
use sluice::run::images::ImageMap;
use sluice::run::platform::RevisionStatus;
use sluice::run::{Options, Status};
use sluice_test_support::client;
use tokio::time::Instant;

mod common;

use common::{
    FAST_CONFIG, assert_all_200, assert_hey_all_200, background_load, example, revision,
    rolled_back, seed_load, test_limits,
};

/// A distributed platform in a fresh state directory, with the 6 s window applied: the
/// autoscaler starts at Knative's defaults (a 60 s window, 30 s of grace before zero) and
/// takes `config-autoscaler` from the control plane's config feed.
async fn start(test: &str) -> (Distributed, PathBuf) {
    let state = std::env::temp_dir().join(format!("sluice-dist-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).expect("state dir");
    let d = Distributed::start(
        Options {
            exe: PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
            gateway_listen: "127.0.0.1:0".parse().expect("addr"),
            admin_listen: "127.0.0.1:0".parse().expect("addr"),
            domain: "example.com".into(),
            images: ImageMap::default(),
            ready_timeout: Duration::from_secs(30),
            drain_quiet_period: Duration::from_millis(500),
            limits: test_limits(),
        },
        Files {
            state_dir: state.clone(),
            config: None,
            images: None,
        },
    )
    .await
    .expect("the platform starts");
    let summary = apply(&d, FAST_CONFIG).await;
    assert!(
        summary.contains("config-autoscaler configured"),
        "{summary}"
    );
    (d, state)
}

/// Applies manifests through the control plane's admin port; panics if refused.
async fn apply(d: &Distributed, yaml: &str) -> String {
    let (code, text) = d.apply_text(yaml.to_owned()).await.expect("applied");
    assert_eq!(code, 200, "{text}");
    text
}

/// The status, waiting out a control plane that is (re)starting.
async fn status(d: &Distributed) -> Status {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match d.status().await {
            Ok(s) => return s,
            Err(e) => assert!(Instant::now() < deadline, "no status for 20s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for(
    d: &Distributed,
    name: &str,
    limit: Duration,
    what: &str,
    done: impl Fn(&RevisionStatus) -> bool,
) -> RevisionStatus {
    let deadline = Instant::now() + limit;
    loop {
        let s = status(d).await;
        if s.services
            .iter()
            .flat_map(|s| &s.revisions)
            .any(|r| r.name == name)
        {
            let r = revision(&s, name);
            if done(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: not {what} after {limit:?}: {r:?}"
            );
        } else {
            assert!(Instant::now() < deadline, "{name}: never applied: {s:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn pid_of(d: &Distributed, component: &str) -> u32 {
    d.components()
        .into_iter()
        .find(|c| c.name == component)
        .and_then(|c| c.pid)
        .unwrap_or_else(|| panic!("{component} is not running: {:?}", d.components()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_distributed_autoscale_go_target_10_at_50_concurrent_makes_8_pods() {
    let (d, _state) = start("eight").await;
    let gw = d.addresses().gateway;
    apply(&d, &example("autoscale-go.yaml")).await;
    let name = "autoscale-go-00001";
    wait_for(&d, name, Duration::from_secs(30), "ready", |r| r.ready >= 1).await;

    let load = seed_load(gw);
    tokio::pin!(load);
    // Sampled while the load runs. Across processes as in one, each reporter sends at a
    // fixed phase of the wall clock's second and the autoscaler decides at another
    // (sluice_core::phase), so its 6 s window holds 6 reports: each decision follows the
    // KPA's rule, and 50 makes 8, never more (before the phases, one run in two read 41.7
    // for the whole load, 6 pods).
    let mut samples = Vec::new();
    let report = loop {
        tokio::select! {
            report = &mut load => break report.expect("hey ran"),
            () = tokio::time::sleep(Duration::from_millis(200)) => {
                samples.push(revision(&status(&d).await, name));
            }
        }
    };
    let most = samples.iter().map(|r| r.desired).max().unwrap_or(-1);
    println!("most {most} over {} samples", samples.len());
    assert_hey_all_200(&report);
    for r in samples.iter().filter(|r| r.desired > 0 && !r.panic) {
        let rule = (r.concurrency / 7.0).ceil() as i32;
        assert_eq!(
            r.desired, rule,
            "desired = ceil(concurrency / (10 x 0.7)): {r:?}"
        );
    }
    assert!(
        samples
            .iter()
            .any(|r| r.desired == 8 && r.ready == 8 && (r.concurrency - 50.0).abs() < 1.0),
        "8 pods at 50 concurrent: {samples:?}"
    );
    assert_eq!(most, 8, "{samples:?}");
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_distributed_scale_from_zero_then_a_50_50_split_and_a_rollback_without_a_failure() {
    let (d, _state) = start("split").await;
    let gw = d.addresses().gateway;

    // Scale from zero: the first request waits in the activator for a pod. It reaches
    // zero within the minute only with the applied 6 s window and grace: the config feed
    // reached the autoscaler's process.
    apply(&d, &example("helloworld-go.yaml")).await;
    let name = "helloworld-go-00001";
    wait_for(&d, name, Duration::from_secs(30), "ready", |r| r.ready >= 1).await;
    wait_for(&d, name, Duration::from_secs(60), "at zero", |r| {
        r.ready == 0 && r.desired == 0
    })
    .await;
    let reply = client::get_with(
        &format!("http://{gw}/"),
        &[("host", "helloworld-go.default.example.com")],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello Knative!\n");

    // The split alternates, and a rollback under load fails nothing.
    let split = example("traffic-split.yaml");
    apply(&d, &split).await;
    for rev in ["hello-v1", "hello-v2"] {
        wait_for(&d, rev, Duration::from_secs(30), "ready", |r| r.ready >= 1).await;
    }
    let host = "hello.default.example.com";
    let mut answers = Vec::new();
    for _ in 0..20 {
        let reply = client::get_with(&format!("http://{gw}/"), &[("host", host)]).await;
        assert_eq!(reply.status, 200);
        answers.push(reply.text());
    }
    assert_eq!(
        answers.iter().filter(|a| a.contains("blue")).count(),
        10,
        "half each: {answers:?}"
    );
    assert!(
        answers.windows(2).all(|w| w[0] != w[1]),
        "they alternate: {answers:?}"
    );
    let background = background_load(gw, host, Duration::from_secs(6));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rollback = rolled_back(&split);
    let summary = apply(&d, &rollback).await;
    assert!(
        summary.contains("traffic hello-v1 100%, hello-v2 0%"),
        "{summary}"
    );
    // The gateway follows the control plane's routes over gRPC: the change arrives
    // within moments, not at once.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut blue_in_a_row = 0;
    while blue_in_a_row < 10 {
        assert!(
            Instant::now() < deadline,
            "the rollback never reached the gateway"
        );
        let text = client::get_with(&format!("http://{gw}/"), &[("host", host)])
            .await
            .text();
        blue_in_a_row = if text.contains("blue") {
            blue_in_a_row + 1
        } else {
            0
        };
    }
    assert_all_200(&background.await.expect("load ran"));
    d.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_distributed_killing_the_control_plane_under_load_fails_no_request() {
    let (d, _state) = start("kill").await;
    let gw = d.addresses().gateway;
    let host = "helloworld-go.default.example.com";
    // Kept at one pod or more, so that the pods before and after can be compared.
    let yaml = example("helloworld-go.yaml").replace(
        "      annotations:\n",
        "      annotations:\n        autoscaling.knative.dev/min-scale: \"1\"\n",
    );
    assert!(
        yaml.contains("min-scale"),
        "the example has template annotations"
    );
    apply(&d, &yaml).await;
    let name = "helloworld-go-00001";
    wait_for(&d, name, Duration::from_secs(30), "ready", |r| r.ready >= 1).await;

    let background = background_load(gw, host, Duration::from_secs(8));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pods_before = revision(&status(&d).await, name).pods;
    let control = pid_of(&d, "control");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(control).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("killed");

    // Restarted behind the same port, with the applied state replayed.
    let deadline = Instant::now() + Duration::from_secs(20);
    let restarted = loop {
        let c = d
            .components()
            .into_iter()
            .find(|c| c.name == "control")
            .expect("a control component");
        if c.restarts == 1 && c.pid.is_some_and(|p| p != control) {
            break c;
        }
        assert!(Instant::now() < deadline, "never restarted: {c:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        restarted
            .last_exit
            .as_deref()
            .is_some_and(|e| e.contains("SIGKILL")),
        "{restarted:?}"
    );
    let s = status(&d).await;
    assert_eq!(s.components.len(), 4, "{s:?}");
    let after = revision(&s, name);
    for pod in &pods_before {
        assert!(
            after
                .pods
                .iter()
                .any(|p| p.name == pod.name && p.address == pod.address),
            "pod {} was adopted, not restarted: before {pods_before:?}, after {:?}",
            pod.name,
            after.pods
        );
    }
    assert_all_200(&background.await.expect("load ran"));

    // And the control plane takes applies again.
    let v2 = yaml.replace("value: \"Knative\"", "value: \"again\"");
    assert_ne!(v2, yaml, "the example has a TARGET env");
    let summary = apply(&d, &v2).await;
    assert!(summary.contains("helloworld-go-00002 created"), "{summary}");
    wait_for(
        &d,
        "helloworld-go-00002",
        Duration::from_secs(30),
        "ready",
        |r| r.ready >= 1,
    )
    .await;
    d.shutdown().await;
}
