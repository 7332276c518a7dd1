//! The stats push to the autoscaler: one `sluice.v1.StatsService/Report` client stream,
//! kept open and reconnected with backoff. The queue-proxy, the activator and the gateway feed it
//! through a bounded channel, so a slow or absent autoscaler never slows a request: a
//! full channel drops reports, which are stale by the time a reconnect could send them.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sluice_proto::Stat;
use sluice_proto::v1::stats_service_client::StatsServiceClient;
use sluice_proto::v1::{Source, StatReport};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// The sending side of a push; dropping every clone ends the stream.
#[derive(Clone, Debug)]
pub struct Pusher {
    reports: mpsc::Sender<StatReport>,
    connected: Arc<AtomicBool>,
}

// === impl Pusher ===

impl Pusher {
    /// Spawns the push task for `endpoint`, buffering at most `buffer` reports.
    pub fn spawn(endpoint: http::Uri, buffer: usize) -> Self {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let connected = Arc::new(AtomicBool::new(false));
        let span = tracing::info_span!("stats_push", autoscaler = %endpoint);
        tokio::spawn(push_loop(endpoint, rx, Arc::clone(&connected)).instrument(span));
        Self {
            reports: tx,
            connected,
        }
    }

    /// Queues a report without waiting; false if it was dropped (backlog or no task).
    pub fn try_send(&self, report: StatReport) -> bool {
        self.reports.try_send(report).is_ok()
    }

    /// Tells the autoscaler at once that `namespace/revision`, at zero, has a request:
    /// concurrency 1, one request, `poke` set. Dropped with a warning when backlogged.
    pub fn poke(&self, source: Source, pod_name: &str, namespace: &str, revision: &str) {
        let mut report = revision_stat(source, pod_name, namespace, revision, 1.0, 1.0);
        report.poke = true;
        if !self.try_send(report) {
            tracing::warn!(%namespace, %revision, "poke dropped: stats push backlogged");
        }
    }

    /// Whether the stream to the autoscaler is open right now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }
}

/// A front component's (activator's, gateway's) stat for a whole revision: what it, as
/// `pod_name`, counted for `namespace/revision` over the last period.
pub fn revision_stat(
    source: Source,
    pod_name: &str,
    namespace: &str,
    revision: &str,
    concurrency: f64,
    requests: f64,
) -> StatReport {
    StatReport {
        namespace: namespace.to_owned(),
        revision: revision.to_owned(),
        source: source.into(),
        stat: Some(Stat {
            pod_name: pod_name.to_owned(),
            average_concurrent_requests: concurrency,
            request_count: requests,
            ..Stat::default()
        }),
        poke: false,
    }
}

/// Keeps one client stream open to the autoscaler, reconnecting with backoff.
async fn push_loop(
    endpoint: http::Uri,
    mut reports: mpsc::Receiver<StatReport>,
    connected: Arc<AtomicBool>,
) {
    let mut backoff = RECONNECT_MIN;
    loop {
        let channel = tonic::transport::Endpoint::from(endpoint.clone())
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect()
            .await;
        let channel = match channel {
            Ok(channel) => channel,
            Err(error) => {
                tracing::debug!(%error, ?backoff, "autoscaler unreachable");
                if !sleep_dropping(&mut reports, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        tracing::info!(autoscaler = %endpoint, "stats stream connected");
        connected.store(true, Ordering::Release);
        let (tx, rx) = mpsc::channel(reports.max_capacity());
        let mut client = StatsServiceClient::new(channel);
        let mut call = std::pin::pin!(client.report(ReceiverStream::new(rx)));
        let ended = loop {
            tokio::select! {
                result = &mut call => break result.err(),
                next = reports.recv() => match next {
                    None => return,
                    Some(report) => {
                        if tx.send(report).await.is_err() {
                            break None;
                        }
                        backoff = RECONNECT_MIN;
                    }
                },
            }
        };
        connected.store(false, Ordering::Release);
        tracing::warn!(error = ?ended.map(|s| s.message().to_owned()), "stats stream ended; reconnecting");
        if !sleep_dropping(&mut reports, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Sleeps while discarding reports; false once every sender is gone.
async fn sleep_dropping(reports: &mut mpsc::Receiver<StatReport>, pause: Duration) -> bool {
    let deadline = tokio::time::sleep(pause);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => return true,
            next = reports.recv() => if next.is_none() { return false },
        }
    }
}
