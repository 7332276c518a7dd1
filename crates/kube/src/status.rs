//! A Knative `Service`'s status as Knative writes it (`kubectl get ksvc` reads URL and
//! READY from it; `kubectl wait --for=condition=Ready` its `Ready` condition), as a pure
//! function of what the control plane knows.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::pods::PodFailure;

/// What the control plane knows of one Service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Facts {
    pub namespace: String,
    pub name: String,
    /// The object's `metadata.generation` this was computed for.
    pub generation: i64,
    /// Services' URLs are `http://{name}.{namespace}.{domain}` (Knative's default domain
    /// is `svc.cluster.local` for cluster-local services, `example.com` otherwise).
    pub domain: String,
    /// Why the spec was refused, naming its field (the running revisions are untouched).
    pub refused: Option<String>,
    /// The newest revision made, and why its pods fail while none has become ready.
    pub latest_created: Option<String>,
    pub latest_failure: Option<String>,
    /// The newest revision that has had a ready pod.
    pub latest_ready: Option<String>,
    /// The traffic split now served: (revision, percent, tag), with whether each revision
    /// has become ready.
    pub traffic: Vec<TrafficFact>,
    /// Why its `Configuration` or `Route` is not as it should be (one of their name owned
    /// by another, or a refused write): the Service's condition for that child says so.
    pub child_problem: Option<crate::children::Problem>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrafficFact {
    pub revision: String,
    pub percent: u32,
    pub tag: Option<String>,
    pub ready: bool,
    /// Written as the latest revision (`latestRevision: true`, or no `traffic`).
    pub latest: bool,
}

/// `status` of a `serving.knative.dev/v1` Service (the fields Sluice writes).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    #[serde(default)]
    pub traffic: Vec<Traffic>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Address {
    pub url: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    pub revision_name: String,
    pub percent: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_revision: Option<bool>,
}

/// Knative's `apis.Condition`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

/// The Service's status now. A condition whose status, reason and message are as in
/// `before` keeps its `lastTransitionTime`; a changed one gets `now`.
pub fn service_status(f: &Facts, before: Option<&ServiceStatus>, now: Timestamp) -> ServiceStatus {
    let problem = |kind: &str| {
        f.child_problem
            .as_ref()
            .filter(|p| p.kind == kind)
            .map(|p| cond("", "False", &p.reason, p.message.clone()))
    };
    let configurations = problem("Configuration").unwrap_or_else(|| configurations_ready(f));
    let routes = problem("Route").unwrap_or_else(|| routes_ready(f));
    let ready = worst(&[&configurations, &routes]);
    let conditions = named(
        [
            ("ConfigurationsReady", configurations),
            ("Ready", ready),
            ("RoutesReady", routes),
        ],
        before.map(|b| b.conditions.as_slice()),
        now,
    );
    let (url, address) = urls(f);
    ServiceStatus {
        observed_generation: f.generation,
        conditions,
        url,
        address,
        latest_created_revision_name: f.latest_created.clone(),
        latest_ready_revision_name: f.latest_ready.clone(),
        traffic: traffic(f),
    }
}

/// `status` of a `serving.knative.dev/v1` Configuration (`kubectl get configurations`
/// shows LATESTCREATED, LATESTREADY, READY and REASON from it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
}

/// The Configuration's status now: `Ready` once its latest created revision is its latest
/// ready one (what the Service's `ConfigurationsReady` copies).
pub fn configuration_status(
    f: &Facts,
    before: Option<&ConfigurationStatus>,
    now: Timestamp,
) -> ConfigurationStatus {
    let conditions = named(
        [("Ready", configurations_ready(f))],
        before.map(|b| b.conditions.as_slice()),
        now,
    );
    ConfigurationStatus {
        observed_generation: f.generation,
        conditions,
        latest_created_revision_name: f.latest_created.clone(),
        latest_ready_revision_name: f.latest_ready.clone(),
    }
}

/// `status` of a `serving.knative.dev/v1` Route (`kubectl get routes` shows URL, READY
/// and REASON from it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
    #[serde(default)]
    pub traffic: Vec<Traffic>,
}

/// The Route's status now, with Knative's conditions: `AllTrafficAssigned` (every
/// revision it names is ready), `IngressReady` (the gateways have the route: they are fed
/// by this control plane, so once the traffic is assigned), `CertificateProvisioned`
/// (true: Sluice does not provision certificates) and `Ready` made of the three.
pub fn route_status(f: &Facts, before: Option<&RouteStatus>, now: Timestamp) -> RouteStatus {
    let conditions = named(
        route_conditions(f),
        before.map(|b| b.conditions.as_slice()),
        now,
    );
    let (url, address) = urls(f);
    RouteStatus {
        observed_generation: f.generation,
        conditions,
        url,
        address,
        traffic: traffic(f),
    }
}

/// The Route's conditions, by type, `Ready` last.
fn route_conditions(f: &Facts) -> [(&'static str, Condition); 4] {
    let assigned = traffic_assigned(f);
    let ingress = if assigned.status == "True" {
        cond("", "True", "", String::new())
    } else {
        cond(
            "",
            "Unknown",
            "IngressNotConfigured",
            "Ingress has not yet been reconciled.".to_owned(),
        )
    };
    let certificate = cond(
        "",
        "True",
        "TLSNotEnabled",
        "external-domain-tls is not enabled".to_owned(),
    );
    let ready = worst(&[&assigned, &ingress, &certificate]);
    [
        ("AllTrafficAssigned", assigned),
        ("CertificateProvisioned", certificate),
        ("IngressReady", ingress),
        ("Ready", ready),
    ]
}

/// The external URL and the in-cluster address, once there is a route.
fn urls(f: &Facts) -> (Option<String>, Option<Address>) {
    if f.traffic.is_empty() {
        return (None, None);
    }
    (Some(external_url(f)), Some(Address { url: local_url(f) }))
}

fn external_url(f: &Facts) -> String {
    format!("http://{}.{}.{}", f.name, f.namespace, f.domain)
}

fn local_url(f: &Facts) -> String {
    format!("http://{}.{}.svc.cluster.local", f.name, f.namespace)
}

fn traffic(f: &Facts) -> Vec<Traffic> {
    f.traffic
        .iter()
        .map(|t| Traffic {
            revision_name: t.revision.clone(),
            percent: t.percent,
            tag: t.tag.clone(),
            latest_revision: Some(t.latest),
        })
        .collect()
}

/// The first `False` of `conditions`, else the first `Unknown`, else `True` (how a
/// Knative condition set makes its `Ready`).
fn worst(conditions: &[&Condition]) -> Condition {
    ["False", "Unknown"]
        .iter()
        .find_map(|s| conditions.iter().find(|c| c.status == *s))
        .map_or_else(|| cond("", "True", "", String::new()), |c| (*c).clone())
}

/// The conditions of `pairs`, each named by its type and stamped ([`stamp`]).
fn named<const N: usize>(
    pairs: [(&str, Condition); N],
    before: Option<&[Condition]>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut conditions: Vec<Condition> = pairs
        .into_iter()
        .map(|(type_, c)| Condition {
            type_: type_.to_owned(),
            ..c
        })
        .collect();
    stamp(&mut conditions, before, now);
    conditions
}

/// A condition whose status, reason and message are as in `before` keeps its
/// `lastTransitionTime`; a changed one gets `now`.
fn stamp(conditions: &mut [Condition], before: Option<&[Condition]>, now: Timestamp) {
    for c in conditions {
        let kept = before
            .into_iter()
            .flatten()
            .find(|b| {
                b.type_ == c.type_
                    && b.status == c.status
                    && b.reason == c.reason
                    && b.message == c.message
            })
            .and_then(|b| b.last_transition_time.clone());
        c.last_transition_time = Some(kept.unwrap_or_else(|| now.to_string()));
    }
}

/// What the control plane knows of one revision, for its `Revision` object's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RevisionFacts {
    /// It has had a ready pod (Knative's revision `Ready` stays true at zero pods).
    pub ready_once: bool,
    /// Why its workload cannot be made, while it has not been ready.
    pub failure: Option<String>,
    /// Its ready pods now.
    pub ready_pods: u32,
    /// The replicas the autoscaler wants; `None` before its first decision.
    pub desired: Option<u32>,
    /// Why its first failing pod does not run (read while no pod is ready, as Knative
    /// reads pods while a Deployment has no available replica).
    pub pod_failure: Option<PodFailure>,
}

/// `status` of a `serving.knative.dev/v1` Revision (the fields Sluice writes;
/// `kubectl get revisions` shows READY, REASON, ACTUAL and DESIRED REPLICAS from it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    #[serde(default)]
    pub observed_generation: i64,
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub actual_replicas: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<u32>,
}

/// The revision's status now, with Knative's conditions: `ResourcesAvailable` and
/// `ContainerHealthy` (what `Ready` is made of) and `Active` (whether pods serve it).
pub fn revision_status(
    f: &RevisionFacts,
    before: Option<&RevisionStatus>,
    now: Timestamp,
) -> RevisionStatus {
    let deploying = || cond("", "Unknown", "Deploying", String::new());
    let pods = f
        .pod_failure
        .as_ref()
        .filter(|_| f.ready_pods == 0)
        .map(PodFailure::condition);
    let failed = |type_: &str| {
        pods.as_ref()
            .filter(|(t, _, _)| *t == type_)
            .map(|(_, reason, message)| cond("", "False", reason, message.clone()))
    };
    let resources = match (&f.failure, f.ready_once) {
        (Some(why), false) => cond("", "False", "RevisionFailed", why.clone()),
        _ => match failed("ResourcesAvailable") {
            Some(c) => c,
            None if f.ready_once => cond("", "True", "", String::new()),
            None => deploying(),
        },
    };
    let healthy = match failed("ContainerHealthy") {
        Some(c) => c,
        None if f.ready_once => cond("", "True", "", String::new()),
        None => deploying(),
    };
    let ready = [&resources, &healthy]
        .into_iter()
        .find(|c| c.status == "False")
        .or_else(|| {
            [&resources, &healthy]
                .into_iter()
                .find(|c| c.status == "Unknown")
        })
        .cloned()
        .unwrap_or_else(|| cond("", "True", "", String::new()));
    let active = match (f.ready_pods, f.ready_once) {
        (1.., _) => cond("", "True", "", String::new()),
        (0, true) => cond(
            "",
            "False",
            "NoTraffic",
            "The target is not receiving traffic.".to_owned(),
        ),
        (0, false) => cond(
            "",
            "Unknown",
            "Queued",
            "Requests to the target are being buffered as resources are provisioned.".to_owned(),
        ),
    };
    let conditions = named(
        [
            ("Active", active),
            ("ContainerHealthy", healthy),
            ("Ready", ready),
            ("ResourcesAvailable", resources),
        ],
        before.map(|b| b.conditions.as_slice()),
        now,
    );
    RevisionStatus {
        observed_generation: 1,
        conditions,
        actual_replicas: f.ready_pods,
        desired_replicas: f.desired,
    }
}

/// An event for `kubectl describe` to show: a Warning or a Normal one, its reason (in
/// `PascalCase`) and its note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// What a change of an object's `Ready` condition from `before` to `after` tells a user:
/// it became ready (`ready`, the note), or it is not ready with a reason or a message it
/// did not have (a Warning with that reason and message). `before` is `None` when it is
/// not known (a control plane just started): becoming ready is then not news, a failure
/// still is.
pub fn ready_notice(
    before: Option<&[Condition]>,
    after: &[Condition],
    ready: &str,
) -> Option<Notice> {
    let find = |cs: &[Condition]| cs.iter().find(|c| c.type_ == "Ready").cloned();
    let now = find(after)?;
    let was = before.and_then(find);
    let same = |w: &Condition| {
        w.status == now.status && w.reason == now.reason && w.message == now.message
    };
    if was.as_ref().is_some_and(same) {
        return None;
    }
    match now.status.as_str() {
        "True" if was.is_some() => Some(Notice {
            warning: false,
            reason: "Ready".to_owned(),
            note: ready.to_owned(),
        }),
        "False" => Some(Notice {
            warning: true,
            reason: if now.reason.is_empty() {
                "NotReady".to_owned()
            } else {
                now.reason.clone()
            },
            note: now.message.clone(),
        }),
        _ => None,
    }
}

fn cond(type_: &str, status: &str, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: status.to_owned(),
        last_transition_time: None,
        reason: reason.to_owned(),
        message,
    }
}

/// Knative's Configuration readiness: is the latest created revision the latest ready?
fn configurations_ready(f: &Facts) -> Condition {
    if let Some(why) = &f.refused {
        return cond("", "False", "InvalidSpec", why.clone());
    }
    let Some(latest) = &f.latest_created else {
        return cond(
            "",
            "Unknown",
            "RevisionMissing",
            format!("Configuration {:?} has no revision yet.", f.name),
        );
    };
    if f.latest_ready.as_ref() == Some(latest) {
        return cond("", "True", "", String::new());
    }
    match &f.latest_failure {
        Some(why) => cond(
            "",
            "False",
            "RevisionFailed",
            format!("Revision {latest:?} failed with message: {why}."),
        ),
        None => cond(
            "",
            "Unknown",
            "RevisionMissing",
            format!(
                "Configuration {:?} is waiting for a Revision to become ready.",
                f.name
            ),
        ),
    }
}

/// Knative's Route readiness, which the Service's `RoutesReady` copies.
fn routes_ready(f: &Facts) -> Condition {
    let [.., (_, ready)] = route_conditions(f);
    ready
}

/// Knative's `AllTrafficAssigned`: every revision the Route names is ready
/// (`pkg/apis/serving/v1/route_lifecycle.go` has the reasons and messages).
fn traffic_assigned(f: &Facts) -> Condition {
    if let Some(t) = f.traffic.iter().find(|t| !t.ready) {
        let failed = f.latest_failure.is_some() && f.latest_created.as_ref() == Some(&t.revision);
        return if failed {
            cond(
                "",
                "False",
                "RevisionMissing",
                format!("Revision {:?} failed to become ready.", t.revision),
            )
        } else {
            cond(
                "",
                "Unknown",
                "RevisionMissing",
                format!("Revision {:?} is not yet ready.", t.revision),
            )
        };
    }
    if !f.traffic.is_empty() {
        return cond("", "True", "", String::new());
    }
    if f.latest_failure.is_some() {
        cond(
            "",
            "False",
            "RevisionMissing",
            format!(
                "Configuration {:?} does not have any ready Revision.",
                f.name
            ),
        )
    } else {
        cond(
            "",
            "Unknown",
            "RevisionMissing",
            format!(
                "Configuration {:?} is waiting for a Revision to become ready.",
                f.name
            ),
        )
    }
}

#[cfg(test)]
mod tests;
