//! The reconciler: a plain struct fed the desired state, the autoscaler's decisions and
//! the backend's ready pods, which returns what to do: routes and endpoints to publish,
//! workloads to create, delete or scale. It does no I/O, so it is tested like the KPA.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use sluice_core::RevisionKey;
use sluice_core::feed::Route;
use sluice_proto::v1;

use crate::spec::{RevisionSpec, ServiceSpec, TargetSpec};

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
    services: BTreeMap<(String, String), Svc>,
    /// Revisions known to have been ready before this control plane learnt them (from a
    /// status an earlier one wrote): ready from the moment they are added.
    were_ready: BTreeSet<RevisionKey>,
}

#[derive(Debug)]
struct Svc {
    spec: ServiceSpec,
    /// The traffic as served: every target a revision, the latest ready one resolved.
    traffic: Vec<v1::TrafficTarget>,
}

#[derive(Debug)]
struct Rev {
    spec: RevisionSpec,
    /// The latest decision; `None` before the first.
    decision: Option<v1::Decision>,
    ready: Vec<SocketAddr>,
    /// The replicas last set on its workload: its initial scale, then each decision's.
    replicas: u32,
    /// Knative's revision `Ready`: it has had a ready pod (or was made to start at zero
    /// pods, which it can do at once), and stays so at zero pods. Only a ready revision
    /// takes the traffic of the latest revision.
    ready_once: bool,
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
                ready_once: spec.initial_scale == 0 || self.were_ready.remove(&key),
                spec: spec.clone(),
                decision: None,
                ready: Vec::new(),
            },
        );
        let mut out = vec![Action::Create(spec)];
        self.publish(&key, &mut out);
        Ok(out)
    }

    /// The revision was ready under an earlier control plane (a status says so): once
    /// added, it is ready at once, so that a restart never moves traffic off it to a
    /// newer revision that has not proven itself.
    pub fn was_ready(&mut self, key: RevisionKey) -> Vec<Action> {
        match self.revisions.get_mut(&key) {
            Some(rev) if !rev.ready_once => {
                rev.ready_once = true;
                let service = rev.spec.pod.service.clone();
                let mut out = Vec::new();
                self.reroute(&key.namespace, &service, &mut out);
                out
            }
            Some(_) => Vec::new(),
            None => {
                self.were_ready.insert(key);
                Vec::new()
            }
        }
    }

    /// The revision is gone: its routes and endpoints first, then its workload.
    pub fn remove_revision(&mut self, key: &RevisionKey) -> Vec<Action> {
        let Some(gone) = self.revisions.remove(key) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        self.reroute(&key.namespace, &gone.spec.pod.service, &mut out);
        out.extend([
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
        ]);
        out
    }

    /// A service's traffic split; every revision it names must exist.
    pub fn set_service(&mut self, spec: ServiceSpec) -> Result<Vec<Action>, Refused> {
        for t in &spec.traffic {
            if let Some(revision) = &t.revision
                && !self
                    .revisions
                    .contains_key(&RevisionKey::new(&spec.namespace, revision))
            {
                return Err(Refused::UnknownRevision {
                    namespace: spec.namespace.clone(),
                    name: spec.name.clone(),
                    revision: revision.clone(),
                });
            }
        }
        let (namespace, name) = (spec.namespace.clone(), spec.name.clone());
        self.services.insert(
            (namespace.clone(), name.clone()),
            Svc {
                spec,
                traffic: Vec::new(),
            },
        );
        let mut out = Vec::new();
        self.reroute(&namespace, &name, &mut out);
        Ok(out)
    }

    /// Resolves the service's traffic again; when it changed, publishes its route and
    /// its revisions' reachability.
    fn reroute(&mut self, namespace: &str, name: &str, out: &mut Vec<Action>) {
        let Some(svc) = self.services.get(&(namespace.to_owned(), name.to_owned())) else {
            return;
        };
        let traffic = self.resolve(&svc.spec);
        let first = svc.traffic.is_empty();
        let svc = self
            .services
            .get_mut(&(namespace.to_owned(), name.to_owned()))
            .expect("looked up above");
        if !first && svc.traffic == traffic {
            return;
        }
        svc.traffic.clone_from(&traffic);
        out.push(Action::Route(Route::Service(v1::ServiceRoute {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            removed: false,
            traffic,
        })));
        // Its revisions' reachability may have changed (the feed drops what did not).
        self.publish_service_revisions(namespace, name, out);
    }

    /// The traffic as served: a target of the latest revision goes to the latest ready
    /// one ([`Reconciler::latest_ready`]).
    fn resolve(&self, spec: &ServiceSpec) -> Vec<v1::TrafficTarget> {
        let latest = self.latest_ready(spec);
        spec.traffic
            .iter()
            .filter_map(
                |TargetSpec {
                     revision,
                     percent,
                     tag,
                 }| {
                    Some(v1::TrafficTarget {
                        revision: revision.clone().or_else(|| latest.clone())?,
                        percent: *percent,
                        tag: tag.clone(),
                    })
                },
            )
            .collect()
    }

    /// The newest of the service's revisions that is ready, as Knative's Configuration
    /// keeps `latestReadyRevisionName`; while none is, the newest made (a first revision
    /// takes its traffic at once, held in the activator until its first pod is ready).
    fn latest_ready(&self, spec: &ServiceSpec) -> Option<String> {
        let known = || {
            spec.revisions.iter().rev().filter_map(|name| {
                let rev = self
                    .revisions
                    .get(&RevisionKey::new(&spec.namespace, name.as_str()))?;
                Some((name, rev))
            })
        };
        known()
            .find(|(_, rev)| rev.ready_once)
            .or_else(|| known().next())
            .map(|(name, _)| name.clone())
    }

    /// The service's traffic as served now.
    pub fn traffic(&self, namespace: &str, name: &str) -> Option<&[v1::TrafficTarget]> {
        self.services
            .get(&(namespace.to_owned(), name.to_owned()))
            .map(|s| s.traffic.as_slice())
    }

    /// Whether the revision is ready in Knative's sense (it has had a ready pod).
    pub fn is_ready(&self, key: &RevisionKey) -> bool {
        self.revisions.get(key).is_some_and(|r| r.ready_once)
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

    /// Whether no traffic target of the revision's service names it, and it is not a
    /// newer revision waiting to take the latest revision's traffic once ready (Knative's
    /// `pending` routing state); `false` while the service's traffic is unknown (Knative
    /// counts unknown reachability as reachable).
    fn unreachable(&self, key: &RevisionKey, spec: &RevisionSpec) -> bool {
        let Some(svc) = self
            .services
            .get(&(key.namespace.clone(), spec.pod.service.clone()))
        else {
            return false;
        };
        if svc.traffic.iter().any(|t| t.revision == key.name) {
            return false;
        }
        let follows_latest = svc.spec.traffic.iter().any(|t| t.revision.is_none());
        let position = |name: &str| svc.spec.revisions.iter().position(|r| r == name);
        let pending = follows_latest
            && self
                .latest_ready(&svc.spec)
                .is_some_and(|latest| position(&key.name) > position(&latest));
        !pending
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
        let first = !rev.ready_once && !ready.is_empty();
        rev.ready = ready;
        rev.ready_once |= first;
        let service = rev.spec.pod.service.clone();
        let mut out = Vec::new();
        self.publish(key, &mut out);
        if first {
            // The latest revision's traffic may move to it now.
            self.reroute(&key.namespace, &service, &mut out);
        }
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

    /// The replicas last set on the revision's workload: its initial scale (or those it
    /// was adopted at), then each decision's.
    pub fn replicas_of(&self, key: &RevisionKey) -> Option<u32> {
        Some(self.revisions.get(key)?.replicas)
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
