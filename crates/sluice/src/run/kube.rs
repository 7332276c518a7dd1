//! `sluice control --kubernetes` and `sluice autoscaler --kubernetes`: leader election's
//! flags, the leadership a replica holds, and the API server's client, each component
//! naming itself. The controllers themselves are `sluice_kube::controller`.

use std::time::Duration;

use kube::{Api, Client};
use sluice_kube::lease::LeaseConfig;

/// Leader election's flags, for the control plane and the autoscaler.
#[derive(Debug, clap::Args)]
pub struct LeaseArgs {
    /// The API server's URL, instead of the kubeconfig's (or the pod's service account).
    #[arg(long, env = "SLUICE_KUBE_API")]
    pub kube_api: Option<String>,
    /// The namespace Sluice runs in (its Leases are there).
    #[arg(long, env = "SYSTEM_NAMESPACE", default_value = "sluice-system")]
    pub system_namespace: String,
    /// Elect one leader among the replicas with a Lease: the others wait, serving
    /// nothing, and take over within its duration.
    #[arg(long)]
    pub leader_elect: bool,
    /// This replica's name in the Lease (its pod's name).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Seconds a leader that stopped renewing keeps the Lease.
    #[arg(long, default_value_t = 15)]
    pub lease_duration: u64,
    /// With `--leader-elect`: serve `GET /readyz` (200 `standby` or `leader`) and
    /// `/healthz` here from the start, so that every replica is Ready: a rolling update
    /// proceeds and a disruption budget allows a drain.
    #[arg(long)]
    pub health_listen: Option<std::net::SocketAddr>,
    /// With `--leader-elect`: the selector-less Service (in `--system-namespace`) that
    /// reaches the leader alone; the leader writes its EndpointSlice with `--pod-ip` once
    /// it serves.
    #[arg(long)]
    pub leader_service: Option<String>,
    /// This replica's pod IP (the downward API's `status.podIP`).
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
}

/// A replica's part in leader election: the Lease, and what it does besides leading.
#[derive(Clone, Debug)]
pub struct Election {
    pub lease: LeaseConfig,
    /// Where every replica answers readiness ([`LeaseArgs::health_listen`]).
    pub health: Option<std::net::SocketAddr>,
    /// The Service the leader's address goes to, and this pod's IP.
    pub service: Option<(String, std::net::IpAddr)>,
}

impl Election {
    /// Serves `/readyz` and `/healthz` on [`Election::health`] (if set) until the
    /// process ends; the sender moves the answer from `standby` to `leader`.
    pub async fn serve_health(
        &self,
    ) -> Result<
        (
            tokio::sync::watch::Sender<&'static str>,
            Option<tokio::task::JoinHandle<()>>,
        ),
        String,
    > {
        let (role, role_rx) = tokio::sync::watch::channel("standby");
        let Some(addr) = self.health else {
            return Ok((role, None));
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("--health-listen {addr}: {e}"))?;
        let page = move |_| {
            let role = role_rx.clone();
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let role = *role.borrow();
                async move {
                    let rsp: http::Response<http_body_util::Full<bytes::Bytes>> = match req
                        .uri()
                        .path()
                    {
                        "/readyz" => sluice_core::respond::text(http::StatusCode::OK, role),
                        "/healthz" => sluice_core::respond::text(http::StatusCode::OK, "sluice"),
                        _ => sluice_core::respond::text(
                            http::StatusCode::NOT_FOUND,
                            "not found: this port serves /readyz and /healthz",
                        ),
                    };
                    Ok::<_, std::convert::Infallible>(rsp)
                }
            })
        };
        let task = tokio::spawn(sluice_core::serve::serve(
            "health",
            listener,
            page,
            std::future::pending(),
            sluice_core::serve::Serving::new(Duration::from_secs(1)),
        ));
        Ok((role, Some(task)))
    }

    /// Once `probe` accepts connections (this leader serves), writes the leader's
    /// EndpointSlice for [`Election::service`] with `ports` (the Service's port names,
    /// the ports served, their `appProtocol`), retrying every 2 s until it is written.
    pub fn publish_when_serving(
        &self,
        client: Client,
        ports: Vec<(String, u16, Option<String>)>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let (service, ip) = self.service.clone()?;
        let leader = sluice_kube::leader::LeaderEndpoint {
            namespace: self.lease.namespace.clone(),
            service,
            ip,
            pod: self.lease.identity.clone(),
            ports,
        };
        let probe = std::net::SocketAddr::new(ip, leader.ports.first().map_or(0, |p| p.1));
        Some(tokio::spawn(async move {
            while tokio::net::TcpStream::connect(probe).await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            loop {
                match sluice_kube::leader::publish(&client, &leader).await {
                    Ok(()) => {
                        tracing::info!(service = %leader.service, ip = %leader.ip, "leading: the service reaches this replica");
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(service = %leader.service, error = %e, "writing the leader's endpoint slice");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
            }
        }))
    }
}

impl LeaseArgs {
    /// The API server and the Lease (`None`: no election), or what is wrong in `bad`.
    pub fn check(
        &self,
        lease_name: &str,
        bad: &mut Vec<String>,
    ) -> (Option<http::Uri>, Option<Election>) {
        let api = self
            .kube_api
            .as_deref()
            .and_then(|s| match s.parse::<http::Uri>() {
                Ok(u) if u.scheme().is_some() && u.authority().is_some() => Some(u),
                _ => {
                    bad.push(format!(
                        "--kube-api {s:?}: give a URL such as https://10.0.0.1:6443"
                    ));
                    None
                }
            });
        if self.lease_duration < 3 {
            bad.push(format!(
                "--lease-duration {}: at least 3 seconds",
                self.lease_duration
            ));
        }
        if !self.leader_elect && (self.health_listen.is_some() || self.leader_service.is_some()) {
            bad.push("--health-listen and --leader-service need --leader-elect".to_owned());
        }
        let service = match (&self.leader_service, self.pod_ip) {
            (Some(name), Some(ip)) => Some((name.clone(), ip)),
            (Some(_), None) => {
                bad.push(
                    "--leader-service needs --pod-ip (POD_IP, from the downward API's status.podIP)"
                        .to_owned(),
                );
                None
            }
            (None, _) => None,
        };
        let lease = self.leader_elect.then(|| {
            let identity = self
                .pod_name
                .clone()
                .unwrap_or_else(|| format!("{}-{}", sluice_kube::hostname(), std::process::id()));
            let duration = Duration::from_secs(self.lease_duration);
            Election {
                lease: LeaseConfig {
                    duration,
                    // client-go's proportions: 10 s and 2 s of 15 s.
                    renew_deadline: duration * 2 / 3,
                    retry_period: duration * 2 / 15,
                    ..LeaseConfig::new(&self.system_namespace, lease_name, &identity)
                },
                health: self.health_listen,
                service,
            }
        });
        (api, lease)
    }
}

/// The control plane's name on the API server: its Lease's and its requests'
/// `User-Agent`'s.
pub const CONTROL_AGENT: &str = "sluice-control";
/// The autoscaler's, likewise.
pub const AUTOSCALER_AGENT: &str = "sluice-autoscaler";

/// A client of `api`, or of the kubeconfig's API server (the pod's service account on a
/// cluster), whose requests say which component sends them: `User-Agent:
/// sluice-control/0.1.0` for `component` `sluice-control`, as client-go's components name
/// themselves (the API server's audit log shows it; the test double knows a component's
/// service account, and so its RBAC, by it).
pub async fn client(api: Option<&http::Uri>, component: &str) -> Result<Client, String> {
    let mut config = match api {
        Some(uri) => {
            let mut config = kube::Config::new(uri.clone());
            if uri.scheme_str() == Some("http") {
                // No trust anchors: plain HTTP (a `kubectl proxy`, a test double) needs
                // none, and without this kube looks for the system's, which a scratch
                // image does not have.
                config.root_cert = Some(Vec::new());
            }
            config
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| format!("no Kubernetes API server: {e}"))?,
    };
    let agent = format!("{component}/{}", env!("CARGO_PKG_VERSION"));
    let agent = http::HeaderValue::try_from(agent).map_err(|e| format!("{component}: {e}"))?;
    config.headers.push((http::header::USER_AGENT, agent));
    let url = config.cluster_url.clone();
    Client::try_from(config).map_err(|e| format!("API server {url}: {e}"))
}

/// This replica's leadership, from [`lead`]: kept (renewed) until it is released or the
/// process ends; losing it ends the process.
pub struct Leadership {
    client: Client,
    lease: LeaseConfig,
    /// Renews the Lease.
    campaign: tokio::task::JoinHandle<()>,
    /// Ends the process once the Lease is lost.
    keeper: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Leadership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leadership")
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

/// How long a stopping replica tries to hand its Lease back.
const RELEASE_LIMIT: Duration = Duration::from_secs(2);

impl Leadership {
    /// Stops renewing and hands the Lease back, as a replica that stops for a rolling
    /// update or a drain does once it no longer acts: a standby takes over at its next
    /// try (a retry period) instead of a whole lease duration later. Best effort, for at
    /// most [`RELEASE_LIMIT`]: if the API server does not answer, the Lease expires as
    /// after a crash.
    pub async fn release(self) {
        self.keeper.abort();
        self.campaign.abort();
        let _ = self.campaign.await;
        let api: Api<k8s_openapi::api::coordination::v1::Lease> =
            Api::namespaced(self.client, &self.lease.namespace);
        let name = &self.lease.name;
        match tokio::time::timeout(
            RELEASE_LIMIT,
            sluice_kube::lease::release(&api, &self.lease),
        )
        .await
        {
            Ok(Ok(true)) => tracing::info!(lease = %name, "lease released"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(lease = %name, error = %e, "releasing the lease"),
            Err(_) => {
                tracing::warn!(lease = %name, "releasing the lease: no answer in {RELEASE_LIMIT:?}")
            }
        }
    }
}

/// Waits until this replica holds the Lease; the leadership returned keeps it, and ends
/// the process the moment it is lost: a replica that no longer leads must not act, and
/// Kubernetes starts it again as a standby.
pub async fn lead(client: Client, lease: LeaseConfig) -> Leadership {
    let (tx, mut leading) = tokio::sync::watch::channel(false);
    tracing::info!(lease = %lease.name, identity = %lease.identity, "waiting to lead");
    let campaign = tokio::spawn(sluice_kube::lease::run(client.clone(), lease.clone(), tx));
    let _ = leading.wait_for(|l| *l).await;
    let keeper = tokio::spawn(async move {
        let _ = leading.wait_for(|l| !*l).await;
        tracing::error!("lost the lease: stopping, so that only the leader acts");
        std::process::exit(1);
    });
    Leadership {
        client,
        lease,
        campaign,
        keeper,
    }
}

/// Hands a [`lead_blocking`] Lease back when dropped or [`LeaseGuard::release`]d.
#[derive(Debug)]
pub struct LeaseGuard {
    release: Option<std::sync::mpsc::Sender<()>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl LeaseGuard {
    /// Stops renewing and hands the Lease back ([`Leadership::release`]); returns once it
    /// is done or [`RELEASE_LIMIT`] has passed.
    pub fn release(mut self) {
        self.release_now();
    }

    fn release_now(&mut self) {
        if let (Some(tx), Some(done)) = (self.release.take(), self.done.take()) {
            let _ = tx.send(());
            let _ = done.recv_timeout(RELEASE_LIMIT + Duration::from_millis(500));
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.release_now();
    }
}

/// For a component with its own runtime (the autoscaler): blocks until this replica holds
/// the Lease, then keeps it from a thread of its own, ending the process if it is lost,
/// until the guard is released. From that thread too: readiness on
/// [`Election::health`] from the start, and the leader's EndpointSlice with `ports` (see
/// [`Election::publish_when_serving`]) once the first of them is served.
pub fn lead_blocking(
    api: Option<http::Uri>,
    component: &'static str,
    election: Election,
    ports: Vec<(String, u16, Option<String>)>,
) -> Result<LeaseGuard, String> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("lease".to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("lease runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let client = match client(api.as_ref(), component).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let (role, _health) = match election.serve_health().await {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let leadership = lead(client.clone(), election.lease.clone()).await;
                let _ = role.send("leader");
                let _publish = election.publish_when_serving(client, ports);
                let _ = ready_tx.send(Ok(()));
                // Until the guard asks (or is gone): the renewals run meanwhile.
                let _ = tokio::task::spawn_blocking(move || release_rx.recv()).await;
                leadership.release().await;
                let _ = done_tx.send(());
            });
        })
        .map_err(|e| format!("lease thread: {e}"))?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err("the lease thread ended".to_owned()))?;
    Ok(LeaseGuard {
        release: Some(release_tx),
        done: Some(done_rx),
    })
}
