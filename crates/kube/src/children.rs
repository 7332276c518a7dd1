//! A Knative `Service`'s two children, as Knative's service reconciler makes them
//! (`pkg/reconciler/service/resources/{configuration,route}.go` in knative/serving): a
//! `Configuration` holding its template and a `Route` holding its traffic, both of the
//! Service's name, labelled with it and owned by it (so deleting the Service deletes them).
//!
//! [`configuration`] and [`route`] are pure functions of the Service; [`step`] decides,
//! from the cluster's copy as a watch last saw it, what makes that copy match one: a
//! create when missing, a replace when its spec, labels or annotations differ (a hand edit
//! is put back), nothing when equal, and a refusal when another owner has it;
//! [`reconcile`] carries it out. [`Tracker`] keeps, per Service, what its children are
//! made from and how their last write ended.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kube::Api;
use kube::api::PostParams;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use crate::backend::{FIELD_MANAGER, knative_service};
use crate::resources::{Owner, SERVICE_LABEL};

/// The annotation `kubectl apply` keeps its last input in: Knative does not copy it.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Knative's `Configuration` resource (`serving.knative.dev/v1`).
pub fn knative_configuration() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Configuration"),
        "configurations",
    )
}

/// Knative's `Route` resource (`serving.knative.dev/v1`).
pub fn knative_route() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("serving.knative.dev", "v1", "Route"),
        "routes",
    )
}

/// What a Service's children are made from.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Parent {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// The Service's `spec` as stored.
    pub spec: Value,
}

impl Parent {
    fn child(&self, resource: &ApiResource, spec: Value) -> DynamicObject {
        let mut labels = self.labels.clone();
        labels.insert(SERVICE_LABEL.to_owned(), self.name.clone());
        let mut annotations = self.annotations.clone();
        annotations.remove(LAST_APPLIED);
        let mut o = DynamicObject::new(&self.name, resource)
            .within(&self.namespace)
            .data(json!({ "spec": spec }));
        o.metadata.labels = Some(labels);
        o.metadata.annotations = Some(annotations).filter(|a| !a.is_empty());
        o.metadata.owner_references = Some(vec![
            Owner {
                name: self.name.clone(),
                uid: self.uid.clone(),
            }
            .reference(),
        ]);
        o
    }
}

/// The Service's `Configuration`: its template.
pub fn configuration(p: &Parent) -> DynamicObject {
    let template = p.spec.get("template").cloned().unwrap_or_else(|| json!({}));
    p.child(&knative_configuration(), json!({ "template": template }))
}

/// The Service's `Route`: its traffic, where an entry that names no revision follows the
/// Configuration of the Service's name; no traffic is all of it to the latest revision
/// (what Knative's defaulting writes).
pub fn route(p: &Parent) -> DynamicObject {
    let mut traffic = p
        .spec
        .get("traffic")
        .and_then(Value::as_array)
        .filter(|t| !t.is_empty())
        .cloned()
        .unwrap_or_else(|| vec![json!({"latestRevision": true, "percent": 100})]);
    for t in &mut traffic {
        let names_revision = t
            .get("revisionName")
            .and_then(Value::as_str)
            .is_some_and(|r| !r.is_empty());
        if let (false, Some(t)) = (names_revision, t.as_object_mut()) {
            t.insert("configurationName".to_owned(), json!(p.name));
        }
    }
    p.child(&knative_route(), json!({ "traffic": traffic }))
}

/// Why a child could not be made as it should be.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// One of that name exists with another owner: Knative leaves it and says so.
    #[error("There is an existing {kind} {name:?} that we do not own.")]
    NotOwned { kind: String, name: String },
    #[error("writing {kind} {name:?}: {source}")]
    Api {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

impl ChildError {
    /// The reason the Service's condition gives (Knative's `NotOwned`, else
    /// `ReconcileFailed` with the API server's message).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotOwned { .. } => "NotOwned",
            Self::Api { .. } => "ReconcileFailed",
        }
    }

    /// Which child: `Configuration` or `Route`.
    pub fn kind(&self) -> &str {
        match self {
            Self::NotOwned { kind, .. } | Self::Api { kind, .. } => kind,
        }
    }
}

/// What [`reconcile`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Created,
    Replaced,
    Unchanged,
}

/// What to write to make the cluster's copy of a child (`have`, as last seen) match
/// `want`: nothing when equal, a create when missing, a replace at the version seen (its
/// status kept) when its spec, labels or annotations differ; one owned by another is
/// refused.
pub fn step(want: &DynamicObject, have: Option<&DynamicObject>) -> Result<Step, ChildError> {
    let Some(have) = have else {
        return Ok(Step::Create(want.clone()));
    };
    let owner = want
        .metadata
        .owner_references
        .iter()
        .flatten()
        .next()
        .map(|o| o.uid.as_str());
    let owned = have
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && Some(o.uid.as_str()) == owner);
    if !owned {
        return Err(ChildError::NotOwned {
            kind: kind_of(want),
            name: want.metadata.name.clone().unwrap_or_default(),
        });
    }
    if as_made(have, want) {
        return Ok(Step::Unchanged);
    }
    let mut next = want.clone();
    next.metadata.resource_version = have.metadata.resource_version.clone();
    next.metadata.uid = have.metadata.uid.clone();
    if let Some(status) = have.data.get("status") {
        next.data["status"] = status.clone();
    }
    Ok(Step::Replace(next))
}

/// One write [`step`] asks for.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Create(DynamicObject),
    Replace(DynamicObject),
    Unchanged,
}

fn kind_of(o: &DynamicObject) -> String {
    o.types.as_ref().map(|t| t.kind.clone()).unwrap_or_default()
}

/// Makes the cluster's `want.name` match `want`, from `have`, the copy last seen (a
/// watch's cache): see [`step`]. When that copy turns out to be behind the API server's
/// (a 409: one made or changed since), the step is taken again once from a fresh read.
pub async fn reconcile(
    api: &Api<DynamicObject>,
    want: &DynamicObject,
    have: Option<&DynamicObject>,
) -> Result<Outcome, ChildError> {
    let name = want.metadata.name.clone().unwrap_or_default();
    let err = |source| ChildError::Api {
        kind: kind_of(want),
        name: name.clone(),
        source,
    };
    match take(api, &name, step(want, have)?).await {
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => {
            let fresh = api.get_opt(&name).await.map_err(err)?;
            take(api, &name, step(want, fresh.as_ref())?)
                .await
                .map_err(err)
        }
        outcome => outcome.map_err(err),
    }
}

async fn take(api: &Api<DynamicObject>, name: &str, step: Step) -> Result<Outcome, kube::Error> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match step {
        Step::Unchanged => Ok(Outcome::Unchanged),
        Step::Create(o) => api.create(&params, &o).await.map(|_| Outcome::Created),
        Step::Replace(o) => api
            .replace(name, &params, &o)
            .await
            .map(|_| Outcome::Replaced),
    }
}

/// `have` has `want`'s spec, labels and annotations (what a child is made of).
fn as_made(have: &DynamicObject, want: &DynamicObject) -> bool {
    let meta = |o: &DynamicObject| {
        (
            o.metadata.labels.clone().unwrap_or_default(),
            o.metadata.annotations.clone().unwrap_or_default(),
        )
    };
    have.data.get("spec") == want.data.get("spec") && meta(have) == meta(want)
}

/// Writes both of the Service's children, from their copies as last seen
/// (`[configuration, route]`): the Configuration first, then the Route. Says what became
/// of each (one created has no status yet), or `None` when one was to be made and the
/// Service is gone (or is another of its name): its children are being deleted with it,
/// and a copy seen as missing may be just that, so none is made again.
pub async fn write(
    client: &kube::Client,
    p: &Parent,
    have: [Option<&DynamicObject>; 2],
) -> Result<Option<[Outcome; 2]>, ChildError> {
    if have.iter().any(Option::is_none) {
        let services: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), &p.namespace, &knative_service());
        let owner = services
            .get_opt(&p.name)
            .await
            .map_err(|source| ChildError::Api {
                kind: "Service".to_owned(),
                name: p.name.clone(),
                source,
            })?;
        if owner.and_then(|o| o.metadata.uid).as_deref() != Some(p.uid.as_str()) {
            return Ok(None);
        }
    }
    let configurations =
        Api::namespaced_with(client.clone(), &p.namespace, &knative_configuration());
    let c = reconcile(&configurations, &configuration(p), have[0]).await?;
    let routes = Api::namespaced_with(client.clone(), &p.namespace, &knative_route());
    let r = reconcile(&routes, &route(p), have[1]).await?;
    Ok(Some([c, r]))
}

/// The first wait after a failed write; each failure doubles it, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// What each Service's children are made from (its spec last accepted), whether the
/// cluster has them as made from it, and why not after a failed write. A failure backs
/// off that Service alone (doubling from [`FIRST_BACKOFF`] to [`MAX_BACKOFF`]); a change
/// to the Service starts its back-off over.
#[derive(Debug, Default)]
pub struct Tracker {
    entries: HashMap<(String, String), Entry>,
}

#[derive(Debug)]
struct Entry {
    parent: Parent,
    /// The cluster has `parent`'s children as made now.
    written: bool,
    /// The last write's failure, and the wait after it.
    failure: Option<(Problem, Duration)>,
    /// `parent` changed since the last failure: the next one waits [`FIRST_BACKOFF`].
    changed: bool,
}

/// Why a Service's children are not as they should be: which child, the reason for the
/// Service's condition, and the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub kind: String,
    pub reason: String,
    pub message: String,
}

impl Tracker {
    /// The Service's spec as accepted now.
    pub fn set(&mut self, parent: Parent) {
        let key = (parent.namespace.clone(), parent.name.clone());
        match self.entries.get_mut(&key) {
            Some(e) if e.parent == parent => {}
            Some(e) => {
                e.parent = parent;
                e.written = false;
                e.changed = true;
            }
            None => {
                self.entries.insert(
                    key,
                    Entry {
                        parent,
                        written: false,
                        failure: None,
                        changed: false,
                    },
                );
            }
        }
    }

    pub fn remove(&mut self, namespace: &str, name: &str) {
        self.entries
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// What the Service's children are to be made from (`None`: no spec of it accepted
    /// yet).
    pub fn parent(&self, namespace: &str, name: &str) -> Option<Parent> {
        self.entries
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|e| e.parent.clone())
    }

    /// How writing `parent`'s children ended; after a failure, how long to wait before
    /// the next try. An outcome for a Service since changed or gone is not taken for the
    /// Service as it is now (and asks for no wait: the change is tried on its own).
    pub fn done(&mut self, parent: &Parent, result: Result<(), &ChildError>) -> Option<Duration> {
        let key = (parent.namespace.clone(), parent.name.clone());
        let e = self.entries.get_mut(&key).filter(|e| e.parent == *parent)?;
        let changed = std::mem::take(&mut e.changed);
        match result {
            Ok(()) => {
                e.written = true;
                e.failure = None;
                None
            }
            Err(err) => {
                let wait = match &e.failure {
                    Some((_, wait)) if !changed => (*wait * 2).min(MAX_BACKOFF),
                    _ => FIRST_BACKOFF,
                };
                let problem = Problem {
                    kind: err.kind().to_owned(),
                    reason: err.reason().to_owned(),
                    message: err.to_string(),
                };
                e.written = false;
                e.failure = Some((problem, wait));
                Some(wait)
            }
        }
    }

    /// Whether the Service's children are as they should be (so their status can be
    /// written).
    pub fn written(&self, namespace: &str, name: &str) -> bool {
        self.entries
            .get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|e| e.written)
    }

    /// Why the Service's children are not as they should be, after a failed write.
    pub fn problem(&self, namespace: &str, name: &str) -> Option<Problem> {
        let e = self.entries.get(&(namespace.to_owned(), name.to_owned()))?;
        e.failure.as_ref().map(|(p, _)| p.clone())
    }
}

#[cfg(test)]
mod tests;
