//! What `sluice status` shows (`--json` is documented in the README; fields are only ever
//! added): services with their URL, traffic and revisions, each revision's pods and the
//! autoscaler's view, and under `--distributed` each component's process. Plain data, in
//! a module of its own so that what fills it and what prints it both depend on it alone.

use serde::{Deserialize, Serialize};

use crate::backend::PodStatus;

/// `sluice status --json`: documented in the README; fields are only ever added.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    pub gateway: String,
    pub services: Vec<ServiceStatus>,
    /// `sluice run --distributed`: each component's process and restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentStatus>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub namespace: String,
    pub url: String,
    pub traffic: Vec<TrafficStatus>,
    pub revisions: Vec<RevisionStatus>,
}

/// A service's traffic target as the planner resolved it (a revision's name, not
/// `latestRevision`), which is what status shows.
pub type TrafficStatus = crate::world::Traffic;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RevisionStatus {
    pub name: String,
    /// The autoscaler's desired pods; −1 before its first decision.
    pub desired: i32,
    pub ready: u32,
    /// Average concurrency over the stable window.
    pub concurrency: f64,
    pub panic: bool,
    /// `serve` (gateway → pods) or `proxy` (gateway → activator).
    pub mode: String,
    /// Why the last pod failed, while no pod has become ready since.
    pub error: Option<String>,
    /// Every pod now, with its queue-proxy's address and state.
    #[serde(default)]
    pub pods: Vec<PodStatus>,
    /// Why the autoscaler decided as it did (the rule that set `desired`); absent before
    /// its first decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DecisionReason>,
    /// The last cold start, in seconds: from the control plane asking the revision, at
    /// zero ready pods, for pods, to its first ready one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cold_start_seconds: Option<f64>,
}

/// The rule behind a decision: its stable name and a sentence with its numbers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionReason {
    /// `stable`, `panic`, `max-scale-down-rate`, `scale-to-zero`, … (the README lists them).
    pub kind: String,
    pub message: String,
}

/// One component as `sluice status --json` shows it (`components[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentStatus {
    pub name: String,
    /// Its process now; `None` while it is being restarted.
    pub pid: Option<u32>,
    /// How many times it died and was started again.
    pub restarts: u32,
    /// How it ended the last time it died.
    pub last_exit: Option<String>,
}
