//! Sluice's autoscaler: Knative's KPA over a gRPC stats stream.
//!
//! - [`config`], [`revision`]: `config-autoscaler` and the revision annotations (from
//!   `sluice-serving`, which the planner reads them with too).
//! - [`kpa`]: the pure KPA (windows, decider, scale-to-zero), plain structs fed `now`.
//! - [`service`]: the tokio glue: revisions, stats, tick tasks, decisions to watchers.
//! - [`scaler`]: the [`Scaler`](scaler::Scaler) trait that carries decisions out.
//! - [`grpc`], [`server`]: the `sluice.v1` services and the `autoscaler` process.
//! - [`follow`]: revisions and their pods from the control plane (`--control`).
pub mod activator_probe;
pub mod follow;
pub mod grpc;
pub mod kpa;
pub mod scaler;
pub mod server;
pub mod service;

pub use sluice_serving::{config, revision};
