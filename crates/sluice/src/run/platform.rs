//! The platform: the control plane (over the local process backend), autoscaler,
//! activator and gateway in one process, plus the admin port that `sluice apply` and
//! `sluice status` use.
//!
//! - The control plane takes the planned world (revisions, traffic), the autoscaler's
//!   decisions (its in-process decision stream) and the supervisor's ready pods, and
//!   publishes the gateway's routes and the activator's endpoints as feeds, followed
//!   in-process here and served over gRPC for gateways and activators elsewhere.
//! - Queue-proxies, the activator and the gateway send stats to the autoscaler over gRPC.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use parking_lot::Mutex;
use serde::Serialize;
use sluice_activator::{Activator, EndpointsSource};
use sluice_autoscaler::follow::StreamPods;
use sluice_autoscaler::scaler::RevisionKey;
use sluice_autoscaler::server::{Args as AutoscalerArgs, Server as AutoscalerServer};
use sluice_autoscaler::service::Autoscaler;
use sluice_control::local::{PodStatus, Supervisor, SupervisorConfig};
use sluice_control::{ControlPlane, RevisionSpec, ServiceSpec};
use sluice_core::respond;
use sluice_core::serve::{Limits, Serving, listen, local_addr, serve};
use sluice_gateway::{Gateway, RoutesSource};
use sluice_proto::v1;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::Instrument;

use super::images::ImageMap;
use super::manifest::Manifests;
use super::world::{Local, World};

/// Largest manifest `sluice apply` may send.
const MAX_APPLY_BYTES: usize = 4 << 20;

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

/// A running platform. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Platform {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    images: ImageMap,
    /// Applies take turns; status reads the last applied world.
    apply_lock: tokio::sync::Mutex<()>,
    world: Mutex<World>,
    autoscaler: Autoscaler,
    supervisor: Supervisor,
    control: ControlPlane,
    /// The gateway's table, for services' URLs (it follows the control plane's routes).
    routes: sluice_gateway::Routes,
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
    pub autoscaler: SocketAddr,
    /// The control plane's gRPC feeds (`RoutesService`, `EndpointsService`), for gateways
    /// and activators in other processes.
    pub control: SocketAddr,
}

/// `sluice status --json`: documented in the README; fields are only ever added.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Status {
    pub gateway: String,
    pub services: Vec<ServiceStatus>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct ServiceStatus {
    pub name: String,
    pub namespace: String,
    pub url: String,
    pub traffic: Vec<TrafficStatus>,
    pub revisions: Vec<RevisionStatus>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct TrafficStatus {
    pub revision: String,
    pub percent: u32,
    pub tag: Option<String>,
}

#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct RevisionStatus {
    pub name: String,
    /// The autoscaler's desired pods; −1 before its first decision.
    pub desired: i32,
    pub ready: u32,
    /// Average concurrency over the stable window.
    pub concurrency: f64,
    pub panic: bool,
    /// `serve` (gateway → pods) or `proxy` (gateway → activator).
    pub mode: String,
    /// Why the last pod failed, while no pod has become ready since.
    pub error: Option<String>,
    /// Every pod now, with its queue-proxy's address and state.
    #[serde(default)]
    pub pods: Vec<PodStatus>,
}

// === impl Platform ===

impl Platform {
    /// Binds every port and starts every part, with no service yet.
    pub async fn start(opts: Options) -> Result<Self, String> {
        let (changed_tx, changed_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor::new(
            SupervisorConfig {
                exe: opts.exe.clone(),
                ready_timeout: opts.ready_timeout,
                drain_quiet_period: opts.drain_quiet_period,
                limits: opts.limits,
            },
            changed_tx,
        );
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
            autoscaler: autoscaler_addr,
            control: local_addr(&control_grpc),
        };
        let (stop, _) = watch::channel(false);
        let (stop_autoscaler, _) = watch::channel(false);
        let platform = Self {
            inner: Arc::new(Inner {
                images: opts.images,
                apply_lock: tokio::sync::Mutex::new(()),
                world: Mutex::new(World::default()),
                autoscaler: autoscaler.autoscaler().clone(),
                supervisor,
                control: control.clone(),
                routes: gateway.routes(),
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
        let p = platform.clone();
        let admin_page = move |_| {
            let p = p.clone();
            service_fn(move |req| admin_page(p.clone(), req))
        };
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
                        let served = sluice_control::grpc::serve(
                            control_grpc,
                            control.routes(),
                            control.endpoints(),
                            stop,
                        )
                        .await;
                        if let Err(e) = served {
                            tracing::error!(%e, "the control plane's gRPC port failed");
                        }
                    }
                    .instrument(tracing::info_span!("control"))
                }),
                tokio::spawn(serve(
                    "admin",
                    admin,
                    admin_page,
                    stopped(&inner.stop),
                    Serving::new(Duration::from_secs(1)),
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
    pub async fn apply(&self, m: &Manifests) -> Result<Vec<String>, Vec<String>> {
        let inner = &self.inner;
        let _turn = inner.apply_lock.lock().await;
        let current = inner.world.lock().clone();
        let local = Local::resolve(m, &inner.images);
        let (next, changes) = current.apply(m, &local)?;
        if changes.config
            && let Err(refused) = inner.autoscaler.set_config(next.config.clone())
        {
            return Err(refused
                .0
                .iter()
                .map(|(rev, e)| format!("ConfigMap config-autoscaler: revision {rev}: {e}"))
                .collect());
        }
        for (namespace, _, name) in &changes.new_revisions {
            let (_, rev) = next
                .revision(namespace, name)
                .expect("a planned revision is in the next world");
            let key = RevisionKey::new(namespace, name);
            // The activator learns the revision before any route names it.
            let spec = RevisionSpec {
                pod: rev.pod.clone(),
                initial_scale: rev.initial_scale,
                report: rev.mpa,
                annotations: rev.annotations.clone(),
            };
            if let Err(e) = inner.control.add_revision(spec) {
                // The world planned a new name: a bug if it happens.
                tracing::error!(revision = %key, %e, "the control plane refused a planned revision");
            }
        }
        for (namespace, name) in &changes.traffic {
            let s = &next.services[&(namespace.clone(), name.clone())];
            let spec = ServiceSpec {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                traffic: s
                    .traffic
                    .iter()
                    .map(|t| v1::TrafficTarget {
                        revision: t.revision.clone(),
                        percent: t.percent,
                        tag: t.tag.clone().unwrap_or_default(),
                    })
                    .collect(),
            };
            if let Err(e) = inner.control.set_service(spec) {
                tracing::error!(service = %name, %e, "the control plane refused planned traffic");
            }
        }
        *inner.world.lock() = next;
        let mut summary = changes.summary;
        summary.extend(m.ignored.iter().cloned());
        Ok(summary)
    }

    /// Services, revisions, traffic, pods and the autoscaler's view, now.
    pub fn status(&self) -> Status {
        let inner = &self.inner;
        let world = inner.world.lock().clone();
        // The decisions above are the applied ones, published on change; the averages
        // move every tick, so they are read from the autoscaler as they are now.
        let live: HashMap<RevisionKey, v1::Decision> = inner
            .autoscaler
            .decisions(None)
            .into_iter()
            .map(|d| (RevisionKey::new(&d.namespace, &d.revision), d))
            .collect();
        let services = world
            .services
            .values()
            .map(|s| ServiceStatus {
                name: s.name.clone(),
                namespace: s.namespace.clone(),
                url: inner.routes.url(&s.namespace, &s.name),
                traffic: s
                    .traffic
                    .iter()
                    .map(|t| TrafficStatus {
                        revision: t.revision.clone(),
                        percent: t.percent,
                        tag: t.tag.clone(),
                    })
                    .collect(),
                revisions: s
                    .revisions
                    .iter()
                    .map(|r| {
                        let key = RevisionKey::new(&s.namespace, &r.name);
                        let d = inner.control.decision(&key);
                        let d = d.as_ref();
                        RevisionStatus {
                            name: r.name.clone(),
                            desired: d.map_or(-1, |d| d.desired_scale),
                            ready: u32::try_from(inner.supervisor.ready(&key).len())
                                .unwrap_or(u32::MAX),
                            concurrency: live.get(&key).map_or(0.0, |d| d.stable_value),
                            panic: live.get(&key).is_some_and(|d| d.panic),
                            mode: d
                                .map_or(v1::Mode::Proxy, v1::Decision::mode)
                                .label()
                                .to_owned(),
                            error: inner.supervisor.last_error(&key),
                            pods: inner.supervisor.pods(&key),
                        }
                    })
                    .collect(),
            })
            .collect();
        Status {
            gateway: inner.addrs.gateway.to_string(),
            services,
        }
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

/// The admin port: `GET /status` (JSON), `POST /apply` (YAML manifests), `GET /healthz`.
async fn admin_page(
    platform: Platform,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => {
            let body =
                serde_json::to_vec_pretty(&platform.status()).expect("a status always serializes");
            let mut rsp = Response::new(Full::new(Bytes::from(body)));
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            rsp
        }
        (&Method::POST, "/apply") => {
            let body = match Limited::new(req.into_body(), MAX_APPLY_BYTES)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return Ok(respond::text(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("cannot read the manifests: {e}"),
                    ));
                }
            };
            let text = String::from_utf8_lossy(&body);
            let applied = match Manifests::parse("apply", &text) {
                Ok(m) => platform.apply(&m).await,
                Err(e) => Err(e),
            };
            match applied {
                Ok(summary) => respond::text(StatusCode::OK, summary.join("\n") + "\n"),
                Err(errors) => respond::text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("refused; nothing was changed:\n  {}\n", errors.join("\n  ")),
                ),
            }
        }
        (&Method::GET, "/healthz") => respond::text(StatusCode::OK, "sluice"),
        _ => respond::text(
            StatusCode::NOT_FOUND,
            "not found: this port serves GET /status, POST /apply and GET /healthz",
        ),
    })
}
