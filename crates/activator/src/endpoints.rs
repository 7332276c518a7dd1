//! Where the activator learns revisions and their pods: an endpoint source, either
//! in-process ([`EndpointsPublisher`], which the local runtime and tests drive) or over
//! gRPC (`sluice.v1.EndpointsService/Watch`, which the same publisher serves). Either way
//! a watcher gets the whole state, a `synced` marker, then every change.

use std::collections::{BTreeMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use parking_lot::Mutex;
use sluice_proto::v1::endpoints_service_client::EndpointsServiceClient;
use sluice_proto::v1::endpoints_service_server::{EndpointsService, EndpointsServiceServer};
use sluice_proto::v1::{EndpointsEvent, RevisionEndpoints, WatchEndpointsRequest};
use tokio::sync::broadcast;
use tokio_stream::StreamExt;

use crate::revision::Registry;

/// Changes a slow watcher may fall behind by before it is sent the whole state again.
const CHANGES_BUFFER: usize = 1024;
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// Where an activator gets its endpoints.
#[derive(Clone, Debug)]
pub enum EndpointsSource {
    /// A publisher in the same process.
    InProcess(EndpointsPublisher),
    /// An `EndpointsService` at this address (`http://host:port`).
    Grpc(http::Uri),
}

/// The state of every revision, and a broadcast of each change to it. Cheap to clone.
#[derive(Clone, Debug)]
pub struct EndpointsPublisher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<BTreeMap<(String, String), RevisionEndpoints>>,
    changes: broadcast::Sender<RevisionEndpoints>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<EndpointsEvent, tonic::Status>> + Send>>;

// === impl EndpointsPublisher ===

impl Default for EndpointsPublisher {
    fn default() -> Self {
        Self::new()
    }
}

impl EndpointsPublisher {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(BTreeMap::new()),
                changes: broadcast::channel(CHANGES_BUFFER).0,
            }),
        }
    }

    /// Replaces what is known of one revision (or removes it, with `removed`).
    pub fn publish(&self, revision: RevisionEndpoints) {
        let mut state = self.inner.state.lock();
        let key = (revision.namespace.clone(), revision.revision.clone());
        if revision.removed {
            state.remove(&key);
        } else {
            state.insert(key, revision.clone());
        }
        // Sent under the lock, so a subscriber's snapshot and its changes never overlap.
        let _ = self.inner.changes.send(revision);
    }

    /// The revisions of `namespace` (all when empty) now, and the changes from now on.
    pub fn subscribe(
        &self,
        namespace: &str,
    ) -> (
        Vec<RevisionEndpoints>,
        broadcast::Receiver<RevisionEndpoints>,
    ) {
        let state = self.inner.state.lock();
        let snapshot = state
            .values()
            .filter(|r| namespace.is_empty() || r.namespace == namespace)
            .cloned()
            .collect();
        (snapshot, self.inner.changes.subscribe())
    }

    /// The gRPC service that serves this publisher's state to remote activators.
    pub fn service(&self) -> EndpointsServiceServer<Self> {
        EndpointsServiceServer::new(self.clone())
    }

    /// Snapshot, marker, changes; a watcher that lags starts over with a new snapshot.
    fn events(&self, namespace: String) -> EventStream {
        let publisher = self.clone();
        Box::pin(async_stream(move |tx| async move {
            loop {
                let (snapshot, mut changes) = publisher.subscribe(&namespace);
                for revision in snapshot {
                    if tx.send(Ok(revision_event(revision))).await.is_err() {
                        return;
                    }
                }
                let synced = EndpointsEvent {
                    revision: None,
                    synced: true,
                };
                if tx.send(Ok(synced)).await.is_err() {
                    return;
                }
                loop {
                    match changes.recv().await {
                        Ok(r) if namespace.is_empty() || r.namespace == namespace => {
                            if tx.send(Ok(revision_event(r))).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        }))
    }
}

fn revision_event(revision: RevisionEndpoints) -> EndpointsEvent {
    EndpointsEvent {
        revision: Some(revision),
        synced: false,
    }
}

/// A stream fed by a task through a small channel (no extra dependency for generators).
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<EndpointsEvent, tonic::Status>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<EndpointsEvent, tonic::Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[tonic::async_trait]
impl EndpointsService for EndpointsPublisher {
    type WatchStream = EventStream;

    async fn watch(
        &self,
        request: tonic::Request<WatchEndpointsRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Ok(tonic::Response::new(
            self.events(request.into_inner().namespace),
        ))
    }
}

/// Keeps `registry` equal to what `source` says, until the process ends.
pub(crate) async fn follow(source: EndpointsSource, registry: Arc<Registry>) {
    match source {
        EndpointsSource::InProcess(publisher) => follow_local(&publisher, &registry).await,
        EndpointsSource::Grpc(uri) => follow_grpc(uri, &registry).await,
    }
}

async fn follow_local(publisher: &EndpointsPublisher, registry: &Registry) {
    loop {
        let (snapshot, mut changes) = publisher.subscribe("");
        let mut sync = FullState::default();
        for r in &snapshot {
            sync.see(registry, r);
        }
        sync.finish(registry);
        loop {
            match changes.recv().await {
                Ok(r) => registry.apply(&r),
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

async fn follow_grpc(uri: http::Uri, registry: &Registry) {
    let mut backoff = RECONNECT_MIN;
    loop {
        match watch_once(&uri, registry, &mut backoff).await {
            Ok(()) => tracing::warn!(source = %uri, "endpoint stream ended; reconnecting"),
            Err(error) => {
                tracing::warn!(source = %uri, %error, ?backoff, "endpoint source unreachable")
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

async fn watch_once(
    uri: &http::Uri,
    registry: &Registry,
    backoff: &mut Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = tonic::transport::Endpoint::from(uri.clone())
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut stream = EndpointsServiceClient::new(channel)
        .watch(WatchEndpointsRequest::default())
        .await?
        .into_inner();
    tracing::info!(source = %uri, "endpoint stream connected");
    let mut sync = Some(FullState::default());
    while let Some(event) = stream.next().await {
        let event = event?;
        if let Some(revision) = &event.revision {
            match sync.as_mut() {
                Some(s) => s.see(registry, revision),
                None => registry.apply(revision),
            }
        }
        if event.synced
            && let Some(s) = sync.take()
        {
            s.finish(registry);
            *backoff = RECONNECT_MIN;
        }
    }
    Ok(())
}

/// The revisions a full state listed, so the ones it did not can be forgotten.
#[derive(Default)]
struct FullState(HashSet<(String, String)>);

impl FullState {
    fn see(&mut self, registry: &Registry, revision: &RevisionEndpoints) {
        if !revision.removed {
            self.0
                .insert((revision.namespace.clone(), revision.revision.clone()));
        }
        registry.apply(revision);
    }

    fn finish(self, registry: &Registry) {
        registry.retain(&self.0);
    }
}
