//! `sluice run --distributed`: every part in its own process, connected only over
//! loopback gRPC and HTTP, as on a cluster. This process is the machine: it binds every
//! component's ports once and passes them to each start of the component (systemd's
//! socket activation, [`sluice_core::serve::passed`]), so that a component that dies is
//! restarted behind the same ports while its clients wait in the listen backlog; and it is
//! the node (`sluice.v1.NodeService`): the pods are its own, so they outlive a control
//! plane that dies, and the next one adopts them.
//!
//! - `sluice autoscaler --control …`: stats in, decisions out.
//! - `sluice control --node …`: the applied services (kept in the state directory and
//!   replayed at start), the reconciler, the routes and endpoints feeds.
//! - `sluice activator --control …` and `sluice gateway --control …`: the data path.
//!
//! Its admin port answers `sluice status` (the control plane's, with the components added)
//! and passes `sluice apply` on to the control plane.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use command_fds::{CommandFdExt, FdMapping};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use parking_lot::Mutex;
use sluice_control::local::Supervisor;
use sluice_core::respond;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::cli;
use super::platform::{Addresses, Options, Status};

/// A component that ran at least this long before it died is restarted after the shortest
/// pause again.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);
/// How long a component may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(30);

pub use sluice_control::status::ComponentStatus;

/// The files the components read.
#[derive(Clone, Debug)]
pub struct Files {
    /// The control plane keeps its applies under `control/` here.
    pub state_dir: PathBuf,
    /// The `config-autoscaler` the autoscaler starts with, until the control plane's (the
    /// applied one) reaches it.
    pub config: Option<PathBuf>,
    /// `--images`, for the control plane's planner.
    pub images: Option<PathBuf>,
}

/// A running distributed platform. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Distributed {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addrs: Addresses,
    /// The control plane's own admin port, which this one's passes `apply` and `status` to.
    control_admin: SocketAddr,
    node: Supervisor,
    /// In the order they stop: the data path first, the autoscaler last.
    components: Vec<Arc<Component>>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// One component process, kept running.
#[derive(Debug)]
struct Component {
    name: &'static str,
    exe: PathBuf,
    args: Vec<String>,
    /// Its ports, by the name it listens on them with.
    sockets: Vec<(&'static str, std::net::TcpListener)>,
    status: Mutex<ComponentStatus>,
    stop: watch::Sender<bool>,
    keeper: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Binds a port now, kept for the life of the platform (with `SO_REUSEADDR`, as every
/// component binds its own, so that a port that just closed can be bound again).
fn bind(name: &str, addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), String> {
    let bound = || -> std::io::Result<_> {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        let l = socket.listen(1024)?.into_std()?;
        let at = l.local_addr()?;
        Ok((l, at))
    };
    bound().map_err(|e| format!("cannot listen on {addr} ({name}): {e}"))
}

impl Distributed {
    /// Binds every port, starts the node, then every component.
    pub async fn start(opts: Options, files: Files) -> Result<Self, String> {
        let Files {
            state_dir,
            config,
            images,
        } = files;
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let (gateway, gateway_addr) = bind("gateway", opts.gateway_listen)?;
        let (gateway_metrics, gateway_metrics_addr) = bind("gateway metrics", loopback)?;
        let (activator, activator_addr) = bind("activator", loopback)?;
        let (activator_metrics, activator_metrics_addr) = bind("activator metrics", loopback)?;
        let (autoscaler, autoscaler_addr) = bind("autoscaler", loopback)?;
        let (autoscaler_metrics, autoscaler_metrics_addr) = bind("autoscaler metrics", loopback)?;
        let (control, control_addr) = bind("control", loopback)?;
        let (control_admin, control_admin_addr) = bind("control admin", loopback)?;
        let (node, node_addr) = bind("node", loopback)?;
        let (admin, admin_addr) = bind("admin", opts.admin_listen)?;
        let url = |a: SocketAddr| format!("http://{a}");
        let ms = |d: Duration| format!("{}ms", d.as_millis());

        let (changed, changed_rx) = mpsc::unbounded_channel();
        let supervisor = Supervisor::new(opts.supervisor_config(), changed);
        supervisor.set_autoscaler(url(autoscaler_addr));

        let component = |name, args: Vec<String>, sockets| {
            Arc::new(Component {
                name,
                exe: opts.exe.clone(),
                args,
                sockets,
                status: Mutex::new(ComponentStatus {
                    name: name.to_owned(),
                    pid: None,
                    restarts: 0,
                    last_exit: None,
                }),
                stop: watch::Sender::new(false),
                keeper: Mutex::new(None),
            })
        };
        let mut autoscaler_args = vec![
            "autoscaler".to_owned(),
            format!("--listen={autoscaler_addr}"),
            format!("--metrics-listen={autoscaler_metrics_addr}"),
            format!("--control={}", url(control_addr)),
            format!("--activator-probe={}", url(activator_addr)),
        ];
        let mut control_args = vec![
            "control".to_owned(),
            format!("--listen={control_addr}"),
            format!("--admin-listen={control_admin_addr}"),
            format!("--autoscaler-address={}", url(autoscaler_addr)),
            format!("--node={}", url(node_addr)),
            format!("--domain={}", opts.domain),
            format!("--gateway-address={gateway_addr}"),
            format!("--state-dir={}", state_dir.join("control").display()),
        ];
        if let Some(images) = &images {
            control_args.push(format!("--images={}", images.display()));
        }
        if let Some(config) = &config {
            autoscaler_args.push(format!("--config={}", config.display()));
        }
        let components = vec![
            component(
                "gateway",
                vec![
                    "gateway".to_owned(),
                    format!("--listen={gateway_addr}"),
                    format!("--metrics-listen={gateway_metrics_addr}"),
                    format!("--domain={}", opts.domain),
                    format!("--activator={activator_addr}"),
                    format!("--autoscaler-address={}", url(autoscaler_addr)),
                    format!("--control={}", url(control_addr)),
                ],
                vec![("serving", gateway), ("metrics", gateway_metrics)],
            ),
            component(
                "activator",
                vec![
                    "activator".to_owned(),
                    format!("--listen={activator_addr}"),
                    format!("--metrics-listen={activator_metrics_addr}"),
                    format!("--autoscaler-address={}", url(autoscaler_addr)),
                    format!("--control={}", url(control_addr)),
                    format!("--drain-quiet-period={}", ms(opts.drain_quiet_period)),
                ],
                vec![("serving", activator), ("metrics", activator_metrics)],
            ),
            component(
                "control",
                control_args,
                vec![("control", control), ("admin", control_admin)],
            ),
            component(
                "autoscaler",
                autoscaler_args,
                vec![("grpc", autoscaler), ("metrics", autoscaler_metrics)],
            ),
        ];
        let addrs = Addresses {
            gateway: gateway_addr,
            gateway_metrics: gateway_metrics_addr,
            admin: admin_addr,
            activator: activator_addr,
            activator_metrics: activator_metrics_addr,
            autoscaler: autoscaler_addr,
            autoscaler_metrics: autoscaler_metrics_addr,
            control: control_addr,
        };
        let (stop, _) = watch::channel(false);
        let platform = Self {
            inner: Arc::new(Inner {
                addrs,
                control_admin: control_admin_addr,
                node: supervisor.clone(),
                components,
                stop,
                tasks: Mutex::new(Vec::new()),
            }),
        };
        let stopped = || {
            let mut rx = platform.inner.stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let node_listener = {
            node.set_nonblocking(true).map_err(|e| e.to_string())?;
            tokio::net::TcpListener::from_std(node).map_err(|e| format!("node: {e}"))?
        };
        let admin_listener = {
            admin.set_nonblocking(true).map_err(|e| e.to_string())?;
            tokio::net::TcpListener::from_std(admin).map_err(|e| format!("admin: {e}"))?
        };
        let tasks = vec![
            tokio::spawn(
                {
                    let stop = stopped();
                    async move {
                        if let Err(e) =
                            sluice_control::node::serve(node_listener, supervisor, changed_rx, stop)
                                .await
                        {
                            tracing::error!(%e, "the node's port failed");
                        }
                    }
                }
                .instrument(tracing::info_span!("node")),
            ),
            tokio::spawn(serve_admin(admin_listener, platform.clone(), stopped())),
        ];
        for c in &platform.inner.components {
            let env: Vec<(&str, String)> = std::env::var_os("RUST_LOG")
                .is_none()
                .then(|| ("RUST_LOG", "warn".to_owned()))
                .into_iter()
                .chain(opts.limits.to_env())
                .collect();
            let keeper = tokio::spawn(
                keep(Arc::clone(c), env)
                    .instrument(tracing::info_span!("component", name = c.name)),
            );
            *c.keeper.lock() = Some(keeper);
        }
        *platform.inner.tasks.lock() = tasks;
        Ok(platform)
    }

    pub fn addresses(&self) -> Addresses {
        self.inner.addrs
    }

    /// Every component now.
    pub fn components(&self) -> Vec<ComponentStatus> {
        self.inner
            .components
            .iter()
            .map(|c| c.status.lock().clone())
            .collect()
    }

    /// The control plane's status, with the components added.
    pub async fn status(&self) -> Result<Status, String> {
        let (code, body) = self.control("GET", "/status", Vec::new()).await?;
        if code != 200 {
            return Err(format!("the control plane answered {code}: {body}"));
        }
        let mut status: Status = serde_json::from_str(&body)
            .map_err(|e| format!("unexpected answer from the control plane: {e}"))?;
        status.components = self.components();
        Ok(status)
    }

    /// Passes manifests (YAML text) to the control plane: its answer's code and text.
    pub async fn apply_text(&self, text: String) -> Result<(u16, String), String> {
        self.control("POST", "/apply", text.into_bytes()).await
    }

    async fn control(
        &self,
        method: &'static str,
        path: &'static str,
        body: Vec<u8>,
    ) -> Result<(u16, String), String> {
        let admin = self.inner.control_admin;
        tokio::task::spawn_blocking(move || cli::request(admin, method, path, &body))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("the control plane is not answering (restarting?): {e}"))
    }

    /// Drains and stops every pod, then the gateway and the activator, then the control
    /// plane, then the autoscaler, then the node and admin ports.
    pub async fn shutdown(&self) {
        let inner = &self.inner;
        inner.node.shutdown().await;
        for c in &inner.components {
            c.stop.send_replace(true);
            let keeper = c.keeper.lock().take();
            if let Some(k) = keeper {
                let _ = k.await;
            }
        }
        inner.stop.send_replace(true);
        let tasks = std::mem::take(&mut *inner.tasks.lock());
        for task in tasks {
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("a port did not close in time");
            }
        }
    }
}

/// Keeps one component running until it is told to stop: started with its ports, and
/// started again (at once if it had run a while, else after a growing pause) when it dies.
async fn keep(c: Arc<Component>, env: Vec<(&'static str, String)>) {
    let mut stop = c.stop.subscribe();
    let mut pause = RESTART_MIN;
    loop {
        let started = Instant::now();
        let mut child = match spawn(&c, &env) {
            Ok(child) => child,
            Err(e) => {
                tracing::error!(component = c.name, %e, "cannot start it; trying again");
                c.status.lock().last_exit = Some(format!("cannot start: {e}"));
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                pause = (pause * 2).min(RESTART_MAX);
                continue;
            }
        };
        c.status.lock().pid = child.id();
        let status = tokio::select! {
            status = child.wait() => Some(status),
            _ = stop.wait_for(|s| *s) => None,
        };
        let Some(status) = status else {
            stop_child(&mut child, c.name).await;
            c.status.lock().pid = None;
            return;
        };
        let how = match status {
            Ok(s) => s.to_string(),
            Err(e) => format!("cannot wait for it: {e}"),
        };
        {
            let mut s = c.status.lock();
            s.pid = None;
            s.restarts += 1;
            s.last_exit = Some(how.clone());
        }
        if started.elapsed() >= HEALTHY_RUN {
            pause = RESTART_MIN;
        }
        tracing::debug!(component = c.name, exit = %how, ?pause, "restarting");
        eprintln!("sluice: {} died ({how}); starting it again", c.name);
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        pause = (pause * 2).min(RESTART_MAX);
    }
}

/// Starts the component with its ports as fds 3, 4, … and its output prefixed with its
/// name on this process's stderr.
fn spawn(c: &Component, env: &[(&'static str, String)]) -> std::io::Result<tokio::process::Child> {
    let mut cmd = Command::new(&c.exe);
    cmd.args(&c.args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C at the terminal reaches `sluice run` alone,
        // which stops the components in order.
        .process_group(0);
    let names: Vec<&str> = c.sockets.iter().map(|(n, _)| *n).collect();
    cmd.envs(sluice_core::serve::passed::env(&names));
    let mut mappings = Vec::new();
    for (i, (_, socket)) in c.sockets.iter().enumerate() {
        let fd: OwnedFd = socket.try_clone()?.into();
        mappings.push(FdMapping {
            parent_fd: fd,
            child_fd: 3 + i32::try_from(i).unwrap_or(0),
        });
    }
    cmd.fd_mappings(mappings)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    sluice_control::local::die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(prefixed(c.name, out));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(prefixed(c.name, err));
    }
    Ok(child)
}

/// Copies a component's lines to this process's stderr, each after its name.
async fn prefixed(name: &'static str, out: impl AsyncRead + Unpin) {
    let mut lines = BufReader::new(out).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        eprintln!("{name}: {line}");
    }
}

/// SIGTERM, then SIGKILL after [`STOP_GRACE`].
async fn stop_child(child: &mut tokio::process::Child, name: &str) {
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(component = name, "did not stop in time; killing it");
        let _ = child.kill().await;
    }
}

/// The admin port: `GET /status` (the control plane's, with the components), `POST
/// /apply` (passed on), `GET /healthz`.
async fn admin_page(
    platform: Distributed,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let unavailable = |e: String| respond::text(StatusCode::SERVICE_UNAVAILABLE, e + "\n");
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => match platform.status().await {
            Ok(status) => {
                let body = serde_json::to_vec_pretty(&status).expect("a status serializes");
                let mut rsp = Response::new(Full::new(Bytes::from(body)));
                rsp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                rsp
            }
            Err(e) => unavailable(e),
        },
        (&Method::POST, "/apply") => {
            let text = match super::desired::manifests_body(req).await {
                Ok(text) => text,
                Err(refused) => return Ok(refused),
            };
            match platform.apply_text(text).await {
                Ok((code, text)) => respond::text(
                    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY),
                    text,
                ),
                Err(e) => unavailable(e),
            }
        }
        (&Method::GET, "/healthz") => respond::text(StatusCode::OK, "sluice"),
        _ => respond::text(
            StatusCode::NOT_FOUND,
            "not found: this port serves GET /status, POST /apply and GET /healthz",
        ),
    })
}

async fn serve_admin(
    listener: tokio::net::TcpListener,
    platform: Distributed,
    shutdown: impl Future<Output = ()>,
) {
    let page = move |_| {
        let platform = platform.clone();
        hyper::service::service_fn(move |req| admin_page(platform.clone(), req))
    };
    sluice_core::serve::serve(
        "admin",
        listener,
        page,
        shutdown,
        sluice_core::serve::Serving::new(Duration::from_secs(1)),
    )
    .await;
}
