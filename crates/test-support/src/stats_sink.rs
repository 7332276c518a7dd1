//! A test autoscaler endpoint: accepts the `sluice.v1` stats stream and records every
//! report. It can be killed: open streams end with an error and the port closes.

use std::pin::pin;
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_proto::v1::stats_service_server::{StatsService, StatsServiceServer};
use sluice_proto::v1::{ReportSummary, StatReport};
use tokio::sync::{Notify, watch};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

#[derive(Clone, Default)]
struct Sink {
    reports: Arc<Mutex<Vec<StatReport>>>,
    arrived: Arc<Notify>,
    killed: Option<watch::Receiver<bool>>,
}

#[tonic::async_trait]
impl StatsService for Sink {
    async fn report(
        &self,
        request: Request<Streaming<StatReport>>,
    ) -> Result<Response<ReportSummary>, Status> {
        let mut stream = request.into_inner();
        let mut killed = self.killed.clone().expect("set at start");
        let mut accepted = 0;
        loop {
            tokio::select! {
                next = stream.next() => match next {
                    Some(Ok(report)) => {
                        accepted += 1;
                        self.reports.lock().push(report);
                        self.arrived.notify_waiters();
                    }
                    Some(Err(status)) => return Err(status),
                    None => return Ok(Response::new(ReportSummary { accepted })),
                },
                _ = killed.wait_for(|k| *k) => return Err(Status::unavailable("stats sink killed")),
            }
        }
    }
}

pub struct StatsSink {
    pub addr: std::net::SocketAddr,
    reports: Arc<Mutex<Vec<StatReport>>>,
    arrived: Arc<Notify>,
    kill: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl StatsSink {
    pub async fn start() -> Self {
        Self::serve(crate::loopback_listener().await)
    }

    /// On a given address (e.g. where a killed sink was), to test reconnection.
    pub async fn start_on(addr: std::net::SocketAddr) -> Self {
        Self::serve(
            tokio::net::TcpListener::bind(addr)
                .await
                .expect("rebind the sink's address"),
        )
    }

    fn serve(listener: tokio::net::TcpListener) -> Self {
        let addr = listener.local_addr().unwrap();
        let (kill, killed) = watch::channel(false);
        let sink = Sink {
            killed: Some(killed.clone()),
            ..Sink::default()
        };
        let (reports, arrived) = (Arc::clone(&sink.reports), Arc::clone(&sink.arrived));
        let mut killed_rx = killed;
        let task = tokio::spawn(async move {
            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
            let _ = tonic::transport::Server::builder()
                .add_service(StatsServiceServer::new(sink))
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = killed_rx.wait_for(|k| *k).await;
                })
                .await;
        });
        Self {
            addr,
            reports,
            arrived,
            kill,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn reports(&self) -> Vec<StatReport> {
        self.reports.lock().clone()
    }

    /// Waits until a report satisfies `pred`, at most `limit`.
    pub async fn wait_for(
        &self,
        limit: std::time::Duration,
        pred: impl Fn(&StatReport) -> bool,
    ) -> Option<StatReport> {
        let wait = async {
            loop {
                let mut arrived = pin!(self.arrived.notified());
                arrived.as_mut().enable();
                if let Some(r) = self.reports.lock().iter().find(|r| pred(r)) {
                    return r.clone();
                }
                arrived.await;
            }
        };
        tokio::time::timeout(limit, wait).await.ok()
    }

    /// Ends every stream with an error and closes the port.
    pub async fn kill(self) {
        let _ = self.kill.send(true);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.task).await;
    }
}
