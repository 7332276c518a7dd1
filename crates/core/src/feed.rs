//! Feeds: how the control plane's state reaches the data plane. A [`Feed`] holds a set of
//! keyed items (a revision's endpoints, a service's route) and broadcasts each change; a
//! watcher gets the whole state, a `synced` marker, then every change, and one that falls
//! behind gets the whole state again, so that a removal is never missed.
//!
//! The other side is a [`Follower`]: fed in-process ([`follow_local`]) or over gRPC
//! ([`follow_remote`]), it keeps its last state while the source is away and, after each
//! whole state, forgets what that state did not list.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_proto::v1;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::{Stream, StreamExt};

/// Changes a slow watcher may fall behind by before it is sent the whole state again.
const CHANGES_BUFFER: usize = 1024;
/// Events queued per watcher before the feed waits for it.
const WATCHER_BUFFER: usize = 64;
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What a feed carries: items that replace the item with the same key.
pub trait Item: Clone + PartialEq + fmt::Debug + Send + Sync + 'static {
    fn key(&self) -> ItemKey;
    /// The item says its key is gone.
    fn removed(&self) -> bool;
}

/// An item's identity: its kind (a feed may carry several), namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ItemKey {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// One message of a watch.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<T> {
    Item(T),
    /// The whole state has been sent.
    Synced,
}

/// The state, and a broadcast of each change to it. Cheap to clone, every clone the same.
#[derive(Debug)]
pub struct Feed<T> {
    inner: Arc<Inner<T>>,
}

#[derive(Debug)]
struct Inner<T> {
    state: Mutex<BTreeMap<ItemKey, T>>,
    changes: broadcast::Sender<T>,
}

/// What keeps a copy of a feed's state.
pub trait Follower<T>: Send {
    fn apply(&mut self, item: &T);
    /// A whole state ended: forget everything whose key it did not list.
    fn retain(&mut self, listed: &HashSet<ItemKey>);
    /// A remote source answered with its whole state (after a start or a reconnect).
    fn synced(&mut self) {}
}

/// Where a follower's feed is: in this process, or a control plane's gRPC service.
#[derive(Clone, Debug)]
pub enum Source<T> {
    InProcess(Feed<T>),
    /// `http://host:port`.
    Grpc(http::Uri),
}

/// Keeps `follower` equal to `source` for as long as the task runs; `watch` opens one
/// remote watch (see [`follow_remote`]).
pub async fn follow<T, W, Fut>(
    what: &'static str,
    source: Source<T>,
    watch: W,
    follower: &mut impl Follower<T>,
) where
    T: Item,
    W: FnMut(tonic::transport::Channel) -> Fut,
    Fut: Future<Output = Result<RemoteEvents<T>, tonic::Status>>,
{
    match source {
        Source::InProcess(feed) => follow_local(&feed, follower).await,
        Source::Grpc(uri) => follow_remote(what, uri, watch, follower).await,
    }
}

/// A connected remote watch: its events, as they come.
pub type RemoteEvents<T> = Pin<Box<dyn Stream<Item = Result<Event<T>, tonic::Status>> + Send>>;

// === impl Feed ===

impl<T> Clone for Feed<T> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<T: Item> Default for Feed<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Item> Feed<T> {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(BTreeMap::new()),
                changes: broadcast::channel(CHANGES_BUFFER).0,
            }),
        }
    }

    /// Replaces one item, or removes its key. An item equal to the one known, or the
    /// removal of an unknown key, is not sent; returns whether anything was.
    pub fn publish(&self, item: T) -> bool {
        let key = item.key();
        let mut state = self.inner.state.lock();
        let same = if item.removed() {
            state.remove(&key).is_none()
        } else {
            state.insert(key, item.clone()).as_ref() == Some(&item)
        };
        if !same {
            // Sent under the lock, so a subscriber's snapshot and its changes never
            // overlap.
            let _ = self.inner.changes.send(item);
        }
        !same
    }

    /// The items of `namespace` (all when empty) now, and the changes from now on.
    pub fn subscribe(&self, namespace: &str) -> (Vec<T>, broadcast::Receiver<T>) {
        let state = self.inner.state.lock();
        let snapshot = state
            .iter()
            .filter(|(k, _)| namespace.is_empty() || k.namespace == namespace)
            .map(|(_, v)| v.clone())
            .collect();
        (snapshot, self.inner.changes.subscribe())
    }

    /// The whole state, the marker, then the changes; a watcher that lags starts over
    /// with the whole state. Ends when the receiver is dropped.
    pub fn events(&self, namespace: String) -> impl Stream<Item = Event<T>> + Send + 'static {
        let feed = self.clone();
        let (tx, rx) = mpsc::channel(WATCHER_BUFFER);
        tokio::spawn(async move {
            loop {
                let (snapshot, mut changes) = feed.subscribe(&namespace);
                for item in snapshot {
                    if tx.send(Event::Item(item)).await.is_err() {
                        return;
                    }
                }
                if tx.send(Event::Synced).await.is_err() {
                    return;
                }
                loop {
                    match changes.recv().await {
                        Ok(item) if namespace.is_empty() || item.key().namespace == namespace => {
                            if tx.send(Event::Item(item)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            }
        });
        tokio_stream::wrappers::ReceiverStream::new(rx)
    }
}

/// Keeps `follower` equal to `feed`, in the same process, until the feed is gone.
pub async fn follow_local<T: Item>(feed: &Feed<T>, follower: &mut impl Follower<T>) {
    loop {
        let (snapshot, mut changes) = feed.subscribe("");
        let mut listed = HashSet::new();
        for item in &snapshot {
            listed.insert(item.key());
            follower.apply(item);
        }
        follower.retain(&listed);
        follower.synced();
        loop {
            match changes.recv().await {
                Ok(item) => follower.apply(&item),
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// Keeps `follower` equal to a remote feed, reconnecting with back-off for as long as the
/// task runs. `watch` opens one watch on a connected channel. While the source is away
/// the follower keeps its last state.
pub async fn follow_remote<T, W, Fut>(
    what: &'static str,
    uri: http::Uri,
    mut watch: W,
    follower: &mut impl Follower<T>,
) where
    T: Item,
    W: FnMut(tonic::transport::Channel) -> Fut,
    Fut: Future<Output = Result<RemoteEvents<T>, tonic::Status>>,
{
    let mut backoff = RECONNECT_MIN;
    loop {
        match watch_once(&uri, &mut watch, follower, &mut backoff).await {
            Ok(()) => tracing::warn!(source = %uri, "{what} stream ended; reconnecting"),
            Err(error) => {
                tracing::warn!(source = %uri, %error, ?backoff, "{what} source unreachable");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

async fn watch_once<T, W, Fut>(
    uri: &http::Uri,
    watch: &mut W,
    follower: &mut impl Follower<T>,
    backoff: &mut Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    T: Item,
    W: FnMut(tonic::transport::Channel) -> Fut,
    Fut: Future<Output = Result<RemoteEvents<T>, tonic::Status>>,
{
    let channel = tonic::transport::Endpoint::from(uri.clone())
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut events = watch(channel).await?;
    tracing::info!(source = %uri, "stream connected");
    let mut answered = false;
    // The keys of the whole state being received; `None` once it has ended.
    let mut listing = Some(HashSet::new());
    while let Some(event) = events.next().await {
        let event = event?;
        if !answered {
            // The source answered: the next loss of it starts the back-off over.
            answered = true;
            *backoff = RECONNECT_MIN;
        }
        match event {
            Event::Item(item) => {
                if let Some(listed) = listing.as_mut()
                    && !item.removed()
                {
                    listed.insert(item.key());
                }
                follower.apply(&item);
            }
            Event::Synced => {
                if let Some(listed) = listing.take() {
                    follower.retain(&listed);
                    follower.synced();
                }
            }
        }
    }
    Ok(())
}

/// One watch of a control plane's `EndpointsService` (for [`follow_remote`]).
pub async fn watch_endpoints(
    channel: tonic::transport::Channel,
) -> Result<RemoteEvents<v1::RevisionEndpoints>, tonic::Status> {
    let stream = v1::endpoints_service_client::EndpointsServiceClient::new(channel)
        .watch(v1::WatchEndpointsRequest::default())
        .await?
        .into_inner();
    Ok(Box::pin(stream.map(|e| e.map(Event::from))))
}

/// One watch of an autoscaler's `DecisionService` (for [`follow_remote`]): every
/// revision's decision, then each change. It has no marker, so a follower of it is
/// never asked to forget anything.
pub async fn watch_decisions(
    channel: tonic::transport::Channel,
) -> Result<RemoteEvents<v1::Decision>, tonic::Status> {
    let stream = v1::decision_service_client::DecisionServiceClient::new(channel)
        .watch(v1::WatchDecisionsRequest::default())
        .await?
        .into_inner();
    Ok(Box::pin(stream.map(|d| d.map(Event::Item))))
}

/// One watch of a node's `NodeService` (for [`follow_remote`]): its pods, for the control
/// plane that drives it.
pub async fn watch_pods(
    channel: tonic::transport::Channel,
) -> Result<RemoteEvents<v1::WorkloadPods>, tonic::Status> {
    let stream = v1::node_service_client::NodeServiceClient::new(channel)
        .watch(v1::WatchPodsRequest::default())
        .await?
        .into_inner();
    Ok(Box::pin(stream.map(|e| e.map(Event::from))))
}

/// One watch of a control plane's `ConfigService` (for [`follow_remote`]).
pub async fn watch_config(
    channel: tonic::transport::Channel,
) -> Result<RemoteEvents<v1::ConfigMap>, tonic::Status> {
    let stream = v1::config_service_client::ConfigServiceClient::new(channel)
        .watch(v1::WatchConfigRequest::default())
        .await?
        .into_inner();
    Ok(Box::pin(stream.map(|e| e.map(Event::from))))
}

/// One watch of a control plane's `RoutesService` (for [`follow_remote`]).
pub async fn watch_routes(
    channel: tonic::transport::Channel,
) -> Result<RemoteEvents<Route>, tonic::Status> {
    let stream = v1::routes_service_client::RoutesServiceClient::new(channel)
        .watch(v1::WatchRoutesRequest::default())
        .await?
        .into_inner();
    Ok(Box::pin(stream.map(|e| e.map(Event::from))))
}

// === impl Item for the wire types ===

impl Item for v1::Decision {
    fn key(&self) -> ItemKey {
        ItemKey {
            kind: "decision",
            namespace: self.namespace.clone(),
            name: self.revision.clone(),
        }
    }

    fn removed(&self) -> bool {
        self.removed
    }
}

impl Item for v1::RevisionEndpoints {
    fn key(&self) -> ItemKey {
        ItemKey {
            kind: "revision",
            namespace: self.namespace.clone(),
            name: self.revision.clone(),
        }
    }

    fn removed(&self) -> bool {
        self.removed
    }
}

/// A route: one service's split or one revision's backends.
#[derive(Clone, Debug, PartialEq)]
pub enum Route {
    Service(v1::ServiceRoute),
    Revision(v1::RevisionRoute),
}

impl Item for Route {
    fn key(&self) -> ItemKey {
        match self {
            Self::Service(s) => ItemKey {
                kind: "service",
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            },
            Self::Revision(r) => ItemKey {
                kind: "revision",
                namespace: r.namespace.clone(),
                name: r.revision.clone(),
            },
        }
    }

    fn removed(&self) -> bool {
        match self {
            Self::Service(s) => s.removed,
            Self::Revision(r) => r.removed,
        }
    }
}

impl From<Event<Route>> for v1::RoutesEvent {
    fn from(e: Event<Route>) -> Self {
        match e {
            Event::Item(Route::Service(s)) => Self {
                service: Some(s),
                ..Self::default()
            },
            Event::Item(Route::Revision(r)) => Self {
                revision: Some(r),
                ..Self::default()
            },
            Event::Synced => Self {
                synced: true,
                ..Self::default()
            },
        }
    }
}

impl From<v1::RoutesEvent> for Event<Route> {
    /// A message with neither a service nor a revision is the marker.
    fn from(e: v1::RoutesEvent) -> Self {
        match (e.service, e.revision) {
            (Some(s), _) => Self::Item(Route::Service(s)),
            (None, Some(r)) => Self::Item(Route::Revision(r)),
            (None, None) => Self::Synced,
        }
    }
}

impl From<Event<v1::RevisionEndpoints>> for v1::EndpointsEvent {
    fn from(e: Event<v1::RevisionEndpoints>) -> Self {
        match e {
            Event::Item(r) => Self {
                revision: Some(r),
                synced: false,
            },
            Event::Synced => Self {
                revision: None,
                synced: true,
            },
        }
    }
}

impl From<v1::EndpointsEvent> for Event<v1::RevisionEndpoints> {
    fn from(e: v1::EndpointsEvent) -> Self {
        match e.revision {
            Some(r) => Self::Item(r),
            None => Self::Synced,
        }
    }
}

impl Item for v1::ConfigMap {
    fn key(&self) -> ItemKey {
        ItemKey {
            kind: "configmap",
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    fn removed(&self) -> bool {
        self.removed
    }
}

impl From<Event<v1::ConfigMap>> for v1::ConfigEvent {
    fn from(e: Event<v1::ConfigMap>) -> Self {
        match e {
            Event::Item(c) => Self {
                config_map: Some(c),
                synced: false,
            },
            Event::Synced => Self {
                config_map: None,
                synced: true,
            },
        }
    }
}

impl From<v1::ConfigEvent> for Event<v1::ConfigMap> {
    fn from(e: v1::ConfigEvent) -> Self {
        match e.config_map {
            Some(c) => Self::Item(c),
            None => Self::Synced,
        }
    }
}

impl Item for v1::WorkloadPods {
    fn key(&self) -> ItemKey {
        ItemKey {
            kind: "workload",
            namespace: self.namespace.clone(),
            name: self.revision.clone(),
        }
    }

    fn removed(&self) -> bool {
        self.removed
    }
}

impl From<Event<v1::WorkloadPods>> for v1::PodsEvent {
    fn from(e: Event<v1::WorkloadPods>) -> Self {
        match e {
            Event::Item(w) => Self {
                workload: Some(w),
                synced: false,
            },
            Event::Synced => Self {
                workload: None,
                synced: true,
            },
        }
    }
}

impl From<v1::PodsEvent> for Event<v1::WorkloadPods> {
    fn from(e: v1::PodsEvent) -> Self {
        match e.workload {
            Some(w) => Self::Item(w),
            None => Self::Synced,
        }
    }
}

#[cfg(test)]
mod tests;
