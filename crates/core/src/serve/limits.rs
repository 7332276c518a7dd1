//! The bounds every listening port puts on its clients, so that no client (slow, idle,
//! or one of too many) holds a connection, a file descriptor or memory for good.
//! Defaults follow nginx where it has the setting, Envoy or hyper where it does not.

use std::time::Duration;

/// nginx's `client_header_timeout`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// nginx's `keepalive_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// How often an HTTP/2 connection is pinged, and how long its answer may take (gRPC's
/// and linkerd's keep-alive settings are of this order; nginx has none).
pub const DEFAULT_H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
pub const DEFAULT_H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// nginx's `http2_max_concurrent_streams` is 128, hyper's 200, Envoy's 2³¹: 256 keeps one
/// connection from holding more than a fair share of a revision's queue.
pub const DEFAULT_H2_MAX_CONCURRENT_STREAMS: u32 = 256;
/// File descriptors kept back from the connection budget (listeners, pods' pipes,
/// upstream pools' idle connections, logs).
pub const FD_RESERVE: u64 = 256;

/// A listening port's bounds on its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A request's head must arrive in full within this. hyper starts the timer as soon
    /// as an HTTP/1.1 connection waits for a request, so it also ends a keep-alive
    /// connection that sends nothing for this long.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight for this long is closed (HTTP/1.1 and
    /// HTTP/2).
    pub idle_timeout: Duration,
    pub h2_keepalive_interval: Duration,
    pub h2_keepalive_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    /// Connections served at once; a connection past it gets one 503 that names the
    /// bound, then is closed. `None`: derived from the file-descriptor limit
    /// ([`auto_max_connections`]).
    pub max_connections: Option<usize>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            h2_keepalive_interval: DEFAULT_H2_KEEPALIVE_INTERVAL,
            h2_keepalive_timeout: DEFAULT_H2_KEEPALIVE_TIMEOUT,
            h2_max_concurrent_streams: DEFAULT_H2_MAX_CONCURRENT_STREAMS,
            max_connections: None,
        }
    }
}

impl Limits {
    /// The connection bound in force: the configured one, or the automatic one.
    pub fn max_connections(&self) -> usize {
        self.max_connections.unwrap_or_else(auto_max_connections)
    }
}

/// As HAProxy derives `maxconn` from `ulimit -n`: a proxied connection may cost two
/// descriptors (the client's and one to the next hop), so half of what is left after
/// [`FD_RESERVE`].
pub fn auto_max_connections() -> usize {
    let fds = fd_limit().unwrap_or(1024);
    usize::try_from(fds.saturating_sub(FD_RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .max(1)
}

/// The soft limit on open files, if it can be read.
pub fn fd_limit() -> Option<u64> {
    nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .ok()
        .map(|(soft, _)| soft)
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime does at start)
/// and returns the limit now in force.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft < hard {
        if let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!(%error, soft, hard, "cannot raise the open-file limit");
            return Some(soft);
        }
        tracing::debug!(from = soft, to = hard, "raised the open-file limit");
    }
    Some(hard.max(soft))
}

/// The limits as flags and environment variables, shared by every component. Strings, so
/// that a component's validation can name every bad value at once.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct LimitArgs {
    /// Time a client has to send a request's head; also how long an HTTP/1.1 keep-alive
    /// connection may wait for its next request (default 60s).
    #[arg(long, env = "SLUICE_HEADER_READ_TIMEOUT")]
    pub header_read_timeout: Option<String>,
    /// A client connection with no request in flight this long is closed (default 75s).
    #[arg(long, env = "SLUICE_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// HTTP/2 keep-alive ping interval (default 20s).
    #[arg(long, env = "SLUICE_H2_KEEPALIVE_INTERVAL")]
    pub h2_keepalive_interval: Option<String>,
    /// Time an HTTP/2 ping may go unanswered before the connection is closed (default 20s).
    #[arg(long, env = "SLUICE_H2_KEEPALIVE_TIMEOUT")]
    pub h2_keepalive_timeout: Option<String>,
    /// Streams one HTTP/2 connection may have open at once (default 256).
    #[arg(long, env = "SLUICE_H2_MAX_CONCURRENT_STREAMS")]
    pub h2_max_concurrent_streams: Option<String>,
    /// Connections served at once per port, 503 past it (default: half the open-file
    /// limit, less 256).
    #[arg(long, env = "SLUICE_MAX_CONNECTIONS")]
    pub max_connections: Option<String>,
}

impl LimitArgs {
    /// The limits, with each bad value added to `bad` (its default is used meanwhile).
    pub fn limits(&self, bad: &mut Vec<String>) -> Limits {
        let d = Limits::default();
        let duration = |bad: &mut Vec<String>, flag: &str, v: &Option<String>, default| {
            let Some(v) = v.as_deref().filter(|v| !v.is_empty()) else {
                return default;
            };
            match crate::duration::positive(v) {
                Some(d) => d,
                None => {
                    bad.push(format!(
                        "--{flag}={v:?}: expected a positive duration such as 500ms or 60s"
                    ));
                    default
                }
            }
        };
        let count = |bad: &mut Vec<String>, flag: &str, v: &Option<String>| {
            let v = v.as_deref().filter(|v| !v.is_empty())?;
            match v.parse::<u32>() {
                Ok(n) if n > 0 => Some(n),
                _ => {
                    bad.push(format!("--{flag}={v:?}: expected a whole number from 1"));
                    None
                }
            }
        };
        Limits {
            header_read_timeout: duration(
                bad,
                "header-read-timeout",
                &self.header_read_timeout,
                d.header_read_timeout,
            ),
            idle_timeout: duration(bad, "idle-timeout", &self.idle_timeout, d.idle_timeout),
            h2_keepalive_interval: duration(
                bad,
                "h2-keepalive-interval",
                &self.h2_keepalive_interval,
                d.h2_keepalive_interval,
            ),
            h2_keepalive_timeout: duration(
                bad,
                "h2-keepalive-timeout",
                &self.h2_keepalive_timeout,
                d.h2_keepalive_timeout,
            ),
            h2_max_concurrent_streams: count(
                bad,
                "h2-max-concurrent-streams",
                &self.h2_max_concurrent_streams,
            )
            .unwrap_or(d.h2_max_concurrent_streams),
            max_connections: count(bad, "max-connections", &self.max_connections)
                .map(|n| n as usize),
        }
    }
}

impl Limits {
    /// The environment variables that give another process (a pod's queue-proxy) these
    /// limits.
    pub fn to_env(&self) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let mut env = vec![
            ("SLUICE_HEADER_READ_TIMEOUT", ms(self.header_read_timeout)),
            ("SLUICE_IDLE_TIMEOUT", ms(self.idle_timeout)),
            (
                "SLUICE_H2_KEEPALIVE_INTERVAL",
                ms(self.h2_keepalive_interval),
            ),
            ("SLUICE_H2_KEEPALIVE_TIMEOUT", ms(self.h2_keepalive_timeout)),
            (
                "SLUICE_H2_MAX_CONCURRENT_STREAMS",
                self.h2_max_concurrent_streams.to_string(),
            ),
        ];
        if let Some(n) = self.max_connections {
            env.push(("SLUICE_MAX_CONNECTIONS", n.to_string()));
        }
        env
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_bound_leaves_room_for_a_second_descriptor_each() {
        let fds = raise_fd_limit().expect("the limit can be read");
        assert_eq!(fd_limit(), Some(fds), "soft is raised to hard");
        let auto = auto_max_connections() as u64;
        assert!(
            auto * 2 + FD_RESERVE <= fds.max(FD_RESERVE + 2),
            "{auto} of {fds}"
        );
        let fixed = Limits {
            max_connections: Some(7),
            ..Limits::default()
        };
        assert_eq!(fixed.max_connections(), 7);
    }

    #[test]
    fn limit_args_name_every_bad_value_and_round_trip_through_the_env() {
        let mut bad = Vec::new();
        let args = LimitArgs {
            header_read_timeout: Some("2s".into()),
            idle_timeout: Some("soon".into()),
            max_connections: Some("0".into()),
            ..LimitArgs::default()
        };
        let limits = args.limits(&mut bad);
        assert_eq!(limits.header_read_timeout, Duration::from_secs(2));
        assert_eq!(
            limits.idle_timeout, DEFAULT_IDLE_TIMEOUT,
            "default meanwhile"
        );
        assert_eq!(bad.len(), 2, "{bad:?}");
        assert!(bad[0].contains("--idle-timeout=\"soon\""), "{bad:?}");
        assert!(bad[1].contains("--max-connections"), "{bad:?}");

        let env: std::collections::HashMap<_, _> = Limits {
            max_connections: Some(9),
            ..limits
        }
        .to_env()
        .into_iter()
        .collect();
        let back = LimitArgs {
            header_read_timeout: env.get("SLUICE_HEADER_READ_TIMEOUT").cloned(),
            idle_timeout: env.get("SLUICE_IDLE_TIMEOUT").cloned(),
            h2_keepalive_interval: env.get("SLUICE_H2_KEEPALIVE_INTERVAL").cloned(),
            h2_keepalive_timeout: env.get("SLUICE_H2_KEEPALIVE_TIMEOUT").cloned(),
            h2_max_concurrent_streams: env.get("SLUICE_H2_MAX_CONCURRENT_STREAMS").cloned(),
            max_connections: env.get("SLUICE_MAX_CONNECTIONS").cloned(),
        };
        let mut none = Vec::new();
        assert_eq!(
            back.limits(&mut none),
            Limits {
                max_connections: Some(9),
                ..limits
            }
        );
        assert!(none.is_empty(), "{none:?}");
    }
}
