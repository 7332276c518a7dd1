//! Tracing setup shared by every binary: `RUST_LOG` when set, otherwise `default`.
//!
//! `RUST_LOG` takes `level` or `target=level` directives separated by commas
//! (`warn,sluice_queue_proxy=debug`). This is tracing-subscriber's `Targets` filter rather
//! than `EnvFilter`: no regex engine, which keeps a sidecar's resident memory small.

use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub fn init(default: &str) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => Targets::from_str(&spec).unwrap_or_else(|error| {
            eprintln!("RUST_LOG={spec:?} is not valid ({error}); using {default:?}");
            Targets::from_str(default).unwrap_or_default()
        }),
        _ => Targets::from_str(default).unwrap_or_default(),
    };
    let fmt = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_accept_rust_log_directives() {
        assert!(Targets::from_str("info").is_ok());
        assert!(Targets::from_str("warn,sluice_queue_proxy=debug").is_ok());
        assert!(
            Targets::from_str("sluice=loud").is_err(),
            "an unknown level is refused"
        );
    }
}
