//! The revisions this activator knows, as the endpoint source describes them: each with
//! its throttler, its prober and its reporting state. The request path reads the map
//! through an `ArcSwap` (no lock); only the endpoint source's updates write it.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use sluice_core::upstream::Upstream;
use sluice_proto::v1::RevisionEndpoints;
use tokio::sync::{mpsc, watch};

use crate::metrics::{Metrics, RevisionMetrics};
use crate::prober::{self, ProbeConfig};
use crate::reporter::ReportEntry;
use crate::throttler::Throttler;

/// Knative's default `timeoutSeconds`.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// One revision.
#[derive(Debug)]
pub(crate) struct Revision {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// The total time a request may take here, held time included.
    pub(crate) timeout: Duration,
    pub(crate) throttler: Arc<Throttler>,
    pub(crate) report: Mutex<ReportEntry>,
    pub(crate) metrics: Arc<RevisionMetrics>,
    /// The pods the source lists; the prober turns them into healthy trackers. Dropping
    /// the revision ends its prober.
    addresses: watch::Sender<Vec<SocketAddr>>,
    /// Pods a request failed to reach: the prober takes them out until they pass again.
    quarantine: mpsc::UnboundedSender<SocketAddr>,
}

/// Every known revision, by namespace then name (two lookups with borrowed header
/// strings, no allocation per request).
#[derive(Debug)]
pub(crate) struct Registry {
    map: ArcSwap<HashMap<String, HashMap<String, Arc<Revision>>>>,
    /// Serialises writers.
    write: Mutex<()>,
    /// Told whenever a revision becomes known.
    added: tokio::sync::Notify,
    metrics: Arc<Metrics>,
    probe: ProbeConfig,
    queue_depth: usize,
    max_idle_per_pod: usize,
}

// === impl Revision ===

impl Revision {
    /// A request could not reach `pod` at all.
    pub(crate) fn quarantine(&self, pod: SocketAddr) {
        let _ = self.quarantine.send(pod);
    }
}

// === impl Registry ===

impl Registry {
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        probe: ProbeConfig,
        queue_depth: usize,
        max_idle_per_pod: usize,
    ) -> Self {
        Self {
            map: ArcSwap::from_pointee(HashMap::new()),
            write: Mutex::new(()),
            added: tokio::sync::Notify::new(),
            metrics,
            probe,
            queue_depth,
            max_idle_per_pod,
        }
    }

    pub(crate) fn get(&self, namespace: &str, name: &str) -> Option<Arc<Revision>> {
        self.map.load().get(namespace)?.get(name).cloned()
    }

    pub(crate) fn all(&self) -> Vec<Arc<Revision>> {
        self.map
            .load()
            .values()
            .flat_map(|names| names.values().cloned())
            .collect()
    }

    /// Applies one revision's state from the source.
    pub(crate) fn apply(&self, update: &RevisionEndpoints) {
        let _write = self.write.lock();
        let (ns, name) = (update.namespace.as_str(), update.revision.as_str());
        if update.removed {
            self.remove_locked(ns, name);
            return;
        }
        let addresses = parse_addresses(update);
        if let Some(rev) = self.get(ns, name) {
            if rev.throttler.container_concurrency() != update.container_concurrency {
                // A revision is immutable in Knative; a source that says otherwise is
                // wrong, and changing capacity under held requests would be worse.
                tracing::warn!(
                    namespace = ns,
                    revision = name,
                    was = rev.throttler.container_concurrency(),
                    now = update.container_concurrency,
                    "containerConcurrency of a known revision changed; keeping the first"
                );
            }
            rev.addresses.send_replace(addresses);
            return;
        }
        let rev = self.create(update, addresses);
        let mut map = HashMap::clone(&self.map.load());
        map.entry(ns.to_owned())
            .or_default()
            .insert(name.to_owned(), rev);
        self.map.store(Arc::new(map));
        self.added.notify_waiters();
        tracing::info!(
            namespace = ns,
            revision = name,
            container_concurrency = update.container_concurrency,
            "revision known"
        );
    }

    /// The revision, waiting up to `limit` for it to become known: the source is
    /// followed asynchronously, so a route may name a revision a moment before it is here.
    pub(crate) async fn wait_for(
        &self,
        namespace: &str,
        name: &str,
        limit: std::time::Duration,
    ) -> Option<Arc<Revision>> {
        let wait = async {
            loop {
                let mut added = std::pin::pin!(self.added.notified());
                added.as_mut().enable();
                if let Some(rev) = self.get(namespace, name) {
                    return rev;
                }
                added.await;
            }
        };
        tokio::time::timeout(limit, wait).await.ok()
    }

    /// Forgets every revision not in `keep` (after a source's full state).
    pub(crate) fn retain(&self, keep: &HashSet<(String, String)>) {
        let _write = self.write.lock();
        for rev in self.all() {
            if !keep.contains(&(rev.namespace.clone(), rev.name.clone())) {
                self.remove_locked(&rev.namespace, &rev.name);
            }
        }
    }

    fn remove_locked(&self, ns: &str, name: &str) {
        let mut map = HashMap::clone(&self.map.load());
        let Some(rev) = map.get_mut(ns).and_then(|names| names.remove(name)) else {
            return;
        };
        if map.get(ns).is_some_and(HashMap::is_empty) {
            map.remove(ns);
        }
        self.map.store(Arc::new(map));
        rev.throttler.close();
        rev.metrics.forget();
        tracing::info!(namespace = ns, revision = name, "revision removed");
    }

    fn create(&self, update: &RevisionEndpoints, addresses: Vec<SocketAddr>) -> Arc<Revision> {
        let metrics = Arc::new(RevisionMetrics::new(
            &self.metrics,
            &update.namespace,
            &update.revision,
        ));
        let throttler = Arc::new(
            Throttler::new(update.container_concurrency, self.queue_depth)
                .with_metrics(Arc::clone(&metrics)),
        );
        let (addresses, watched) = watch::channel(addresses);
        let (quarantine, quarantined) = mpsc::unbounded_channel();
        let cc = update.container_concurrency as usize;
        let max_idle = if cc > 0 {
            cc.min(self.max_idle_per_pod)
        } else {
            self.max_idle_per_pod
        };
        let span = tracing::info_span!("prober", namespace = %update.namespace, revision = %update.revision);
        tokio::spawn(tracing::Instrument::instrument(
            prober::run(
                Arc::clone(&throttler),
                watched,
                quarantined,
                self.probe,
                move |dest| Upstream::new(dest, max_idle),
            ),
            span,
        ));
        Arc::new(Revision {
            namespace: update.namespace.clone(),
            name: update.revision.clone(),
            timeout: match update.timeout_seconds {
                0 => DEFAULT_TIMEOUT,
                s => Duration::from_secs(u64::from(s)),
            },
            throttler,
            report: Mutex::new(ReportEntry::default()),
            metrics,
            addresses,
            quarantine,
        })
    }
}

fn parse_addresses(update: &RevisionEndpoints) -> Vec<SocketAddr> {
    update
        .addresses
        .iter()
        .filter_map(|a| match a.parse() {
            Ok(addr) => Some(addr),
            Err(_) => {
                tracing::warn!(
                    namespace = %update.namespace, revision = %update.revision, address = %a,
                    "not an ip:port address; ignored"
                );
                None
            }
        })
        .collect()
}
