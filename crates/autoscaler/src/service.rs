//! The autoscaler service: revisions registered with their annotations, stats recorded
//! as they arrive, one tick task per revision (every 2 s, at once on a poke), decisions
//! carried out through the [`Scaler`] and published to every watcher.
//!
//! The KPA itself is [`RevisionAutoscaler`], a plain struct; this module is the glue that
//! gives it a clock, a lock and a task.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use sluice_core::phase::{self, DECIDE_PHASE};
use sluice_proto::v1::{self, Source, StatReport};
use tokio::sync::{Notify, broadcast, watch};
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::{AutoscalerConfig, ConfigError};
use crate::kpa::{Decision, Mode, PodCounts, Reporter, RevisionAutoscaler, StatSample};
use crate::revision::RevisionScaling;
use crate::scaler::{RevisionKey, Scaler};

mod metrics;

pub use metrics::Metrics;
use metrics::RevisionGauges;

/// Knative's decision tick.
pub const TICK: Duration = Duration::from_secs(2);
/// A queue-proxy not heard from for this long no longer counts as a pod (when the scaler
/// does not know the pods).
const POD_STALE: Duration = Duration::from_secs(3);
/// Decisions buffered per watcher; one that falls further behind gets the whole state
/// again instead of the changes it missed.
const DECISION_BUFFER: usize = 4096;

#[derive(Clone, Debug)]
pub struct Options {
    pub tick: Duration,
    /// Scale a revision nobody registered, with the config's defaults, from its first
    /// stat (the standalone binary). Otherwise such stats are refused, as Knative drops
    /// stats for revisions it has no collection for.
    pub auto_register: bool,
    /// Buckets at the wall clock's whole seconds and decisions at
    /// [`DECIDE_PHASE`](sluice_core::phase::DECIDE_PHASE) into a second, so the reports
    /// Sluice's reporters send at a fixed phase fall one per bucket, the current second's
    /// in before the tick ([`sluice_core::phase`]). Off, the windows and ticks start when
    /// the autoscaler does (tests on a paused clock).
    pub wall_clock: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tick: TICK,
            auto_register: false,
            wall_clock: true,
        }
    }
}

/// Why a stat was not recorded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Rejected {
    #[error("the report has no {0}")]
    Missing(&'static str),
    #[error("unknown source {0}")]
    UnknownSource(i32),
    #[error("no revision {0} is registered")]
    UnknownRevision(RevisionKey),
}

/// A config that some registered revisions cannot take; nothing was changed.
#[derive(Debug)]
pub struct ConfigRefused(pub Vec<(RevisionKey, ConfigError)>);

/// The autoscaler: cheap to clone, every clone the same service.
#[derive(Clone)]
pub struct Autoscaler {
    inner: Arc<Inner>,
}

struct Inner {
    epoch: Instant,
    options: Options,
    config: RwLock<AutoscalerConfig>,
    /// Namespace → name → revision: looked up with the report's borrowed strings.
    revisions: RwLock<HashMap<String, HashMap<String, Entry>>>,
    scaler: Arc<dyn Scaler>,
    decisions: broadcast::Sender<Arc<v1::Decision>>,
    /// Set at shutdown: watch streams end.
    closing: watch::Sender<bool>,
    metrics: Metrics,
}

/// A registered revision and its tick task, which stops when the entry goes.
struct Entry {
    revision: Arc<Revision>,
    task: tokio::task::AbortHandle,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Revision {
    key: RevisionKey,
    poke: Notify,
    state: Mutex<State>,
}

struct State {
    kpa: RevisionAutoscaler,
    annotations: BTreeMap<String, String>,
    container_concurrency: u32,
    /// Reporting queue-proxies by pod name, with when each was last heard.
    pods: HashMap<String, Duration>,
    published: Option<Published>,
    /// The replicas last set through the scaler, published for whoever applies them.
    replicas: Option<u32>,
    gauges: RevisionGauges,
    /// Set when the revision is removed: its tick task may still be mid-reconcile.
    removed: bool,
}

/// What a watcher is told about again when it changes (Knative notifies on a new desired
/// scale or a flip of the EBC's sign).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Published {
    scale: i32,
    mode: Mode,
    panic: bool,
    ebc_negative: bool,
    /// The kind of rule behind the scale: a decision goes out when it changes too.
    reason: crate::kpa::ReasonKind,
}

// === impl Autoscaler ===

impl Autoscaler {
    /// An autoscaler with `config`; must be created inside a tokio runtime.
    pub fn new(config: AutoscalerConfig, scaler: Arc<dyn Scaler>, options: Options) -> Self {
        let (decisions, _) = broadcast::channel(DECISION_BUFFER);
        let now = Instant::now();
        let epoch = if options.wall_clock {
            now.checked_sub(phase::wall_into_second()).unwrap_or(now)
        } else {
            now
        };
        Self {
            inner: Arc::new(Inner {
                epoch,
                options,
                config: RwLock::new(config),
                revisions: RwLock::new(HashMap::new()),
                scaler,
                decisions,
                closing: watch::Sender::new(false),
                metrics: Metrics::new(),
            }),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// `config-autoscaler` as it is now.
    pub fn config(&self) -> AutoscalerConfig {
        self.inner.config.read().clone()
    }

    /// Registers a revision or updates its annotations and `containerConcurrency`. A bad
    /// annotation refuses the change whole and leaves a registered revision as it was.
    pub fn upsert_revision(
        &self,
        key: &RevisionKey,
        annotations: BTreeMap<String, String>,
        container_concurrency: u32,
    ) -> Result<(), ConfigError> {
        // Registry, then config: the order `set_config` takes them in.
        let mut revisions = self.inner.revisions.write();
        let config = self.inner.config.read().clone();
        let scaling = RevisionScaling::resolve(&config, &annotations, container_concurrency)?;
        if let Some(entry) = revisions.get(&key.namespace).and_then(|m| m.get(&key.name)) {
            let mut st = entry.revision.state.lock();
            st.kpa.update(&config, scaling);
            st.annotations = annotations;
            st.container_concurrency = container_concurrency;
            return Ok(());
        }
        let ready = self.inner.scaler.pods(key).map(|p| p.ready);
        let gauges = self.inner.metrics.revision(key, scaling.metric);
        let revision = Arc::new(Revision {
            key: key.clone(),
            poke: Notify::new(),
            state: Mutex::new(State {
                kpa: RevisionAutoscaler::new(&config, scaling, ready, self.inner.now()),
                annotations,
                container_concurrency,
                pods: HashMap::new(),
                published: None,
                replicas: None,
                gauges,
                removed: false,
            }),
        });
        let span = tracing::info_span!("revision", revision = %key);
        let task = tokio::spawn(tracing::Instrument::instrument(
            tick_loop(
                Arc::downgrade(&self.inner),
                Arc::clone(&revision),
                self.inner.options.tick,
            ),
            span,
        ))
        .abort_handle();
        revisions
            .entry(key.namespace.clone())
            .or_default()
            .insert(key.name.clone(), Entry { revision, task });
        self.inner.metrics.revisions.inc();
        tracing::debug!(revision = %key, "registered");
        Ok(())
    }

    /// Whether any route sends the revision traffic (Knative's PA reachability). An
    /// unreachable revision has no min-scale, no pod retention and no scale-down limits,
    /// so it goes to zero once idle. A change is decided at once. False if it is unknown.
    pub fn set_reachable(&self, key: &RevisionKey, reachable: bool) -> bool {
        let Some(revision) = self.lookup(&key.namespace, &key.name) else {
            return false;
        };
        let config = self.inner.config.read().clone();
        let changed = {
            let mut st = revision.state.lock();
            let changed = st.kpa.reachable() != reachable;
            if changed {
                st.kpa.set_reachable(&config, reachable);
            }
            changed
        };
        if changed {
            tracing::debug!(revision = %key, reachable, "reachability");
            revision.poke.notify_one();
        }
        true
    }

    /// Stops scaling a revision; watchers are told it is gone. False if it was unknown.
    pub fn remove_revision(&self, key: &RevisionKey) -> bool {
        let removed = {
            let mut revisions = self.inner.revisions.write();
            let Some(names) = revisions.get_mut(&key.namespace) else {
                return false;
            };
            let removed = names.remove(&key.name);
            if names.is_empty() {
                revisions.remove(&key.namespace);
            }
            removed
        };
        let Some(entry) = removed else { return false };
        self.inner.metrics.revisions.dec();
        let mut st = entry.revision.state.lock();
        st.removed = true;
        st.gauges.remove();
        let _ = self.inner.decisions.send(Arc::new(v1::Decision {
            namespace: key.namespace.clone(),
            revision: key.name.clone(),
            removed: true,
            ..v1::Decision::default()
        }));
        true
    }

    /// Replaces `config-autoscaler`. Every registered revision is resolved again first;
    /// if any cannot take the new config, nothing changes.
    pub fn set_config(&self, config: AutoscalerConfig) -> Result<(), ConfigRefused> {
        let revisions = self.inner.revisions.read();
        let mut resolved = Vec::new();
        let mut refused = Vec::new();
        for entry in revisions.values().flat_map(HashMap::values) {
            let st = entry.revision.state.lock();
            match RevisionScaling::resolve(&config, &st.annotations, st.container_concurrency) {
                Ok(scaling) => resolved.push((Arc::clone(&entry.revision), scaling)),
                Err(e) => refused.push((entry.revision.key.clone(), e)),
            }
        }
        if !refused.is_empty() {
            return Err(ConfigRefused(refused));
        }
        // Swapped while the registry is read-locked, so no revision registers in between
        // against the old config.
        *self.inner.config.write() = config.clone();
        for (revision, scaling) in resolved {
            revision.state.lock().kpa.update(&config, scaling);
        }
        Ok(())
    }

    /// Records one reporter's stat. A poke wakes the revision's tick task at once.
    pub fn record(&self, report: &StatReport) -> Result<(), Rejected> {
        let result = self.try_record(report);
        if let Err(rejected) = &result {
            self.inner.metrics.rejected(rejected);
        }
        result
    }

    fn try_record(&self, report: &StatReport) -> Result<(), Rejected> {
        let stat = report.stat.as_ref().ok_or(Rejected::Missing("stat"))?;
        if report.namespace.is_empty() {
            return Err(Rejected::Missing("namespace"));
        }
        if report.revision.is_empty() {
            return Err(Rejected::Missing("revision"));
        }
        let reporter = match Source::try_from(report.source) {
            Ok(Source::QueueProxy) => Reporter::QueueProxy,
            Ok(Source::Activator) => Reporter::Activator,
            Ok(Source::Gateway) => Reporter::Gateway,
            _ => return Err(Rejected::UnknownSource(report.source)),
        };
        let revision = match self.lookup(&report.namespace, &report.revision) {
            Some(r) => r,
            None => self.auto_register(&report.namespace, &report.revision)?,
        };
        let sample = StatSample {
            average_concurrency: stat.average_concurrent_requests,
            average_proxied_concurrency: stat.average_proxied_concurrent_requests,
            request_count: stat.request_count,
            proxied_request_count: stat.proxied_request_count,
        };
        let now = self.inner.now();
        let poke = {
            let mut st = revision.state.lock();
            if reporter == Reporter::QueueProxy && !stat.pod_name.is_empty() {
                match st.pods.get_mut(&stat.pod_name) {
                    Some(seen) => *seen = now,
                    None => {
                        st.pods.insert(stat.pod_name.clone(), now);
                    }
                }
            }
            st.kpa.record(now, reporter, sample, report.poke)
        };
        self.inner.metrics.stat(reporter);
        if poke {
            self.inner.metrics.pokes.inc();
            revision.poke.notify_one();
        }
        Ok(())
    }

    fn lookup(&self, namespace: &str, name: &str) -> Option<Arc<Revision>> {
        self.inner
            .revisions
            .read()
            .get(namespace)
            .and_then(|names| names.get(name))
            .map(|entry| Arc::clone(&entry.revision))
    }

    fn auto_register(&self, namespace: &str, name: &str) -> Result<Arc<Revision>, Rejected> {
        let key = RevisionKey::new(namespace, name);
        if !self.inner.options.auto_register {
            return Err(Rejected::UnknownRevision(key));
        }
        // No annotations: the config's defaults, which were valid when the config was.
        if let Err(error) = self.upsert_revision(&key, BTreeMap::new(), 0) {
            tracing::warn!(revision = %key, %error, "cannot register");
            return Err(Rejected::UnknownRevision(key));
        }
        self.lookup(namespace, name)
            .ok_or(Rejected::UnknownRevision(key))
    }

    /// Every revision's latest decision (one with no decision yet: desired −1, proxy).
    pub fn decisions(&self, namespace: Option<&str>) -> Vec<v1::Decision> {
        let revisions = self.inner.revisions.read();
        let mut out: Vec<v1::Decision> = revisions
            .iter()
            .filter(|(ns, _)| namespace.is_none_or(|want| want == ns.as_str()))
            .flat_map(|(_, names)| names.values())
            .map(|entry| {
                let st = entry.revision.state.lock();
                to_proto(&entry.revision.key, &st)
            })
            .collect();
        out.sort_by(|a, b| (&a.namespace, &a.revision).cmp(&(&b.namespace, &b.revision)));
        out
    }

    /// Decisions as they change (see [`Autoscaler::decisions`] for the state now).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<v1::Decision>> {
        self.inner.decisions.subscribe()
    }

    /// Ends every stats and watch stream (shutdown).
    pub fn close(&self) {
        self.inner.closing.send_replace(true);
    }

    /// Resolves once [`Autoscaler::close`] has been called.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.closing.subscribe();
        async move {
            let _ = rx.wait_for(|closing| *closing).await;
        }
    }

    /// Time since this autoscaler started: the `now` its windows use.
    pub fn now(&self) -> Duration {
        self.inner.now()
    }
}

impl fmt::Debug for Autoscaler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Autoscaler")
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

// === impl Inner ===

impl Inner {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// A tick (`decide`) or a requeued reconcile for one revision; returns when to
    /// reconcile again without a tick.
    fn reconcile(&self, revision: &Revision, decide: bool, due: Instant) -> Option<Instant> {
        let known = self.scaler.pods(&revision.key);
        let activator_ok = self.scaler.activator_ready();
        let now = self.now();
        let mut st = revision.state.lock();
        if st.removed {
            return None;
        }
        // Forget queue-proxies gone quiet, whether or not their count is used.
        st.pods
            .retain(|_, seen| now.saturating_sub(*seen) < POD_STALE);
        let pods = known.unwrap_or_else(|| {
            let n = u32::try_from(st.pods.len()).unwrap_or(u32::MAX);
            PodCounts {
                ready: n,
                replicas: n,
            }
        });
        let d = if decide {
            st.kpa.tick(now, pods, activator_ok)
        } else {
            st.kpa.reconcile(now, pods, activator_ok)
        };
        let published = Some(Published {
            scale: d.scale,
            mode: d.mode,
            panic: d.panic_mode,
            ebc_negative: d.excess_burst_capacity < 0,
            reason: d.reason.kind(),
        });
        let changed = published != st.published;
        st.published = published;
        let scaling = st.kpa.scaling();
        let metric = scaling.metric;
        let target = scaling.target;
        st.gauges.set(&d, metric, target);
        if decide {
            st.gauges.decided(&d);
        }
        // Carried out and published under the revision's lock (neither blocks), so that
        // nothing about a revision goes out after its removal.
        if let Some(replicas) = d.apply {
            tracing::debug!(revision = %revision.key, replicas, desired = d.desired, "scale");
            st.replicas = Some(replicas);
            self.scaler.scale(&revision.key, replicas);
        }
        // A scale is published every time it is set: whoever applies it from the stream
        // may have lost what it applied before (a restart), and it is set only while the
        // replicas differ from it.
        if changed || d.apply.is_some() {
            let _ = self.decisions.send(Arc::new(to_proto(&revision.key, &st)));
        }
        drop(st);
        if decide {
            self.metrics
                .decision_lag
                .observe(due.elapsed().as_secs_f64());
        }
        d.requeue_after.map(|after| Instant::now() + after)
    }
}

/// One revision's ticks: every `tick`, at once on a poke, and at a requeue deadline.
/// Ends when the autoscaler is gone (or is aborted when the revision is removed).
async fn tick_loop(inner: Weak<Inner>, revision: Arc<Revision>, tick: Duration) {
    let first = match inner.upgrade() {
        Some(inner) if inner.options.wall_clock => phase::until_phase(inner.now(), DECIDE_PHASE),
        _ => tick,
    };
    let mut ticks = tokio::time::interval_at(Instant::now() + first, tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut requeue: Option<Instant> = None;
    loop {
        let far = Instant::now() + Duration::from_secs(86_400);
        let (decide, due) = tokio::select! {
            due = ticks.tick() => (true, due),
            () = revision.poke.notified() => (true, Instant::now()),
            () = tokio::time::sleep_until(requeue.unwrap_or(far)), if requeue.is_some() => {
                (false, Instant::now())
            }
        };
        let Some(inner) = inner.upgrade() else { return };
        requeue = inner.reconcile(&revision, decide, due);
    }
}

fn to_proto(key: &RevisionKey, st: &State) -> v1::Decision {
    let kpa = &st.kpa;
    let (desired, ebc) = kpa.status();
    let mut out = v1::Decision {
        namespace: key.namespace.clone(),
        revision: key.name.clone(),
        desired_scale: -1,
        decider_desired: desired,
        excess_burst_capacity: ebc,
        mode: v1::Mode::Proxy.into(),
        replicas: st
            .replicas
            .map_or(-1, |r| i32::try_from(r).unwrap_or(i32::MAX)),
        ..v1::Decision::default()
    };
    if let Some(d) = kpa.last() {
        let Decision {
            scale,
            ready,
            panic_mode,
            stable,
            panic,
            mode: m,
            ..
        } = *d;
        out.desired_scale = scale;
        out.mode = m.into();
        out.panic = panic_mode;
        out.ready_pods = ready;
        out.stable_value = stable;
        out.panic_value = panic;
        out.reason = Some(v1::Reason {
            kind: d.reason.kind().as_str().to_owned(),
            message: d.reason.to_string(),
        });
    }
    out
}

impl fmt::Display for ConfigRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("config refused; nothing changed:")?;
        for (revision, error) in &self.0 {
            write!(f, "\n  {revision}: {error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigRefused {}

#[cfg(test)]
mod tests;
