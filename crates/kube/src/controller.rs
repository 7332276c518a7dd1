//! The control plane's controllers of Knative's objects on Kubernetes (`sluice control
//! --kubernetes`): the desired state comes from the API server's `serving.knative.dev/v1`
//! `Service` objects, planned by the same rules as `sluice run` into the applied world
//! ([`Desired`]); each Service's `Configuration` and `Route` are reconciled on
//! kube-runtime's `Controller` (`services`); each Service's, Configuration's, Route's
//! and Revision's status is written back as Knative writes it, with events; and
//! `config-autoscaler` and `config-gc` are read from `knative-serving`, as Knative reads
//! them.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Patch, PatchParams};
use kube::core::DynamicObject;
use kube::runtime::reflector::Store;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use parking_lot::Mutex;
use sluice_control::desired::Desired;
use sluice_control::gc::{self, CONFIG_GC, Candidate, GcConfig};
use sluice_control::world::{ServiceState, World};
use sluice_core::RevisionKey;
use sluice_serving::manifest::{CONFIG_AUTOSCALER, KNATIVE_NAMESPACE, Manifests};
use sluice_serving::problem::lines;

use crate::backend::{FIELD_MANAGER, knative_service};
use crate::children::{self, Parent, Tracker};
use crate::pods::{PodFailure, first_failures, rollout_failures};
use crate::status::{
    ConfigurationStatus, Facts, Notice, RevisionFacts, RevisionStatus, RouteStatus, ServiceStatus,
    TrafficFact, configuration_status, ready_notice, revision_status, route_status, service_status,
};

/// How often every Service's status is computed again (and written when it changed).
const STATUS_PERIOD: Duration = Duration::from_secs(1);

/// What the control plane knows of each `Service` object, for its status.
#[derive(Debug, Default)]
struct Objects {
    services: HashMap<(String, String), Seen>,
    /// Each revision's status as last written on its `Revision` object.
    revisions: HashMap<RevisionKey, RevisionStatus>,
    /// Each `Revision` object's uid, from its last status write (events name it).
    revision_uids: HashMap<RevisionKey, String>,
    /// The replicas each revision's workload was last seen set to (for its events).
    scaled: HashMap<RevisionKey, u32>,
    /// Each Service's `Configuration` and `Route`: whether the cluster has them as they
    /// should be.
    children: Tracker,
    /// `config-gc` as last read (Knative's defaults until then).
    gc: GcConfig,
    /// Each `Revision` object's `creationTimestamp`, from its last status write.
    revision_created: HashMap<RevisionKey, SystemTime>,
    /// When traffic last named each revision (or when this control plane first saw it).
    last_active: HashMap<RevisionKey, SystemTime>,
    /// The revisions whose `Revision` object is annotated `serving.knative.dev/no-gc:
    /// "true"` now (copied from the template, or added by hand with `kubectl annotate`).
    no_gc: std::collections::HashSet<RevisionKey>,
}

#[derive(Debug, Default)]
struct Seen {
    /// The `metadata.generation` being planned or planned (`None`: not yet).
    planned: Option<i64>,
    /// The `metadata.generation` whose planning has finished: the status reports this
    /// one (`observedGeneration`), never one still being planned, so a client that waits
    /// for `observedGeneration == generation` reads conditions about that spec.
    observed: Option<i64>,
    /// Why its spec was refused, naming the field.
    refused: Option<String>,
    /// Its status as last read or written.
    status: Option<ServiceStatus>,
    /// Its `Configuration`'s and `Route`'s statuses as last written.
    configuration: Option<ConfigurationStatus>,
    route: Option<RouteStatus>,
    /// The object's uid (events name it).
    uid: Option<String>,
}

mod services;

/// Follows every `Service` object until the task is aborted (with kube-runtime's
/// `Controller`, `services`): plans each, takes deleted ones out, keeps their
/// `Configuration` and `Route` as they should be and their statuses written. `listed` is
/// sent once every Service of the first list has been planned.
pub async fn follow_services(
    client: Client,
    desired: Arc<Desired>,
    listed: tokio::sync::oneshot::Sender<()>,
) {
    let objects = Arc::new(Mutex::new(Objects::default()));
    let (pods, follow) = follow_status::<Pod>(client.clone(), |p| p.spec = None);
    let (deployments, follow_d) = follow_status::<Deployment>(client.clone(), |d| d.spec = None);
    // These end with this task, aborted or not.
    let _pods = AbortOnDrop(tokio::spawn(follow));
    let _deployments = AbortOnDrop(tokio::spawn(follow_d));
    let _gc = AbortOnDrop(tokio::spawn(follow_gc_config(
        client.clone(),
        Arc::clone(&objects),
    )));
    let _marks = AbortOnDrop(tokio::spawn(follow_revision_marks(
        client.clone(),
        Arc::clone(&objects),
    )));
    let _status = AbortOnDrop(tokio::spawn(write_statuses(
        client.clone(),
        Arc::clone(&desired),
        Arc::clone(&objects),
        (pods, deployments),
    )));
    services::run(client, desired, objects, listed).await;
}

/// The revisions' objects of kind `K` (those labelled with a revision), cached as the
/// watch sees them with only their labels and status kept (what [`first_failures`] and
/// [`rollout_failures`] read); the future runs the watch.
fn follow_status<K>(client: Client, strip: fn(&mut K)) -> (Store<K>, impl Future<Output = ()>)
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    use crate::resources::REVISION_LABEL;
    let (store, writer) = reflector::store::<K>();
    let api: Api<K> = Api::all(client);
    let events = watcher(api, watcher::Config::default().labels(REVISION_LABEL))
        .default_backoff()
        .modify(move |o| {
            // The spec, annotations and field history are not read: not kept either.
            strip(o);
            o.meta_mut().annotations = None;
            o.meta_mut().managed_fields = None;
        });
    let run = async move {
        let mut events = std::pin::pin!(reflector(writer, events));
        while let Some(e) = events.next().await {
            if let Err(e) = e {
                tracing::warn!(error = %e, kind = %K::kind(&()), "watching the revisions' objects");
            }
        }
    };
    (store, run)
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Plans again the revisions an earlier control plane made (its `Revision` objects),
/// before any Service is followed: a Service's template as it was at its latest revision
/// then makes no new one, the next is named after the last, and a split naming an old
/// revision finds it. A Revision that cannot be read or planned is left out, with a
/// warning.
pub async fn restore_revisions(client: Client, desired: &Desired) -> Result<usize, String> {
    use crate::resources::{
        CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, MANAGED_BY_LABEL, MANAGER,
        REVISION_LABEL, SERVICE_LABEL, knative_revision,
    };
    let api: Api<DynamicObject> = Api::all_with(client, &knative_revision());
    let params = kube::api::ListParams::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGER}"));
    let list = api
        .list(&params)
        .await
        .map_err(|e| format!("listing Revisions: {e}"))?;
    let mut kept = Vec::new();
    for o in list.items {
        let (ns, name) = id(&o);
        let mut labels = o.metadata.labels.clone().unwrap_or_default();
        let service = labels.get(SERVICE_LABEL).cloned();
        let generation = labels
            .get(CONFIGURATION_GENERATION_LABEL)
            .and_then(|g| g.parse::<u32>().ok());
        let (Some(service), Some(generation)) = (service, generation) else {
            tracing::warn!(revision = %name, namespace = %ns, "a Revision without its service or generation label: left out");
            continue;
        };
        for ours in [
            SERVICE_LABEL,
            CONFIGURATION_LABEL,
            REVISION_LABEL,
            CONFIGURATION_GENERATION_LABEL,
            MANAGED_BY_LABEL,
        ] {
            labels.remove(ours);
        }
        let template = serde_json::json!({
            "metadata": {
                "name": name,
                "labels": labels,
                "annotations": o.metadata.annotations.clone().unwrap_or_default(),
            },
            "spec": o.data.get("spec").cloned().unwrap_or_default(),
        });
        match serde_json::from_value(template) {
            Ok(template) => kept.push(sluice_control::world::Kept {
                namespace: ns,
                service,
                name,
                generation,
                template,
            }),
            Err(e) => {
                tracing::warn!(revision = %name, namespace = %ns, "a Revision whose spec cannot be read ({e}): left out");
            }
        }
    }
    let count = kept.len();
    for p in desired.restore(kept).await {
        tracing::warn!("a kept revision cannot be planned again, left out: {p}");
    }
    Ok(count)
}

/// Follows `knative-serving/config-autoscaler` (where Knative keeps it) until the task is
/// aborted: each version is checked against every revision and applied, or refused and
/// logged; a deleted one brings Knative's defaults back. `listed` is sent once the first
/// list has been applied.
pub async fn follow_config(
    client: Client,
    desired: Arc<Desired>,
    listed: tokio::sync::oneshot::Sender<()>,
) {
    let mut first = Some(listed);
    let api: Api<ConfigMap> = Api::namespaced(client, KNATIVE_NAMESPACE);
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    while let Some(event) = events.next().await {
        let data = match event {
            Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c))
                if c.metadata.name.as_deref() == Some(CONFIG_AUTOSCALER) =>
            {
                c.data.unwrap_or_default()
            }
            Ok(watcher::Event::Delete(c))
                if c.metadata.name.as_deref() == Some(CONFIG_AUTOSCALER) =>
            {
                BTreeMap::new()
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(tx) = first.take() {
                    let _ = tx.send(());
                }
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watching ConfigMaps");
                continue;
            }
        };
        let m = Manifests {
            config_autoscaler: Some(data),
            ..Manifests::default()
        };
        match desired.apply(&m).await {
            Ok(summary) => summary.iter().for_each(|l| tracing::info!("{l}")),
            Err(problems) => tracing::warn!(
                "{KNATIVE_NAMESPACE}/{CONFIG_AUTOSCALER} refused, the current one kept: {}",
                lines(&problems).join("; ")
            ),
        }
    }
}

fn id(o: &DynamicObject) -> (String, String) {
    (
        o.metadata.namespace.clone().unwrap_or_default(),
        o.metadata.name.clone().unwrap_or_default(),
    )
}

/// Plans one object as `sluice apply` would plan its manifest: the same strict fields,
/// the same rules, the same revision names; unless `deleted` says, when its turn comes,
/// that it is gone.
async fn apply(
    desired: &Desired,
    objects: &Mutex<Objects>,
    o: &DynamicObject,
    deleted: impl FnOnce() -> bool,
) {
    let (ns, name) = id(o);
    let generation = o.metadata.generation.unwrap_or_default();
    let status: Option<ServiceStatus> = o
        .data
        .get("status")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    if let Some(ready) = status
        .as_ref()
        .and_then(|s| s.latest_ready_revision_name.clone())
    {
        // Ready under an earlier control plane: the latest revision's traffic stays on
        // it, not on a newer one that has yet to prove itself.
        desired.control().was_ready(RevisionKey::new(&ns, ready));
    }
    // What its Configuration and Route are made from: a spec that was accepted (one
    // refused leaves them as they were, as Knative's admission would have refused it).
    let parent = o.metadata.uid.as_ref().map(|uid| Parent {
        namespace: ns.clone(),
        name: name.clone(),
        uid: uid.clone(),
        labels: o.metadata.labels.clone().unwrap_or_default(),
        annotations: o.metadata.annotations.clone().unwrap_or_default(),
        spec: o.data.get("spec").cloned().unwrap_or_default(),
    });
    {
        let mut objs = objects.lock();
        let objs = &mut *objs;
        let seen = objs.services.entry((ns.clone(), name.clone())).or_default();
        if seen.planned == Some(generation) {
            // A status write (ours) or a metadata change: the spec is as planned.
            if seen.observed == Some(generation)
                && seen.refused.is_none()
                && let Some(p) = parent
            {
                objs.children.set(p);
            }
            return;
        }
        seen.planned = Some(generation);
        seen.uid.clone_from(&o.metadata.uid);
        seen.status = seen.status.take().or(status);
    }
    // The manifest as a user would have written it: what the API server adds (uid,
    // resourceVersion, managedFields, status) is not the spec.
    let manifest = serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": o.metadata.labels.clone().unwrap_or_default(),
            "annotations": o.metadata.annotations.clone().unwrap_or_default(),
        },
        "spec": o.data.get("spec").cloned().unwrap_or_default(),
    });
    let refused = match Manifests::parse(&format!("service {ns}/{name}"), &manifest.to_string()) {
        Err(problems) => Some(lines(&problems).join("; ")),
        Ok(m) => match desired.apply_unless(&m, deleted).await {
            // Deleted meanwhile: taken out, or about to be.
            None => {
                objects.lock().services.remove(&(ns, name));
                return;
            }
            Some(Ok(summary)) => {
                for line in summary {
                    tracing::info!("{line}");
                }
                None
            }
            Some(Err(problems)) => Some(lines(&problems).join("; ")),
        },
    };
    if let Some(why) = &refused {
        tracing::warn!(service = %name, namespace = %ns, "refused: {why}");
    }
    let mut objs = objects.lock();
    let objs = &mut *objs;
    if let Some(seen) = objs.services.get_mut(&(ns, name)) {
        if refused.is_none()
            && let Some(p) = parent
        {
            objs.children.set(p);
        }
        seen.refused = refused;
        seen.observed = Some(generation);
    }
}

async fn remove(desired: &Desired, objects: &Mutex<Objects>, ns: &str, name: &str) {
    {
        let mut objs = objects.lock();
        objs.services.remove(&(ns.to_owned(), name.to_owned()));
        objs.children.remove(ns, name);
    }
    if desired.remove_service(ns, name).await {
        tracing::info!(service = %name, namespace = %ns, "deleted");
    }
}

/// Computes every Service's status each [`STATUS_PERIOD`] and writes those that changed.
async fn write_statuses(
    client: Client,
    desired: Arc<Desired>,
    objects: Arc<Mutex<Objects>>,
    (pods, deployments): (Store<Pod>, Store<Deployment>),
) {
    let events = Events::new(client.clone());
    let mut tick = tokio::time::interval(STATUS_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // One snapshot of the world and the pods for both kinds of status this tick.
        let world = desired.read_world(World::clone);
        // A pod's own failure first (Knative reads pods after the Deployment's status,
        // overriding it), else the Deployment's.
        let mut failing = first_failures(pods.state().iter().map(AsRef::as_ref));
        for (key, why) in rollout_failures(deployments.state().iter().map(AsRef::as_ref)) {
            failing.entry(key).or_insert(why);
        }
        let changed = statuses(&desired, &world, &objects.lock(), &failing);
        for ((ns, name), status) in changed {
            write_status(&client, &objects, &events, &ns, &name, status).await;
        }
        let changed = revision_statuses(&desired, &world, &mut objects.lock(), &failing);
        for (key, status) in changed {
            let before = objects.lock().revisions.get(&key).cloned();
            let notice = ready_notice(
                before.as_ref().map(|b| b.conditions.as_slice()),
                &status.conditions,
                &format!("Revision {:?} is ready", key.name),
            );
            let api: Api<DynamicObject> = Api::namespaced_with(
                client.clone(),
                &key.namespace,
                &crate::resources::knative_revision(),
            );
            let params = PatchParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PatchParams::default()
            };
            let patch = serde_json::json!({ "status": status });
            match api
                .patch_status(&key.name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(written) => {
                    let uid = written.metadata.uid.clone();
                    if let Some(n) = notice {
                        let regarding =
                            reference("Revision", &key.namespace, &key.name, uid.clone());
                        events.publish(&regarding, &n);
                    }
                    let mut objs = objects.lock();
                    if let Some(uid) = uid {
                        objs.revision_uids.insert(key.clone(), uid);
                    }
                    if let Some(created) = &written.metadata.creation_timestamp {
                        objs.revision_created
                            .insert(key.clone(), SystemTime::from(created.0));
                    }
                    objs.revisions.insert(key, status);
                }
                // Not made yet (its writes are queued): written at a later tick.
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(revision = %key.name, namespace = %key.namespace, error = %e, "writing status")
                }
            }
        }
        let rescaled = scale_notices(&desired, &world, &mut objects.lock());
        for (regarding, n) in rescaled {
            events.publish(&regarding, &n);
        }
        collect_garbage(&desired, &world, &objects, &events).await;
    }
}

/// Follows `knative-serving/config-gc`: one that cannot be read is logged and the one
/// before kept; one deleted is Knative's defaults.
async fn follow_gc_config(client: Client, objects: Arc<Mutex<Objects>>) {
    let api: Api<ConfigMap> = Api::namespaced(client, KNATIVE_NAMESPACE);
    let config = watcher::Config::default().fields(&format!("metadata.name={CONFIG_GC}"));
    let mut events = std::pin::pin!(watcher(api, config).default_backoff());
    while let Some(event) = events.next().await {
        let data = match event {
            Ok(watcher::Event::Apply(c) | watcher::Event::InitApply(c)) => {
                c.data.unwrap_or_default()
            }
            Ok(watcher::Event::Delete(_)) => BTreeMap::new(),
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "watching {CONFIG_GC}");
                continue;
            }
        };
        match GcConfig::from_data(&data) {
            Ok(c) => {
                tracing::info!(config = ?c, "{KNATIVE_NAMESPACE}/{CONFIG_GC} applied");
                objects.lock().gc = c;
            }
            Err(e) => {
                tracing::warn!(
                    "{KNATIVE_NAMESPACE}/{CONFIG_GC} refused, the current one kept: {e}"
                );
            }
        }
    }
}

/// Follows every `Revision` object's `serving.knative.dev/no-gc` annotation: Knative
/// reads it from the object, so a revision a user marks by hand (`kubectl annotate
/// revision NAME serving.knative.dev/no-gc=true`) is kept as one whose template said so.
async fn follow_revision_marks(client: Client, objects: Arc<Mutex<Objects>>) {
    let api: Api<DynamicObject> = Api::all_with(client, &crate::resources::knative_revision());
    let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
    let mut listed = std::collections::HashSet::new();
    while let Some(event) = events.next().await {
        let key = |o: &DynamicObject| {
            RevisionKey::new(
                o.metadata.namespace.as_deref().unwrap_or_default(),
                o.metadata.name.as_deref().unwrap_or_default(),
            )
        };
        let marked = |o: &DynamicObject| {
            o.metadata
                .annotations
                .as_ref()
                .is_some_and(gc::marked_no_gc)
        };
        match event {
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(o)) => {
                if marked(&o) {
                    listed.insert(key(&o));
                }
            }
            Ok(watcher::Event::InitDone) => objects.lock().no_gc = std::mem::take(&mut listed),
            Ok(watcher::Event::Apply(o)) => {
                let mut objs = objects.lock();
                if marked(&o) {
                    objs.no_gc.insert(key(&o));
                } else {
                    objs.no_gc.remove(&key(&o));
                }
            }
            Ok(watcher::Event::Delete(o)) => {
                objects.lock().no_gc.remove(&key(&o));
            }
            Err(e) => tracing::warn!(error = %e, "watching Revisions"),
        }
    }
}

/// Collects the revisions `config-gc` says to: per Service, those traffic does not name,
/// that are not its latest created or latest ready one nor marked `no-gc`, whose
/// `Revision` object's creation time is known. Each collected one gets an event on its
/// Service.
async fn collect_garbage(
    desired: &Desired,
    world: &World,
    objects: &Mutex<Objects>,
    events: &Events,
) {
    let now = SystemTime::now();
    let mut due = Vec::new();
    {
        let mut objs = objects.lock();
        let objs = &mut *objs;
        let mut live = std::collections::HashSet::new();
        for s in world.services.values() {
            let served: BTreeSet<String> =
                desired.traffic(s).into_iter().map(|t| t.revision).collect();
            let latest = s.revisions.last().map(|r| r.name.as_str());
            let latest_ready = latest_ready(desired, s);
            let mut candidates = Vec::new();
            for r in &s.revisions {
                let key = RevisionKey::new(&s.namespace, &r.name);
                let in_traffic = served.contains(&r.name);
                let last_active = objs.last_active.entry(key.clone()).or_insert(now);
                if in_traffic {
                    *last_active = now;
                }
                let last_active = *last_active;
                live.insert(key.clone());
                let Some(created) = objs.revision_created.get(&key).copied() else {
                    continue;
                };
                let preserved = objs.no_gc.contains(&key) || gc::marked_no_gc(&r.annotations);
                candidates.push(Candidate {
                    name: r.name.clone(),
                    created,
                    last_active,
                    active: in_traffic
                        || preserved
                        || Some(r.name.as_str()) == latest
                        || Some(r.name.as_str()) == latest_ready,
                });
            }
            let collected = gc::collect(&objs.gc, &candidates, now);
            if !collected.is_empty() {
                due.push((s.namespace.clone(), s.name.clone(), collected));
            }
        }
        objs.last_active.retain(|k, _| live.contains(k));
        objs.revision_created.retain(|k, _| live.contains(k));
    }
    for (ns, name, collected) in due {
        let names: Vec<String> = collected.iter().map(|c| c.name.clone()).collect();
        let gone = desired.collect(&ns, &name, &names).await;
        let uid = objects
            .lock()
            .services
            .get(&(ns.clone(), name.clone()))
            .and_then(|s| s.uid.clone());
        let regarding = reference("Service", &ns, &name, uid);
        for c in collected.iter().filter(|c| gone.contains(&c.name)) {
            tracing::info!(service = %name, namespace = %ns, revision = %c.name, "collected: {}", c.why);
            events.publish(
                &regarding,
                &Notice {
                    warning: false,
                    reason: "RevisionCollected".to_owned(),
                    note: format!("Revision {:?} deleted by {CONFIG_GC}: {}", c.name, c.why),
                },
            );
        }
    }
}

/// The newest of the Service's revisions that has had a ready pod.
fn latest_ready<'a>(desired: &Desired, s: &'a ServiceState) -> Option<&'a str> {
    s.revisions
        .iter()
        .rev()
        .find(|r| {
            desired
                .control()
                .is_ready(&RevisionKey::new(&s.namespace, &r.name))
        })
        .map(|r| r.name.as_str())
}

/// A status to write on the object of a Service's name of that kind.
#[derive(Debug)]
enum Changed {
    Service(ServiceStatus),
    Configuration(ConfigurationStatus),
    Route(RouteStatus),
}

/// Writes one status, remembers it once written, and publishes what the Service's tells.
async fn write_status(
    client: &Client,
    objects: &Mutex<Objects>,
    events: &Events,
    ns: &str,
    name: &str,
    status: Changed,
) {
    let key = (ns.to_owned(), name.to_owned());
    let (resource, patch) = match &status {
        Changed::Service(s) => (knative_service(), serde_json::json!({ "status": s })),
        Changed::Configuration(s) => (
            children::knative_configuration(),
            serde_json::json!({ "status": s }),
        ),
        Changed::Route(s) => (
            children::knative_route(),
            serde_json::json!({ "status": s }),
        ),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PatchParams::default()
    };
    match api.patch_status(name, &params, &Patch::Merge(&patch)).await {
        Ok(_) => {}
        // Gone, or not made yet: written at a later tick.
        Err(kube::Error::Api(s)) if s.is_not_found() => return,
        Err(e) => {
            tracing::warn!(kind = %resource.kind, name, namespace = ns, error = %e, "writing status");
            return;
        }
    }
    let mut objs = objects.lock();
    let Some(seen) = objs.services.get_mut(&key) else {
        return;
    };
    match status {
        Changed::Service(status) => {
            let regarding = reference("Service", ns, name, seen.uid.clone());
            for n in service_notices(name, seen.status.as_ref(), &status) {
                events.publish(&regarding, &n);
            }
            seen.status = Some(status);
        }
        Changed::Configuration(status) => seen.configuration = Some(status),
        Changed::Route(status) => seen.route = Some(status),
    }
}

/// Events waiting to be published; past this, new ones are dropped (and logged).
const EVENT_QUEUE: usize = 4096;
/// Events published at once.
const EVENT_WRITERS: usize = 8;

/// Events regarding Sluice's objects, as `kubectl describe` shows them: queued, and
/// published by a task of their own, [`EVENT_WRITERS`] at a time, so that a burst of them
/// (a thousand Services applied at once) never holds up the status writes.
#[derive(Clone)]
struct Events {
    queue: tokio::sync::mpsc::Sender<(k8s_openapi::api::core::v1::ObjectReference, Notice)>,
}

impl Events {
    /// Starts the publishing task; it ends once every handle is dropped.
    fn new(client: Client) -> Self {
        let reporter = kube::runtime::events::Reporter {
            controller: "sluice-control".to_owned(),
            instance: Some(crate::hostname()),
        };
        let (queue, mut rx) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        tokio::spawn(async move {
            futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
                .for_each_concurrent(EVENT_WRITERS, |(regarding, n)| {
                    publish_event(client.clone(), reporter.clone(), regarding, n)
                })
                .await;
        });
        Self { queue }
    }

    /// Queues one event (dropped, with a warning, when the queue is full).
    fn publish(&self, regarding: &k8s_openapi::api::core::v1::ObjectReference, n: &Notice) {
        if self.queue.try_send((regarding.clone(), n.clone())).is_err() {
            tracing::warn!(reason = %n.reason, "event dropped: {EVENT_QUEUE} are waiting already");
        }
    }
}

/// Publishes one event; one the API server refuses is logged, and the status goes on.
async fn publish_event(
    client: Client,
    reporter: kube::runtime::events::Reporter,
    regarding: k8s_openapi::api::core::v1::ObjectReference,
    n: Notice,
) {
    use kube::runtime::events::{Event, EventType, Recorder};
    // A recorder of its own: kube-runtime's folds events of one reason into a series
    // that keeps the first note, and each note here says something new.
    let recorder = Recorder::new(client, reporter);
    let event = Event {
        type_: if n.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: n.reason.clone(),
        note: Some(at_most(&n.note, 1024)),
        action: "Reconcile".to_owned(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&event, &regarding).await {
        tracing::warn!(reason = %n.reason, error = %e, "publishing an event");
    }
}

/// `s` cut to at most `max` bytes, on a character boundary (an event's note is at most
/// 1 kB).
fn at_most(s: &str, max: usize) -> String {
    s[..s.floor_char_boundary(max)].to_owned()
}

/// A reference to one of Knative's objects, for an event.
fn reference(
    kind: &str,
    namespace: &str,
    name: &str,
    uid: Option<String>,
) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("serving.knative.dev/v1".to_owned()),
        kind: Some(kind.to_owned()),
        namespace: Some(namespace.to_owned()),
        name: Some(name.to_owned()),
        uid,
        ..Default::default()
    }
}

/// What a Service's new status tells: a revision created, and a change of `Ready`.
fn service_notices(
    name: &str,
    before: Option<&ServiceStatus>,
    after: &ServiceStatus,
) -> Vec<Notice> {
    let mut out = Vec::new();
    let created = after.latest_created_revision_name.as_ref();
    if created.is_some() && created != before.and_then(|b| b.latest_created_revision_name.as_ref())
    {
        out.extend(created.map(|r| Notice {
            warning: false,
            reason: "Created".to_owned(),
            note: format!("Created Revision {r:?}"),
        }));
    }
    out.extend(ready_notice(
        before.map(|b| b.conditions.as_slice()),
        &after.conditions,
        &format!("Service {name:?} is ready"),
    ));
    out
}

/// A `SuccessfulRescale` event for each revision whose replicas changed since the last
/// tick, with the rule of the decision that set them. A revision's first tick only notes
/// its replicas: its initial scale, or for one adopted after a restart, what it runs at.
fn scale_notices(
    desired: &Desired,
    world: &World,
    objects: &mut Objects,
) -> Vec<(k8s_openapi::api::core::v1::ObjectReference, Notice)> {
    let mut out = Vec::new();
    for s in world.services.values() {
        for r in &s.revisions {
            let key = RevisionKey::new(&s.namespace, &r.name);
            let Some(replicas) = desired.control().replicas(&key) else {
                continue;
            };
            let before = objects.scaled.insert(key.clone(), replicas);
            if before.is_none_or(|b| b == replicas) {
                continue;
            }
            let why = desired
                .control()
                .decision(&key)
                .and_then(|d| d.reason)
                .map(|r| r.message)
                .unwrap_or_default();
            let uid = objects.revision_uids.get(&key).cloned();
            out.push((
                reference("Revision", &key.namespace, &key.name, uid),
                Notice {
                    warning: false,
                    reason: "SuccessfulRescale".to_owned(),
                    note: format!("New size: {replicas}; reason: {why}"),
                },
            ));
        }
    }
    out
}

/// The `Revision` statuses that differ from those last written; revisions gone are
/// forgotten.
fn revision_statuses(
    desired: &Desired,
    world: &World,
    objects: &mut Objects,
    failing: &BTreeMap<RevisionKey, PodFailure>,
) -> Vec<(RevisionKey, RevisionStatus)> {
    let backend = desired.control().backend();
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut out = Vec::new();
    let mut live = std::collections::HashSet::new();
    for s in world.services.values() {
        for r in &s.revisions {
            let key = RevisionKey::new(&s.namespace, &r.name);
            let ready_once = desired.control().is_ready(&key);
            let facts = RevisionFacts {
                ready_once,
                failure: (!ready_once).then(|| backend.last_error(&key)).flatten(),
                ready_pods: u32::try_from(backend.ready(&key).len()).unwrap_or(u32::MAX),
                desired: desired
                    .control()
                    .decision(&key)
                    .and_then(|d| u32::try_from(d.desired_scale).ok()),
                pod_failure: failing.get(&key).cloned(),
            };
            let before = objects.revisions.get(&key);
            let status = revision_status(&facts, before, now);
            if before != Some(&status) {
                out.push((key.clone(), status));
            }
            live.insert(key);
        }
    }
    objects.revisions.retain(|k, _| live.contains(k));
    objects.revision_uids.retain(|k, _| live.contains(k));
    objects.scaled.retain(|k, _| live.contains(k));
    out
}

/// The statuses of the Services, and of their `Configuration`s and `Route`s once those are
/// as they should be, that differ from those last read or written.
fn statuses(
    desired: &Desired,
    world: &World,
    objects: &Objects,
    failing: &BTreeMap<RevisionKey, PodFailure>,
) -> Vec<((String, String), Changed)> {
    let backend = desired.control().backend();
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut out = Vec::new();
    for ((ns, name), seen) in &objects.services {
        let Some(generation) = seen.observed else {
            continue;
        };
        let state = world.services.get(&(ns.clone(), name.clone()));
        let ready = |rev: &str| desired.control().is_ready(&RevisionKey::new(ns, rev));
        let latest_created = state
            .and_then(|s| s.revisions.last())
            .map(|r| r.name.clone());
        let facts = Facts {
            namespace: ns.clone(),
            name: name.clone(),
            generation,
            domain: desired.domain().to_owned(),
            refused: seen.refused.clone(),
            // What its Revision's `Ready` says: a refused write, else its pods' failure.
            latest_failure: latest_created
                .as_ref()
                .filter(|r| !ready(r))
                .map(|r| RevisionKey::new(ns, r))
                .and_then(|key| {
                    backend.last_error(&key).or_else(|| {
                        failing
                            .get(&key)
                            .filter(|_| backend.ready(&key).is_empty())
                            .map(|f| f.condition().2)
                    })
                }),
            latest_ready: state.and_then(|s| latest_ready(desired, s).map(str::to_owned)),
            latest_created,
            traffic: state
                .map(|s| {
                    desired
                        .traffic(s)
                        .into_iter()
                        .map(|t| TrafficFact {
                            ready: ready(&t.revision),
                            revision: t.revision,
                            percent: t.percent,
                            tag: t.tag,
                            latest: t.latest,
                        })
                        .collect()
                })
                .unwrap_or_default(),
            child_problem: objects.children.problem(ns, name),
        };
        let key = (ns.clone(), name.clone());
        let status = service_status(&facts, seen.status.as_ref(), now);
        if seen.status.as_ref() != Some(&status) {
            out.push((key.clone(), Changed::Service(status)));
        }
        if !objects.children.written(ns, name) {
            continue;
        }
        let status = configuration_status(&facts, seen.configuration.as_ref(), now);
        if seen.configuration.as_ref() != Some(&status) {
            out.push((key.clone(), Changed::Configuration(status)));
        }
        let status = route_status(&facts, seen.route.as_ref(), now);
        if seen.route.as_ref() != Some(&status) {
            out.push((key, Changed::Route(status)));
        }
    }
    out
}
