//! Sluice's queue-proxy: the sidecar in front of every app container. It enforces
//! `containerConcurrency`, measures concurrency for the autoscaler, answers probes and
//! drains on shutdown, as Knative's queue-proxy does (and with its env vars and ports).
//!
//! [`QueueProxy::bind`] binds every port (so tests read back ephemeral ones), then
//! [`QueueProxy::run`] serves until the shutdown future resolves and drains.

mod admin;
pub mod config;
mod guard;
mod handler;
pub mod metrics;
pub mod readiness;
mod reporter;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use http::header::HeaderValue;
use hyper::service::service_fn;
use parking_lot::Mutex;
use sluice_core::breaker::{Breaker, BreakerParams};
use sluice_core::drain::{DrainOutcome, Drainer};
use sluice_core::push::Pusher;
use sluice_core::serve::{
    BindError, Limits, Serving, Stop, Tracker, UPGRADE_DRAIN_TIMEOUT, listen, local_addr, peer_ip,
    serve,
};
use sluice_core::stats::RequestStats;
use sluice_proto::Stat;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub use config::{Args, Config, ConfigError};

use crate::config::{Identity, Timeouts};
use crate::metrics::RequestMetrics;
use crate::readiness::Prober;
use sluice_core::upstream::Upstream;

/// Idle connections kept to the app when there is no concurrency limit (Knative's).
const UNLIMITED_IDLE_CONNS: usize = 1000;

/// Failing to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("invalid breaker: {0}")]
    Breaker(#[from] sluice_core::breaker::InvalidBreaker),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Shared by every request and side port.
#[derive(Debug)]
pub(crate) struct State {
    identity: Identity,
    started: Instant,
    stats: Mutex<RequestStats>,
    breaker: Option<Arc<Breaker>>,
    drainer: Drainer,
    prober: Arc<Prober>,
    upstream: Arc<Upstream>,
    metrics: RequestMetrics,
    upgrades: Arc<Tracker>,
    timeouts: Timeouts,
    /// `Host` for requests that came without one.
    default_host: HeaderValue,
    /// Set once the shutdown signal arrived (distinguishes a real stop from a preStop
    /// hook sent because only the app container restarts).
    sigterm: AtomicBool,
    latest_stat: ArcSwap<Stat>,
    limits: Limits,
}

/// A queue-proxy with its ports bound, ready to serve.
#[derive(Debug)]
pub struct QueueProxy {
    state: Arc<State>,
    autoscaler: Option<http::Uri>,
    serving: TcpListener,
    admin: TcpListener,
    metrics: TcpListener,
    user_metrics: TcpListener,
}

// === impl QueueProxy ===

impl QueueProxy {
    /// Builds the state and binds every port; fails before serving anything.
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let cc = config.container_concurrency;
        let breaker = (cc > 0)
            .then(|| Breaker::new(BreakerParams::for_container_concurrency(cc)))
            .transpose()?;
        let user_addr = SocketAddr::new(IpAddr::from([127, 0, 0, 1]), config.user_port);
        let max_idle = if cc > 0 { cc } else { UNLIMITED_IDLE_CONNS };
        let now = Instant::now();
        let state = Arc::new(State {
            metrics: RequestMetrics::new(&config.identity)?,
            latest_stat: ArcSwap::from_pointee(Stat {
                pod_name: config.identity.pod.clone(),
                ..Stat::default()
            }),
            identity: config.identity,
            started: now,
            stats: Mutex::new(RequestStats::new(now)),
            breaker,
            drainer: Drainer::new(config.drain_quiet_period),
            prober: Prober::new(config.readiness_probes),
            upstream: Upstream::new(user_addr, max_idle),
            upgrades: Arc::new(Tracker::default()),
            timeouts: config.timeouts,
            default_host: HeaderValue::from_str(&user_addr.to_string())
                .expect("a socket address is a valid header value"),
            sigterm: AtomicBool::new(false),
            limits: config.limits,
        });
        Ok(Self {
            state,
            autoscaler: config.autoscaler,
            serving: listen("serving", config.serving_addr).await?,
            admin: listen("admin", config.admin_addr).await?,
            metrics: listen("metrics", config.metrics_addr).await?,
            user_metrics: listen("user metrics", config.user_metrics_addr).await?,
        })
    }

    pub fn serving_addr(&self) -> SocketAddr {
        local_addr(&self.serving)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        local_addr(&self.admin)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        local_addr(&self.metrics)
    }

    pub fn user_metrics_addr(&self) -> SocketAddr {
        local_addr(&self.user_metrics)
    }

    /// Serves until `shutdown` resolves, then drains as Knative does: probes fail at once,
    /// requests keep being served until a quiet period passes with none, then the ports
    /// close, connections finish, and upgraded connections get up to a minute.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            state,
            autoscaler,
            serving,
            admin,
            metrics,
            user_metrics,
        } = self;
        tracing::info!(
            revision = %state.identity.revision,
            pod = %state.identity.pod,
            serving = %local_addr(&serving),
            app = %state.upstream.addr(),
            container_concurrency = state.breaker.as_ref().map_or(0, |b| b.capacity()),
            "queue-proxy serving"
        );
        let push = autoscaler.map(|uri| Pusher::spawn(uri, reporter::PUSH_BUFFER));
        let reporter = match reporter::spawn_reporter(Arc::clone(&state), push) {
            Ok(reporter) => Some(reporter),
            Err(error) => {
                tracing::error!(%error, "cannot start the stats reporter; stats will not be reported");
                None
            }
        };

        let stop = Stop::default();
        let grace = state.timeouts.total;
        let st = Arc::clone(&state);
        let servers = [
            tokio::spawn(serve(
                "serving",
                serving,
                move |peer: SocketAddr| {
                    let st = Arc::clone(&st);
                    let peer_ip = peer_ip(peer);
                    service_fn(move |req| handler::handle(Arc::clone(&st), peer_ip.clone(), req))
                },
                stop.stopped(),
                Serving::new(grace).limits(state.limits),
            )),
            side_port("admin", admin, &state, admin::admin, stop.stopped(), grace),
            side_port(
                "metrics",
                metrics,
                &state,
                admin::autoscaling_metrics,
                stop.stopped(),
                grace,
            ),
            side_port(
                "user-metrics",
                user_metrics,
                &state,
                admin::request_metrics,
                stop.stopped(),
                grace,
            ),
        ];

        shutdown.await;
        state.sigterm.store(true, Ordering::Release);
        tracing::info!(quiet_period = ?state.drainer.quiet_period(), "shutdown requested; draining");
        while state.drainer.drain().await == DrainOutcome::Reset {}
        stop.stop();
        for server in servers {
            let _ = server.await;
        }
        let left = state.upgrades.wait(UPGRADE_DRAIN_TIMEOUT).await;
        if left > 0 {
            tracing::warn!(left, "upgraded connections still open at exit");
        }
        drop(reporter);
        tracing::info!("queue-proxy stopped");
    }
}

/// Serves one of the small side ports with `handler`.
fn side_port<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    state: &Arc<State>,
    handler: F,
    stopped: impl Future<Output = ()> + Send + 'static,
    grace: std::time::Duration,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Arc<State>, http::Request<hyper::body::Incoming>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<
            Output = Result<
                http::Response<http_body_util::Full<bytes::Bytes>>,
                std::convert::Infallible,
            >,
        > + Send
        + 'static,
{
    let limits = state.limits;
    let state = Arc::clone(state);
    tokio::spawn(serve(
        name,
        listener,
        move |_| {
            let state = Arc::clone(&state);
            service_fn(move |req| handler(Arc::clone(&state), req))
        },
        stopped,
        Serving::new(grace).limits(limits),
    ))
}

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 64;

/// The queue-proxy process (the `queue-proxy` binary, `sluice queue-proxy`): read Knative's
/// env (exit 64 on bad config, before binding anything), bind, serve, drain on SIGTERM.
pub fn main(args: Args) -> std::process::ExitCode {
    sluice_core::telemetry::init("info");
    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("queue-proxy: {error}");
            return std::process::ExitCode::from(EXIT_CONFIG);
        }
    };
    let threads = config.worker_threads;
    sluice_core::process::run("queue-proxy", Some(threads), async {
        let qp = QueueProxy::bind(config).await?;
        qp.run(sluice_core::shutdown::logged_signal()).await;
        Ok(())
    })
}
