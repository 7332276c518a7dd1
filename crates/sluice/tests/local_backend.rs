//! The control plane over the local process backend, with real pods (`sluice sample-app`
//! behind `sluice queue-proxy`): a revision created, made ready, and deleted.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sluice_control::local::{Supervisor, SupervisorConfig};
use sluice_control::{ControlPlane, PodSpec, RevisionSpec};
use sluice_core::RevisionKey;
use sluice_core::serve::Limits;
use tokio::sync::mpsc;
use tokio::time::Instant;

fn spec() -> RevisionSpec {
    RevisionSpec {
        pod: PodSpec {
            namespace: "default".into(),
            service: "hello".into(),
            revision: "hello-00001".into(),
            argv: vec!["sample-app".into()],
            env: Vec::new(),
            container_concurrency: 0,
            timeout_seconds: 30,
            response_start_timeout_seconds: None,
            idle_timeout_seconds: None,
            readiness_probe: None,
            container: None,
        },
        initial_scale: 1,
        report: false,
        annotations: Default::default(),
        template: None,
    }
}

/// The revision's ready addresses on the control plane's endpoints feed, once `done`.
async fn addresses_when(
    cp: &ControlPlane,
    what: &str,
    done: impl Fn(&[String]) -> bool,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (now, _) = cp.endpoints().subscribe("default");
        let addresses = now
            .iter()
            .find(|e| e.revision == "hello-00001")
            .map(|e| e.addresses.clone())
            .unwrap_or_default();
        if done(&addresses) {
            return addresses;
        }
        assert!(Instant::now() < deadline, "never {what}: {addresses:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_revisions_pods_leave_the_feeds_and_stop() {
    let (changed, rx) = mpsc::unbounded_channel();
    let supervisor = Supervisor::new(
        SupervisorConfig {
            exe: PathBuf::from(env!("CARGO_BIN_EXE_sluice")),
            ready_timeout: Duration::from_secs(30),
            drain_quiet_period: Duration::from_millis(100),
            limits: Limits::default(),
        },
        changed,
    );
    let cp = ControlPlane::new(Arc::new(supervisor.clone()));
    tokio::spawn(cp.clone().follow_backend(rx));
    cp.add_revision(spec()).expect("added");
    let ready = addresses_when(&cp, "ready", |a| a.len() == 1).await;
    let pod: SocketAddr = ready[0].parse().expect("host:port");
    assert!(
        tokio::net::TcpStream::connect(pod).await.is_ok(),
        "the pod's queue-proxy answers"
    );

    cp.remove_revision(&RevisionKey::new("default", "hello-00001"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(pod).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "the deleted revision's pod still answers"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        cp.endpoints().subscribe("default").0.is_empty(),
        "the revision left the endpoints feed"
    );
    tokio::time::timeout(Duration::from_secs(20), supervisor.shutdown())
        .await
        .expect("shutdown returns");
}
