//! The platform: the control plane (over the local process backend), autoscaler,
//! activator and gateway in one process, plus the admin port that `sluice apply` and
//! `sluice status` use.
//!
//! - The control plane takes the planned world (revisions, traffic), the autoscaler's
//!   decisions (its in-process decision stream) and the supervisor's ready pods, and
//!   publishes the gateway's routes and the activator's endpoints as feeds, followed
//!   in-process here and served over gRPC for gateways and activators elsewhere.
//! - Queue-proxies, the activator and the gateway send stats to the autoscaler over gRPC.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Serialize;
use sluice_activator::{Activator, EndpointsSource};
use sluice_autoscaler::follow::StreamPods;
use sluice_autoscaler::server::{Args as AutoscalerArgs, Server as AutoscalerServer};
use sluice_autoscaler::service::Autoscaler;
use sluice_control::ControlPlane;
use sluice_control::local::{Supervisor, SupervisorConfig};
use sluice_core::serve::{Limits, listen, local_addr};
use sluice_gateway::{Gateway, RoutesSource};
use tokio::sync::{broadcast, mpsc, watch};
use tracing::Instrument;

use super::desired::{Desired, DesiredOptions, LiveAutoscaler};
use super::images::ImageMap;
use super::manifest::Manifests;

/// How to start the platform.
#[derive(Clone, Debug)]
pub struct Options {
    /// The `sluice` binary that pods run.
    pub exe: PathBuf,
    pub gateway_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub domain: String,
    pub images: ImageMap,
    pub ready_timeout: Duration,
    /// The queue-proxies' and the activator's drain quiet period.
    pub drain_quiet_period: Duration,
    /// The bounds on client connections: the gateway's, the activator's and every pod's.
    pub limits: Limits,
}

impl Options {
    /// How the pod supervisor runs pods: in this process, or as the node of
    /// `--distributed`.
    pub(crate) fn supervisor_config(&self) -> SupervisorConfig {
        SupervisorConfig {
            exe: self.exe.clone(),
            ready_timeout: self.ready_timeout,
            drain_quiet_period: self.drain_quiet_period,
            limits: self.limits,
        }
    }
}

/// A running platform. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Platform {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    desired: Arc<Desired>,
    supervisor: Supervisor,
    autoscaler: Autoscaler,
    control: ControlPlane,
    addrs: Addresses,
    /// Stops the gateway, the activator and the admin port; then the autoscaler.
    stop: watch::Sender<bool>,
    stop_autoscaler: watch::Sender<bool>,
    tasks: Mutex<Tasks>,
}

#[derive(Debug, Default)]
struct Tasks {
    front: Vec<tokio::task::JoinHandle<()>>,
    autoscaler: Option<tokio::task::JoinHandle<()>>,
    followers: Vec<tokio::task::JoinHandle<()>>,
}

/// Where each part listens.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Addresses {
    pub gateway: SocketAddr,
    /// The gateway's Prometheus metrics (`/metrics`).
    pub gateway_metrics: SocketAddr,
    pub admin: SocketAddr,
    pub activator: SocketAddr,
    /// The activator's Prometheus metrics (`/metrics`).
    pub activator_metrics: SocketAddr,
    pub autoscaler: SocketAddr,
    /// The autoscaler's Prometheus metrics (`/metrics`).
    pub autoscaler_metrics: SocketAddr,
    /// The control plane's gRPC feeds (`RoutesService`, `EndpointsService`), for gateways
    /// and activators in other processes.
    pub control: SocketAddr,
}

/// The autoscaler running in this process, as the applied world uses it.
#[derive(Debug)]
struct InProcess(Autoscaler);

impl LiveAutoscaler for InProcess {
    fn set_config(
        &self,
        config: sluice_serving::config::AutoscalerConfig,
    ) -> Result<(), Vec<(sluice_core::RevisionKey, String)>> {
        self.0.set_config(config).map_err(|refused| {
            refused
                .0
                .into_iter()
                .map(|(rev, e)| (rev, e.to_string()))
                .collect()
        })
    }

    fn decisions(&self) -> Vec<sluice_proto::v1::Decision> {
        self.0.decisions(None)
    }
}

pub use sluice_control::status::{
    DecisionReason, RevisionStatus, ServiceStatus, Status, TrafficStatus,
};

// === impl Platform ===

impl Platform {
    /// Binds every port and starts every part, with no service yet.
    pub async fn start(opts: Options) -> Result<Self, String> {
        let (changed_tx, changed_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor::new(opts.supervisor_config(), changed_tx);
        let control = ControlPlane::new(Arc::new(supervisor.clone()));
        // The autoscaler learns revisions, their reachability and their pods from the
        // control plane's endpoints feed, as it does in another process.
        let pods = Arc::new(StreamPods::default());
        let loopback = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let autoscaler = AutoscalerServer::bind(
            &AutoscalerArgs {
                listen: loopback(0),
                metrics_listen: loopback(0),
                config: None,
                control: None,
                no_auto_register: true,
                activator_probe: None,
            },
            Some(pods.clone()),
        )
        .await
        .map_err(|e| format!("autoscaler: {e}"))?;
        let autoscaler_addr = autoscaler.grpc_addr();
        let autoscaler_uri = format!("http://{autoscaler_addr}");
        supervisor.set_autoscaler(autoscaler_uri.clone());
        let activator = Activator::bind(
            sluice_activator::Config {
                listen: loopback(0),
                metrics_listen: loopback(0),
                autoscaler: autoscaler_uri.parse().ok(),
                endpoints: None,
                pod_name: "activator".into(),
                queue_depth: 10_000,
                probe_timeout: Duration::from_millis(300),
                probe_frequency: Duration::from_millis(200),
                drain_quiet_period: opts.drain_quiet_period,
                max_idle_per_pod: 100,
                limits: opts.limits,
            },
            Some(EndpointsSource::InProcess(control.endpoints())),
        )
        .await
        .map_err(|e| format!("activator: {e}"))?;
        let mut activator = activator;
        let activator_addr = activator.serving_addr();
        // The gateway reaches the activator without sockets: a held request costs no
        // file descriptor beyond its client's.
        let activator_local = activator.connect_in_process();
        let gateway = Gateway::bind(sluice_gateway::Config {
            listen: opts.gateway_listen,
            domain: opts.domain.clone(),
            activator: Some(activator_addr),
            autoscaler: autoscaler_uri.parse().ok(),
            pod_name: "gateway".into(),
            metrics_listen: loopback(0),
            limits: opts.limits,
            activator_local: Some(activator_local),
            routes: Some(RoutesSource::InProcess(control.routes())),
            drain_quiet_period: std::time::Duration::ZERO,
        })
        .await
        .map_err(|e| format!("gateway: {e}"))?;
        let admin = listen("admin", opts.admin_listen)
            .await
            .map_err(|e| format!("admin: {e}"))?;
        let control_grpc = listen("control", loopback(0))
            .await
            .map_err(|e| format!("control plane: {e}"))?;
        let addrs = Addresses {
            gateway: gateway.serving_addr(),
            gateway_metrics: gateway.metrics_addr(),
            admin: local_addr(&admin),
            activator: activator_addr,
            activator_metrics: activator.metrics_addr(),
            autoscaler: autoscaler_addr,
            autoscaler_metrics: autoscaler.metrics_addr(),
            control: local_addr(&control_grpc),
        };
        let (stop, _) = watch::channel(false);
        let (stop_autoscaler, _) = watch::channel(false);
        let desired = Arc::new(Desired::new(
            control.clone(),
            DesiredOptions {
                images: opts.images,
                domain: gateway.routes().domain().to_owned(),
                gateway: addrs.gateway.to_string(),
                autoscaler: Some(Arc::new(InProcess(autoscaler.autoscaler().clone()))),
                state: None,
                cluster: false,
            },
        ));
        let platform = Self {
            inner: Arc::new(Inner {
                desired: Arc::clone(&desired),
                supervisor,
                autoscaler: autoscaler.autoscaler().clone(),
                control: control.clone(),
                addrs,
                stop,
                stop_autoscaler,
                tasks: Mutex::new(Tasks::default()),
            }),
        };
        let stopped = |stop: &watch::Sender<bool>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let inner = &platform.inner;

        let tasks = Tasks {
            front: vec![
                tokio::spawn(
                    activator
                        .run(stopped(&inner.stop))
                        .instrument(tracing::info_span!("activator")),
                ),
                tokio::spawn(
                    gateway
                        .run(stopped(&inner.stop))
                        .instrument(tracing::info_span!("gateway")),
                ),
                tokio::spawn({
                    let stop = stopped(&inner.stop);
                    async move {
                        let served =
                            sluice_control::grpc::serve(control_grpc, control.feeds(), stop).await;
                        if let Err(e) = served {
                            tracing::error!(%e, "the control plane's gRPC port failed");
                        }
                    }
                    .instrument(tracing::info_span!("control"))
                }),
                tokio::spawn(super::desired::serve_admin(
                    admin,
                    desired,
                    stopped(&inner.stop),
                )),
            ],
            autoscaler: Some(tokio::spawn(
                autoscaler
                    .run(stopped(&inner.stop_autoscaler))
                    .instrument(tracing::info_span!("autoscaler")),
            )),
            followers: vec![
                tokio::spawn(
                    inner
                        .control
                        .clone()
                        .follow_backend(changed_rx)
                        .instrument(tracing::info_span!("follow_pods")),
                ),
                tokio::spawn(
                    follow_decisions(platform.clone())
                        .instrument(tracing::info_span!("follow_decisions")),
                ),
                tokio::spawn(
                    sluice_autoscaler::follow::follow(
                        sluice_core::feed::Source::InProcess(inner.control.endpoints()),
                        inner.autoscaler.clone(),
                        pods,
                    )
                    .instrument(tracing::info_span!("autoscaler_revisions")),
                ),
            ],
        };
        *inner.tasks.lock() = tasks;
        Ok(platform)
    }

    pub fn addresses(&self) -> Addresses {
        self.inner.addrs
    }

    /// Applies manifests: everything or, when any rule is broken, nothing.
    pub async fn apply(&self, m: &Manifests) -> Result<Vec<String>, Vec<super::problem::Problem>> {
        self.inner.desired.apply(m).await
    }

    /// Services, revisions, traffic, pods and the autoscaler's view, now.
    pub fn status(&self) -> Status {
        self.inner.desired.status()
    }

    /// Drains and stops every pod, then the gateway, the activator and the admin port,
    /// then the autoscaler.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.supervisor.shutdown().await;
        let tasks = std::mem::take(&mut *inner.tasks.lock());
        inner.stop.send_replace(true);
        for task in tasks.front {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!("a component did not stop in time");
            }
        }
        for task in tasks.followers {
            task.abort();
        }
        inner.stop_autoscaler.send_replace(true);
        if let Some(task) = tasks.autoscaler {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

/// The autoscaler's decisions, in-process, to the control plane.
async fn follow_decisions(platform: Platform) {
    let inner = &platform.inner;
    let mut rx = inner.autoscaler.subscribe();
    loop {
        match rx.recv().await {
            Ok(d) => inner.control.apply_decision(&d),
            Err(broadcast::error::RecvError::Lagged(_)) => {
                for d in inner.autoscaler.decisions(None) {
                    inner.control.apply_decision(&d);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
