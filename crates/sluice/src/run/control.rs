//! `sluice control`: the control plane as its own process, as on a cluster. It keeps the
//! applied world (admin port: `sluice apply`, `sluice status`), runs pods through the local
//! process backend, follows the autoscaler's decisions over gRPC, and serves the routes and
//! endpoints feeds that gateways, activators and the autoscaler follow (`--control`).
//! With `--state-dir` every accepted apply is kept and replayed at start, so the desired
//! state survives a restart (its pods are started again, not adopted).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use sluice_control::local::{Supervisor, SupervisorConfig};
use sluice_control::node::RemoteNode;
use sluice_control::{Backend, ControlPlane};
use sluice_core::process::Exit;
use sluice_core::serve::{Limits, listen, local_addr};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::cli::PodArgs;
use super::desired::{Desired, DesiredOptions, serve_admin};
use super::images::ImageMap;

/// `EX_USAGE`: a bad flag.
const EXIT_CONFIG: u8 = 64;
/// How long a start waits for the node's state before replaying the applies.
const NODE_SYNC_LIMIT: Duration = Duration::from_secs(10);

/// `sluice control`'s flags.
#[derive(Debug, clap::Args)]
pub struct ControlArgs {
    /// The gRPC feeds (`sluice.v1.RoutesService`, `sluice.v1.EndpointsService`).
    #[arg(long, env = "SLUICE_CONTROL_LISTEN", default_value = "0.0.0.0:8090")]
    pub listen: SocketAddr,
    /// The admin port (`sluice apply`, `sluice status --admin`).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN", default_value = "127.0.0.1:8070")]
    pub admin_listen: SocketAddr,
    /// The autoscaler's gRPC address (`http://host:port`): its decisions are followed, and
    /// pods send their stats there.
    #[arg(long, env = "SLUICE_AUTOSCALER_ADDRESS")]
    pub autoscaler_address: String,
    /// Hosts are `{service}.{namespace}.{domain}`.
    #[arg(long, env = "SLUICE_DOMAIN", default_value = "example.com")]
    pub domain: String,
    /// The gateway's address, as `sluice status` shows it.
    #[arg(long, default_value = "")]
    pub gateway_address: String,
    /// Where accepted applies are kept, and replayed from at start.
    #[arg(long, env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// A node that runs the pods (`http://host:port`, `sluice.v1.NodeService`), instead
    /// of this process: they then outlive it, and its next start adopts them.
    #[arg(long, env = "SLUICE_NODE_ADDRESS")]
    pub node: Option<String>,
    #[command(flatten)]
    pub pods: PodArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
}

/// `sluice control`'s flags for Kubernetes.
#[derive(Debug, clap::Args)]
pub struct KubeArgs {
    /// Run on Kubernetes: follow `serving.knative.dev/v1` Services from the API server
    /// (the kubeconfig's, or the pod's service account) and run revisions as Deployments.
    #[arg(long)]
    pub kubernetes: bool,
    /// The queue-proxy image injected into every revision's pods.
    #[arg(
        long,
        env = "SLUICE_QUEUE_PROXY_IMAGE",
        default_value = "sluice-queue-proxy:latest"
    )]
    pub queue_proxy_image: String,
    #[command(flatten)]
    pub lease: super::kube::LeaseArgs,
}

/// How to run on Kubernetes.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// `None`: the kubeconfig's API server, or the pod's service account.
    pub api: Option<http::Uri>,
    pub inject: sluice_kube::Injection,
    /// `None`: no election (one replica).
    pub lease: Option<super::kube::Election>,
}

impl KubeOptions {
    async fn client(&self) -> Result<kube::Client, String> {
        super::kube::client(self.api.as_ref(), super::kube::CONTROL_AGENT).await
    }
}

/// How to start the control plane.
#[derive(Clone, Debug)]
pub struct ControlOptions {
    /// The `sluice` binary that pods run.
    pub exe: PathBuf,
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub autoscaler: http::Uri,
    pub domain: String,
    pub gateway: String,
    pub images: ImageMap,
    pub ready_timeout: Duration,
    pub drain_quiet_period: Duration,
    /// The pods' bounds on client connections.
    pub limits: Limits,
    pub state_dir: Option<PathBuf>,
    /// The node that runs the pods; `None`: this process.
    pub node: Option<http::Uri>,
    /// Pods run on Kubernetes (`--kubernetes`).
    pub kube: Option<KubeOptions>,
}

/// A running control plane.
#[derive(Debug)]
pub struct ControlServer {
    /// The pods, when they are this process's own (no `--node`).
    supervisor: Option<Supervisor>,
    grpc: SocketAddr,
    admin: SocketAddr,
    stop: watch::Sender<bool>,
    /// Tasks that never end on their own: aborted at shutdown.
    followers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The two ports, which end once `stop` turns true.
    ports: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The Lease this replica holds (`--leader-elect`), handed back at shutdown.
    leadership: Mutex<Option<super::kube::Leadership>>,
}

impl ControlServer {
    /// Binds both ports, learns what the node runs (with `--node`), replays the kept
    /// applies, adopts the node's workloads, then serves.
    pub async fn start(opts: ControlOptions) -> Result<Self, String> {
        let mut followers = Vec::new();
        let mut leadership = None;
        let mut elected = None;
        let kube = match &opts.kube {
            Some(k) => {
                let client = k.client().await?;
                if let Some(election) = &k.lease {
                    // Ready as a standby too; only the leader goes on from here.
                    let (role, health) = election.serve_health().await?;
                    followers.extend(health);
                    leadership =
                        Some(super::kube::lead(client.clone(), election.lease.clone()).await);
                    let _ = role.send("leader");
                    elected = Some((election.clone(), client.clone(), role));
                }
                Some((client, k.inject.clone()))
            }
            None => None,
        };
        let grpc = listen("control", opts.listen)
            .await
            .map_err(|e| e.to_string())?;
        let admin = listen("admin", opts.admin_listen)
            .await
            .map_err(|e| e.to_string())?;
        let (changed, changed_rx) = mpsc::unbounded_channel();
        let mut kube_backend = None;
        let (backend, supervisor, node): (Arc<dyn Backend>, _, _) = match (opts.node, &kube) {
            (_, Some((client, inject))) => {
                let mut inject = inject.clone();
                inject.autoscaler = opts.autoscaler.to_string();
                let (backend, writer) =
                    sluice_kube::KubeBackend::new(client.clone(), inject, changed);
                followers.push(tokio::spawn(
                    writer.run().instrument(tracing::info_span!("kube_writer")),
                ));
                followers.push(tokio::spawn(
                    Arc::clone(&backend)
                        .follow_endpoints(client.clone())
                        .instrument(tracing::info_span!("endpoint_slices")),
                ));
                followers.push(tokio::spawn(
                    Arc::clone(&backend)
                        .follow_deployments(client.clone())
                        .instrument(tracing::info_span!("deployments")),
                ));
                followers.push(tokio::spawn(
                    Arc::clone(&backend)
                        .follow_services(client.clone())
                        .instrument(tracing::info_span!("private_services")),
                ));
                kube_backend = Some(Arc::clone(&backend));
                (backend as Arc<dyn Backend>, None, None)
            }
            (Some(uri), None) => {
                let (node, task) = RemoteNode::new(uri.clone(), changed);
                followers.push(tokio::spawn(
                    task.instrument(tracing::info_span!("node", %uri)),
                ));
                if !node.synced(NODE_SYNC_LIMIT).await {
                    tracing::warn!(
                        node = %uri,
                        "the node has not answered in {NODE_SYNC_LIMIT:?}; going on, and \
                         taking its pods as they are reported"
                    );
                }
                (Arc::new(node.clone()), None, Some(node))
            }
            (None, None) => {
                let supervisor = Supervisor::new(
                    SupervisorConfig {
                        exe: opts.exe,
                        ready_timeout: opts.ready_timeout,
                        drain_quiet_period: opts.drain_quiet_period,
                        limits: opts.limits,
                    },
                    changed,
                );
                supervisor.set_autoscaler(opts.autoscaler.to_string());
                (Arc::new(supervisor.clone()), Some(supervisor), None)
            }
        };
        let control = ControlPlane::new(backend);
        let desired = Arc::new(Desired::new(
            control.clone(),
            DesiredOptions {
                images: opts.images,
                domain: opts.domain,
                gateway: opts.gateway,
                autoscaler: None,
                state: opts.state_dir,
                cluster: kube.is_some(),
            },
        ));
        let (stop, _) = watch::channel(false);
        let stopped = || {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        followers.push(tokio::spawn(
            control
                .clone()
                .follow_backend(changed_rx)
                .instrument(tracing::info_span!("follow_pods")),
        ));
        let replayed = match desired.replay().await {
            Ok(n) => n,
            Err(e) => {
                for t in &followers {
                    t.abort();
                }
                if let Some(s) = &supervisor {
                    s.shutdown().await;
                }
                return Err(format!("cannot replay the kept applies: {e}"));
            }
        };
        if replayed > 0 {
            tracing::info!(applies = replayed, "desired state replayed");
        }
        if let Some(node) = &node {
            let running = node.workloads();
            let deleted = control.adopt(&running);
            tracing::info!(
                adopted = running.len() - deleted.len(),
                deleted = deleted.len(),
                "the node's workloads adopted; those of no desired revision deleted"
            );
        }
        if let Some((client, _)) = kube {
            // Nothing is served before the cluster's state is known: a follower that
            // synced to an empty state would drop every route until the lists arrive.
            if let Some(kube_backend) = &kube_backend {
                kube_backend.listed().await;
            }
            let (config_listed, config_done) = tokio::sync::oneshot::channel();
            followers.push(tokio::spawn(
                sluice_kube::controller::follow_config(
                    client.clone(),
                    Arc::clone(&desired),
                    config_listed,
                )
                .instrument(tracing::info_span!("config")),
            ));
            let _ = config_done.await;
            match sluice_kube::controller::restore_revisions(client.clone(), &desired).await {
                Ok(n) => tracing::info!(revisions = n, "the cluster's Revisions planned again"),
                Err(e) => {
                    for t in &followers {
                        t.abort();
                    }
                    return Err(e);
                }
            }
            let (services_listed, services_done) = tokio::sync::oneshot::channel();
            followers.push(tokio::spawn(
                sluice_kube::controller::follow_services(
                    client,
                    Arc::clone(&desired),
                    services_listed,
                )
                .instrument(tracing::info_span!("services")),
            ));
            let _ = services_done.await;
            tracing::info!("the cluster's Services, config and EndpointSlices are listed");
        }
        followers.push(tokio::spawn(
            control
                .clone()
                .follow_decisions(opts.autoscaler)
                .instrument(tracing::info_span!("follow_decisions")),
        ));
        let (grpc_addr, admin_addr) = (local_addr(&grpc), local_addr(&admin));
        let grpc_stop = stopped();
        let ports = vec![
            tokio::spawn(
                async move {
                    if let Err(e) =
                        sluice_control::grpc::serve(grpc, control.feeds(), grpc_stop).await
                    {
                        tracing::error!(%e, "the control plane's gRPC port failed");
                    }
                }
                .instrument(tracing::info_span!("control")),
            ),
            tokio::spawn(serve_admin(admin, Arc::clone(&desired), stopped())),
        ];
        tracing::info!(grpc = %grpc_addr, admin = %admin_addr, "control plane serving");
        if let Some((election, client, role)) = elected {
            let h2c = Some("kubernetes.io/h2c".to_owned());
            followers.extend(
                election
                    .publish_when_serving(client, vec![("grpc".to_owned(), grpc_addr.port(), h2c)]),
            );
            // The answer stays `leader` while it serves.
            followers.push(tokio::spawn(async move {
                role.closed().await;
            }));
        }
        Ok(Self {
            supervisor,
            grpc: grpc_addr,
            admin: admin_addr,
            stop,
            followers: Mutex::new(followers),
            ports: Mutex::new(ports),
            leadership: Mutex::new(leadership),
        })
    }

    /// The gRPC feeds' address.
    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// Drains and stops its own pods (a node's stay), then closes both ports; a leader
    /// then hands its Lease back, once it no longer acts.
    pub async fn shutdown(&self) {
        if let Some(s) = &self.supervisor {
            s.shutdown().await;
        }
        self.stop.send_replace(true);
        for task in std::mem::take(&mut *self.followers.lock()) {
            task.abort();
        }
        // The ports close on their own once their watches have ended.
        let ports = std::mem::take(&mut *self.ports.lock());
        for task in ports {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !task.is_finished() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            task.abort();
        }
        let leadership = self.leadership.lock().take();
        if let Some(l) = leadership {
            l.release().await;
        }
    }
}

/// The `sluice control` process: check the flags (exit 64), serve until SIGTERM or
/// Ctrl-C, then drain the pods.
pub fn main(args: ControlArgs) -> ExitCode {
    sluice_core::telemetry::init("info");
    let opts = match options(args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("sluice control: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    sluice_core::process::run("control", None, async move {
        // Listened for from here: a SIGTERM while starting is taken once started, and the
        // Lease it may have taken meanwhile is handed back.
        let stop = sluice_core::shutdown::logged_signal();
        let server = ControlServer::start(opts)
            .await
            .map_err(|e| Exit::new(1, e))?;
        stop.await;
        server.shutdown().await;
        Ok(())
    })
}

/// Every bad flag at once.
fn options(a: ControlArgs) -> Result<ControlOptions, String> {
    let mut bad = Vec::new();
    let autoscaler = sluice_core::address::grpc_flag(
        "autoscaler-address",
        Some(&a.autoscaler_address),
        &mut bad,
    );
    if autoscaler.is_none() && bad.is_empty() {
        bad.push("--autoscaler-address is required".to_owned());
    }
    let node = sluice_core::address::grpc_flag("node", a.node.as_deref(), &mut bad);
    let pods = a.pods.check(&mut bad);
    let kube = kube_options(a.kube, &mut bad);
    if kube.is_some() && node.is_some() {
        bad.push("--node and --kubernetes name two places to run pods; give one".to_owned());
    }
    match autoscaler {
        Some(autoscaler) if bad.is_empty() => Ok(ControlOptions {
            exe: pods.exe,
            listen: a.listen,
            admin_listen: a.admin_listen,
            autoscaler,
            domain: a.domain,
            gateway: a.gateway_address,
            images: pods.images,
            ready_timeout: pods.ready_timeout,
            drain_quiet_period: pods.drain_quiet_period,
            limits: pods.limits,
            state_dir: a.state_dir,
            node,
            kube,
        }),
        _ => Err(bad.join("\n")),
    }
}

fn kube_options(a: KubeArgs, bad: &mut Vec<String>) -> Option<KubeOptions> {
    if !a.kubernetes {
        if a.lease.kube_api.is_some() || a.lease.leader_elect {
            bad.push("--kube-api and --leader-elect need --kubernetes".to_owned());
        }
        return None;
    }
    let (api, lease) = a.lease.check(super::kube::CONTROL_AGENT, bad);
    Some(KubeOptions {
        api,
        inject: sluice_kube::Injection {
            queue_proxy_image: a.queue_proxy_image,
            system_namespace: a.lease.system_namespace,
            ..sluice_kube::Injection::default()
        },
        lease,
    })
}
