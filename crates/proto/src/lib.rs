//! Wire types shared by every Sluice component: Knative's `Stat` (what a queue-proxy
//! serves on :9090) and the `sluice.v1` stats stream that reporters push to the autoscaler.
//!
//! Module paths mirror the protobuf packages, which generated code relies on.

#![allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]

/// Knative's `autoscaler` protobuf package.
pub mod autoscaler {
    tonic::include_proto!("autoscaler");
}

pub mod sluice {
    /// Sluice's versioned gRPC API.
    pub mod v1 {
        tonic::include_proto!("sluice.v1");
    }
}

pub use autoscaler::Stat;
pub use sluice::v1;

impl v1::Mode {
    /// Serve mode: straight to the pods. Anything else (proxy, or unspecified by an older
    /// sender) goes through the activator.
    pub fn is_serve(self) -> bool {
        self == Self::Serve
    }

    /// `serve` or `proxy`, as metrics labels and `sluice status` spell it.
    pub fn label(self) -> &'static str {
        if self.is_serve() { "serve" } else { "proxy" }
    }
}
