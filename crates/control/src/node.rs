//! The node: a machine's pods behind `sluice.v1.NodeService`, so that they belong to a
//! process other than the control plane's, as a cluster's pods belong to its kubelets.
//! `sluice run --distributed` serves its [`Supervisor`] with [`serve`]; `sluice control
//! --node URL` drives it through [`RemoteNode`], a [`Backend`] like any other. A control
//! plane that restarts finds the node's workloads and adopts them
//! ([`crate::ControlPlane::adopt`]): the pods keep running and serving.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_core::RevisionKey;
use sluice_core::feed::{self, Feed, Follower, ItemKey};
use sluice_proto::v1;
use sluice_proto::v1::node_service_client::NodeServiceClient;
use sluice_proto::v1::node_service_server::{NodeService, NodeServiceServer};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::TcpListenerStream;

use crate::backend::{Backend, PodStatus};
use crate::grpc::Watch;
use crate::local::Supervisor;
use crate::spec::{PodSpec, RevisionSpec};

/// How often the served pods are read again, for the changes the supervisor does not
/// announce (a pod starting or stopping, a failure).
const REFRESH: Duration = Duration::from_millis(250);
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

// === the wire ===

/// A revision's spec as the node runs it.
pub fn workload(spec: &RevisionSpec) -> v1::Workload {
    let pod = &spec.pod;
    v1::Workload {
        namespace: pod.namespace.clone(),
        service: pod.service.clone(),
        revision: pod.revision.clone(),
        argv: pod.argv.clone(),
        env: pod
            .env
            .iter()
            .map(|(name, value)| v1::EnvVar {
                name: name.clone(),
                value: value.clone(),
            })
            .collect(),
        container_concurrency: pod.container_concurrency,
        timeout_seconds: pod.timeout_seconds,
        response_start_timeout_seconds: pod.response_start_timeout_seconds,
        idle_timeout_seconds: pod.idle_timeout_seconds,
        readiness_probe_json: pod
            .readiness_probe
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        initial_scale: spec.initial_scale,
    }
}

/// The spec a workload from the wire asks for; what only the control plane uses
/// (annotations, reporting) is left empty.
pub fn spec_of(w: v1::Workload) -> Result<RevisionSpec, String> {
    if w.argv.is_empty() {
        return Err(format!(
            "workload {}/{}: no command",
            w.namespace, w.revision
        ));
    }
    let readiness_probe = match w.readiness_probe_json.as_str() {
        "" => None,
        json => Some(serde_json::from_str(json).map_err(|e| {
            format!(
                "workload {}/{}: readiness probe: {e}",
                w.namespace, w.revision
            )
        })?),
    };
    Ok(RevisionSpec {
        pod: PodSpec {
            namespace: w.namespace,
            service: w.service,
            revision: w.revision,
            argv: w.argv,
            env: w.env.into_iter().map(|e| (e.name, e.value)).collect(),
            container_concurrency: w.container_concurrency,
            timeout_seconds: w.timeout_seconds,
            response_start_timeout_seconds: w.response_start_timeout_seconds,
            idle_timeout_seconds: w.idle_timeout_seconds,
            readiness_probe,
            // A node runs processes from `argv`; the container as written is for image
            // backends.
            container: None,
        },
        initial_scale: w.initial_scale,
        report: false,
        annotations: Default::default(),
        template: None,
    })
}

/// One revision's pods as the node reports them.
fn pods_of(supervisor: &Supervisor, key: &RevisionKey, replicas: u32) -> v1::WorkloadPods {
    v1::WorkloadPods {
        namespace: key.namespace.clone(),
        revision: key.name.clone(),
        removed: false,
        pods: supervisor
            .pods(key)
            .into_iter()
            .map(|p| v1::Pod {
                name: p.name,
                address: p.address.to_string(),
                state: p.state,
            })
            .collect(),
        ready: supervisor
            .ready(key)
            .iter()
            .map(ToString::to_string)
            .collect(),
        last_error: supervisor.last_error(key).unwrap_or_default(),
        replicas,
    }
}

// === the server ===

/// Serves `supervisor`'s pods on `listener` until `shutdown` completes. `changed` is the
/// channel the supervisor reports ready-set changes on.
pub async fn serve(
    listener: TcpListener,
    supervisor: Supervisor,
    mut changed: mpsc::UnboundedReceiver<RevisionKey>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop_tx, stop) = watch::channel(false);
    let feed: Feed<v1::WorkloadPods> = Feed::new();
    let publisher = tokio::spawn({
        let (supervisor, feed) = (supervisor.clone(), feed.clone());
        async move {
            let mut shown: HashSet<RevisionKey> = HashSet::new();
            let mut tick = tokio::time::interval(REFRESH);
            loop {
                tokio::select! {
                    key = changed.recv() => if key.is_none() { return },
                    _ = tick.tick() => {}
                }
                // Every revision, so that one event brings every change since the last.
                let now = supervisor.revisions();
                for (key, replicas) in &now {
                    feed.publish(pods_of(&supervisor, key, *replicas));
                }
                let running: HashSet<RevisionKey> = now.into_iter().map(|(k, _)| k).collect();
                for gone in shown.difference(&running) {
                    feed.publish(v1::WorkloadPods {
                        namespace: gone.namespace.clone(),
                        revision: gone.name.clone(),
                        removed: true,
                        ..v1::WorkloadPods::default()
                    });
                }
                shown = running;
            }
        }
    });
    let stopping = async move {
        shutdown.await;
        stop_tx.send_replace(true);
    };
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .add_service(NodeServiceServer::new(Node {
            supervisor,
            watch: Watch::new(feed, stop),
        }))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stopping)
        .await;
    publisher.abort();
    served
}

struct Node {
    supervisor: Supervisor,
    watch: Watch<v1::WorkloadPods>,
}

type Events = Pin<Box<dyn Stream<Item = Result<v1::PodsEvent, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for Node {
    async fn create(
        &self,
        request: tonic::Request<v1::Workload>,
    ) -> Result<tonic::Response<v1::NodeReply>, tonic::Status> {
        let spec = spec_of(request.into_inner()).map_err(tonic::Status::invalid_argument)?;
        self.supervisor.create(&spec);
        Ok(tonic::Response::new(v1::NodeReply {}))
    }

    async fn delete(
        &self,
        request: tonic::Request<v1::WorkloadRef>,
    ) -> Result<tonic::Response<v1::NodeReply>, tonic::Status> {
        let r = request.into_inner();
        self.supervisor
            .delete(&RevisionKey::new(&r.namespace, &r.revision));
        Ok(tonic::Response::new(v1::NodeReply {}))
    }

    async fn scale(
        &self,
        request: tonic::Request<v1::ScaleRequest>,
    ) -> Result<tonic::Response<v1::NodeReply>, tonic::Status> {
        let r = request.into_inner();
        self.supervisor
            .scale(&RevisionKey::new(&r.namespace, &r.revision), r.replicas);
        Ok(tonic::Response::new(v1::NodeReply {}))
    }

    type WatchStream = Events;

    async fn watch(
        &self,
        _: tonic::Request<v1::WatchPodsRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Ok(tonic::Response::new(self.watch.events(String::new())))
    }
}

// === the client ===

/// A node in another process, as a control plane's backend. Its calls are queued and
/// sent in order (again until the node answers); what it runs is known from its watch.
/// Cheap to clone, every clone the same node.
#[derive(Clone, Debug)]
pub struct RemoteNode {
    inner: Arc<Remote>,
}

#[derive(Debug)]
struct Remote {
    calls: mpsc::UnboundedSender<Call>,
    /// The node's workloads, as its watch last said.
    workloads: Mutex<HashMap<RevisionKey, v1::WorkloadPods>>,
    /// A revision's ready pods changed: the control plane reads them again.
    changed: mpsc::UnboundedSender<RevisionKey>,
    /// The watch has delivered the node's whole state once.
    synced: watch::Sender<bool>,
}

#[derive(Debug)]
enum Call {
    Create(v1::Workload),
    Delete(v1::WorkloadRef),
    Scale(v1::ScaleRequest),
}

impl RemoteNode {
    /// The node at `uri`, and the task that talks to it (run it for as long as the node is
    /// used). Ready-set changes are reported on `changed`.
    pub fn new(
        uri: http::Uri,
        changed: mpsc::UnboundedSender<RevisionKey>,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (calls, calls_rx) = mpsc::unbounded_channel();
        let node = Self {
            inner: Arc::new(Remote {
                calls,
                workloads: Mutex::new(HashMap::new()),
                changed,
                synced: watch::Sender::new(false),
            }),
        };
        let channel = tonic::transport::Endpoint::from(uri.clone())
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .connect_lazy();
        let mut follower = node.clone();
        let task = async move {
            tokio::join!(
                send_calls(NodeServiceClient::new(channel), calls_rx),
                feed::follow_remote("node", uri, feed::watch_pods, &mut follower),
            );
        };
        (node, task)
    }

    /// Waits until the node's whole state is known, for at most `limit`. Whether it is.
    pub async fn synced(&self, limit: Duration) -> bool {
        let mut rx = self.inner.synced.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|s| *s))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The node's workloads with the replicas set on each, as last known.
    pub fn workloads(&self) -> Vec<(RevisionKey, u32)> {
        self.inner
            .workloads
            .lock()
            .iter()
            .map(|(k, w)| (k.clone(), w.replicas))
            .collect()
    }

    fn call(&self, call: Call) {
        // The receiver lives as long as the task; once that has stopped, so has the
        // control plane.
        let _ = self.inner.calls.send(call);
    }

    fn with<T>(&self, key: &RevisionKey, f: impl FnOnce(&v1::WorkloadPods) -> T) -> Option<T> {
        self.inner.workloads.lock().get(key).map(f)
    }
}

/// Sends the calls in order; each again, with back-off, until the node answers it.
async fn send_calls(
    mut client: NodeServiceClient<tonic::transport::Channel>,
    mut calls: mpsc::UnboundedReceiver<Call>,
) {
    while let Some(call) = calls.recv().await {
        let mut wait = RETRY_MIN;
        loop {
            let sent = match &call {
                Call::Create(w) => client.create(w.clone()).await,
                Call::Delete(r) => client.delete(r.clone()).await,
                Call::Scale(s) => client.scale(s.clone()).await,
            };
            match sent {
                Ok(_) => break,
                Err(status) if status.code() == tonic::Code::InvalidArgument => {
                    tracing::error!(?call, %status, "the node refused a call");
                    break;
                }
                Err(status) => {
                    tracing::warn!(?call, %status, ?wait, "the node did not answer; again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

impl Backend for RemoteNode {
    fn create(&self, spec: &RevisionSpec) {
        self.call(Call::Create(workload(spec)));
    }

    fn delete(&self, revision: &RevisionKey) {
        self.call(Call::Delete(v1::WorkloadRef {
            namespace: revision.namespace.clone(),
            revision: revision.name.clone(),
        }));
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        self.call(Call::Scale(v1::ScaleRequest {
            namespace: revision.namespace.clone(),
            revision: revision.name.clone(),
            replicas,
        }));
    }

    fn ready(&self, revision: &RevisionKey) -> Vec<SocketAddr> {
        self.with(revision, |w| {
            w.ready.iter().filter_map(|a| a.parse().ok()).collect()
        })
        .unwrap_or_default()
    }

    fn pods(&self, revision: &RevisionKey) -> Vec<PodStatus> {
        self.with(revision, |w| {
            w.pods
                .iter()
                .filter_map(|p| {
                    Some(PodStatus {
                        name: p.name.clone(),
                        address: p.address.parse().ok()?,
                        state: p.state.clone(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
    }

    fn last_error(&self, revision: &RevisionKey) -> Option<String> {
        self.with(revision, |w| w.last_error.clone())
            .filter(|e| !e.is_empty())
    }
}

impl Follower<v1::WorkloadPods> for RemoteNode {
    fn apply(&mut self, w: &v1::WorkloadPods) {
        let key = RevisionKey::new(&w.namespace, &w.revision);
        let ready_changed = {
            let mut workloads = self.inner.workloads.lock();
            let before = workloads.get(&key).map(|w| w.ready.clone());
            if w.removed {
                workloads.remove(&key);
            } else {
                workloads.insert(key.clone(), w.clone());
            }
            before.unwrap_or_default() != w.ready
        };
        if ready_changed {
            let _ = self.inner.changed.send(key);
        }
    }

    fn retain(&mut self, listed: &HashSet<ItemKey>) {
        let gone: Vec<RevisionKey> = {
            let mut workloads = self.inner.workloads.lock();
            let gone = workloads
                .keys()
                .filter(|k| {
                    !listed.contains(&ItemKey {
                        kind: "workload",
                        namespace: k.namespace.clone(),
                        name: k.name.clone(),
                    })
                })
                .cloned()
                .collect::<Vec<_>>();
            for k in &gone {
                workloads.remove(k);
            }
            gone
        };
        for key in gone {
            let _ = self.inner.changed.send(key);
        }
    }

    fn synced(&mut self) {
        self.inner.synced.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> RevisionSpec {
        RevisionSpec {
            pod: PodSpec {
                namespace: "default".into(),
                service: "hello".into(),
                revision: "hello-00001".into(),
                argv: vec!["sample-app".into(), "--flag".into()],
                env: vec![("B".into(), "2".into()), ("A".into(), "1".into())],
                container_concurrency: 5,
                timeout_seconds: 300,
                response_start_timeout_seconds: Some(10),
                idle_timeout_seconds: None,
                readiness_probe: Some(serde_json::json!({"httpGet": {"path": "/ready"}})),
                container: None,
            },
            initial_scale: 2,
            report: false,
            annotations: Default::default(),
            template: None,
        }
    }

    #[test]
    fn a_workload_carries_the_whole_pod_spec_and_its_initial_scale() {
        let back = spec_of(workload(&spec())).expect("a valid workload");
        assert_eq!(back, spec(), "env order, probe and optional timeouts kept");
    }

    #[test]
    fn a_workload_without_a_command_or_with_a_bad_probe_is_refused() {
        let mut w = workload(&spec());
        w.argv.clear();
        assert!(spec_of(w).expect_err("no command").contains("no command"));
        let mut w = workload(&spec());
        w.readiness_probe_json = "{".into();
        assert!(
            spec_of(w)
                .expect_err("bad probe")
                .contains("readiness probe")
        );
    }
}
