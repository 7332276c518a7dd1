//! What runs revisions: the local process supervisor ([`crate::local`]) now, Kubernetes
//! Deployments next. The control plane drives every backend the same way.

use std::net::SocketAddr;

use sluice_core::RevisionKey;

use crate::spec::RevisionSpec;

/// Runs revisions' workloads. Every method is called with the control plane's state
/// locked: none may block (queue slow work such as an API call) or call back into the
/// control plane. A backend reports a change of a revision's ready pods on the channel it
/// was built with; the control plane then reads [`Backend::ready`].
pub trait Backend: Send + Sync + 'static {
    /// Creates the revision's workload at its initial scale, or adopts the one that runs.
    fn create(&self, spec: &RevisionSpec);
    /// Drains and deletes the revision's workload.
    fn delete(&self, revision: &RevisionKey);
    /// Sets the revision's replicas (the autoscaler's decision); the same count again
    /// changes nothing.
    fn scale(&self, revision: &RevisionKey, replicas: u32);
    /// The ready pods' queue-proxy addresses.
    fn ready(&self, revision: &RevisionKey) -> Vec<SocketAddr>;
    /// Every pod of the revision now, oldest first, for `sluice status`.
    fn pods(&self, revision: &RevisionKey) -> Vec<PodStatus>;
    /// Why the revision's last pod failed, while no pod has become ready since.
    fn last_error(&self, revision: &RevisionKey) -> Option<String>;
}

/// One pod as `sluice status --json` shows it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PodStatus {
    pub name: String,
    /// Its queue-proxy's address (what the gateway and the activator send to).
    pub address: SocketAddr,
    /// `starting` (not ready yet), `ready` (in rotation), or `stopping` (out of rotation,
    /// draining).
    pub state: String,
}
