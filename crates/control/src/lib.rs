//! Sluice's control plane: one reconciler for every topology.
//!
//! - [`world`]: the pure Knative planner: Services (as `sluice-serving` reads them) into
//!   revisions and traffic, every rule of Knative's webhook checked, nothing changed
//!   unless all pass; [`images`]: which local command runs an image.
//! - [`status`]: what `sluice status` shows, as plain data.
//! - [`gc`]: which old revisions `config-gc` collects.
//! - [`desired`]: the applied world over a [`ControlPlane`]: applies (all or nothing),
//!   restores, removals and `config-gc`'s collections take turns; status; the admin port
//!   that `sluice apply` and `sluice status` use.
//! - [`spec`]: the desired state (services with traffic, revisions with their pods).
//! - [`reconciler`]: the pure part: desired state + decisions + ready pods → actions.
//! - [`backend`]: what runs revisions; [`local`] runs them as processes on this machine,
//!   [`node`] serves that to a control plane in another process.
//! - [`ControlPlane`]: the reconciler behind a lock, carrying its actions out: the routes
//!   and endpoints feeds (served over gRPC by [`grpc`]) and the backend.
//!
//! Decisions come from the autoscaler's `DecisionService` stream, in-process
//! ([`ControlPlane::apply_decision`]) or over gRPC ([`ControlPlane::follow_decisions`]).

pub mod backend;
pub mod cold_start;
pub mod desired;
pub mod gc;
pub mod grpc;
pub mod images;
pub mod local;
pub mod node;
pub mod reconciler;
pub mod spec;
pub mod status;
pub mod world;

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_core::RevisionKey;
use sluice_core::feed::{self, Feed, Follower, ItemKey, Route};
use sluice_proto::v1;
use tokio::sync::mpsc;

pub use backend::Backend;
pub use reconciler::{Action, Reconciler, Refused};
pub use spec::{PodSpec, RevisionSpec, ServiceSpec, TargetSpec};

/// The running control plane. Cheap to clone, every clone the same.
#[derive(Clone)]
pub struct ControlPlane {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    /// Actions are carried out under this lock, so the feeds and the backend see them in
    /// the order the reconciler made them.
    state: Mutex<Reconciler>,
    routes: Feed<Route>,
    endpoints: Feed<v1::RevisionEndpoints>,
    /// The applied `config-autoscaler`, for autoscalers in other processes.
    config: Feed<v1::ConfigMap>,
    cold_starts: Mutex<cold_start::ColdStarts>,
}

// === impl ControlPlane ===

impl ControlPlane {
    /// A control plane over `backend`, which reports ready-pod changes on the channel
    /// given to [`ControlPlane::follow_backend`].
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Self {
            inner: Arc::new(Inner {
                backend,
                state: Mutex::new(Reconciler::new()),
                routes: Feed::new(),
                endpoints: Feed::new(),
                config: Feed::new(),
                cold_starts: Mutex::default(),
            }),
        }
    }

    /// The gateways' feed.
    pub fn routes(&self) -> Feed<Route> {
        self.inner.routes.clone()
    }

    /// The activators' feed.
    pub fn endpoints(&self) -> Feed<v1::RevisionEndpoints> {
        self.inner.endpoints.clone()
    }

    /// Every feed, to serve ([`grpc::serve`]).
    pub fn feeds(&self) -> grpc::Feeds {
        grpc::Feeds {
            routes: self.routes(),
            endpoints: self.endpoints(),
            config: self.inner.config.clone(),
        }
    }

    /// The applied `config-autoscaler` (its `data`), for autoscalers that follow this
    /// control plane. Whoever applies it has checked it against every revision.
    pub fn set_autoscaler_config(&self, data: &std::collections::BTreeMap<String, String>) {
        self.inner.config.publish(v1::ConfigMap {
            namespace: "knative-serving".to_owned(),
            name: "config-autoscaler".to_owned(),
            data: data.clone().into_iter().collect(),
            removed: false,
        });
    }

    pub fn add_revision(&self, spec: RevisionSpec) -> Result<(), Refused> {
        let key = spec.key();
        self.change(|r| r.add_revision(spec))?;
        // A backend may run its pods already (a workload adopted on Kubernetes): their
        // change was reported before the revision was known.
        self.pods_changed(&key);
        Ok(())
    }

    pub fn remove_revision(&self, key: &RevisionKey) {
        let _ = self.change(|r| Ok(r.remove_revision(key)));
    }

    pub fn set_service(&self, spec: ServiceSpec) -> Result<(), Refused> {
        self.change(|r| r.set_service(spec))
    }

    /// The revision was ready under an earlier control plane (its service's status says
    /// so), learnt before or after the revision itself.
    pub fn was_ready(&self, key: RevisionKey) {
        let _ = self.change(|r| Ok(r.was_ready(key)));
    }

    /// The service's traffic as served: the latest revision's resolved to the latest
    /// ready one.
    pub fn traffic(&self, namespace: &str, name: &str) -> Option<Vec<v1::TrafficTarget>> {
        self.inner
            .state
            .lock()
            .traffic(namespace, name)
            .map(<[_]>::to_vec)
    }

    /// Whether the revision is ready in Knative's sense: it has had a ready pod.
    pub fn is_ready(&self, key: &RevisionKey) -> bool {
        self.inner.state.lock().is_ready(key)
    }

    pub fn remove_service(&self, namespace: &str, name: &str) {
        let _ = self.change(|r| Ok(r.remove_service(namespace, name)));
    }

    /// One of the autoscaler's decisions.
    pub fn apply_decision(&self, d: &v1::Decision) {
        let _ = self.change(|r| Ok(r.decision(d)));
    }

    /// The revision's ready pods changed in the backend.
    pub fn pods_changed(&self, key: &RevisionKey) {
        let backend = Arc::clone(&self.inner.backend);
        let _ = self.change(|r| {
            let ready = backend.ready(key);
            self.inner
                .cold_starts
                .lock()
                .ready(key, ready.len(), tokio::time::Instant::now());
            Ok(r.ready(key, ready))
        });
    }

    /// The revision's last cold start: from asking for pods at zero ready to the first
    /// ready one.
    pub fn last_cold_start(&self, key: &RevisionKey) -> Option<std::time::Duration> {
        self.inner.cold_starts.lock().last(key)
    }

    /// Adopts the workloads the backend runs already (created by a previous control plane;
    /// call once its state is known and the desired state applied): a desired revision's
    /// pods are kept as they run, any other workload is deleted. Returns the deleted ones.
    pub fn adopt(&self, running: &[(RevisionKey, u32)]) -> Vec<RevisionKey> {
        let backend = Arc::clone(&self.inner.backend);
        let mut deleted = Vec::new();
        for (key, replicas) in running {
            let _ = self.change(|r| match r.adopted(key, *replicas, backend.ready(key)) {
                Some(actions) => Ok(actions),
                None => {
                    deleted.push(key.clone());
                    Ok(vec![Action::Delete(key.clone())])
                }
            });
        }
        deleted
    }

    /// The revision's latest decision.
    pub fn decision(&self, key: &RevisionKey) -> Option<v1::Decision> {
        self.inner.state.lock().decision_of(key).cloned()
    }

    /// The replicas last set on the revision's workload (its initial scale until the
    /// autoscaler's first decision).
    pub fn replicas(&self, key: &RevisionKey) -> Option<u32> {
        self.inner.state.lock().replicas_of(key)
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// Follows the backend's ready-pod changes until its sender is dropped.
    pub async fn follow_backend(self, mut changed: mpsc::UnboundedReceiver<RevisionKey>) {
        while let Some(key) = changed.recv().await {
            self.pods_changed(&key);
        }
    }

    /// Follows an autoscaler's `DecisionService` at `uri`, reconnecting with back-off,
    /// for as long as the task runs.
    pub async fn follow_decisions(self, uri: http::Uri) {
        let mut follower = Decisions(self);
        feed::follow_remote("decisions", uri, feed::watch_decisions, &mut follower).await;
    }

    fn change(
        &self,
        f: impl FnOnce(&mut Reconciler) -> Result<Vec<Action>, Refused>,
    ) -> Result<(), Refused> {
        let mut state = self.inner.state.lock();
        let actions = f(&mut state)?;
        for action in actions {
            self.carry_out(action);
        }
        Ok(())
    }

    fn carry_out(&self, action: Action) {
        let inner = &self.inner;
        match action {
            Action::Route(r) => {
                inner.routes.publish(r);
            }
            Action::Endpoints(e) => {
                inner.endpoints.publish(e);
            }
            Action::Create(spec) => {
                // A workload adopted with its pods running (a control plane's restart on
                // Kubernetes) has ready pods already: no cold start.
                let key = spec.key();
                let ready = inner.backend.ready(&key).len();
                inner.cold_starts.lock().asked(
                    &key,
                    spec.initial_scale,
                    ready,
                    tokio::time::Instant::now(),
                );
                inner.backend.create(&spec);
            }
            Action::Delete(key) => {
                inner.cold_starts.lock().forget(&key);
                inner.backend.delete(&key);
            }
            Action::Scale(key, replicas) => {
                let ready = inner.backend.ready(&key).len();
                inner
                    .cold_starts
                    .lock()
                    .asked(&key, replicas, ready, tokio::time::Instant::now());
                inner.backend.scale(&key, replicas);
            }
        }
    }
}

/// The decision stream, applied as it comes.
struct Decisions(ControlPlane);

impl Follower<v1::Decision> for Decisions {
    fn apply(&mut self, d: &v1::Decision) {
        self.0.apply_decision(d);
    }

    /// Never called: the decision stream has no marker. Revisions leave the control
    /// plane through its desired state, not through the autoscaler.
    fn retain(&mut self, _: &HashSet<ItemKey>) {}
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane").finish_non_exhaustive()
    }
}
