//! Why a revision's pods do not come up, read from the Pod objects the kubelet keeps, as
//! Knative's revision reconciler reads them (`pkg/reconciler/revision/
//! reconcile_resources.go`): a pod that cannot be scheduled, the user container's last
//! exit, or an image that cannot be pulled.
//!
//! [`failure`] is a pure function of one Pod; [`first_failures`] picks, for each revision,
//! the failure of its first failing pod (by name, so that it does not flap between pods).
//! [`rollout_failures`] reads the revisions' Deployments as Knative's
//! `TransformDeploymentStatus` does: a passed progress deadline or a ReplicaSet that
//! cannot make pods (a quota, an admission webhook, Pod Security).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use sluice_core::RevisionKey;

use crate::resources::{QUEUE_CONTAINER, REVISION_LABEL};

/// Waiting reasons that mean the image will not come (Kubernetes' `images` package and
/// the kubelet's container runtime manager).
const IMAGE_REASONS: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
];

/// Why a pod of a revision does not run, in the words Knative puts on the Revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodFailure {
    /// `PodScheduled` is `False` (no node fits, a quota, a taint): the Revision's
    /// `ResourcesAvailable` is `False` with the scheduler's reason and message.
    Unschedulable { reason: String, message: String },
    /// A container's image cannot be pulled: `ResourcesAvailable` is `False` with the
    /// kubelet's reason (`ImagePullBackOff`, …) and message.
    Image {
        container: String,
        reason: String,
        message: String,
    },
    /// The user container exited (its last termination, as `CrashLoopBackOff` shows it):
    /// `ContainerHealthy` is `False`, `ExitCode{code}`, with its termination message.
    Exited { code: i32, message: String },
    /// The Deployment's own condition: `Progressing=False` (`ProgressDeadlineExceeded`)
    /// or `ReplicaFailure=True` (`FailedCreate`): `ResourcesAvailable` is `False` with
    /// the Deployment controller's reason and message.
    Rollout { reason: String, message: String },
}

impl PodFailure {
    /// The Revision condition it sets (`ResourcesAvailable` or `ContainerHealthy`), with
    /// its reason and message.
    pub fn condition(&self) -> (&'static str, String, String) {
        match self {
            Self::Unschedulable { reason, message }
            | Self::Rollout { reason, message }
            | Self::Image {
                reason, message, ..
            } => ("ResourcesAvailable", reason.clone(), message.clone()),
            Self::Exited { code, message } => (
                "ContainerHealthy",
                format!("ExitCode{code}"),
                format!("Container failed with: {message}"),
            ),
        }
    }
}

/// Why this pod does not run, if its state says so; `None` for a pod that is starting,
/// running or ending normally.
///
/// Knative reads the user container only, and an image's `Waiting` state only once the
/// Deployment's progress deadline has passed (until then an image still being pulled
/// looks the same). Sluice reports image failures at once, because Knative catches a
/// missing image earlier, when it resolves the tag to a digest at revision creation
/// ("Unable to fetch image"), which Sluice does not do; and it reads the queue-proxy's
/// image too, since a wrong `--queue-proxy-image` fails every revision the same way.
pub fn failure(pod: &Pod) -> Option<PodFailure> {
    let status = pod.status.as_ref()?;
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    {
        return Some(PodFailure::Unschedulable {
            reason: c.reason.clone().unwrap_or_default(),
            message: c.message.clone().unwrap_or_default(),
        });
    }
    let statuses = status.container_statuses.as_deref().unwrap_or_default();
    // The user container first (the queue-proxy is the one Sluice adds).
    let mut ordered: Vec<&ContainerStatus> = statuses.iter().collect();
    ordered.sort_by_key(|c| c.name == QUEUE_CONTAINER);
    let user = ordered.first().filter(|c| c.name != QUEUE_CONTAINER);
    if let Some(user) = user {
        let terminated = user
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| {
                user.state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .filter(|t| t.exit_code != 0)
            });
        if let Some(t) = terminated {
            return Some(PodFailure::Exited {
                code: t.exit_code,
                message: t.message.clone().unwrap_or_default().trim_end().to_owned(),
            });
        }
    }
    ordered.into_iter().find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        let reason = w.reason.as_deref()?;
        IMAGE_REASONS.contains(&reason).then(|| PodFailure::Image {
            container: c.name.clone(),
            reason: reason.to_owned(),
            message: w.message.clone().unwrap_or_default(),
        })
    })
}

/// Each revision's first failing pod's failure (pods by name), among `pods`; pods
/// without the revision label, and pods being deleted, are not read.
pub fn first_failures<'a>(
    pods: impl IntoIterator<Item = &'a Pod>,
) -> BTreeMap<RevisionKey, PodFailure> {
    let mut first: BTreeMap<RevisionKey, (String, PodFailure)> = BTreeMap::new();
    for pod in pods {
        let meta = &pod.metadata;
        if meta.deletion_timestamp.is_some() {
            continue;
        }
        let Some(revision) = meta.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)) else {
            continue;
        };
        let Some(why) = failure(pod) else {
            continue;
        };
        let key = RevisionKey::new(meta.namespace.as_deref().unwrap_or_default(), revision);
        let name = meta.name.clone().unwrap_or_default();
        match first.get(&key) {
            Some((seen, _)) if *seen <= name => {}
            _ => {
                first.insert(key, (name, why));
            }
        }
    }
    first.into_iter().map(|(k, (_, why))| (k, why)).collect()
}

/// Each revision's Deployment failure, if it has one: `Progressing` `False`, else
/// `ReplicaFailure` `True` (Knative's order: its Deployment condition set puts
/// `Progressing` first).
pub fn rollout_failures<'a>(
    deployments: impl IntoIterator<Item = &'a Deployment>,
) -> BTreeMap<RevisionKey, PodFailure> {
    let mut out = BTreeMap::new();
    for d in deployments {
        let meta = &d.metadata;
        let Some(revision) = meta.labels.as_ref().and_then(|l| l.get(REVISION_LABEL)) else {
            continue;
        };
        let conditions = d
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let find = |type_: &str, status: &str| {
            conditions
                .iter()
                .find(|c| c.type_ == type_ && c.status == status)
        };
        let Some(c) = find("Progressing", "False").or_else(|| find("ReplicaFailure", "True"))
        else {
            continue;
        };
        out.insert(
            RevisionKey::new(meta.namespace.as_deref().unwrap_or_default(), revision),
            PodFailure::Rollout {
                reason: c.reason.clone().unwrap_or_default(),
                message: c.message.clone().unwrap_or_default(),
            },
        );
    }
    out
}

#[cfg(test)]
mod tests;
