//! Sluice's activator: when a revision has no ready pod, or too few for a burst, requests
//! come here. The activator holds them, pokes the autoscaler, and releases them to pods
//! as soon as they pass a probe, never giving a pod more than its containerConcurrency,
//! as Knative's activator does.
//!
//! [`Activator::bind`] binds every port (so tests read back ephemeral ones), then
//! [`Activator::run`] serves until the shutdown future resolves and drains.

pub mod config;
pub mod endpoints;
mod handler;
pub mod metrics;
mod prober;
mod reporter;
mod revision;
mod throttler;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use sluice_core::drain::{DrainOutcome, Drainer};
use sluice_core::push::{Pusher, revision_stat};
use sluice_core::serve::{
    BindError, Limits, LocalConnector, LocalListener, Serving, Stop, Tracker,
    UPGRADE_DRAIN_TIMEOUT, listen, local_addr, peer_ip, serve,
};
use sluice_proto::v1::Source;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tracing::Instrument;

pub use config::{Args, Config, ConfigError};
pub use endpoints::EndpointsSource;
pub use handler::ProxyBody;
pub use metrics::Metrics;

use crate::prober::ProbeConfig;
use crate::reporter::REPORT_INTERVAL;
use crate::revision::{DEFAULT_TIMEOUT, Registry};

/// Reports buffered for the autoscaler: a second's worth for thousands of revisions.
const PUSH_BUFFER: usize = 4096;

/// Failing to start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Shared by every request.
#[derive(Debug)]
pub(crate) struct State {
    registry: Arc<Registry>,
    pusher: Option<Pusher>,
    pod_name: String,
    drainer: Drainer,
    upgrades: Arc<Tracker>,
    metrics: Arc<Metrics>,
}

/// An activator with its ports bound, ready to serve.
#[derive(Debug)]
pub struct Activator {
    state: Arc<State>,
    source: Option<EndpointsSource>,
    autoscaler: Option<http::Uri>,
    serving: TcpListener,
    metrics: TcpListener,
    limits: Limits,
    /// In-process connections, once [`Activator::connect_in_process`] was called.
    local: Option<LocalListener>,
}

// === impl State ===

impl State {
    /// Why health checks fail now, if they do (Knative: draining, or no autoscaler stream).
    fn unhealthy(&self) -> Option<&'static str> {
        if self.drainer.is_draining() {
            Some("activator is shutting down")
        } else if self.pusher.as_ref().is_some_and(|p| !p.is_connected()) {
            Some("activator is not connected to the autoscaler")
        } else {
            None
        }
    }
}

// === impl Activator ===

impl Activator {
    /// Builds the state and binds both ports; fails before serving anything. `source`
    /// overrides the configured endpoint source (tests and the local runtime pass an
    /// in-process one).
    pub async fn bind(config: Config, source: Option<EndpointsSource>) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new()?);
        let registry = Arc::new(Registry::new(
            Arc::clone(&metrics),
            ProbeConfig {
                timeout: config.probe_timeout,
                frequency: config.probe_frequency,
            },
            config.queue_depth,
            config.max_idle_per_pod,
        ));
        let state = Arc::new(State {
            registry,
            pusher: None,
            pod_name: config.pod_name,
            drainer: Drainer::new(config.drain_quiet_period),
            upgrades: Arc::new(Tracker::default()),
            metrics,
        });
        Ok(Self {
            state,
            source: source.or(config.endpoints.map(EndpointsSource::Grpc)),
            autoscaler: config.autoscaler,
            serving: listen("serving", config.listen).await?,
            metrics: listen("metrics", config.metrics_listen).await?,
            limits: config.limits,
            local: None,
        })
    }

    pub fn serving_addr(&self) -> SocketAddr {
        local_addr(&self.serving)
    }

    /// A way to reach the serving port from this process without a socket (the gateway
    /// in `sluice run`): the connections it opens are served like TCP ones.
    pub fn connect_in_process(&mut self) -> LocalConnector {
        let (connector, listener) = sluice_core::serve::local::pair();
        self.local = Some(listener);
        connector
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        local_addr(&self.metrics)
    }

    /// Serves until `shutdown` resolves, then drains as Knative does: health checks fail
    /// at once, requests (held ones included) keep being served until a quiet period
    /// passes with no new one, then the ports close and connections finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            mut state,
            source,
            autoscaler,
            serving,
            metrics,
            limits,
            local,
        } = self;
        // The push task needs a runtime, so it starts here rather than in `bind`.
        if let Some(uri) = autoscaler {
            Arc::get_mut(&mut state)
                .expect("nothing else holds the state before run")
                .pusher = Some(Pusher::spawn(uri, PUSH_BUFFER));
        }
        tracing::info!(serving = %local_addr(&serving), metrics = %local_addr(&metrics), "activator serving");
        let mut background = Vec::new();
        match source {
            Some(source) => background.push(tokio::spawn(
                endpoints::follow(source, Arc::clone(&state.registry))
                    .instrument(tracing::info_span!("endpoints")),
            )),
            None => tracing::warn!("no endpoint source: every request will get 404"),
        }
        if let Some(pusher) = state.pusher.clone() {
            background.push(tokio::spawn(
                report_loop(Arc::clone(&state), pusher).instrument(tracing::info_span!("report")),
            ));
        }

        let stop = Stop::default();
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
                Serving::new(DEFAULT_TIMEOUT).limits(limits).local(local),
            )),
            {
                let st = Arc::clone(&state);
                tokio::spawn(serve(
                    "metrics",
                    metrics,
                    move |_| {
                        let st = Arc::clone(&st);
                        service_fn(move |req| metrics_page(Arc::clone(&st), req))
                    },
                    stop.stopped(),
                    Serving::new(Duration::from_secs(1)).limits(limits),
                ))
            },
        ];

        shutdown.await;
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
        for task in background {
            task.abort();
        }
        tracing::info!("activator stopped");
    }
}

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 64;

/// The activator process: check the configuration (exit 64 naming every bad value, before
/// binding anything), bind, serve, and drain on SIGTERM or Ctrl-C.
pub fn main(args: Args) -> std::process::ExitCode {
    sluice_core::telemetry::init("info");
    let config = match Config::try_from(args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("activator: {error}");
            return std::process::ExitCode::from(EXIT_CONFIG);
        }
    };
    sluice_core::process::run("activator", None, async {
        let activator = Activator::bind(config, None).await?;
        activator.run(sluice_core::shutdown::logged_signal()).await;
        Ok(())
    })
}

/// Every second, each active revision's concurrency and request count to the autoscaler,
/// at the reporters' phase of the wall clock's second ([`sluice_core::phase`]).
async fn report_loop(state: Arc<State>, pusher: Pusher) {
    let first = sluice_core::phase::until_wall_phase(sluice_core::phase::REPORT_PHASE);
    let mut tick = tokio::time::interval_at(Instant::now() + first, REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        for rev in state.registry.all() {
            let Some(r) = rev.report.lock().report(now) else {
                continue;
            };
            let report = revision_stat(
                Source::Activator,
                &state.pod_name,
                &rev.namespace,
                &rev.name,
                r.concurrency,
                r.request_count,
            );
            if !pusher.try_send(report) {
                tracing::debug!("stats push backlogged; report dropped");
            }
        }
    }
}

async fn metrics_page(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    Ok(sluice_core::metrics::page(
        state.metrics.registry(),
        req.uri().path(),
    ))
}
