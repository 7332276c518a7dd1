//! The activator's configuration: flags, each with an environment variable (Knative's
//! names where Knative has one), checked once into a typed [`Config`]. Every bad value is
//! reported, then start-up fails once.

use std::net::SocketAddr;
use std::time::Duration;

use crate::prober::{DEFAULT_PROBE_FREQUENCY, DEFAULT_PROBE_TIMEOUT};

/// Requests that may wait for one revision with no capacity before more are refused.
pub const DEFAULT_QUEUE_DEPTH: usize = 10_000;
/// Knative's `network.DefaultDrainTimeout`: how long the activator keeps serving after
/// SIGTERM once requests stop arriving, while endpoint removal propagates.
pub const DEFAULT_DRAIN_QUIET_PERIOD: Duration = Duration::from_secs(45);

#[derive(Clone, Debug, clap::Parser)]
#[command(
    name = "activator",
    about = "Holds requests for revisions with no ready pod and hands them to pods within their capacity"
)]
pub struct Args {
    /// Where requests arrive (HTTP/1.1 and h2c on the same port; Knative uses 8012).
    #[arg(long, env = "SLUICE_ACTIVATOR_LISTEN", default_value = "0.0.0.0:8012")]
    pub listen: SocketAddr,
    /// Prometheus metrics on `/metrics`.
    #[arg(
        long,
        env = "SLUICE_ACTIVATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    pub metrics_listen: SocketAddr,
    /// The autoscaler's gRPC address (`http://host:port`) for pokes and stats; unset: none are sent.
    #[arg(long, env = "SLUICE_AUTOSCALER_ADDRESS")]
    pub autoscaler_address: Option<String>,
    /// The control plane's gRPC address (`http://host:port`): revisions and their pods
    /// follow its `EndpointsService`, and the last ones keep serving while it is away.
    #[arg(long, env = "SLUICE_CONTROL_ADDRESS", alias = "endpoints-address")]
    pub control: Option<String>,
    /// This activator's name in the stats it sends.
    #[arg(long, env = "POD_NAME", default_value = "activator")]
    pub pod_name: String,
    /// Requests that may wait for one revision before more get 503.
    #[arg(long, env = "SLUICE_ACTIVATOR_QUEUE_DEPTH", default_value_t = DEFAULT_QUEUE_DEPTH)]
    pub queue_depth: usize,
    /// How long a pod's probe may take.
    #[arg(long, env = "PROBE_TIMEOUT", default_value = "300ms")]
    pub probe_timeout: String,
    /// How often pods that have not passed their probe are probed again.
    #[arg(long, env = "PROBE_FREQUENCY", default_value = "200ms")]
    pub probe_frequency: String,
    /// After SIGTERM, how long without a new request before the activator stops.
    #[arg(long, env = "SLUICE_DRAIN_QUIET_PERIOD", default_value = "45s")]
    pub drain_quiet_period: String,
    /// Idle connections kept to each pod (fewer if its containerConcurrency is lower).
    #[arg(long, env = "MAX_IDLE_PROXY_CONNS_PER_HOST", default_value_t = 100)]
    pub max_idle_proxy_conns_per_host: usize,
    #[command(flatten)]
    pub limits: sluice_core::serve::LimitArgs,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub autoscaler: Option<http::Uri>,
    pub endpoints: Option<http::Uri>,
    pub pod_name: String,
    pub queue_depth: usize,
    pub probe_timeout: Duration,
    pub probe_frequency: Duration,
    pub drain_quiet_period: Duration,
    pub max_idle_per_pod: usize,
    /// The bounds on client connections.
    pub limits: sluice_core::serve::Limits,
}

/// Every bad value, one per line.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  {}", .0.join("\n  "))]
pub struct ConfigError(pub Vec<String>);

// === impl Config ===

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        let mut bad = Vec::new();
        let mut duration =
            |flag: &str, value: &str, default: Duration| match sluice_core::duration::positive(
                value,
            ) {
                Some(d) => d,
                None => {
                    bad.push(format!(
                        "--{flag}={value:?}: expected a positive duration such as 300ms or 45s"
                    ));
                    default
                }
            };
        let probe_timeout = duration("probe-timeout", &a.probe_timeout, DEFAULT_PROBE_TIMEOUT);
        let probe_frequency = duration(
            "probe-frequency",
            &a.probe_frequency,
            DEFAULT_PROBE_FREQUENCY,
        );
        let drain_quiet_period = duration(
            "drain-quiet-period",
            &a.drain_quiet_period,
            DEFAULT_DRAIN_QUIET_PERIOD,
        );
        let autoscaler = sluice_core::address::grpc_flag(
            "autoscaler-address",
            a.autoscaler_address.as_deref(),
            &mut bad,
        );
        let endpoints = sluice_core::address::grpc_flag("control", a.control.as_deref(), &mut bad);
        if a.queue_depth == 0 {
            bad.push("--queue-depth=0: expected at least 1".to_owned());
        }
        if a.pod_name.trim().is_empty() {
            bad.push("--pod-name is empty".to_owned());
        }
        let limits = a.limits.limits(&mut bad);
        if !bad.is_empty() {
            return Err(ConfigError(bad));
        }
        Ok(Self {
            listen: a.listen,
            metrics_listen: a.metrics_listen,
            autoscaler,
            endpoints,
            pod_name: a.pod_name,
            queue_depth: a.queue_depth,
            probe_timeout,
            probe_frequency,
            drain_quiet_period,
            max_idle_per_pod: a.max_idle_proxy_conns_per_host.max(1),
            limits,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn parse(flags: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["activator"];
        argv.extend_from_slice(flags);
        Config::try_from(Args::try_parse_from(argv).expect("flags parse"))
    }

    #[test]
    fn defaults_are_knatives() {
        let c = parse(&[]).expect("valid");
        assert_eq!(c.listen.port(), 8012);
        assert_eq!(c.queue_depth, DEFAULT_QUEUE_DEPTH);
        assert_eq!(c.probe_timeout, Duration::from_millis(300));
        assert_eq!(c.probe_frequency, Duration::from_millis(200));
        assert_eq!(c.drain_quiet_period, Duration::from_secs(45));
        assert!(c.autoscaler.is_none() && c.endpoints.is_none());
    }

    #[test]
    fn addresses_get_a_scheme() {
        let c = parse(&["--autoscaler-address=127.0.0.1:8080"]).expect("valid");
        assert_eq!(
            c.autoscaler.map(|u| u.to_string()).as_deref(),
            Some("http://127.0.0.1:8080/")
        );
    }

    #[test]
    fn every_bad_value_is_named() {
        let err = parse(&[
            "--queue-depth=0",
            "--probe-timeout=soon",
            "--control=https://x:1",
        ])
        .expect_err("invalid");
        assert_eq!(err.0.len(), 3, "{err}");
        let text = err.to_string();
        for flag in ["--queue-depth", "--probe-timeout", "--control"] {
            assert!(text.contains(flag), "{text}");
        }
    }
}
