//! The reconciler: a plain struct fed the desired state, the autoscaler's decisions and
//! the backend's ready pods, which returns what to do: routes and endpoints to publish,
//! workloads to create, delete or scale. It does no I/O, so it is tested like the KPA.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use sluice_core::RevisionKey;
use sluice_core::feed::Route;
use sluice_proto::v1;

use crate::spec::{RevisionSpec, ServiceSpec};

/// What the control plane does next, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Publish on the routes feed (the gateways).
    Route(Route),
    /// Publish on the endpoints feed (the activators).
    Endpoints(v1::RevisionEndpoints),
    Create(RevisionSpec),
    Delete(RevisionKey),
    Scale(RevisionKey, u32),
}

/// The desired state and what is known of each revision.
#[derive(Debug, Default)]
pub struct Reconciler {
    revisions: BTreeMap<RevisionKey, Rev>,
    services: BTreeMap<(String, String), ServiceSpec>,
}

#[derive(Debug)]
struct Rev {
    spec: RevisionSpec,
    /// The latest decision; `None` before the first.
    decision: Option<v1::Decision>,
    ready: Vec<SocketAddr>,
    /// The replicas last set on its workload: its initial scale, then each decision's.
    replicas: u32,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("revision {0} exists with another spec; revisions are immutable")]
    Immutable(RevisionKey),
    #[error("service {namespace}/{name}: traffic names revision {revision}, which does not exist")]
    UnknownRevision {
        namespace: String,
        name: String,
        revision: String,
    },
}

// === impl Reconciler ===

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// A new revision: its workload is created, and the activators learn it before any
    /// route can name it. The same spec again changes nothing.
    pub fn add_revision(&mut self, spec: RevisionSpec) -> Result<Vec<Action>, Refused> {
        let key = spec.key();
        if let Some(rev) = self.revisions.get(&key) {
            return if rev.spec == spec {
                Ok(Vec::new())
            } else {
                Err(Refused::Immutable(key))
            };
        }
        self.revisions.insert(
            key.clone(),
            Rev {
                replicas: spec.initial_scale,
                spec: spec.clone(),
                decision: None,
                ready: Vec::new(),
            },
        );
        let mut out = vec![Action::Create(spec)];
        self.publish(&key, &mut out);
        Ok(out)
    }

    /// The revision is gone: its routes and endpoints first, then its workload.
    pub fn remove_revision(&mut self, key: &RevisionKey) -> Vec<Action> {
        if self.revisions.remove(key).is_none() {
            return Vec::new();
        }
        vec![
            Action::Route(Route::Revision(v1::RevisionRoute {
                namespace: key.namespace.clone(),
                revision: key.name.clone(),
                removed: true,
                ..v1::RevisionRoute::default()
            })),
            Action::Endpoints(v1::RevisionEndpoints {
                namespace: key.namespace.clone(),
                revision: key.name.clone(),
                removed: true,
                ..v1::RevisionEndpoints::default()
            }),
            Action::Delete(key.clone()),
        ]
    }

    /// A service's traffic split; every revision it names must exist.
    pub fn set_service(&mut self, spec: ServiceSpec) -> Result<Vec<Action>, Refused> {
        for t in &spec.traffic {
            if !self
                .revisions
                .contains_key(&RevisionKey::new(&spec.namespace, &t.revision))
            {
                return Err(Refused::UnknownRevision {
                    namespace: spec.namespace.clone(),
                    name: spec.name.clone(),
                    revision: t.revision.clone(),
                });
            }
        }
        let route = Route::Service(v1::ServiceRoute {
            namespace: spec.namespace.clone(),
            name: spec.name.clone(),
            removed: false,
            traffic: spec.traffic.clone(),
        });
        let (namespace, name) = (spec.namespace.clone(), spec.name.clone());
        self.services
            .insert((namespace.clone(), name.clone()), spec);
        let mut out = vec![Action::Route(route)];
        // Its revisions' reachability may have changed (the feed drops what did not).
        self.publish_service_revisions(&namespace, &name, &mut out);
        Ok(out)
    }

    pub fn remove_service(&mut self, namespace: &str, name: &str) -> Vec<Action> {
        if self
            .services
            .remove(&(namespace.to_owned(), name.to_owned()))
            .is_none()
        {
            return Vec::new();
        }
        let mut out = vec![Action::Route(Route::Service(v1::ServiceRoute {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            removed: true,
            traffic: Vec::new(),
        }))];
        self.publish_service_revisions(namespace, name, &mut out);
        out
    }

    /// Whether no traffic target of the revision's service names it; `false` while the
    /// service's traffic is unknown (Knative counts unknown reachability as reachable).
    fn unreachable(&self, key: &RevisionKey, spec: &RevisionSpec) -> bool {
        self.services
            .get(&(key.namespace.clone(), spec.pod.service.clone()))
            .is_some_and(|s| !s.traffic.iter().any(|t| t.revision == key.name))
    }

    fn publish_service_revisions(&self, namespace: &str, service: &str, out: &mut Vec<Action>) {
        let keys: Vec<RevisionKey> = self
            .revisions
            .iter()
            .filter(|(k, r)| k.namespace == namespace && r.spec.pod.service == service)
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            self.publish(&key, out);
        }
    }

    /// The autoscaler's latest decision: its mode moves the gateways' traffic, and the
    /// replicas it has set are applied. A decision for a revision not (or no longer)
    /// desired changes nothing.
    pub fn decision(&mut self, d: &v1::Decision) -> Vec<Action> {
        let key = RevisionKey::new(&d.namespace, &d.revision);
        if d.removed {
            return Vec::new();
        }
        let Some(rev) = self.revisions.get_mut(&key) else {
            return Vec::new();
        };
        rev.decision = Some(d.clone());
        let mut out = Vec::new();
        // Applied every time it comes: the autoscaler sends it again only while the
        // backend's replicas differ from it.
        if let Ok(replicas) = u32::try_from(d.replicas) {
            rev.replicas = replicas;
            out.push(Action::Scale(key.clone(), replicas));
        }
        self.publish(&key, &mut out);
        out
    }

    /// The backend's ready pods for a revision now.
    pub fn ready(&mut self, key: &RevisionKey, mut ready: Vec<SocketAddr>) -> Vec<Action> {
        let Some(rev) = self.revisions.get_mut(key) else {
            return Vec::new();
        };
        ready.sort_unstable();
        rev.ready = ready;
        let mut out = Vec::new();
        self.publish(key, &mut out);
        out
    }

    /// A workload found running in the backend when this control plane started (one
    /// that a previous control plane created): its replicas stand until the autoscaler's
    /// first decision, so that its pods are counted as they are. Returns `None` for a
    /// workload of no desired revision, which the caller deletes.
    pub fn adopted(
        &mut self,
        key: &RevisionKey,
        replicas: u32,
        ready: Vec<SocketAddr>,
    ) -> Option<Vec<Action>> {
        let rev = self.revisions.get_mut(key)?;
        if rev.decision.is_none() {
            rev.replicas = replicas;
        }
        Some(self.ready(key, ready))
    }

    /// The revision's latest decision.
    pub fn decision_of(&self, key: &RevisionKey) -> Option<&v1::Decision> {
        self.revisions.get(key)?.decision.as_ref()
    }

    /// The revision's route and endpoints as they are now (the feeds drop repeats).
    fn publish(&self, key: &RevisionKey, out: &mut Vec<Action>) {
        let Some(rev) = self.revisions.get(key) else {
            return;
        };
        let pod = &rev.spec.pod;
        let addresses: Vec<String> = rev.ready.iter().map(ToString::to_string).collect();
        let mode = match rev.decision.as_ref().map(v1::Decision::mode) {
            Some(m) if m.is_serve() => v1::Mode::Serve,
            _ => v1::Mode::Proxy,
        };
        out.push(Action::Endpoints(v1::RevisionEndpoints {
            namespace: key.namespace.clone(),
            revision: key.name.clone(),
            removed: false,
            container_concurrency: pod.container_concurrency,
            timeout_seconds: pod.timeout_seconds,
            addresses: addresses.clone(),
            annotations: rev.spec.annotations.clone().into_iter().collect(),
            replicas: rev.replicas,
            unreachable: self.unreachable(key, &rev.spec),
        }));
        out.push(Action::Route(Route::Revision(v1::RevisionRoute {
            namespace: key.namespace.clone(),
            revision: key.name.clone(),
            removed: false,
            mode: mode.into(),
            addresses,
            report: rev.spec.report,
            timeout_seconds: pod.timeout_seconds,
        })));
    }
}

#[cfg(test)]
mod tests;
