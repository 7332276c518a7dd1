//! Knative's activator probe: a revision is scaled to zero only while an activator answers,
//! so that someone is left to hold its requests. The autoscaler probes the activator's
//! address every second (`GET /healthz` with `K-Network-Probe: activator` and
//! `User-Agent: Knative-Autoscaling-Probe`, expecting 200 and the body `activator`), and
//! [`ProbedScaler`] says so to the KPA, which keeps the last pods while it fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sluice_core::headers as kh;

use crate::kpa::PodCounts;
use crate::scaler::{RevisionKey, Scaler};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// The activator's health as last probed.
#[derive(Debug)]
pub struct ActivatorProbe {
    url: http::Uri,
    ok: AtomicBool,
}

// === impl ActivatorProbe ===

impl ActivatorProbe {
    /// Probes `{base}/healthz`; not ready until a probe has passed.
    pub fn new(base: &http::Uri) -> Arc<Self> {
        let url = format!("{}/healthz", base.to_string().trim_end_matches('/'))
            .parse()
            .unwrap_or_else(|_| base.clone());
        Arc::new(Self {
            url,
            ok: AtomicBool::new(false),
        })
    }

    /// Whether the last probe passed.
    pub fn ready(&self) -> bool {
        self.ok.load(Ordering::Acquire)
    }

    /// Probes every `period` until the task is aborted, logging each change.
    pub async fn run(self: Arc<Self>, period: Duration) {
        let client: Client<HttpConnector, Empty<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let result = tokio::time::timeout(PROBE_TIMEOUT, self.probe(&client))
                .await
                .unwrap_or_else(|_| Err(format!("no answer in {PROBE_TIMEOUT:?}")));
            let ok = result.is_ok();
            if self.ok.swap(ok, Ordering::AcqRel) != ok {
                match result {
                    Ok(()) => tracing::info!(url = %self.url, "activator answers its probe"),
                    Err(why) => tracing::warn!(
                        url = %self.url,
                        "activator probe failed, nothing is scaled to zero meanwhile: {why}"
                    ),
                }
            }
        }
    }

    async fn probe(&self, client: &Client<HttpConnector, Empty<Bytes>>) -> Result<(), String> {
        let req = http::Request::get(&self.url)
            .header(kh::PROBE, kh::ACTIVATOR)
            .header(http::header::USER_AGENT, kh::AUTOSCALING_UA)
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let rsp = client.request(req).await.map_err(|e| e.to_string())?;
        let status = rsp.status();
        let body = rsp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        if status == http::StatusCode::OK && body.as_ref() == kh::ACTIVATOR.as_bytes() {
            Ok(())
        } else {
            Err(format!(
                "{status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(200)])
            ))
        }
    }
}

/// A scaler whose `activator_ready` is the probe's (and the inner scaler's).
pub struct ProbedScaler {
    pub inner: Arc<dyn Scaler>,
    pub probe: Arc<ActivatorProbe>,
}

impl std::fmt::Debug for ProbedScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProbedScaler")
            .field("probe", &self.probe)
            .finish_non_exhaustive()
    }
}

impl Scaler for ProbedScaler {
    fn pods(&self, revision: &RevisionKey) -> Option<PodCounts> {
        self.inner.pods(revision)
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        self.inner.scale(revision, replicas);
    }

    fn activator_ready(&self) -> bool {
        self.probe.ready() && self.inner.activator_ready()
    }
}

#[cfg(test)]
mod tests;
