//! A standalone autoscaler that learns revisions from the control plane: it follows the
//! control plane's `EndpointsService` (`--control`), as Knative's autoscaler watches
//! PodAutoscalers and their revisions' endpoints. Each revision listed is registered with
//! its annotations and containerConcurrency, and takes its reachability (routed or not);
//! its pods are the replicas set on its workload and the ready addresses listed; a
//! revision gone from the stream is forgotten.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_core::feed::{self, Follower, ItemKey, Source};
use sluice_proto::v1::RevisionEndpoints;

use crate::kpa::PodCounts;
use crate::scaler::{RevisionKey, Scaler};
use crate::service::Autoscaler;

/// Pod counts as the control plane's stream says them. Scales nothing itself: the control
/// plane applies the decisions it follows.
#[derive(Debug, Default)]
pub struct StreamPods {
    pods: Mutex<HashMap<RevisionKey, PodCounts>>,
}

impl Scaler for StreamPods {
    fn pods(&self, revision: &RevisionKey) -> Option<PodCounts> {
        Some(self.pods.lock().get(revision).copied().unwrap_or_default())
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        tracing::trace!(%revision, replicas, "scale: carried out by the control plane");
    }
}

/// Keeps `autoscaler`'s revisions and `pods` equal to the control plane's endpoints
/// feed, in this process or over gRPC, for as long as the task runs.
pub async fn follow(
    source: Source<RevisionEndpoints>,
    autoscaler: Autoscaler,
    pods: Arc<StreamPods>,
) {
    let mut follower = Revisions {
        autoscaler,
        pods,
        registered: HashMap::new(),
        reachable: HashMap::new(),
    };
    feed::follow("revisions", source, feed::watch_endpoints, &mut follower).await;
}

struct Revisions {
    autoscaler: Autoscaler,
    pods: Arc<StreamPods>,
    /// What each revision was registered with, so that a change of its pods alone does
    /// not register it again.
    registered: HashMap<RevisionKey, (BTreeMap<String, String>, u32)>,
    /// Each registered revision's reachability as last set.
    reachable: HashMap<RevisionKey, bool>,
}

impl Revisions {
    fn forget(&mut self, key: &RevisionKey) {
        self.pods.pods.lock().remove(key);
        self.reachable.remove(key);
        if self.registered.remove(key).is_some() {
            self.autoscaler.remove_revision(key);
        }
    }
}

impl Follower<RevisionEndpoints> for Revisions {
    fn apply(&mut self, r: &RevisionEndpoints) {
        let key = RevisionKey::new(&r.namespace, &r.revision);
        if r.removed {
            self.forget(&key);
            return;
        }
        let ready = u32::try_from(r.addresses.len()).unwrap_or(u32::MAX);
        self.pods.pods.lock().insert(
            key.clone(),
            PodCounts {
                ready,
                replicas: r.replicas,
            },
        );
        let annotations: BTreeMap<String, String> = r
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let spec = (annotations, r.container_concurrency);
        if self.registered.get(&key) != Some(&spec) {
            match self
                .autoscaler
                .upsert_revision(&key, spec.0.clone(), r.container_concurrency)
            {
                Ok(()) => {
                    tracing::info!(revision = %key, "revision registered from the control plane");
                    self.registered.insert(key.clone(), spec);
                }
                // The control plane checked it against the same keys: a config that
                // differs between the two (a --config file here) can still refuse it.
                Err(e) => {
                    tracing::error!(revision = %key, %e, "a revision's annotations were refused");
                    return;
                }
            }
        }
        let reachable = !r.unreachable;
        if self.reachable.get(&key) != Some(&reachable) {
            self.autoscaler.set_reachable(&key, reachable);
            self.reachable.insert(key, reachable);
        }
    }

    fn retain(&mut self, listed: &HashSet<ItemKey>) {
        let gone: Vec<RevisionKey> = self
            .registered
            .keys()
            .filter(|k| {
                !listed.contains(&ItemKey {
                    kind: "revision",
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                })
            })
            .cloned()
            .collect();
        for key in gone {
            self.forget(&key);
        }
    }
}
