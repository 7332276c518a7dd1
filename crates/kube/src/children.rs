//! A Knative `Service`'s two children, as Knative's service reconciler makes them
//! (`pkg/reconciler/service/resources/{configuration,route}.go` in knative/serving): a
//! `Configuration` holding its template and a `Route` holding its traffic, both of the
//! Service's name, labelled with it and owned by it (so deleting the Service deletes them).
//!
//! [`configuration`] and [`route`] are pure functions of the Service; [`reconcile`] makes
//! the cluster's copy match one: created when missing, replaced when its spec, labels or
//! annotations differ (a hand edit is put back), left alone when equal, and never touched
//! when another owner has it.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use kube::Api;
use kube::api::PostParams;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::{Value, json};

use crate::backend::FIELD_MANAGER;
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

/// Makes the cluster's `want.name` match `want`: created when missing; replaced (at the
/// version read) when its spec, labels or annotations differ; its status is kept.
pub async fn reconcile(
    api: &Api<DynamicObject>,
    want: &DynamicObject,
) -> Result<Outcome, ChildError> {
    let kind = want
        .types
        .as_ref()
        .map(|t| t.kind.clone())
        .unwrap_or_default();
    let name = want.metadata.name.clone().unwrap_or_default();
    let err = |source| ChildError::Api {
        kind: kind.clone(),
        name: name.clone(),
        source,
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let Some(have) = api.get_opt(&name).await.map_err(err)? else {
        api.create(&params, want).await.map_err(err)?;
        return Ok(Outcome::Created);
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
        return Err(ChildError::NotOwned { kind, name });
    }
    if as_made(&have, want) {
        return Ok(Outcome::Unchanged);
    }
    let mut next = want.clone();
    next.metadata.resource_version = have.metadata.resource_version.clone();
    next.metadata.uid = have.metadata.uid.clone();
    if let Some(status) = have.data.get("status") {
        next.data["status"] = status.clone();
    }
    api.replace(&name, &params, &next).await.map_err(err)?;
    Ok(Outcome::Replaced)
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

/// Writes both of the Service's children: the Configuration first, then the Route. Says
/// what became of each (one created has no status yet).
pub async fn write(client: &kube::Client, p: &Parent) -> Result<[Outcome; 2], ChildError> {
    let configurations =
        Api::namespaced_with(client.clone(), &p.namespace, &knative_configuration());
    let c = reconcile(&configurations, &configuration(p)).await?;
    let routes = Api::namespaced_with(client.clone(), &p.namespace, &knative_route());
    let r = reconcile(&routes, &route(p)).await?;
    Ok([c, r])
}

/// The first wait after a failed write; each failure doubles it, up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Which Services' children the cluster has as they should be, per Service: a changed
/// Service, a child deleted or edited by hand, or a failed write makes them due again; a
/// failure backs off that Service alone (doubling from [`FIRST_BACKOFF`] to
/// [`MAX_BACKOFF`]), and the others go on; a change to the Service is tried at once.
#[derive(Debug, Default)]
pub struct Tracker {
    entries: HashMap<(String, String), Entry>,
}

#[derive(Debug)]
struct Entry {
    parent: Parent,
    /// The cluster has `parent`'s children as made now.
    written: bool,
    /// `parent` changed since the last write failed: worth trying at once.
    changed: bool,
    /// The last write's failure, with when to try again and how long the next wait is.
    failure: Option<Failure>,
}

#[derive(Debug)]
struct Failure {
    problem: Problem,
    retry_at: Instant,
    wait: Duration,
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
    /// The Service as it is now; its children are due if it changed.
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
                        changed: false,
                        failure: None,
                    },
                );
            }
        }
    }

    pub fn remove(&mut self, namespace: &str, name: &str) {
        self.entries
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// A child as the cluster has it now (from a watch): due again when it is not as it
    /// should be. `None` for `seen` is a child deleted.
    pub fn observed(
        &mut self,
        namespace: &str,
        name: &str,
        kind: &str,
        seen: Option<&DynamicObject>,
    ) {
        let Some(e) = self
            .entries
            .get_mut(&(namespace.to_owned(), name.to_owned()))
        else {
            return;
        };
        let want = match kind {
            "Configuration" => configuration(&e.parent),
            "Route" => route(&e.parent),
            _ => return,
        };
        if !seen.is_some_and(|have| as_made(have, &want)) {
            e.written = false;
        }
    }

    /// The Services whose children are to be written now.
    pub fn due(&self, now: Instant) -> Vec<Parent> {
        self.entries
            .values()
            .filter(|e| {
                !e.written && (e.changed || e.failure.as_ref().is_none_or(|f| f.retry_at <= now))
            })
            .map(|e| e.parent.clone())
            .collect()
    }

    /// How writing `parent`'s children ended. One for a Service since changed or gone is
    /// not taken for the Service as it is now.
    pub fn done(&mut self, parent: &Parent, result: Result<(), ChildError>, now: Instant) {
        let key = (parent.namespace.clone(), parent.name.clone());
        let Some(e) = self.entries.get_mut(&key).filter(|e| e.parent == *parent) else {
            return;
        };
        e.changed = false;
        match result {
            Ok(()) => {
                e.written = true;
                e.failure = None;
            }
            Err(err) => {
                let wait = e
                    .failure
                    .as_ref()
                    .map_or(FIRST_BACKOFF, |f| (f.wait * 2).min(MAX_BACKOFF));
                e.failure = Some(Failure {
                    problem: Problem {
                        kind: err.kind().to_owned(),
                        reason: err.reason().to_owned(),
                        message: err.to_string(),
                    },
                    retry_at: now + wait,
                    wait,
                });
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
        e.failure.as_ref().map(|f| f.problem.clone())
    }
}

#[cfg(test)]
mod tests;
