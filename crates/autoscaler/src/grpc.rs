//! The gRPC face of the [`Autoscaler`]: `sluice.v1.StatsService/Report` (stats in) and
//! `sluice.v1.DecisionService/Watch` (decisions out).

use std::pin::Pin;

use sluice_proto::v1::decision_service_server::{DecisionService, DecisionServiceServer};
use sluice_proto::v1::stats_service_server::{StatsService, StatsServiceServer};
use sluice_proto::v1::{Decision, ReportSummary, StatReport, WatchDecisionsRequest};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::service::Autoscaler;

/// Decisions queued for one watcher's connection.
const WATCH_BUFFER: usize = 256;

/// Both services, ready to add to a tonic router.
pub fn services(
    autoscaler: &Autoscaler,
) -> (StatsServiceServer<Stats>, DecisionServiceServer<Decisions>) {
    (
        StatsServiceServer::new(Stats(autoscaler.clone())),
        DecisionServiceServer::new(Decisions(autoscaler.clone())),
    )
}

#[derive(Clone, Debug)]
pub struct Stats(Autoscaler);

#[derive(Clone, Debug)]
pub struct Decisions(Autoscaler);

#[tonic::async_trait]
impl StatsService for Stats {
    /// Records every report of the stream until it ends or the autoscaler shuts down. A
    /// bad report is counted and skipped, not fatal: one reporter's unknown revision must
    /// not cut off its others.
    async fn report(
        &self,
        request: Request<Streaming<StatReport>>,
    ) -> Result<Response<ReportSummary>, Status> {
        let peer = request.remote_addr();
        let mut stream = request.into_inner();
        let mut accepted = 0;
        let mut closed = std::pin::pin!(self.0.closed());
        loop {
            let next = tokio::select! {
                next = stream.message() => next,
                // Shutting down: end the stream; the reporter reconnects to whoever is next.
                () = &mut closed => return Ok(Response::new(ReportSummary { accepted })),
            };
            match next {
                Ok(Some(report)) => match self.0.record(&report) {
                    Ok(()) => accepted += 1,
                    Err(rejected) => tracing::debug!(?peer, %rejected, "stat skipped"),
                },
                Ok(None) => return Ok(Response::new(ReportSummary { accepted })),
                Err(status) => {
                    // The reporter went away mid-stream; what it sent is recorded.
                    tracing::debug!(?peer, %status, accepted, "stats stream broken");
                    return Err(status);
                }
            }
        }
    }
}

type DecisionStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Decision, Status>> + Send>>;

#[tonic::async_trait]
impl DecisionService for Decisions {
    type WatchStream = DecisionStream;

    async fn watch(
        &self,
        request: Request<WatchDecisionsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let namespace = Some(request.into_inner().namespace).filter(|ns| !ns.is_empty());
        let autoscaler = self.0.clone();
        // Subscribed before the state is read, so no change falls in between.
        let mut changes = autoscaler.subscribe();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let watchers = autoscaler.metrics().watchers.clone();
        tokio::spawn(async move {
            watchers.inc();
            let _ = forward(&autoscaler, namespace.as_deref(), &mut changes, &tx).await;
            watchers.dec();
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The state now, then each change; until the watcher goes (`Err`) or the autoscaler does.
async fn forward(
    autoscaler: &Autoscaler,
    namespace: Option<&str>,
    changes: &mut broadcast::Receiver<std::sync::Arc<Decision>>,
    tx: &mpsc::Sender<Result<Decision, Status>>,
) -> Result<(), mpsc::error::SendError<Result<Decision, Status>>> {
    let mut closed = std::pin::pin!(autoscaler.closed());
    for d in autoscaler.decisions(namespace) {
        tx.send(Ok(d)).await?;
    }
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            () = tx.closed() => return Ok(()),
            () = &mut closed => return Ok(()),
        };
        match change {
            Ok(d) => {
                if namespace.is_none_or(|ns| ns == d.namespace) {
                    tx.send(Ok(Decision::clone(&d))).await?;
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                // Too slow for the changes: the whole state again replaces them.
                tracing::debug!(missed, "decision watcher lagged; resending the state");
                for d in autoscaler.decisions(namespace) {
                    tx.send(Ok(d)).await?;
                }
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
