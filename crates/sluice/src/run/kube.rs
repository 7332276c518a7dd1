//! `sluice control --kubernetes`: the desired state comes from the API server's
//! `serving.knative.dev/v1` `Service` objects, planned by the same rules as `sluice run`,
//! and each Service's status is written back as Knative writes it; `config-autoscaler` is
//! read from `knative-serving`, as Knative reads it.

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
use sluice_control::gc::{self, CONFIG_GC, Candidate, GcConfig};
use sluice_core::RevisionKey;
use sluice_kube::backend::{FIELD_MANAGER, knative_service};
use sluice_kube::children::{self, Parent, Tracker};
use sluice_kube::lease::LeaseConfig;
use sluice_kube::pods::{PodFailure, first_failures, rollout_failures};
use sluice_kube::status::{
    ConfigurationStatus, Facts, Notice, RevisionFacts, RevisionStatus, RouteStatus, ServiceStatus,
    TrafficFact, configuration_status, ready_notice, revision_status, route_status, service_status,
};

use super::desired::Desired;
use super::manifest::{CONFIG_AUTOSCALER, KNATIVE_NAMESPACE, Manifests};
use super::problem::lines;

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
/// `Controller`, [`services`]): plans each, takes deleted ones out, keeps their
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
    use sluice_kube::resources::REVISION_LABEL;
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
    use sluice_kube::resources::{
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
            Ok(template) => kept.push(super::world::Kept {
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
        desired.control.was_ready(RevisionKey::new(&ns, ready));
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
        let world = desired.world.lock().clone();
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
                &sluice_kube::resources::knative_revision(),
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
    let api: Api<DynamicObject> =
        Api::all_with(client, &sluice_kube::resources::knative_revision());
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
    world: &super::world::World,
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
fn latest_ready<'a>(desired: &Desired, s: &'a super::world::ServiceState) -> Option<&'a str> {
    s.revisions
        .iter()
        .rev()
        .find(|r| {
            desired
                .control
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
            instance: Some(hostname()),
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
    world: &super::world::World,
    objects: &mut Objects,
) -> Vec<(k8s_openapi::api::core::v1::ObjectReference, Notice)> {
    let mut out = Vec::new();
    for s in world.services.values() {
        for r in &s.revisions {
            let key = RevisionKey::new(&s.namespace, &r.name);
            let Some(replicas) = desired.control.replicas(&key) else {
                continue;
            };
            let before = objects.scaled.insert(key.clone(), replicas);
            if before.is_none_or(|b| b == replicas) {
                continue;
            }
            let why = desired
                .control
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
    world: &super::world::World,
    objects: &mut Objects,
    failing: &BTreeMap<RevisionKey, PodFailure>,
) -> Vec<(RevisionKey, RevisionStatus)> {
    let backend = desired.control.backend();
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut out = Vec::new();
    let mut live = std::collections::HashSet::new();
    for s in world.services.values() {
        for r in &s.revisions {
            let key = RevisionKey::new(&s.namespace, &r.name);
            let ready_once = desired.control.is_ready(&key);
            let facts = RevisionFacts {
                ready_once,
                failure: (!ready_once).then(|| backend.last_error(&key)).flatten(),
                ready_pods: u32::try_from(backend.ready(&key).len()).unwrap_or(u32::MAX),
                desired: desired
                    .control
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
    world: &super::world::World,
    objects: &Objects,
    failing: &BTreeMap<RevisionKey, PodFailure>,
) -> Vec<((String, String), Changed)> {
    let backend = desired.control.backend();
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut out = Vec::new();
    for ((ns, name), seen) in &objects.services {
        let Some(generation) = seen.observed else {
            continue;
        };
        let state = world.services.get(&(ns.clone(), name.clone()));
        let ready = |rev: &str| desired.control.is_ready(&RevisionKey::new(ns, rev));
        let latest_created = state
            .and_then(|s| s.revisions.last())
            .map(|r| r.name.clone());
        let facts = Facts {
            namespace: ns.clone(),
            name: name.clone(),
            generation,
            domain: desired.domain.clone(),
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

/// Leader election's flags, for the control plane and the autoscaler.
#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    /// The API server's URL, instead of the kubeconfig's (or the pod's service account).
    #[arg(long, env = "SLUICE_KUBE_API")]
    pub kube_api: Option<String>,
    /// The namespace Sluice runs in (its Leases are there).
    #[arg(long, env = "SYSTEM_NAMESPACE", default_value = "sluice-system")]
    pub system_namespace: String,
    /// Elect one leader among the replicas with a Lease: the others wait, serving
    /// nothing, and take over within its duration.
    #[arg(long)]
    pub leader_elect: bool,
    /// This replica's name in the Lease (its pod's name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Seconds a leader that stopped renewing keeps the Lease.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// With `--leader-elect`: serve `GET /readyz` (200 `standby` or `leader`) and
    /// `/healthz` here from the start, so that every replica is Ready: a rolling update
    /// proceeds and a disruption budget allows a drain.
    #[arg(long)]
    pub health_listen: Option<std::net::SocketAddr>,
    /// With `--leader-elect`: the selector-less Service (in `--system-namespace`) that
    /// reaches the leader alone; the leader writes its EndpointSlice with `--pod-ip` once
    /// it serves.
    #[arg(long)]
    pub leader_service: Option<String>,
    /// This replica's pod IP (the downward API's `status.podIP`).
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
}

/// A replica's part in leader election: the Lease, and what it does besides leading.
#[derive(Clone, Debug)]
pub struct Election {
    pub lease: LeaseConfig,
    /// Where every replica answers readiness ([`LeaseArgs::health_listen`]).
    pub health: Option<std::net::SocketAddr>,
    /// The Service the leader's address goes to, and this pod's IP.
    pub service: Option<(String, std::net::IpAddr)>,
}

impl Election {
    /// Serves `/readyz` and `/healthz` on [`Election::health`] (if set) until the
    /// process ends; the sender moves the answer from `standby` to `leader`.
    pub async fn serve_health(
        &self,
    ) -> Result<
        (
            tokio::sync::watch::Sender<&'static str>,
            Option<tokio::task::JoinHandle<()>>,
        ),
        String,
    > {
        let (role, role_rx) = tokio::sync::watch::channel("standby");
        let Some(addr) = self.health else {
            return Ok((role, None));
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--health-listen {addr}: {e}"))?;
        let page = move |_| {
            let role = role_rx.clone();
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let role = *role.borrow();
                async move {
                    let rsp: http::Response<http_body_util::Full<bytes::Bytes>> = match req
                        .uri()
                        .path()
                    {
                        "/readyz" => sluice_core::respond::text(http::StatusCode::OK, role),
                        "/healthz" => sluice_core::respond::text(http::StatusCode::OK, "sluice"),
                        _ => sluice_core::respond::text(
                            http::StatusCode::NOT_FOUND,
                            "not found: this port serves /readyz and /healthz",
                        ),
                    };
                    Ok::<_, std::convert::Infallible>(rsp)
                }
            })
        };
        let task = tokio::spawn(sluice_core::serve::serve(
            "health",
            listener,
            page,
            std::future::pending(),
            sluice_core::serve::Serving::new(Duration::from_secs(1)),
        ));
        Ok((role, Some(task)))
    }

    /// Once `probe` accepts connections (this leader serves), writes the leader's
    /// EndpointSlice for [`Election::service`] with `ports` (the Service's port names,
    /// the ports served, their `appProtocol`), retrying every 2 s until it is written.
    pub fn publish_when_serving(
        &self,
        client: Client,
        ports: Vec<(String, u16, Option<String>)>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (service, ip) = self.service.clone()?;
        let leader = sluice_kube::leader::LeaderEndpoint {
            namespace: self.lease.namespace.clone(),
            service,
            ip,
            pod: self.lease.identity.clone(),
            ports,
        };
        let probe = std::net::SocketAddr::new(ip, leader.ports.first().map_or(0, |p| p.1));
        Some(tokio::spawn(async move {
            while tokio::net::TcpStream::connect(probe).await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            loop {
                match sluice_kube::leader::publish(&client, &leader).await {
                    Ok(()) => {
                        tracing::info!(service = %leader.service, ip = %leader.ip, "leading: the service reaches this replica");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(service = %leader.service, error = %e, "writing the leader's endpoint slice");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }))
    }
}

impl LeaseArgs {
    /// The API server and the Lease (`None`: no election), or what is wrong in `bad`.
    pub fn check(
        &self,
        lease_name: &str,
        bad: &mut Vec<String>,
    ) -> (Option<http::Uri>, Option<Election>) {
        let api = self
            .kube_api
            .as_deref()
            .and_then(|s| match s.parse::<http::Uri>() {
                Ok(u) if u.scheme().is_some() && u.authority().is_some() => Some(u),
                _ => {
                    bad.push(format!(
                        "--kube-api {s:?}: give a URL such as https://10.0.0.1:6443"
                    ));
                    None
                }
            });
        if self.lease_duration < 3 {
            bad.push(format!(
                "--lease-duration {}: at least 3 seconds",
                self.lease_duration
            ));
        }
        if !self.leader_elect && (self.health_listen.is_some() || self.leader_service.is_some()) {
            bad.push("--health-listen and --leader-service need --leader-elect".to_owned());
        }
        let service = match (&self.leader_service, self.pod_ip) {
            (Some(name), Some(ip)) => Some((name.clone(), ip)),
            (Some(_), None) => {
                bad.push(
                    "--leader-service needs --pod-ip (POD_IP, from the downward API's status.podIP)"
                        .to_owned(),
                );
                None
            }
            (None, _) => None,
        };
        let lease = self.leader_elect.then(|| {
            let identity = self
                .pod_name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
            let duration = Duration::from_secs(self.lease_duration);
            Election {
                lease: LeaseConfig {
                    duration,
                    // client-go's proportions: 10 s and 2 s of 15 s.
                    renew_deadline: duration * 2 / 3,
                    retry_period: duration * 2 / 15,
                    ..LeaseConfig::new(&self.system_namespace, lease_name, &identity)
                },
                health: self.health_listen,
                service,
            }
        });
        (api, lease)
    }
}

/// This machine's name (a pod's name, on Kubernetes).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sluice".to_owned())
}

/// The control plane's name on the API server: its Lease's and its requests'
/// `User-Agent`'s.
pub const CONTROL_AGENT: &str = "sluice-control";
/// The autoscaler's, likewise.
pub const AUTOSCALER_AGENT: &str = "sluice-autoscaler";

/// A client of `api`, or of the kubeconfig's API server (the pod's service account on a
/// cluster), whose requests say which component sends them: `User-Agent:
/// sluice-control/0.1.0` for `component` `sluice-control`, as client-go's components name
/// themselves (the API server's audit log shows it; the test double knows a component's
/// service account, and so its RBAC, by it).
pub async fn client(api: Option<&http::Uri>, component: &str) -> Result<Client, String> {
    let mut config = match api {
        Some(uri) => {
            let mut config = kube::Config::new(uri.clone());
            if uri.scheme_str() == Some("http") {
                // No trust anchors: plain HTTP (a `kubectl proxy`, a test double) needs
                // none, and without this kube looks for the system's, which a scratch
                // image does not have.
                config.root_cert = Some(Vec::new());
            }
            config
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes API server: {e}"))?,
    };
    let agent = format!("{component}/{}", env!("CARGO_PKG_VERSION"));
    let agent = http::HeaderValue::try_from(agent).map_err(|e| format!("{component}: {e}"))?;
    config.headers.push((http::header::USER_AGENT, agent));
    let url = config.cluster_url.clone();
    Client::try_from(config).map_err(|e| format!("API server {url}: {e}"))
}

/// This replica's leadership, from [`lead`]: kept (renewed) until it is released or the
/// process ends; losing it ends the process.
pub struct Leadership {
    client: Client,
    lease: LeaseConfig,
    /// Renews the Lease.
    campaign: tokio::task::JoinHandle<()>,
    /// Ends the process once the Lease is lost.
    keeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// How long a stopping replica tries to hand its Lease back.
const RELEASE_LIMIT: Duration = Duration::from_secs(2);

impl Leadership {
    /// Stops renewing and hands the Lease back, as a replica that stops for a rolling
    /// update or a drain does once it no longer acts: a standby takes over at its next
    /// try (a retry period) instead of a whole lease duration later. Best effort, for at
    /// most [`RELEASE_LIMIT`]: if the API server does not answer, the Lease expires as
    /// after a crash.
    pub async fn release(self) {
        self.keeper.abort();
        self.campaign.abort();
        let _ = self.campaign.await;
        let api: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client, &self.lease.namespace);
        let name = &self.lease.name;
        match tokio::time::timeout(
            RELEASE_LIMIT,
            sluice_kube::lease::release(&api, &self.lease),
        )
        .await
        {
            Ok(Ok(true)) => tracing::info!(lease = %name, "lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(lease = %name, error = %e, "releasing the lease"),
            Err(_) => {
                tracing::warn!(lease = %name, "releasing the lease: no answer in {RELEASE_LIMIT:?}")
            }
        }
    }
}

/// Waits until this replica holds the Lease; the leadership returned keeps it, and ends
/// the process the moment it is lost: a replica that no longer leads must not act, and
/// Kubernetes starts it again as a standby.
pub async fn lead(client: Client, lease: LeaseConfig) -> Leadership {
    let (tx, mut leading) = tokio::sync::watch::channel(false);
    tracing::info!(lease = %lease.name, identity = %lease.identity, "waiting to lead");
    let campaign = tokio::spawn(sluice_kube::lease::run(client.clone(), lease.clone(), tx));
    let _ = leading.wait_for(|l| *l).await;
    let keeper = tokio::spawn(async move {
        let _ = leading.wait_for(|l| !*l).await;
        tracing::error!("lost the lease: stopping, so that only the leader acts");
        std::process::exit(1);
    });
    Leadership {
        client,
        lease,
        campaign,
        keeper,
    }
}

/// Hands a [`lead_blocking`] Lease back when dropped or [`LeaseGuard::release`]d.
#[derive(Debug)]
pub struct LeaseGuard {
    release: Option<std::sync::mpsc::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl LeaseGuard {
    /// Stops renewing and hands the Lease back ([`Leadership::release`]); returns once it
    /// is done or [`RELEASE_LIMIT`] has passed.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if let (Some(tx), Some(done)) = (self.release.take(), self.done.take()) {
            let _ = tx.send(());
            let _ = done.recv_timeout(RELEASE_LIMIT + Duration::from_millis(500));
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.release_now();
    }
}

/// For a component with its own runtime (the autoscaler): blocks until this replica holds
/// the Lease, then keeps it from a thread of its own, ending the process if it is lost,
/// until the guard is released. From that thread too: readiness on
/// [`Election::health`] from the start, and the leader's EndpointSlice with `ports` (see
/// [`Election::publish_when_serving`]) once the first of them is served.
pub fn lead_blocking(
    api: Option<http::Uri>,
    component: &'static str,
    election: Election,
    ports: Vec<(String, u16, Option<String>)>,
) -> Result<LeaseGuard, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("lease".to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("lease runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let client = match client(api.as_ref(), component).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let (role, _health) = match election.serve_health().await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let leadership = lead(client.clone(), election.lease.clone()).await;
                let _ = role.send("leader");
                let _publish = election.publish_when_serving(client, ports);
                let _ = ready_tx.send(Ok(()));
                // Until the guard asks (or is gone): the renewals run meanwhile.
                let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
                leadership.release().await;
                let _ = done_tx.send(());
            });
        })
        .map_err(|e| format!("lease thread: {e}"))?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err("the lease thread ended".to_owned()))?;
    Ok(LeaseGuard {
        release: Some(release_tx),
        done: Some(done_rx),
    })
}
