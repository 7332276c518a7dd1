//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does it: read the Lease; take it when it is free or its holder has not renewed it for a
//! whole lease duration (timed on this process's clock from when the record last changed,
//! so clocks need not agree); renew it while leading; and write only with the
//! `resourceVersion` read, so of two candidates exactly one wins (the other gets 409).
//!
//! [`Elector`] is the pure part, fed what was read and `now`; [`run`] is the loop around it.

use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

use crate::backend::FIELD_MANAGER;

/// Timing, with client-go's (and Knative's) defaults.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub namespace: String,
    /// `sluice-control`, `sluice-autoscaler`.
    pub name: String,
    /// This candidate: its pod's name.
    pub identity: String,
    /// How long a holder that stopped renewing keeps the Lease (15 s).
    pub duration: Duration,
    /// How long a leader goes on failing to renew before it steps down (10 s); less than
    /// `duration`, so it has stopped before anyone else may take over.
    pub renew_deadline: Duration,
    /// Time between tries (2 s).
    pub retry_period: Duration,
}

impl LeaseConfig {
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// What to write, given what was read.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// No Lease exists: create this one.
    Create(Lease),
    /// Take or renew it: replace it with this (carrying the `resourceVersion` read).
    Replace(Lease),
    /// Another candidate holds it, and may still be alive.
    Follow { holder: String },
}

/// One candidate's view of the Lease.
#[derive(Debug)]
pub struct Elector {
    config: LeaseConfig,
    /// The last record seen (holder, renew time, transitions) and when this process saw it
    /// change.
    observed: Option<(Observed, Instant)>,
}

#[derive(Clone, Debug, PartialEq)]
struct Observed {
    holder: String,
    renew: Option<MicroTime>,
    transitions: i32,
}

impl Elector {
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            observed: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// What to write after reading `lease` (`None`: there is none) at `now`, `wall`.
    pub fn step(&mut self, lease: Option<&Lease>, now: Instant, wall: Timestamp) -> Step {
        let me = &self.config.identity;
        let Some(lease) = lease else {
            return Step::Create(self.record(ObjectMeta::default(), None, 0, wall));
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let seen = Observed {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            renew: spec.renew_time.clone(),
            transitions: spec.lease_transitions.unwrap_or(0),
        };
        let changed_at = match &self.observed {
            Some((before, at)) if *before == seen => *at,
            _ => now,
        };
        self.observed = Some((seen.clone(), changed_at));
        let duration = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map_or(self.config.duration, Duration::from_secs);
        let held_by_other = !seen.holder.is_empty() && seen.holder != *me;
        if held_by_other && now.duration_since(changed_at) < duration {
            return Step::Follow {
                holder: seen.holder,
            };
        }
        let mut meta = lease.metadata.clone();
        meta.managed_fields = None;
        let acquired = (seen.holder == *me)
            .then(|| spec.acquire_time.clone())
            .flatten();
        let transitions = if seen.holder == *me {
            seen.transitions
        } else {
            seen.transitions + 1
        };
        Step::Replace(self.record(meta, acquired, transitions, wall))
    }

    /// The Lease handed back, if `lease` is this candidate's: no holder, a one-second
    /// duration, renewed `wall` (client-go's `ReleaseOnCancel`), so that a standby takes
    /// it at its next try rather than a whole lease duration later. `None`: another holds
    /// it, and it is left alone.
    pub fn release(&self, lease: &Lease, wall: Timestamp) -> Option<Lease> {
        let spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return None;
        }
        let mut meta = lease.metadata.clone();
        meta.managed_fields = None;
        Some(Lease {
            metadata: meta,
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                acquire_time: Some(MicroTime(wall)),
                renew_time: Some(MicroTime(wall)),
                lease_transitions: spec.lease_transitions,
                ..LeaseSpec::default()
            }),
        })
    }

    /// The Lease as this candidate writes it.
    fn record(
        &self,
        mut meta: ObjectMeta,
        acquired: Option<MicroTime>,
        transitions: i32,
        wall: Timestamp,
    ) -> Lease {
        meta.name = Some(self.config.name.clone());
        meta.namespace = Some(self.config.namespace.clone());
        Lease {
            metadata: meta,
            spec: Some(LeaseSpec {
                holder_identity: Some(self.config.identity.clone()),
                lease_duration_seconds: Some(
                    i32::try_from(self.config.duration.as_secs()).unwrap_or(i32::MAX),
                ),
                acquire_time: Some(acquired.unwrap_or(MicroTime(wall))),
                renew_time: Some(MicroTime(wall)),
                lease_transitions: Some(transitions),
                ..LeaseSpec::default()
            }),
        }
    }
}

/// One round: read, decide, write. `Ok(true)`: this candidate holds the Lease now.
/// `Ok(false)`: another does (or won the race). `Err`: the API server could not be asked.
pub async fn try_acquire_or_renew(
    api: &Api<Lease>,
    elector: &mut Elector,
) -> Result<bool, kube::Error> {
    let name = elector.config.name.clone();
    let lease = api.get_opt(&name).await?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let written = match elector.step(lease.as_ref(), Instant::now(), Timestamp::now()) {
        Step::Follow { .. } => return Ok(false),
        Step::Create(l) => api.create(&params, &l).await,
        Step::Replace(l) => api.replace(&name, &params, &l).await,
    };
    match written {
        Ok(_) => Ok(true),
        // Another candidate wrote first (409 on a stale resourceVersion, or it created
        // the Lease): it leads.
        Err(kube::Error::Api(s)) if s.is_conflict() || s.is_already_exists() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Hands the Lease back if this candidate holds it ([`Elector::release`]), with the
/// `resourceVersion` read: one taken meanwhile is not touched (409). `Ok(true)`: released.
pub async fn release(api: &Api<Lease>, config: &LeaseConfig) -> Result<bool, kube::Error> {
    let Some(lease) = api.get_opt(&config.name).await? else {
        return Ok(false);
    };
    let Some(released) = Elector::new(config.clone()).release(&lease, Timestamp::now()) else {
        return Ok(false);
    };
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    match api.replace(&config.name, &params, &released).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Campaigns for the Lease for as long as the task runs, publishing on `leading` whether
/// this candidate leads. A leader that cannot renew for `renew_deadline`, or finds the
/// Lease taken, publishes `false` at once and campaigns again.
pub async fn run(client: Client, config: LeaseConfig, leading: watch::Sender<bool>) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let retry = config.retry_period;
    let deadline = config.renew_deadline;
    let mut elector = Elector::new(config);
    let mut renewed = Instant::now();
    loop {
        let was = *leading.borrow();
        let now = match try_acquire_or_renew(&api, &mut elector).await {
            Ok(true) => {
                renewed = Instant::now();
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, lease = %elector.config.name, "lease");
                was && renewed.elapsed() < deadline
            }
        };
        if now != was {
            tracing::info!(
                lease = %elector.config.name,
                identity = %elector.config.identity,
                "{}",
                if now { "leading" } else { "not leading" }
            );
            leading.send_replace(now);
        }
        tokio::time::sleep(retry).await;
    }
}

#[cfg(test)]
mod tests;
