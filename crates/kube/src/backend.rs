//! The control plane's backend on Kubernetes: a revision is a Deployment and a private
//! Service ([`crate::resources`]), scaled through the Deployment's `scale` subresource;
//! its ready pods are read from the Service's EndpointSlices ([`crate::endpoints`]).
//!
//! The [`Backend`] calls never block: each queues an operation for the [`Writer`], which
//! carries them out in order, retrying what the API server could not take.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use parking_lot::Mutex;
use sluice_control::RevisionSpec;
use sluice_control::backend::{Backend, PodStatus};
use sluice_core::RevisionKey;
use tokio::sync::mpsc;

use crate::endpoints::Slices;
use crate::resources::{self, Injection, Owner, REVISION_LABEL};

/// The field manager Sluice writes as.
pub const FIELD_MANAGER: &str = "sluice";
/// The first wait before an operation the API server refused is tried again; it doubles
/// up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);

/// Knative's `Service` resource (`serving.knative.dev/v1`).
pub fn knative_service() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Service"),
        "services",
    )
}

/// Runs revisions as Deployments.
#[derive(Debug)]
pub struct KubeBackend {
    ops: mpsc::UnboundedSender<Op>,
    shared: Arc<Shared>,
    changed: mpsc::UnboundedSender<RevisionKey>,
}

#[derive(Debug, Default)]
struct Shared {
    slices: Mutex<Slices>,
    /// Whether the EndpointSlices have been listed once.
    listed: tokio::sync::watch::Sender<bool>,
    /// Why the revision's last operation failed, until one succeeds.
    errors: Mutex<HashMap<RevisionKey, String>>,
}

#[derive(Debug)]
enum Op {
    Create(Box<RevisionSpec>),
    Delete(RevisionKey),
    Scale(RevisionKey, u32),
}

/// Carries out the backend's operations against the API server, in order.
pub struct Writer {
    client: Client,
    inject: Injection,
    ops: mpsc::UnboundedReceiver<Op>,
    shared: Arc<Shared>,
}

/// How an operation failed.
enum Failure {
    /// The API server could not take it now: try again.
    Retry(String),
    /// It can never succeed as asked (a spec Kubernetes cannot run, an owner gone).
    Give(String),
}

// === impl KubeBackend ===

impl KubeBackend {
    /// A backend whose operations the returned [`Writer`] carries out (spawn its
    /// [`Writer::run`]); ready-pod changes are sent on `changed` once
    /// [`KubeBackend::follow_endpoints`] runs.
    pub fn new(
        client: Client,
        inject: Injection,
        changed: mpsc::UnboundedSender<RevisionKey>,
    ) -> (Arc<Self>, Writer) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        let writer = Writer {
            client,
            inject,
            ops: rx,
            shared: Arc::clone(&shared),
        };
        let backend = Arc::new(Self {
            ops: tx,
            shared,
            changed,
        });
        (backend, writer)
    }

    /// Follows the EndpointSlices of every revision's Service, in every namespace, for as
    /// long as the task runs (the watcher relists after an error, with back-off).
    pub async fn follow_endpoints(self: Arc<Self>, client: Client) {
        let api: Api<EndpointSlice> = Api::all(client);
        let config = watcher::Config::default().labels(REVISION_LABEL);
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        while let Some(event) = events.next().await {
            let changed = match event {
                Ok(watcher::Event::Apply(s)) => self.shared.slices.lock().apply(&s),
                Ok(watcher::Event::Delete(s)) => self.shared.slices.lock().delete(&s),
                Ok(watcher::Event::Init) => {
                    self.shared.slices.lock().relist();
                    continue;
                }
                Ok(watcher::Event::InitApply(s)) => {
                    self.shared.slices.lock().listed(&s);
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    let changed = self.shared.slices.lock().list_done();
                    self.shared.listed.send_replace(true);
                    changed
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching EndpointSlices");
                    continue;
                }
            };
            for key in changed {
                let _ = self.changed.send(key);
            }
        }
    }

    /// Waits until [`KubeBackend::follow_endpoints`] has listed the EndpointSlices once,
    /// so that ready pods read before then are not taken for none.
    pub async fn listed(&self) {
        let mut rx = self.shared.listed.subscribe();
        let _ = rx.wait_for(|l| *l).await;
    }

    fn queue(&self, op: Op) {
        // The writer outlives the backend unless the platform is stopping.
        let _ = self.ops.send(op);
    }
}

impl Backend for KubeBackend {
    fn create(&self, spec: &RevisionSpec) {
        self.queue(Op::Create(Box::new(spec.clone())));
    }

    fn delete(&self, revision: &RevisionKey) {
        self.queue(Op::Delete(revision.clone()));
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        self.queue(Op::Scale(revision.clone(), replicas));
    }

    fn ready(&self, revision: &RevisionKey) -> Vec<SocketAddr> {
        self.shared.slices.lock().ready(revision)
    }

    fn pods(&self, revision: &RevisionKey) -> Vec<PodStatus> {
        self.shared.slices.lock().pods(revision)
    }

    fn last_error(&self, revision: &RevisionKey) -> Option<String> {
        self.shared.errors.lock().get(revision).cloned()
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer")
            .field("inject", &self.inject)
            .finish_non_exhaustive()
    }
}

// === impl Op ===

impl Op {
    fn key(&self) -> RevisionKey {
        match self {
            Op::Create(spec) => spec.key(),
            Op::Delete(key) | Op::Scale(key, _) => key.clone(),
        }
    }
}

/// Drops every scale that a later scale or delete of the same revision makes moot.
fn supersede(queue: &mut VecDeque<Op>) {
    let mut i = 0;
    while i < queue.len() {
        let moot = matches!(queue[i], Op::Scale(..)) && {
            let key = queue[i].key();
            queue
                .iter()
                .skip(i + 1)
                .any(|later| matches!(later, Op::Scale(..) | Op::Delete(_)) && later.key() == key)
        };
        if moot {
            queue.remove(i);
        } else {
            i += 1;
        }
    }
}

// === impl Writer ===

impl Writer {
    /// Carries out operations until the backend is dropped. An operation the API server
    /// refuses for now is tried again (after 0.2 s, doubling to 5 s) before any later one,
    /// so every revision's operations land in the order they were made.
    pub async fn run(mut self) {
        let mut queue = VecDeque::new();
        let mut wait = FIRST_RETRY;
        loop {
            if queue.is_empty() {
                match self.ops.recv().await {
                    Some(op) => queue.push_back(op),
                    None => return,
                }
            }
            while let Ok(op) = self.ops.try_recv() {
                queue.push_back(op);
            }
            supersede(&mut queue);
            let Some(op) = queue.front() else { continue };
            let key = op.key();
            match self.carry_out(op).await {
                Ok(()) => {
                    self.shared.errors.lock().remove(&key);
                    queue.pop_front();
                    wait = FIRST_RETRY;
                }
                Err(Failure::Give(why)) => {
                    tracing::warn!(revision = %key.name, namespace = %key.namespace, "{why}");
                    self.shared.errors.lock().insert(key, why);
                    queue.pop_front();
                }
                Err(Failure::Retry(why)) => {
                    tracing::warn!(
                        revision = %key.name, namespace = %key.namespace,
                        retry_in = ?wait, "{why}"
                    );
                    self.shared.errors.lock().insert(key, why);
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
        }
    }

    async fn carry_out(&self, op: &Op) -> Result<(), Failure> {
        match op {
            Op::Create(spec) => self.create(spec).await,
            Op::Delete(key) => self.delete(key).await,
            Op::Scale(key, replicas) => self.scale(key, *replicas).await,
        }
    }

    /// Creates the revision's Deployment and Service, owned by its Knative Service; one
    /// that exists already is adopted as it is (a revision never changes).
    async fn create(&self, spec: &RevisionSpec) -> Result<(), Failure> {
        let pod = &spec.pod;
        let ns = &pod.namespace;
        let services: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), ns, &knative_service());
        let owner = match services.get_opt(&pod.service).await {
            Ok(Some(s)) => Owner {
                name: pod.service.clone(),
                uid: s.metadata.uid.unwrap_or_default(),
            },
            Ok(None) => {
                return Err(Failure::Give(format!(
                    "service {ns}/{} is gone: its revision {} is not created",
                    pod.service, pod.revision
                )));
            }
            Err(e) => {
                return Err(Failure::Retry(format!(
                    "reading service {ns}/{}: {e}",
                    pod.service
                )));
            }
        };
        let deployment = resources::deployment(spec, &owner, &self.inject)
            .map_err(|e| Failure::Give(format!("revision {}: {e}", pod.revision)))?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        adopt_existing(deployments.create(&params, &deployment).await)
            .map_err(|e| Failure::Retry(format!("creating deployment: {e}")))?;
        let svc = resources::service(spec, &owner);
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), ns);
        adopt_existing(svcs.create(&params, &svc).await)
            .map_err(|e| Failure::Retry(format!("creating service: {e}")))?;
        Ok(())
    }

    async fn delete(&self, key: &RevisionKey) -> Result<(), Failure> {
        let params = DeleteParams::background();
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &key.namespace);
        gone(
            deployments
                .delete(&resources::deployment_name(&key.name), &params)
                .await,
        )
        .map_err(|e| Failure::Retry(format!("deleting deployment: {e}")))?;
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        gone(
            svcs.delete(&resources::service_name(&key.name), &params)
                .await,
        )
        .map_err(|e| Failure::Retry(format!("deleting service: {e}")))?;
        Ok(())
    }

    /// Sets the replicas through the Deployment's `scale` subresource.
    async fn scale(&self, key: &RevisionKey, replicas: u32) -> Result<(), Failure> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        let name = resources::deployment_name(&key.name);
        match deployments
            .patch_scale(&name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() => Err(Failure::Give(format!(
                "scaling to {replicas}: deployment {name} is gone"
            ))),
            Err(e) => Err(Failure::Retry(format!("scaling to {replicas}: {e}"))),
        }
    }
}

/// A create that found the object there already succeeded.
fn adopt_existing<K>(r: Result<K, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() || s.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// A delete that found nothing succeeded.
fn gone<K>(r: Result<K, kube::Error>) -> Result<(), kube::Error> {
    match r {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests;
