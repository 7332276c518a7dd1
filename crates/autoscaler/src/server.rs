//! The `autoscaler` process: flags (or env), `config-autoscaler` from a file, the gRPC
//! port (stats in, decisions out) and the metrics port (`/metrics`, `/healthz`).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use sluice_core::metrics::TEXT_CONTENT_TYPE;
use sluice_core::respond;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;

use crate::activator_probe::{ActivatorProbe, ProbedScaler};
use crate::config::{AutoscalerConfig, ConfigError};
use crate::follow::StreamPods;
use crate::grpc;
use crate::scaler::{ObservedPods, Scaler};
use crate::service::{Autoscaler, Options, TICK};

/// How long open streams get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How often `--activator-probe` is probed (Knative re-probes every second).
const ACTIVATOR_PROBE_PERIOD: Duration = Duration::from_secs(1);

/// The autoscaler's flags; each also reads an environment variable.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Where to serve gRPC: the stats stream in, the decision stream out.
    #[arg(long, env = "SLUICE_AUTOSCALER_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// Where to serve Prometheus `/metrics` and `/healthz`.
    #[arg(
        long,
        env = "SLUICE_AUTOSCALER_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,
    /// `config-autoscaler`: a ConfigMap manifest (YAML), or a YAML map of its keys.
    #[arg(long, env = "SLUICE_AUTOSCALER_CONFIG")]
    pub config: Option<PathBuf>,
    /// The control plane's gRPC address (`http://host:port`): revisions, their annotations
    /// and their pods follow its `EndpointsService`, and only those are scaled. Without
    /// it, a revision is scaled with the config's defaults from its first stat, and its
    /// pods are the queue-proxies that report.
    #[arg(long, env = "SLUICE_CONTROL_ADDRESS")]
    pub control: Option<String>,
    /// The activators' address (`http://host:port`, e.g. their Service): probed every
    /// second, and no revision is scaled to zero while no activator answers (Knative's
    /// activator probe). Without it, an activator is taken to be in the path.
    #[arg(long, env = "SLUICE_ACTIVATOR_PROBE")]
    pub activator_probe: Option<String>,
    /// Embedding only (no flag): scale only revisions registered through
    /// [`Autoscaler::upsert_revision`] and refuse stats for others. The standalone process
    /// scales a revision with the config's defaults from its first stat.
    #[arg(skip)]
    pub no_auto_register: bool,
}

/// Why the autoscaler could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Invalid { path: PathBuf, source: ConfigError },
    #[error("{0}")]
    Flag(String),
    #[error(transparent)]
    Bind(#[from] sluice_core::serve::BindError),
}

impl StartError {
    /// A configuration problem (exit 64) rather than a runtime one.
    pub fn is_config(&self) -> bool {
        !matches!(self, Self::Bind(_))
    }
}

/// How long revisions wait for the control plane's config before they are registered.
const CONFIG_FIRST: Duration = Duration::from_secs(5);

/// `EX_USAGE` from sysexits.h: the configuration is wrong.
pub const EXIT_CONFIG: u8 = 64;

/// The whole process (the `autoscaler` binary, `sluice autoscaler`): a runtime, bind,
/// serve until SIGTERM or Ctrl-C. A bad config exits 64 before anything is bound.
pub fn main(args: &Args) -> std::process::ExitCode {
    use sluice_core::process::Exit;
    sluice_core::telemetry::init("info");
    sluice_core::process::run("autoscaler", None, async {
        // Listened for from here: a SIGTERM while binding is taken once it serves.
        let stop = sluice_core::shutdown::logged_signal();
        let server = Server::bind(args, None).await.map_err(|error| {
            let code = if error.is_config() { EXIT_CONFIG } else { 1 };
            Exit::new(code, error)
        })?;
        server.run(stop).await;
        Ok(())
    })
}

/// A bound autoscaler, not yet serving.
#[derive(Debug)]
pub struct Server {
    autoscaler: Autoscaler,
    grpc: TcpListener,
    metrics: TcpListener,
    /// The control plane followed, and the pod counts its stream fills in.
    control: Option<(http::Uri, Arc<StreamPods>)>,
    /// The config it started with (`--config`), which holds until the control plane has
    /// one.
    config: AutoscalerConfig,
    /// `--activator-probe`: probed while serving.
    probe: Option<Arc<ActivatorProbe>>,
}

impl Server {
    /// Reads the config (every problem at once) and binds both ports. `scaler`: `None`
    /// for the standalone [`ObservedPods`].
    pub async fn bind(args: &Args, scaler: Option<Arc<dyn Scaler>>) -> Result<Self, StartError> {
        let config = match &args.config {
            Some(path) => load_config(path)?,
            None => AutoscalerConfig::default(),
        };
        let mut bad = Vec::new();
        let control_uri =
            sluice_core::address::grpc_flag("control", args.control.as_deref(), &mut bad);
        let probe_uri = sluice_core::address::grpc_flag(
            "activator-probe",
            args.activator_probe.as_deref(),
            &mut bad,
        );
        if let Some(message) = bad.pop() {
            return Err(StartError::Flag(message));
        }
        let grpc = listen("grpc", args.listen).await?;
        let metrics = listen("metrics", args.metrics_listen).await?;
        let options = Options {
            tick: TICK,
            auto_register: !args.no_auto_register && control_uri.is_none(),
            ..Options::default()
        };
        let control = control_uri.map(|uri| (uri, Arc::new(StreamPods::default())));
        let scaler: Arc<dyn Scaler> = match (scaler, &control) {
            (Some(s), _) => s,
            (None, Some((_, pods))) => pods.clone(),
            (None, None) => Arc::new(ObservedPods),
        };
        let probe = probe_uri.as_ref().map(ActivatorProbe::new);
        let scaler: Arc<dyn Scaler> = match &probe {
            Some(probe) => Arc::new(ProbedScaler {
                inner: scaler,
                probe: Arc::clone(probe),
            }),
            None => scaler,
        };
        Ok(Self {
            autoscaler: Autoscaler::new(config.clone(), scaler, options),
            grpc,
            metrics,
            control,
            config,
            probe,
        })
    }

    pub fn autoscaler(&self) -> &Autoscaler {
        &self.autoscaler
    }

    pub fn grpc_addr(&self) -> SocketAddr {
        self.grpc
            .local_addr()
            .expect("a bound socket has an address")
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        self.metrics
            .local_addr()
            .expect("a bound socket has an address")
    }

    /// Serves until `shutdown`, then ends watch streams and closes both ports.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let (stats, decisions) = grpc::services(&self.autoscaler);
        tracing::info!(grpc = %self.grpc_addr(), metrics = %self.metrics_addr(), "autoscaler serving");
        let grpc = tokio::spawn(
            tonic::transport::Server::builder()
                .http2_keepalive_interval(Some(Duration::from_secs(30)))
                .add_service(stats)
                .add_service(decisions)
                .serve_with_incoming_shutdown(TcpListenerStream::new(self.grpc), stopped()),
        );
        let autoscaler = self.autoscaler.clone();
        let metrics = tokio::spawn(sluice_core::serve::serve(
            "metrics",
            self.metrics,
            move |_| {
                let autoscaler = autoscaler.clone();
                service_fn(move |req| metrics_port(autoscaler.clone(), req))
            },
            stopped(),
            sluice_core::serve::Serving::new(SHUTDOWN_GRACE),
        ));
        let followers = self.control.map(|(uri, pods)| {
            let (config_synced, mut synced) = tokio::sync::watch::channel(false);
            let config = tokio::spawn(tracing::Instrument::instrument(
                crate::follow::follow_config(
                    sluice_core::feed::Source::Grpc(uri.clone()),
                    self.autoscaler.clone(),
                    self.config,
                    config_synced,
                ),
                tracing::info_span!("control_config"),
            ));
            // Revisions are registered under the control plane's config: its first state
            // is waited for (briefly: a control plane that is away holds nothing back).
            let autoscaler = self.autoscaler.clone();
            let revisions = tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let _ = tokio::time::timeout(CONFIG_FIRST, synced.wait_for(|s| *s)).await;
                    crate::follow::follow(sluice_core::feed::Source::Grpc(uri), autoscaler, pods)
                        .await;
                },
                tracing::info_span!("control"),
            ));
            [config, revisions]
        });
        let probe = self
            .probe
            .map(|probe| tokio::spawn(probe.run(ACTIVATOR_PROBE_PERIOD)));
        shutdown.await;
        tracing::info!("shutting down");
        if let Some(probe) = probe {
            probe.abort();
        }
        for follower in followers.into_iter().flatten() {
            follower.abort();
        }
        self.autoscaler.close();
        let _ = stop.send(true);
        if tokio::time::timeout(SHUTDOWN_GRACE, grpc).await.is_err() {
            tracing::warn!("gRPC streams still open at exit");
        }
        let _ = metrics.await;
    }
}

async fn metrics_port<B>(
    autoscaler: Autoscaler,
    req: Request<B>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/metrics" => {
            let mut rsp = Response::new(Full::new(Bytes::from(autoscaler.metrics().text())));
            rsp.headers_mut().insert(
                CONTENT_TYPE,
                http::HeaderValue::from_static(TEXT_CONTENT_TYPE),
            );
            rsp
        }
        "/healthz" => respond::text(StatusCode::OK, "autoscaler"),
        _ => respond::text(
            StatusCode::NOT_FOUND,
            "not found: this port serves /metrics and /healthz",
        ),
    })
}

/// `config-autoscaler` from a file: a `ConfigMap` manifest (its `data`), or a bare map.
pub fn load_config(path: &Path) -> Result<AutoscalerConfig, StartError> {
    let text = std::fs::read_to_string(path).map_err(|source| StartError::Read {
        path: path.to_owned(),
        source,
    })?;
    let bad = |message: String| StartError::Config {
        path: path.to_owned(),
        message,
    };
    let data = config_data(&text).map_err(bad)?;
    for key in AutoscalerConfig::unknown_keys(&data) {
        tracing::warn!(key, file = %path.display(), "unknown config-autoscaler key ignored");
    }
    AutoscalerConfig::from_data(&data).map_err(|source| StartError::Invalid {
        path: path.to_owned(),
        source,
    })
}

fn config_data(text: &str) -> Result<BTreeMap<String, String>, String> {
    use serde_norway::Value;
    let doc: Value = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let map = match doc {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Mapping(map) => map,
        _ => return Err("expected a ConfigMap or a map of config-autoscaler keys".into()),
    };
    let data = match map.get("kind") {
        None => Value::Mapping(map),
        Some(Value::String(kind)) if kind == "ConfigMap" => {
            let name = map
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str);
            if let Some(name) = name.filter(|n| *n != "config-autoscaler") {
                return Err(format!("metadata.name: {name:?} is not config-autoscaler"));
            }
            map.get("data").cloned().unwrap_or(Value::Null)
        }
        Some(kind) => return Err(format!("kind: {kind:?}: expected ConfigMap")),
    };
    let data = match data {
        Value::Null => return Ok(BTreeMap::new()),
        Value::Mapping(data) => data,
        _ => return Err("data: expected a map of strings".into()),
    };
    data.into_iter()
        .map(|(k, v)| {
            let key = k.as_str().ok_or("data: keys must be strings")?.to_owned();
            let value = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(format!("{key}: must be a string, number or boolean")),
            };
            Ok((key, value))
        })
        .collect()
}

async fn listen(port: &'static str, addr: SocketAddr) -> Result<TcpListener, StartError> {
    Ok(sluice_core::serve::listen(port, addr).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configmap_manifest_or_a_bare_map() {
        let manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  namespace: knative-serving\ndata:\n  stable-window: 30s\n  max-scale: 3\n  enable-scale-to-zero: false\n";
        let data = config_data(manifest).expect("valid");
        assert_eq!(data["stable-window"], "30s");
        assert_eq!(data["max-scale"], "3");
        assert_eq!(data["enable-scale-to-zero"], "false");
        let bare = config_data("stable-window: \"30s\"\n").expect("valid");
        assert_eq!(bare["stable-window"], "30s");
        assert!(config_data("").expect("empty is defaults").is_empty());
    }

    #[test]
    fn the_example_configmap_is_knatives_defaults() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/config-autoscaler.yaml");
        let loaded = load_config(&path).expect("the example loads");
        assert_eq!(loaded, AutoscalerConfig::default());
    }

    #[test]
    fn the_wrong_document_is_refused_by_name() {
        let other = "kind: ConfigMap\nmetadata:\n  name: config-network\ndata: {}\n";
        let err = config_data(other).expect_err("another ConfigMap");
        assert!(err.contains("config-network"), "{err}");
        let err = config_data("kind: Service\n").expect_err("not a ConfigMap");
        assert!(err.contains("Service"), "{err}");
        let err = config_data("max-scale: [1]\n").expect_err("not a scalar");
        assert!(err.starts_with("max-scale: "), "{err}");
    }
}
