//! A control plane over a backend the test drives: it records what the control plane
//! asks of it, and the test says which pods are ready.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_control::backend::PodStatus;
use sluice_control::{Backend, ControlPlane, RevisionSpec};
use sluice_core::RevisionKey;
use tokio::sync::mpsc;

/// What the control plane asked the backend, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Call {
    Create(RevisionKey, u32),
    Delete(RevisionKey),
    Scale(RevisionKey, u32),
}

#[derive(Clone)]
pub struct TestBackend {
    state: Arc<Mutex<State>>,
    changed: mpsc::UnboundedSender<RevisionKey>,
}

#[derive(Default)]
struct State {
    calls: Vec<Call>,
    ready: HashMap<RevisionKey, Vec<SocketAddr>>,
}

impl TestBackend {
    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().calls.clone()
    }

    /// Sets a revision's ready pods and tells the control plane, as a backend does.
    pub fn set_ready(&self, key: &RevisionKey, pods: &[SocketAddr]) {
        self.state.lock().ready.insert(key.clone(), pods.to_vec());
        let _ = self.changed.send(key.clone());
    }
}

impl Backend for TestBackend {
    fn create(&self, spec: &RevisionSpec) {
        let mut st = self.state.lock();
        st.calls.push(Call::Create(spec.key(), spec.initial_scale));
    }

    fn delete(&self, revision: &RevisionKey) {
        let mut st = self.state.lock();
        st.calls.push(Call::Delete(revision.clone()));
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        let mut st = self.state.lock();
        st.calls.push(Call::Scale(revision.clone(), replicas));
    }

    fn ready(&self, revision: &RevisionKey) -> Vec<SocketAddr> {
        self.state
            .lock()
            .ready
            .get(revision)
            .cloned()
            .unwrap_or_default()
    }

    /// The ready pods, named by their order.
    fn pods(&self, revision: &RevisionKey) -> Vec<PodStatus> {
        self.ready(revision)
            .into_iter()
            .enumerate()
            .map(|(i, address)| PodStatus {
                name: format!("{}-{i}", revision.name),
                address,
                state: "ready".to_owned(),
            })
            .collect()
    }

    fn last_error(&self, _: &RevisionKey) -> Option<String> {
        None
    }
}

/// A control plane over a [`TestBackend`], following its ready-pod changes.
pub fn start() -> (ControlPlane, TestBackend) {
    let (changed, rx) = mpsc::unbounded_channel();
    let backend = TestBackend {
        state: Arc::default(),
        changed,
    };
    let control = ControlPlane::new(Arc::new(backend.clone()));
    tokio::spawn(control.clone().follow_backend(rx));
    (control, backend)
}

/// The control plane's gRPC feeds on a free loopback port; stopped when the returned task
/// is aborted.
pub async fn serve(control: &ControlPlane) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = crate::loopback_listener().await;
    let addr = listener.local_addr().unwrap();
    let feeds = control.feeds();
    let task = tokio::spawn(async move {
        sluice_control::grpc::serve(listener, feeds, std::future::pending())
            .await
            .expect("control plane gRPC");
    });
    (addr, task)
}
