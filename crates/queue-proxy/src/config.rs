//! The queue-proxy's configuration: Knative's environment variables exactly as the
//! revision reconciler sets them, plus a few of Sluice's own (`SLUICE_*`). Parsed once,
//! validated as a whole: every bad variable is reported in one error.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use clap::Parser;

use crate::readiness::{self, ProbeSpec};

pub const DEFAULT_ADMIN_PORT: u16 = 8022;
pub const DEFAULT_METRICS_PORT: u16 = 9090;
pub const DEFAULT_USER_METRICS_PORT: u16 = 9091;
pub const DEFAULT_BIND_ADDRESS: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
/// Knative's `drainSleepDuration`.
pub const DEFAULT_DRAIN_QUIET_PERIOD: Duration = sluice_core::drain::DEFAULT_QUIET_PERIOD;
/// How often stats are reported (Knative's `reportingPeriod`).
pub const REPORTING_PERIOD: Duration = Duration::from_secs(1);

/// Raw values as they arrive. Everything is a string here so that validation can name
/// every bad variable at once instead of stopping at the first.
#[derive(Debug, Parser)]
#[command(
    name = "queue-proxy",
    version,
    about = "Sluice queue-proxy: enforces containerConcurrency in front of an app container, \
             measures concurrency and reports it (a drop-in for Knative's queue-proxy)"
)]
pub struct Args {
    #[arg(long, env = "SERVING_NAMESPACE")]
    pub serving_namespace: Option<String>,
    #[arg(long, env = "SERVING_SERVICE")]
    pub serving_service: Option<String>,
    #[arg(long, env = "SERVING_CONFIGURATION")]
    pub serving_configuration: Option<String>,
    #[arg(long, env = "SERVING_REVISION")]
    pub serving_revision: Option<String>,
    #[arg(long, env = "SERVING_POD")]
    pub serving_pod: Option<String>,
    #[arg(long, env = "SERVING_POD_IP")]
    pub serving_pod_ip: Option<String>,
    /// Port the proxy listens on (8012, or 8013 for h2c revisions; 0 picks a free one).
    #[arg(long, env = "QUEUE_SERVING_PORT")]
    pub queue_serving_port: Option<String>,
    /// The app container's port on 127.0.0.1.
    #[arg(long, env = "USER_PORT")]
    pub user_port: Option<String>,
    /// Requests the app may run at once; 0 means no limit.
    #[arg(long, env = "CONTAINER_CONCURRENCY")]
    pub container_concurrency: Option<String>,
    #[arg(long, env = "REVISION_TIMEOUT_SECONDS")]
    pub revision_timeout_seconds: Option<String>,
    #[arg(long, env = "REVISION_RESPONSE_START_TIMEOUT_SECONDS")]
    pub revision_response_start_timeout_seconds: Option<String>,
    #[arg(long, env = "REVISION_IDLE_TIMEOUT_SECONDS")]
    pub revision_idle_timeout_seconds: Option<String>,
    /// JSON of the app container's readiness probe (a list with multi-container probing).
    #[arg(long, env = "SERVING_READINESS_PROBE")]
    pub serving_readiness_probe: Option<String>,
    #[arg(long, env = "ENABLE_MULTI_CONTAINER_PROBES")]
    pub enable_multi_container_probes: Option<String>,
    /// Admin port: `/wait-for-drain`.
    #[arg(long, env = "SLUICE_ADMIN_PORT")]
    pub admin_port: Option<String>,
    /// Autoscaling metrics port: Knative's protobuf `Stat` on `/metrics`.
    #[arg(long, env = "SLUICE_METRICS_PORT")]
    pub metrics_port: Option<String>,
    /// Request metrics port: Prometheus text on `/metrics`.
    #[arg(long, env = "SLUICE_USER_METRICS_PORT")]
    pub user_metrics_port: Option<String>,
    /// Address every port binds to.
    #[arg(long, env = "SLUICE_BIND_ADDRESS")]
    pub bind_address: Option<String>,
    /// The autoscaler's gRPC address (`http://host:port`); unset: stats are only served on
    /// the metrics port.
    #[arg(long, env = "SLUICE_AUTOSCALER_ADDRESS")]
    pub autoscaler_address: Option<String>,
    /// Time with no request that ends a drain (`30s`, `500ms`, or seconds).
    #[arg(long, env = "SLUICE_DRAIN_QUIET_PERIOD")]
    pub drain_quiet_period: Option<String>,
    /// Runtime worker threads: 1 (the default), one thread and no cross-thread wake-ups,
    /// as befits a sidecar's slice of a core; more opts into the multi-threaded scheduler.
    #[arg(long, env = "SLUICE_WORKER_THREADS")]
    pub worker_threads: Option<String>,
    /// The bounds on client connections (header-read and idle timeouts, HTTP/2
    /// keep-alive and streams, connections).
    #[command(flatten)]
    pub limits: sluice_core::serve::LimitArgs,
}

/// Validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub identity: Identity,
    pub serving_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub user_metrics_addr: SocketAddr,
    pub user_port: u16,
    /// 0: no limit.
    pub container_concurrency: usize,
    pub timeouts: Timeouts,
    pub readiness_probes: Vec<ProbeSpec>,
    pub autoscaler: Option<http::Uri>,
    pub drain_quiet_period: Duration,
    pub limits: sluice_core::serve::Limits,
    /// At least 1.
    pub worker_threads: usize,
}

/// Who this queue-proxy serves: labels on every stat and metric.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    pub namespace: String,
    pub service: String,
    pub configuration: String,
    pub revision: String,
    pub pod: String,
    pub pod_ip: String,
}

/// Knative's three per-request timers (§1.8); `None` is off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub total: Duration,
    pub response_start: Option<Duration>,
    pub idle: Option<Duration>,
}

// === impl Timeouts ===

impl Timeouts {
    /// When a request that has not started its response gets a 504: the earliest of the
    /// total, response-start and idle timers (with no write yet, idle counts from the start).
    pub fn first_byte_deadline(&self, start: tokio::time::Instant) -> tokio::time::Instant {
        [self.response_start, self.idle]
            .into_iter()
            .flatten()
            .fold(start + self.total, |deadline, t| deadline.min(start + t))
    }
}

/// Every problem found, one per variable.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError(pub Vec<String>);

// === impl ConfigError ===

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid queue-proxy configuration ({} problem",
            self.0.len()
        )?;
        if self.0.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for problem in &self.0 {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// === impl Config ===

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let mut v = Validator::default();
        let identity = Identity {
            namespace: v.required("SERVING_NAMESPACE", a.serving_namespace),
            service: a.serving_service.unwrap_or_default(),
            configuration: v.required("SERVING_CONFIGURATION", a.serving_configuration),
            revision: v.required("SERVING_REVISION", a.serving_revision),
            pod: v.required("SERVING_POD", a.serving_pod),
            pod_ip: v.required("SERVING_POD_IP", a.serving_pod_ip),
        };
        let serving_port = v.port("QUEUE_SERVING_PORT", a.queue_serving_port, None, true);
        let user_port = v.port("USER_PORT", a.user_port, None, false);
        let admin_port = v.port(
            "SLUICE_ADMIN_PORT",
            a.admin_port,
            Some(DEFAULT_ADMIN_PORT),
            true,
        );
        let metrics_port = v.port(
            "SLUICE_METRICS_PORT",
            a.metrics_port,
            Some(DEFAULT_METRICS_PORT),
            true,
        );
        let user_metrics_port = v.port(
            "SLUICE_USER_METRICS_PORT",
            a.user_metrics_port,
            Some(DEFAULT_USER_METRICS_PORT),
            true,
        );
        let bind = match a.bind_address.filter(|s| !s.is_empty()) {
            None => DEFAULT_BIND_ADDRESS,
            Some(s) => s.parse().unwrap_or_else(|_| {
                v.bad(
                    "SLUICE_BIND_ADDRESS",
                    &s,
                    "an IP address such as 0.0.0.0 or ::1",
                );
                DEFAULT_BIND_ADDRESS
            }),
        };
        let container_concurrency = v
            .whole("CONTAINER_CONCURRENCY", a.container_concurrency, None)
            .unwrap_or(0);
        let total = v.whole("REVISION_TIMEOUT_SECONDS", a.revision_timeout_seconds, None);
        if total == Some(0) {
            v.bad("REVISION_TIMEOUT_SECONDS", "0", "at least 1 second");
        }
        let response_start = v.whole(
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            a.revision_response_start_timeout_seconds,
            Some(0),
        );
        let idle = v.whole(
            "REVISION_IDLE_TIMEOUT_SECONDS",
            a.revision_idle_timeout_seconds,
            Some(0),
        );
        let multi = v.boolean(
            "ENABLE_MULTI_CONTAINER_PROBES",
            a.enable_multi_container_probes,
        );
        let readiness_probes = match a.serving_readiness_probe.as_deref() {
            None | Some("") => Vec::new(),
            Some(json) => readiness::parse(json, multi).unwrap_or_else(|e| {
                v.problems.push(format!("SERVING_READINESS_PROBE: {e}"));
                Vec::new()
            }),
        };
        let autoscaler = a
            .autoscaler_address
            .filter(|s| !s.is_empty())
            .and_then(|s| v.grpc_address("SLUICE_AUTOSCALER_ADDRESS", &s));
        let drain_quiet_period = match a.drain_quiet_period.filter(|s| !s.is_empty()) {
            None => DEFAULT_DRAIN_QUIET_PERIOD,
            Some(s) => parse_duration(&s).unwrap_or_else(|| {
                v.bad(
                    "SLUICE_DRAIN_QUIET_PERIOD",
                    &s,
                    "a duration such as 30s, 500ms or 2",
                );
                DEFAULT_DRAIN_QUIET_PERIOD
            }),
        };
        let limits = a.limits.limits(&mut v.problems);
        let worker_threads = v
            .whole("SLUICE_WORKER_THREADS", a.worker_threads, Some(1))
            .unwrap_or(1);
        if worker_threads == 0 {
            v.bad("SLUICE_WORKER_THREADS", "0", "at least 1");
        }
        if !v.problems.is_empty() {
            return Err(ConfigError(v.problems));
        }
        let secs = |s: u64| Duration::from_secs(s);
        Ok(Config {
            identity,
            serving_addr: SocketAddr::new(bind, serving_port),
            admin_addr: SocketAddr::new(bind, admin_port),
            metrics_addr: SocketAddr::new(bind, metrics_port),
            user_metrics_addr: SocketAddr::new(bind, user_metrics_port),
            user_port,
            container_concurrency: usize::try_from(container_concurrency)
                .expect("checked to fit below"),
            timeouts: Timeouts {
                total: secs(total.unwrap_or(0)),
                response_start: response_start.filter(|&s| s > 0).map(secs),
                idle: idle.filter(|&s| s > 0).map(secs),
            },
            readiness_probes,
            autoscaler,
            drain_quiet_period,
            limits,
            worker_threads: usize::try_from(worker_threads).unwrap_or(usize::MAX),
        })
    }
}

impl Config {
    /// Parses the process's environment and flags.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::try_from(Args::parse())
    }
}

/// A Go duration (`30s`, `500ms`, `1m30s`), or a plain number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    sluice_core::duration::parse(s)
        .filter(|d| !d.negative)
        .map(|d| d.magnitude)
}

/// Collects problems while parsing each variable.
#[derive(Default)]
struct Validator {
    problems: Vec<String>,
}

impl Validator {
    fn bad(&mut self, var: &str, value: &str, expected: &str) {
        self.problems.push(format!(
            "{var}: {value:?} is not valid; expected {expected}"
        ));
    }

    /// Knative requires these to be set, but allows them to be empty.
    fn required(&mut self, var: &str, value: Option<String>) -> String {
        value.unwrap_or_else(|| {
            self.problems.push(format!("{var}: missing (required)"));
            String::new()
        })
    }

    fn whole(&mut self, var: &str, value: Option<String>, default: Option<u64>) -> Option<u64> {
        match value.filter(|s| !s.trim().is_empty()) {
            None => {
                if default.is_none() {
                    self.problems.push(format!("{var}: missing (required)"));
                }
                default
            }
            Some(s) => match s.trim().parse::<u64>() {
                Ok(n) if n <= u64::from(u32::MAX) => Some(n),
                _ => {
                    self.bad(var, &s, "a whole number from 0 to 4294967295");
                    None
                }
            },
        }
    }

    fn port(
        &mut self,
        var: &str,
        value: Option<String>,
        default: Option<u16>,
        zero_ok: bool,
    ) -> u16 {
        let Some(n) = self.whole(var, value.clone(), default.map(u64::from)) else {
            return 0;
        };
        match u16::try_from(n) {
            Ok(p) if p > 0 || zero_ok => p,
            _ => {
                let range = if zero_ok {
                    "0 (any free port) to 65535"
                } else {
                    "1 to 65535"
                };
                self.bad(
                    var,
                    &value.unwrap_or_default(),
                    &format!("a port from {range}"),
                );
                0
            }
        }
    }

    fn boolean(&mut self, var: &str, value: Option<String>) -> bool {
        match value.as_deref().map(str::trim) {
            None | Some("") => false,
            Some(s) if s.eq_ignore_ascii_case("true") || s == "1" => true,
            Some(s) if s.eq_ignore_ascii_case("false") || s == "0" => false,
            Some(s) => {
                self.bad(var, s, "true or false");
                false
            }
        }
    }

    fn grpc_address(&mut self, var: &str, value: &str) -> Option<http::Uri> {
        let uri = sluice_core::address::grpc(value);
        if uri.is_none() {
            self.bad(var, value, "http://host:port");
        }
        uri
    }
}

#[cfg(test)]
mod tests;
