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
use k8s_openapi::api::core::v1::{PodTemplateSpec, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use parking_lot::Mutex;
use sluice_control::RevisionSpec;
use sluice_control::backend::{Backend, PodStatus};
use sluice_core::RevisionKey;
use tokio::sync::{Semaphore, mpsc};

use crate::drift;
use crate::endpoints::Slices;
use crate::resources::{self, Injection, Owner, REVISION_LABEL};

/// The field manager Sluice writes as.
pub const FIELD_MANAGER: &str = "sluice";
/// The first wait before an operation that failed is tried again; it doubles up to
/// [`MAX_RETRY`] for an API server that could not take it now, and up to
/// [`MAX_REFUSED_RETRY`] for one that refused it.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(5);
const MAX_REFUSED_RETRY: Duration = Duration::from_secs(60);
/// Writes in flight at once, across every revision.
const MAX_IN_FLIGHT: usize = 8;

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

#[derive(Debug)]
struct Shared {
    slices: Mutex<Slices>,
    /// Whether the EndpointSlices have been listed once.
    listed: tokio::sync::watch::Sender<bool>,
    /// Why the revision's last operation failed, until one succeeds.
    errors: Mutex<HashMap<RevisionKey, String>>,
    /// Every revision this backend runs, with the replicas last set: what a Deployment
    /// deleted by someone else is made again from.
    running: Mutex<HashMap<RevisionKey, (RevisionSpec, Option<u32>)>>,
    /// What the revisions' pods get injected (to tell a Deployment edited by hand).
    inject: Injection,
    /// A digest of each Deployment's pod template as the API server stored it once it
    /// was as Sluice makes it: a watch event with this template needs no second look (a
    /// digest, since 2,000 templates as JSON values weighed tens of MiB).
    verified: Mutex<HashMap<RevisionKey, u64>>,
}

#[derive(Clone, Debug)]
enum Op {
    Create(Box<RevisionSpec>),
    Delete(RevisionKey),
    Scale(RevisionKey, u32),
    /// Puts the Deployment's pod template and the private Service's selector and ports
    /// back as Sluice makes them (edited by hand, or made by an earlier Sluice with
    /// another sidecar).
    PutBack(Box<RevisionSpec>),
}

/// Carries out the backend's operations against the API server: in order for each
/// revision, every revision on its own lane, so that what the API server refuses for one
/// revision (a 422 for its spec, a 403 from a quota) holds up only that revision.
pub struct Writer {
    writes: Arc<Writes>,
    ops: mpsc::UnboundedReceiver<Op>,
    shared: Arc<Shared>,
}

/// What an operation needs to be carried out, shared by every attempt.
struct Writes {
    client: Client,
    inject: Injection,
    shared: Arc<Shared>,
    /// Bounds the writes in flight at once, across lanes.
    permits: Arc<Semaphore>,
}

/// One revision's operations, oldest first: the head is being carried out, or waits for
/// its next attempt.
#[derive(Debug, Default)]
struct Lane {
    queue: VecDeque<Op>,
    /// The head's attempt under way: its number and its task.
    attempt: Option<(u64, AbortOnDrop)>,
    /// How long the head waits before its next attempt (zero until one fails).
    wait: Duration,
}

/// How an attempt ended, sent back to the writer by the attempt's task.
struct Done {
    key: RevisionKey,
    attempt: u64,
    result: Result<(), Failure>,
}

/// How an operation failed.
#[derive(Debug)]
enum Failure {
    /// The API server could not take it now (unreachable, 5xx, a conflict): try again
    /// soon.
    Retry(String),
    /// The API server refused it (422 for a spec it cannot store, 403 from a quota or an
    /// admission policy): try again, backing off further, since only a change elsewhere
    /// (the quota, the policy) can make it succeed.
    Refused(String),
    /// It can never succeed as asked (a spec Kubernetes cannot run, an owner gone).
    Give(String),
}

/// A task aborted when this is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::JoinHandle<()>);

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
        let shared = Arc::new(Shared {
            slices: Mutex::default(),
            listed: tokio::sync::watch::Sender::default(),
            errors: Mutex::default(),
            running: Mutex::default(),
            inject: inject.clone(),
            verified: Mutex::default(),
        });
        let writer = Writer {
            writes: Arc::new(Writes {
                client,
                inject,
                shared: Arc::clone(&shared),
                permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            }),
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

    /// Follows the Deployments of every revision, in every namespace, for as long as the
    /// task runs: one deleted while its revision runs (by hand, or missed while the watch
    /// was down) is made again, at the replicas last set; one whose pod template is no
    /// longer as Sluice makes it ([`drift::covers`]: edited by hand, or made by a Sluice
    /// with another sidecar) gets it back, its replicas kept.
    pub async fn follow_deployments(self: Arc<Self>, client: Client) {
        let this = Arc::clone(&self);
        self.follow_owned(Api::<Deployment>::all(client), "deployment", move |d| {
            this.check(d);
        })
        .await;
    }

    /// The same for the revisions' private Services: one deleted comes back, so its
    /// EndpointSlices (the ready pods) do; one whose selector or ports were edited
    /// ([`drift::service_covers`]) gets them back.
    pub async fn follow_services(self: Arc<Self>, client: Client) {
        let this = Arc::clone(&self);
        self.follow_owned(Api::<Service>::all(client), "private service", move |s| {
            this.check_service(s);
        })
        .await;
    }

    /// Queues a put-back for a running revision's private Service that no longer routes
    /// as Sluice made it.
    fn check_service(&self, s: &Service) {
        let Some(key) = revision_of(&s.metadata) else {
            return;
        };
        if s.metadata.name.as_deref() != Some(resources::service_name(&key.name).as_str()) {
            return;
        }
        let Some((spec, _)) = self.shared.running.lock().get(&key).cloned() else {
            return;
        };
        let want = resources::service_spec(&spec);
        if s.spec
            .as_ref()
            .is_some_and(|actual| drift::service_covers(actual, &want))
        {
            return;
        }
        tracing::warn!(
            revision = %key.name, namespace = %key.namespace,
            "its private service does not select and serve as Sluice made it (edited by hand?): put back"
        );
        self.queue(Op::PutBack(Box::new(spec)));
    }

    /// Queues a put-back for a running revision's Deployment whose pod template is not as
    /// Sluice makes it.
    fn check(&self, d: &Deployment) {
        let Some(key) = revision_of(&d.metadata) else {
            return;
        };
        let Some((spec, _)) = self.shared.running.lock().get(&key).cloned() else {
            return;
        };
        let Some(actual) = stored_template(d) else {
            return;
        };
        if self.shared.verified.lock().get(&key) == Some(&digest(&actual)) {
            return;
        }
        let Some(want) = pod_template(&spec, &self.shared.inject)
            .ok()
            .and_then(|t| serde_json::to_value(&t).ok())
        else {
            return;
        };
        if drift::covers(&actual, &want) {
            self.shared.verified.lock().insert(key, digest(&actual));
            return;
        }
        tracing::warn!(
            revision = %key.name, namespace = %key.namespace,
            "its deployment's pod template is not as Sluice makes it (edited by hand?): put back"
        );
        self.queue(Op::PutBack(Box::new(spec)));
    }

    /// Watches objects of one kind labelled with a revision; a running revision whose
    /// object is deleted, or missing from a relist, gets its create (which makes only
    /// what is missing) and its last scale queued again.
    async fn follow_owned<K>(
        self: Arc<Self>,
        api: Api<K>,
        what: &'static str,
        seen: impl Fn(&K) + Send,
    ) where
        K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    {
        let config = watcher::Config::default().labels(REVISION_LABEL);
        let mut events = std::pin::pin!(watcher(api, config).default_backoff());
        let mut listed: Option<std::collections::HashSet<RevisionKey>> = None;
        while let Some(event) = events.next().await {
            let gone: Vec<RevisionKey> = match event {
                Ok(watcher::Event::Delete(o)) => revision_of(o.meta()).into_iter().collect(),
                Ok(watcher::Event::Init) => {
                    listed = Some(std::collections::HashSet::new());
                    continue;
                }
                Ok(watcher::Event::InitApply(o)) => {
                    if let (Some(l), Some(key)) = (&mut listed, revision_of(o.meta())) {
                        l.insert(key);
                    }
                    seen(&o);
                    continue;
                }
                Ok(watcher::Event::InitDone) => {
                    let Some(listed) = listed.take() else {
                        continue;
                    };
                    self.shared
                        .running
                        .lock()
                        .keys()
                        .filter(|k| !listed.contains(*k))
                        .cloned()
                        .collect()
                }
                Ok(watcher::Event::Apply(o)) => {
                    seen(&o);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "watching the revisions' {what}s");
                    continue;
                }
            };
            for key in gone {
                let Some((spec, replicas)) = self.shared.running.lock().get(&key).cloned() else {
                    continue;
                };
                tracing::warn!(
                    revision = %key.name, namespace = %key.namespace,
                    "its {what} is gone while the revision runs: made again"
                );
                self.queue(Op::Create(Box::new(spec)));
                if let Some(replicas) = replicas {
                    self.queue(Op::Scale(key, replicas));
                }
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
        self.shared
            .running
            .lock()
            .insert(spec.key(), (spec.clone(), None));
        self.queue(Op::Create(Box::new(spec.clone())));
    }

    fn delete(&self, revision: &RevisionKey) {
        self.shared.running.lock().remove(revision);
        self.shared.verified.lock().remove(revision);
        self.queue(Op::Delete(revision.clone()));
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        if let Some((_, r)) = self.shared.running.lock().get_mut(revision) {
            *r = Some(replicas);
        }
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
            .field("inject", &self.writes.inject)
            .finish_non_exhaustive()
    }
}

// === impl Op ===

impl Op {
    fn key(&self) -> RevisionKey {
        match self {
            Op::Create(spec) | Op::PutBack(spec) => spec.key(),
            Op::Delete(key) | Op::Scale(key, _) => key.clone(),
        }
    }
}

impl Op {
    /// Whether `later`, for the same revision, makes this one moot: a scale is replaced by
    /// a later scale or a delete, a put-back by a later one, and a create or put-back not
    /// yet made is not made for a revision that is deleted anyway (the delete removes
    /// whatever part of it exists).
    fn moot_after(&self, later: &Op) -> bool {
        matches!(
            (self, later),
            (Op::Scale(..), Op::Scale(..) | Op::Delete(_))
                | (Op::Create(_) | Op::PutBack(_), Op::Delete(_))
                | (Op::PutBack(_), Op::PutBack(_))
        )
    }
}

// === impl Lane ===

impl Lane {
    /// Queues `op` behind the others, dropping those it makes moot. Returns whether the
    /// head was dropped (its attempt, if any, is then aborted).
    fn push(&mut self, op: Op) -> bool {
        let head_moot = self.queue.front().is_some_and(|h| h.moot_after(&op));
        self.queue.retain(|earlier| !earlier.moot_after(&op));
        self.queue.push_back(op);
        if head_moot {
            self.attempt = None;
        }
        head_moot
    }

    /// The wait after a failed attempt: doubled, from [`FIRST_RETRY`] up to `max`.
    fn back_off(&mut self, max: Duration) {
        self.wait = if self.wait.is_zero() {
            FIRST_RETRY
        } else {
            (self.wait * 2).min(max)
        };
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

// === impl Writer ===

impl Writer {
    /// Carries out operations until the backend is dropped. Each revision's operations
    /// land in the order they were made; one that fails is tried again (after 0.2 s,
    /// doubling to 5 s, or to 60 s when the API server refused it) before any later one
    /// *of that revision*, while every other revision's go on.
    pub async fn run(mut self) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut lanes: HashMap<RevisionKey, Lane> = HashMap::new();
        let mut attempts = 0_u64;
        loop {
            let key = tokio::select! {
                op = self.ops.recv() => {
                    // Dropping the lanes aborts the attempts under way.
                    let Some(op) = op else { return };
                    let key = op.key();
                    let lane = lanes.entry(key.clone()).or_default();
                    let idle = lane.attempt.is_none();
                    if !lane.push(op) && !idle {
                        continue;
                    }
                    key
                }
                Some(done) = done_rx.recv() => {
                    let Some(lane) = lanes.get_mut(&done.key) else { continue };
                    if lane.attempt.as_ref().map(|(n, _)| *n) != Some(done.attempt) {
                        // An attempt aborted after it had finished: its head was dropped.
                        continue;
                    }
                    lane.attempt = None;
                    self.finished(lane, &done.key, done.result);
                    done.key
                }
            };
            let Some(lane) = lanes.get_mut(&key) else {
                continue;
            };
            let Some(op) = lane.queue.front() else {
                lanes.remove(&key);
                continue;
            };
            attempts += 1;
            let task = tokio::spawn(attempt(
                Arc::clone(&self.writes),
                op.clone(),
                lane.wait,
                attempts,
                done_tx.clone(),
            ));
            lane.attempt = Some((attempts, AbortOnDrop(task)));
        }
    }

    /// Records how the lane's head ended: it leaves the lane unless it is to be tried
    /// again.
    fn finished(&self, lane: &mut Lane, key: &RevisionKey, result: Result<(), Failure>) {
        let (ns, rev) = (&key.namespace, &key.name);
        match result {
            Ok(()) => {
                self.shared.errors.lock().remove(key);
                lane.queue.pop_front();
                lane.wait = Duration::ZERO;
            }
            Err(Failure::Give(why)) => {
                tracing::warn!(revision = %rev, namespace = %ns, "{why}");
                self.shared.errors.lock().insert(key.clone(), why);
                lane.queue.pop_front();
                lane.wait = Duration::ZERO;
            }
            Err(Failure::Retry(why)) => {
                lane.back_off(MAX_RETRY);
                tracing::warn!(revision = %rev, namespace = %ns, retry_in = ?lane.wait, "{why}");
                self.shared.errors.lock().insert(key.clone(), why);
            }
            Err(Failure::Refused(why)) => {
                lane.back_off(MAX_REFUSED_RETRY);
                tracing::warn!(
                    revision = %rev, namespace = %ns, retry_in = ?lane.wait,
                    "refused by the API server: {why}"
                );
                self.shared.errors.lock().insert(key.clone(), why);
            }
        }
    }
}

/// One attempt at `op`, after `wait`, within the writer's bound on writes in flight; how
/// it ended is sent on `done`.
async fn attempt(
    writes: Arc<Writes>,
    op: Op,
    wait: Duration,
    attempt: u64,
    done: mpsc::UnboundedSender<Done>,
) {
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let result = {
        let _permit = Arc::clone(&writes.permits).acquire_owned().await;
        writes.carry_out(&op).await
    };
    let _ = done.send(Done {
        key: op.key(),
        attempt,
        result,
    });
}

// === impl Writes ===

impl std::fmt::Debug for Writes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writes")
            .field("inject", &self.inject)
            .finish_non_exhaustive()
    }
}

impl Writes {
    async fn carry_out(&self, op: &Op) -> Result<(), Failure> {
        match op {
            Op::Create(spec) => self.create(spec).await,
            Op::Delete(key) => self.delete(key).await,
            Op::Scale(key, replicas) => self.scale(key, *replicas).await,
            Op::PutBack(spec) => self.put_back(spec).await,
        }
    }

    /// Reads the revision's Deployment and, when its pod template is not as Sluice makes
    /// it, replaces the template (at the version read; a conflict is tried again), its
    /// replicas and everything else kept. The template as stored is remembered, so the
    /// watch events that follow need no second look.
    async fn put_back(&self, spec: &RevisionSpec) -> Result<(), Failure> {
        self.put_back_deployment(spec).await?;
        self.put_back_service(spec).await
    }

    async fn put_back_deployment(&self, spec: &RevisionSpec) -> Result<(), Failure> {
        let key = spec.key();
        let name = resources::deployment_name(&spec.pod.revision);
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &spec.pod.namespace);
        let have = match api.get_opt(&name).await {
            // Gone: the watch has it made again.
            Ok(None) => return Ok(()),
            Ok(Some(d)) => d,
            Err(e) => return Err(failure(format!("reading deployment {name}"), e)),
        };
        let made = pod_template(spec, &self.inject)
            .map_err(|e| Failure::Give(format!("revision {}: {e}", spec.pod.revision)))?;
        let want = serde_json::to_value(&made).unwrap_or_default();
        if let Some(actual) = stored_template(&have).filter(|a| drift::covers(a, &want)) {
            self.shared.verified.lock().insert(key, digest(&actual));
            return Ok(());
        }
        let mut next = have;
        if let Some(s) = next.spec.as_mut() {
            s.template = made;
        }
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        let written = api
            .replace(&name, &params, &next)
            .await
            .map_err(|e| failure(format!("putting deployment {name} back"), e))?;
        if let Some(t) = stored_template(&written) {
            self.shared.verified.lock().insert(key, digest(&t));
        }
        tracing::info!(revision = %spec.pod.revision, namespace = %spec.pod.namespace, "deployment put back");
        Ok(())
    }

    /// The private Service's selector and ports as Sluice makes them; the rest (its
    /// cluster IP, what else a hand put there) is kept.
    async fn put_back_service(&self, spec: &RevisionSpec) -> Result<(), Failure> {
        let name = resources::service_name(&spec.pod.revision);
        let api: Api<Service> = Api::namespaced(self.client.clone(), &spec.pod.namespace);
        let mut next = match api.get_opt(&name).await {
            // Gone: the watch has it made again.
            Ok(None) => return Ok(()),
            Ok(Some(s)) => s,
            Err(e) => return Err(failure(format!("reading service {name}"), e)),
        };
        let want = resources::service_spec(spec);
        let actual = next.spec.get_or_insert_with(Default::default);
        if drift::service_covers(actual, &want) {
            return Ok(());
        }
        actual.selector = want.selector;
        actual.ports = want.ports;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        api.replace(&name, &params, &next)
            .await
            .map_err(|e| failure(format!("putting service {name} back"), e))?;
        tracing::info!(revision = %spec.pod.revision, namespace = %spec.pod.namespace, "private service put back");
        Ok(())
    }

    /// Creates the revision's `Revision` object, Deployment and Service, owned by its
    /// Knative Service; one that exists already, owned by it, is adopted as it is (a
    /// revision never changes).
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
            Err(e) => return Err(failure(format!("reading service {ns}/{}", pod.service), e)),
        };
        let deployment = resources::deployment(spec, &owner, &self.inject)
            .map_err(|e| Failure::Give(format!("revision {}: {e}", pod.revision)))?;
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..PostParams::default()
        };
        if let Some(revision) = resources::revision_object(spec, &owner) {
            // First, so that a control plane restarted from here on finds the revision.
            let revisions: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), ns, &resources::knative_revision());
            create_owned(&revisions, &params, &revision, &owner, "revision").await?;
        }
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), ns);
        let made = create_owned(&deployments, &params, &deployment, &owner, "deployment").await?;
        let svc = resources::service(spec, &owner);
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), ns);
        create_owned(&svcs, &params, &svc, &owner, "service").await?;
        if !made {
            // Adopted (a restart): made by an earlier control plane, perhaps with
            // another sidecar, perhaps edited while none watched.
            self.put_back(spec).await?;
        }
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
        .map_err(|e| failure("deleting deployment".to_owned(), e))?;
        let svcs: Api<Service> = Api::namespaced(self.client.clone(), &key.namespace);
        gone(
            svcs.delete(&resources::service_name(&key.name), &params)
                .await,
        )
        .map_err(|e| failure("deleting service".to_owned(), e))?;
        let revisions: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &resources::knative_revision(),
        );
        gone(revisions.delete(&key.name, &params).await)
            .map_err(|e| failure("deleting revision".to_owned(), e))?;
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
            Err(e) => Err(failure(format!("scaling to {replicas}"), e)),
        }
    }
}

/// Creates `obj`, owned by `owner`: whether it was made (`false`: one there already is
/// taken as this revision's, since `owner` owns it). Any other is left alone, as Knative
/// leaves a Deployment it does not own (`NotOwned`).
async fn create_owned<K>(
    api: &Api<K>,
    params: &PostParams,
    obj: &K,
    owner: &Owner,
    what: &str,
) -> Result<bool, Failure>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    match api.create(params, obj).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_already_exists() || s.code == 409 => {
            match api.get_opt(&name).await {
                Ok(Some(there)) if owned_by(there.meta(), &owner.uid) => Ok(false),
                Ok(Some(_)) => Err(Failure::Give(format!(
                    "{what} {name} exists and is not owned by service {}: it is left as it is \
                     (NotOwned)",
                    owner.name
                ))),
                Ok(None) => Err(Failure::Retry(format!(
                    "{what} {name} was deleted as it was created"
                ))),
                Err(e) => Err(failure(format!("reading {what} {name}"), e)),
            }
        }
        Err(e) => Err(failure(format!("creating {what} {name}"), e)),
    }
}

fn owned_by(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, uid: &str) -> bool {
    meta.owner_references.iter().flatten().any(|o| o.uid == uid)
}

/// How an API call failed: refused for what was asked (4xx but for a conflict, a timeout
/// or throttling), or not taken now (5xx, unreachable).
fn failure(doing: String, e: kube::Error) -> Failure {
    match &e {
        kube::Error::Api(s)
            if (400..500).contains(&s.code) && ![408, 409, 429].contains(&s.code) =>
        {
            Failure::Refused(format!("{doing}: {e}"))
        }
        _ => Failure::Retry(format!("{doing}: {e}")),
    }
}

/// A digest of a JSON value (serde_json writes one value the same way every time).
fn digest(v: &serde_json::Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    h.finish()
}

/// The pod template Sluice makes for the revision's Deployment (the owner is not part
/// of it).
fn pod_template(
    spec: &RevisionSpec,
    inject: &Injection,
) -> Result<PodTemplateSpec, resources::ResourceError> {
    let owner = Owner {
        name: spec.pod.service.clone(),
        uid: String::new(),
    };
    let d = resources::deployment(spec, &owner, inject)?;
    Ok(d.spec.map(|s| s.template).unwrap_or_default())
}

/// A Deployment's pod template as the API server stored it, as JSON.
fn stored_template(d: &Deployment) -> Option<serde_json::Value> {
    serde_json::to_value(&d.spec.as_ref()?.template).ok()
}

/// The revision a Deployment of Sluice's runs.
fn revision_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<RevisionKey> {
    let name = meta.labels.as_ref()?.get(REVISION_LABEL)?;
    Some(RevisionKey::new(meta.namespace.as_deref()?, name))
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
