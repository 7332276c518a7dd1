//! Sluice's gateway: the front door. Routes by `Host` to a service
//! (`{service}.{namespace}.{domain}`, and `{tag}-{service}…` for a tagged target), splits
//! by percent between its revisions, and sends each request straight to a ready pod's
//! queue-proxy (serve mode) or to the activator (proxy mode). For revisions that scale on
//! the gateway's view (`mpa.autoscaling.knative.dev`) it streams their concurrency to the
//! autoscaler.
//!
//! - [`routes`]: the table, updated through [`Routes`] by the local runtime (in-process)
//!   or loaded from a file by the standalone binary.
//! - `handler`: the request path.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use hyper::service::service_fn;
use sluice_core::drain::{DrainOutcome, Drainer};
use sluice_core::push::{Pusher, revision_stat};
use sluice_core::serve::{
    BindError, LimitArgs, Limits, LocalConnector, Serving, Stop, Tracker, listen, local_addr,
    peer_ip, serve,
};
use sluice_core::upstream::Upstream;
use sluice_proto::v1::Source;
use tokio::net::TcpListener;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::Instrument;

mod handler;
pub mod metrics;
pub mod routes;
pub mod source;

pub use handler::ProxyBody;
pub use routes::{Mode, RevisionBackends, Routes, ServiceRoute, TrafficTarget};
pub use source::RoutesSource;

/// Reports buffered for the autoscaler.
const PUSH_BUFFER: usize = 1024;
/// How often revision concurrency goes to the autoscaler (the queue-proxy's period).
const REPORT_INTERVAL: Duration = Duration::from_secs(1);
/// Idle in-process connections kept to the activator (same process).
const ACTIVATOR_IDLE: usize = 1000;
/// Requests on one shared HTTP/2 connection to an activator in another process: under
/// its default cap of 256 streams, so none waits in this gateway for a stream.
const ACTIVATOR_STREAMS_PER_CONN: usize = 200;
/// How long open connections get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// `EX_USAGE` from sysexits.h: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 64;

/// The standalone gateway's flags; each also reads an environment variable.
#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "gateway",
    about = "Routes by Host, splits traffic between revisions, and sends requests to pods or the activator"
)]
pub struct Args {
    /// Where requests arrive (HTTP/1.1 and h2c).
    #[arg(long, env = "SLUICE_GATEWAY_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Hosts are `{service}.{namespace}.{domain}`.
    #[arg(long, env = "SLUICE_DOMAIN", default_value = "example.com")]
    pub domain: String,
    /// The activator (`host:port`, a name such as its Kubernetes Service's is resolved
    /// once at start), for revisions in proxy mode.
    #[arg(long, env = "SLUICE_ACTIVATOR_ADDRESS")]
    pub activator: Option<String>,
    /// The autoscaler's gRPC address (`http://host:port`) for the concurrency of revisions
    /// that scale on the gateway's view.
    #[arg(long, env = "SLUICE_AUTOSCALER_ADDRESS")]
    pub autoscaler_address: Option<String>,
    /// The control plane's gRPC address (`http://host:port`): routes follow its
    /// `RoutesService`, and the last ones keep serving while it is away.
    #[arg(long, env = "SLUICE_CONTROL_ADDRESS")]
    pub control: Option<String>,
    /// A static routing table instead of a control plane (YAML: `services` and
    /// `revisions`; see the README).
    #[arg(long, env = "SLUICE_GATEWAY_ROUTES")]
    pub routes: Option<PathBuf>,
    /// This gateway's name in the stats it sends.
    #[arg(long, env = "POD_NAME", default_value = "gateway")]
    pub pod_name: String,
    /// Prometheus metrics on `/metrics` (requests by revision and code, latency, in
    /// flight, mode switches).
    #[arg(
        long,
        env = "SLUICE_GATEWAY_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,
    /// After SIGTERM: kubelet probes fail at once (the pod leaves the load balancer), and
    /// requests are served until this long passes with none (a Go duration); then the
    /// port closes.
    #[arg(long, env = "SLUICE_DRAIN_QUIET_PERIOD", default_value = "0s")]
    pub drain_quiet_period: String,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub domain: String,
    pub activator: Option<SocketAddr>,
    pub autoscaler: Option<http::Uri>,
    pub pod_name: String,
    /// Where `/metrics` is served.
    pub metrics_listen: SocketAddr,
    /// The bounds on client connections.
    pub limits: Limits,
    /// Reaches the activator in-process (same process, `sluice run`) instead of over TCP:
    /// a held request then costs no file descriptor beyond the client's own.
    pub activator_local: Option<LocalConnector>,
    /// Where routes come from; `None`: only through [`Gateway::routes`] (or a file).
    /// Kubelet probes fail until a source's first whole table has arrived.
    pub routes: Option<RoutesSource>,
    /// How long requests keep being served after shutdown with none coming.
    pub drain_quiet_period: Duration,
}

/// The standalone binary's routing file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutesFile {
    #[serde(default)]
    pub services: Vec<ServiceRoute>,
    #[serde(default)]
    pub revisions: Vec<RevisionBackends>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("{0}")]
    Config(String),
}

/// Shared by every request.
#[derive(Debug)]
pub(crate) struct State {
    routes: Routes,
    activator: Option<(Arc<Upstream>, HeaderValue)>,
    pusher: Option<Pusher>,
    pod_name: String,
    upgrades: Arc<Tracker>,
    drainer: Drainer,
}

impl State {
    /// Why the kubelet should not send traffic here now, if it should not: draining, or
    /// no whole routing table yet (every host would be 404).
    pub(crate) fn unready(&self) -> Option<&'static str> {
        if self.drainer.is_draining() {
            Some("gateway: draining")
        } else if !self.routes.synced() {
            Some("gateway: no routes from the control plane yet")
        } else {
            None
        }
    }
}

/// A gateway with its port bound, ready to serve.
#[derive(Debug)]
pub struct Gateway {
    config: Config,
    routes: Routes,
    serving: TcpListener,
    metrics: TcpListener,
}

// === impl Config ===

impl Config {
    /// Checks every flag, and reports every bad one at once.
    pub fn from_args(a: &Args) -> Result<Self, StartError> {
        let mut bad = Vec::new();
        let autoscaler = sluice_core::address::grpc_flag(
            "autoscaler-address",
            a.autoscaler_address.as_deref(),
            &mut bad,
        );
        let control = sluice_core::address::grpc_flag("control", a.control.as_deref(), &mut bad);
        if control.is_some() && a.routes.is_some() {
            bad.push("--control and --routes: routes come from one of them".into());
        }
        if a.domain.trim_matches('.').is_empty() {
            bad.push("--domain must not be empty".into());
        }
        let limits = a.limits.limits(&mut bad);
        let drain_quiet_period = match sluice_core::duration::parse(a.drain_quiet_period.trim()) {
            Some(d) if !d.negative => d.magnitude,
            _ => {
                bad.push(format!(
                    "--drain-quiet-period {:?}: give a duration such as 15s",
                    a.drain_quiet_period
                ));
                Duration::ZERO
            }
        };
        let activator = a.activator.as_deref().and_then(|given| {
            use std::net::ToSocketAddrs;
            match given.to_socket_addrs().map(|mut addrs| addrs.next()) {
                Ok(Some(addr)) => Some(addr),
                Ok(None) => {
                    bad.push(format!("--activator {given}: the name has no address"));
                    None
                }
                Err(e) => {
                    bad.push(format!("--activator {given}: {e} (give host:port)"));
                    None
                }
            }
        });
        if !bad.is_empty() {
            return Err(StartError::Config(bad.join("\n")));
        }
        Ok(Self {
            listen: a.listen,
            domain: a.domain.clone(),
            activator,
            autoscaler,
            pod_name: a.pod_name.clone(),
            metrics_listen: a.metrics_listen,
            limits,
            activator_local: None,
            routes: control.map(RoutesSource::Grpc),
            drain_quiet_period,
        })
    }
}

impl RoutesFile {
    pub fn load(path: &Path) -> Result<Self, StartError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| StartError::Config(format!("cannot read {}: {e}", path.display())))?;
        serde_norway::from_str(&text)
            .map_err(|e| StartError::Config(format!("{}: {e}", path.display())))
    }

    pub fn apply(self, routes: &Routes) {
        for s in self.services {
            routes.set_service(s);
        }
        for r in self.revisions {
            routes.set_backends(r);
        }
    }
}

// === impl Gateway ===

impl Gateway {
    /// Binds the serving port; routes start empty (every host 404) until set through
    /// [`Gateway::routes`].
    pub async fn bind(config: Config) -> Result<Self, StartError> {
        let serving = listen("serving", config.listen).await?;
        let metrics = listen("metrics", config.metrics_listen).await?;
        Ok(Self {
            routes: Routes::new(&config.domain),
            config,
            serving,
            metrics,
        })
    }

    pub fn serving_addr(&self) -> SocketAddr {
        local_addr(&self.serving)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        local_addr(&self.metrics)
    }

    /// The routing table's handle, to change routes while the gateway runs.
    pub fn routes(&self) -> Routes {
        self.routes.clone()
    }

    /// Serves until `shutdown`, then drains (kubelet probes fail; requests are served
    /// until [`Config::drain_quiet_period`] passes with none), stops accepting and lets
    /// open requests finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            config,
            routes,
            serving,
            metrics,
        } = self;
        if config.routes.is_none() {
            // Routes are set by hand (or from a file): there is nothing to wait for.
            routes.mark_synced();
        }
        let follower = config.routes.map(|source| {
            tokio::spawn(
                source::follow(source, routes.clone()).instrument(tracing::info_span!("routes")),
            )
        });
        let local = config.activator_local;
        let activator = config.activator.map(|addr| {
            (
                match local {
                    Some(local) => Upstream::in_process(addr, local, ACTIVATOR_IDLE),
                    None => Upstream::multiplexed(addr, ACTIVATOR_STREAMS_PER_CONN),
                },
                HeaderValue::from_str(&addr.to_string())
                    .expect("a socket address is a valid header value"),
            )
        });
        let state = Arc::new(State {
            routes,
            activator,
            pusher: config.autoscaler.map(|uri| Pusher::spawn(uri, PUSH_BUFFER)),
            pod_name: config.pod_name,
            upgrades: Arc::new(Tracker::default()),
            drainer: Drainer::new(config.drain_quiet_period),
        });
        tracing::info!(serving = %local_addr(&serving), "gateway serving");
        let reporter = state.pusher.clone().map(|pusher| {
            tokio::spawn(
                report_loop(Arc::clone(&state), pusher).instrument(tracing::info_span!("report")),
            )
        });
        let stop = Stop::default();
        let st = Arc::clone(&state);
        let server = tokio::spawn(serve(
            "serving",
            serving,
            move |peer: SocketAddr| {
                let st = Arc::clone(&st);
                let peer_ip = peer_ip(peer);
                service_fn(move |req| handler::handle(Arc::clone(&st), peer_ip.clone(), req))
            },
            stop.stopped(),
            Serving::new(SHUTDOWN_GRACE).limits(config.limits),
        ));
        let registry = Arc::clone(state.routes.metrics());
        let metrics_server = tokio::spawn(serve(
            "metrics",
            metrics,
            move |_| {
                let registry = Arc::clone(&registry);
                service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let rsp: http::Response<http_body_util::Full<bytes::Bytes>> =
                        sluice_core::metrics::page(registry.registry(), req.uri().path());
                    std::future::ready(Ok::<_, std::convert::Infallible>(rsp))
                })
            },
            stop.stopped(),
            Serving::new(Duration::from_secs(1)).limits(config.limits),
        ));
        shutdown.await;
        tracing::info!(quiet_period = ?state.drainer.quiet_period(), "shutdown requested; draining");
        while state.drainer.drain().await == DrainOutcome::Reset {}
        stop.stop();
        let _ = server.await;
        let _ = metrics_server.await;
        state.upgrades.wait(Duration::from_secs(1)).await;
        if let Some(reporter) = reporter {
            reporter.abort();
        }
        if let Some(follower) = follower {
            follower.abort();
        }
        tracing::info!("gateway stopped");
    }
}

/// Every second: the concurrency of each revision that scales on the gateway's view, at
/// the reporters' phase of the wall clock's second ([`sluice_core::phase`]).
async fn report_loop(state: Arc<State>, pusher: Pusher) {
    let first = sluice_core::phase::until_wall_phase(sluice_core::phase::REPORT_PHASE);
    let mut tick = tokio::time::interval_at(Instant::now() + first, REPORT_INTERVAL);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        for rev in state.routes.reporting() {
            let r = rev.stats.lock().report(now);
            let report = revision_stat(
                Source::Gateway,
                &state.pod_name,
                &rev.namespace,
                &rev.name,
                r.average_concurrency,
                r.request_count as f64,
            );
            if !pusher.try_send(report) {
                tracing::warn!("stats push backlogged; a report was dropped");
            }
        }
    }
}

/// The gateway process: check the flags and the routes file (exit 64), bind, serve until
/// SIGTERM or Ctrl-C.
pub fn main(args: Args) -> std::process::ExitCode {
    use std::process::ExitCode;
    sluice_core::telemetry::init("info");
    let (config, file) = match Config::from_args(&args).and_then(|c| {
        let file = match &args.routes {
            Some(path) => RoutesFile::load(path)?,
            None => RoutesFile::default(),
        };
        Ok((c, file))
    }) {
        Ok(ok) => ok,
        Err(error) => {
            eprintln!("gateway: {error}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    sluice_core::process::run("gateway", None, async {
        let gateway = Gateway::bind(config).await?;
        file.apply(&gateway.routes());
        gateway.run(sluice_core::shutdown::logged_signal()).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn the_routes_file_spells_modes_serve_and_proxy() {
        let file: RoutesFile = serde_norway::from_str(
            "revisions:\n\
             - {namespace: default, name: a, mode: serve}\n\
             - {namespace: default, name: b, mode: proxy}\n\
             - {namespace: default, name: c}\n",
        )
        .expect("parses");
        let modes: Vec<Mode> = file.revisions.iter().map(|r| r.mode).collect();
        assert_eq!(modes[..2], [Mode::Serve, Mode::Proxy]);
        assert!(!modes[2].is_serve(), "no mode: through the activator");
        assert!(
            serde_norway::from_str::<RoutesFile>(
                "revisions: [{namespace: d, name: x, mode: fast}]"
            )
            .is_err()
        );
    }

    #[test]
    fn every_bad_flag_is_reported_at_once() {
        let args = Args::try_parse_from([
            "gateway",
            "--domain=.",
            "--autoscaler-address=http://[::1",
            "--idle-timeout=soon",
            "--control=ftp://x",
        ])
        .expect("flags parse");
        let Err(StartError::Config(why)) = Config::from_args(&args) else {
            panic!("refused");
        };
        assert_eq!(why.lines().count(), 4, "{why}");
        for flag in [
            "--domain",
            "--autoscaler-address",
            "--idle-timeout",
            "--control",
        ] {
            assert!(why.contains(flag), "{flag} in {why}");
        }
    }

    #[test]
    fn the_activator_may_be_named_as_a_service_is() {
        let named = Args::try_parse_from(["gateway", "--activator=localhost:8012"]).expect("flags");
        let config = Config::from_args(&named).expect("resolved");
        assert_eq!(config.activator.map(|a| a.port()), Some(8012));
        assert!(config.activator.is_some_and(|a| a.ip().is_loopback()));
        let bad = Args::try_parse_from(["gateway", "--activator=no-port"]).expect("flags");
        let Err(StartError::Config(why)) = Config::from_args(&bad) else {
            panic!("refused");
        };
        assert!(why.contains("--activator no-port"), "{why}");
    }
}
