//! The [`Scaler`]: what carries the autoscaler's decisions out and tells it how many pods
//! each revision has. The local runtime and Kubernetes implement it; [`RecordingScaler`]
//! is the one for tests, and [`ObservedPods`] the standalone binary's.

use std::collections::HashMap;

use parking_lot::Mutex;

pub use sluice_core::RevisionKey;

use crate::kpa::PodCounts;

/// Carries decisions out. Both methods run on the autoscaler's tick tasks, `scale` with
/// the revision's state locked: they must not block (read a cache; queue slow work such
/// as an API call) and must not call back into the autoscaler.
pub trait Scaler: Send + Sync + 'static {
    /// The revision's pods now, or `None` when this scaler does not know them (the
    /// autoscaler then counts the queue-proxies reporting for the revision).
    fn pods(&self, revision: &RevisionKey) -> Option<PodCounts>;

    /// Sets the revision's replicas.
    fn scale(&self, revision: &RevisionKey, replicas: u32);

    /// Whether an activator is answering, so that scaling to zero leaves someone to hold
    /// requests (Knative probes the activator's `/healthz`).
    fn activator_ready(&self) -> bool {
        true
    }
}

/// The standalone scaler: acts on nothing (decisions go out on the decision stream for
/// another system to apply) and knows no pods, so ready pods are the queue-proxies that
/// report.
#[derive(Debug, Default)]
pub struct ObservedPods;

impl Scaler for ObservedPods {
    fn pods(&self, _: &RevisionKey) -> Option<PodCounts> {
        None
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        // Called on every tick while the reporting pods differ from the decision.
        tracing::debug!(%revision, replicas, "scale");
    }
}

/// Records every `scale` call; pod counts are set by the test, or follow the calls at
/// once when made with [`RecordingScaler::following`].
#[derive(Debug, Default)]
pub struct RecordingScaler {
    follow: bool,
    state: Mutex<Recorded>,
}

#[derive(Debug, Default)]
struct Recorded {
    pods: HashMap<RevisionKey, PodCounts>,
    calls: Vec<(RevisionKey, u32)>,
}

// === impl RecordingScaler ===

impl RecordingScaler {
    /// Pods stay as the test sets them.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every `scale` call makes that many pods ready at once.
    pub fn following() -> Self {
        Self {
            follow: true,
            ..Self::default()
        }
    }

    pub fn set_pods(&self, revision: &RevisionKey, ready: u32, replicas: u32) {
        self.state
            .lock()
            .pods
            .insert(revision.clone(), PodCounts { ready, replicas });
    }

    /// Every `scale` call so far, in order.
    pub fn calls(&self) -> Vec<(RevisionKey, u32)> {
        self.state.lock().calls.clone()
    }
}

impl Scaler for RecordingScaler {
    fn pods(&self, revision: &RevisionKey) -> Option<PodCounts> {
        Some(
            self.state
                .lock()
                .pods
                .get(revision)
                .copied()
                .unwrap_or_default(),
        )
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        let mut state = self.state.lock();
        state.calls.push((revision.clone(), replicas));
        let pods = state.pods.entry(revision.clone()).or_default();
        pods.replicas = replicas;
        if self.follow {
            pods.ready = replicas;
        }
    }
}
