//! Probing a revision's pods before use (§2.6): each pod the source lists gets
//! `GET /healthz` with `K-Network-Probe: queue` at its queue-proxy and joins the
//! revision's trackers once that answers 200 `queue`. Pods that fail are probed again
//! every `frequency`; healthy ones are not, until a request fails to reach one.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sluice_core::upstream::Upstream;
use tokio::sync::{mpsc, watch};

use crate::throttler::Throttler;

/// Knative's `PROBE_TIMEOUT` and `PROBE_FREQUENCY`.
pub(crate) const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
pub(crate) const DEFAULT_PROBE_FREQUENCY: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug)]
pub(crate) struct ProbeConfig {
    pub(crate) timeout: Duration,
    pub(crate) frequency: Duration,
}

/// Follows one revision's listed pods until the revision is dropped.
pub(crate) async fn run(
    throttler: Arc<Throttler>,
    mut listed: watch::Receiver<Vec<SocketAddr>>,
    mut quarantined: mpsc::UnboundedReceiver<SocketAddr>,
    config: ProbeConfig,
    upstream: impl Fn(SocketAddr) -> Arc<Upstream>,
) {
    let mut healthy = BTreeSet::new();
    let mut published: Option<BTreeSet<SocketAddr>> = None;
    loop {
        let wanted: BTreeSet<SocketAddr> = listed.borrow_and_update().iter().copied().collect();
        healthy.retain(|a| wanted.contains(a));
        let unprobed: Vec<SocketAddr> = wanted.difference(&healthy).copied().collect();
        let results =
            futures_util::future::join_all(unprobed.iter().map(|a| probe(*a, config.timeout)))
                .await;
        for (addr, ok) in unprobed.iter().zip(results) {
            if ok {
                healthy.insert(*addr);
            } else {
                tracing::debug!(pod = %addr, "probe failed; retrying");
            }
        }
        if published.as_ref() != Some(&healthy) {
            let pods: Vec<SocketAddr> = healthy.iter().copied().collect();
            tracing::info!(healthy = pods.len(), listed = wanted.len(), "pods updated");
            throttler.update(&pods, &upstream);
            published = Some(healthy.clone());
        }
        let waiting = healthy.len() < wanted.len();
        tokio::select! {
            changed = listed.changed() => if changed.is_err() { return },
            Some(pod) = quarantined.recv() => {
                if healthy.remove(&pod) {
                    tracing::warn!(%pod, "pod unreachable; out of rotation until it passes a probe");
                }
            }
            () = tokio::time::sleep(config.frequency), if waiting => {}
        }
    }
}

/// Whether the queue-proxy at `addr` says its pod is ready.
pub(crate) async fn probe(addr: SocketAddr, timeout: Duration) -> bool {
    sluice_core::probe::queue_proxy_ready(addr, timeout).await
}
