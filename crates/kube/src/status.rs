//! A Knative `Service`'s status as Knative writes it (`kubectl get ksvc` reads URL and
//! READY from it; `kubectl wait --for=condition=Ready` its `Ready` condition), as a pure
//! function of what the control plane knows.

use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

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
    let configurations = configurations_ready(f);
    let routes = routes_ready(f);
    let ready = match (&configurations, &routes) {
        (c, _) if c.status == "False" => c.clone(),
        (_, r) if r.status == "False" => r.clone(),
        (c, _) if c.status == "Unknown" => c.clone(),
        (_, r) if r.status == "Unknown" => r.clone(),
        _ => cond("", "True", "", String::new()),
    };
    let mut conditions = vec![
        Condition {
            type_: "ConfigurationsReady".to_owned(),
            ..configurations
        },
        Condition {
            type_: "Ready".to_owned(),
            ..ready
        },
        Condition {
            type_: "RoutesReady".to_owned(),
            ..routes
        },
    ];
    for c in &mut conditions {
        let kept = before
            .into_iter()
            .flat_map(|b| &b.conditions)
            .find(|b| {
                b.type_ == c.type_
                    && b.status == c.status
                    && b.reason == c.reason
                    && b.message == c.message
            })
            .and_then(|b| b.last_transition_time.clone());
        c.last_transition_time = Some(kept.unwrap_or_else(|| now.to_string()));
    }
    let has_route = !f.traffic.is_empty();
    ServiceStatus {
        observed_generation: f.generation,
        conditions,
        url: has_route.then(|| format!("http://{}.{}.{}", f.name, f.namespace, f.domain)),
        address: has_route.then(|| Address {
            url: format!("http://{}.{}.svc.cluster.local", f.name, f.namespace),
        }),
        latest_created_revision_name: f.latest_created.clone(),
        latest_ready_revision_name: f.latest_ready.clone(),
        traffic: f
            .traffic
            .iter()
            .map(|t| Traffic {
                revision_name: t.revision.clone(),
                percent: t.percent,
                tag: t.tag.clone(),
                latest_revision: Some(t.latest),
            })
            .collect(),
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

/// Knative's Route readiness: is every revision with traffic ready?
fn routes_ready(f: &Facts) -> Condition {
    match f.traffic.iter().find(|t| !t.ready) {
        None if !f.traffic.is_empty() => cond("", "True", "", String::new()),
        None => cond(
            "",
            "Unknown",
            "RevisionMissing",
            "No revision to route to yet.".to_owned(),
        ),
        Some(t) => cond(
            "",
            "Unknown",
            "RevisionMissing",
            format!("Revision {:?} is not ready yet.", t.revision),
        ),
    }
}

#[cfg(test)]
mod tests;
