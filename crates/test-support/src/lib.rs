//! Dev-only helpers for Sluice's tests and benches: the real components started
//! in-process on ephemeral loopback ports, small HTTP clients, bounded load loops, and
//! test servers (gRPC echo, websocket echo, a stats sink).

#![allow(unreachable_pub, missing_debug_implementations, clippy::unwrap_used)]

pub mod activator;
pub mod client;
pub mod control;
pub mod grpc;
pub mod hey;
pub mod kube_api;
pub mod kubelet;
pub mod load;
pub mod relay;
pub mod stats_sink;
pub mod websocket;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use sluice_queue_proxy::config::Args;
use sluice_queue_proxy::{Config, QueueProxy};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A loopback address of this process's own (in 127.240.0.0/12, away from the fake
/// kubelet's pods on 127.16–239.x.x), picked at random once: two test processes
/// rarely meet on one, and when they do, each still binds ports the kernel handed out.
///
/// A port picked by binding `:0` and letting go is passed to a child process, which binds
/// it a moment later. On 127.0.0.1 that port can meanwhile become the source port of
/// any of the machine's outgoing loopback connections (`hey`'s fifty, for one), and the
/// child's bind fails with `EADDRINUSE` for as long as that connection lives — seen in
/// CI as a gateway that refused connections. Outgoing loopback connections take their
/// source ports on 127.0.0.1 only, so ports on an address of the test's own cannot be
/// taken that way.
pub fn private_loopback_ip() -> Ipv4Addr {
    static IP: OnceLock<Ipv4Addr> = OnceLock::new();
    *IP.get_or_init(|| {
        let seed = std::process::id()
            ^ std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
        let [_, b, c, d] = seed.to_be_bytes();
        Ipv4Addr::new(127, 240 | (b & 0x0f), c, d.clamp(1, 254))
    })
}

/// A free port on [`private_loopback_ip`], for a child process to bind; never one this
/// process was handed before. The kernel may give a port let go of back to the next
/// `bind(:0)`: two children told the same port, one fails to bind, or a check that
/// nothing serves at an address meets the other.
pub fn free_private_addr() -> SocketAddr {
    static HANDED_OUT: parking_lot::Mutex<Vec<u16>> = parking_lot::Mutex::new(Vec::new());
    loop {
        let addr = std::net::TcpListener::bind((private_loopback_ip(), 0))
            .and_then(|l| l.local_addr())
            .expect("a free port on the test's own loopback address");
        let mut handed_out = HANDED_OUT.lock();
        if !handed_out.contains(&addr.port()) {
            handed_out.push(addr.port());
            return addr;
        }
    }
}

/// A listener on a free loopback port.
pub async fn loopback_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

/// Something running in-process until stopped.
pub struct Running {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    pub task: JoinHandle<()>,
}

impl Running {
    /// Starts the stop (for a queue-proxy: the drain) without waiting.
    pub fn signal_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Signals stop and waits for the task, at most `limit`.
    pub async fn stop(mut self, limit: Duration) {
        self.signal_stop();
        tokio::time::timeout(limit, &mut self.task)
            .await
            .expect("stopped in time")
            .expect("task did not panic");
    }
}

pub(crate) fn stop_channel() -> (oneshot::Sender<()>, impl std::future::Future<Output = ()>) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// The sample app on a free port.
pub async fn start_app() -> Running {
    let listener = loopback_listener().await;
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = stop_channel();
    let task = tokio::spawn(sluice_sample_app::serve(listener, "World".into(), stopped));
    Running {
        addr,
        stop: Some(stop),
        task,
    }
}

/// Flags for a queue-proxy in front of `user_port` on free loopback ports, with a short
/// drain so tests stay short. `extra` overrides (`--flag=value`).
pub fn queue_proxy_args(
    user_port: u16,
    container_concurrency: usize,
    extra: &[String],
) -> Vec<String> {
    let mut argv: Vec<String> = [
        "queue-proxy",
        "--serving-namespace=default",
        "--serving-configuration=hello",
        "--serving-service=hello",
        "--serving-revision=hello-00001",
        "--serving-pod=hello-00001-pod",
        "--serving-pod-ip=127.0.0.1",
        "--bind-address=127.0.0.1",
        "--queue-serving-port=0",
        "--admin-port=0",
        "--metrics-port=0",
        "--user-metrics-port=0",
        "--revision-timeout-seconds=300",
        "--drain-quiet-period=200ms",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    argv.push(format!("--user-port={user_port}"));
    argv.push(format!("--container-concurrency={container_concurrency}"));
    for flag in extra {
        let name = flag.split('=').next().unwrap_or(flag);
        argv.retain(|a| a.split('=').next() != Some(name));
        argv.push(flag.clone());
    }
    argv
}

/// A queue-proxy started in-process.
pub struct QueueProxyHandle {
    pub serving: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub user_metrics: SocketAddr,
    pub running: Running,
}

impl QueueProxyHandle {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.serving)
    }
}

/// Starts a queue-proxy from flags (see [`queue_proxy_args`]).
pub async fn start_queue_proxy(argv: Vec<String>) -> QueueProxyHandle {
    use clap::Parser as _;
    let config =
        Config::try_from(Args::try_parse_from(argv).expect("flags")).expect("valid config");
    let qp = QueueProxy::bind(config).await.expect("bind");
    let (serving, admin, metrics, user_metrics) = (
        qp.serving_addr(),
        qp.admin_addr(),
        qp.metrics_addr(),
        qp.user_metrics_addr(),
    );
    let (stop, stopped) = stop_channel();
    let task = tokio::spawn(qp.run(stopped));
    QueueProxyHandle {
        serving,
        admin,
        metrics,
        user_metrics,
        running: Running {
            addr: serving,
            stop: Some(stop),
            task,
        },
    }
}

/// An app and a queue-proxy in front of it with `container_concurrency`.
pub async fn start_pod(
    container_concurrency: usize,
    extra: &[String],
) -> (Running, QueueProxyHandle) {
    let app = start_app().await;
    let qp = start_queue_proxy(queue_proxy_args(
        app.addr.port(),
        container_concurrency,
        extra,
    ))
    .await;
    (app, qp)
}

/// The sample app on a listener the test chose (e.g. a port probed before it opens).
pub async fn serve_sample_app(
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) {
    sluice_sample_app::serve(listener, "World".into(), shutdown).await;
}
