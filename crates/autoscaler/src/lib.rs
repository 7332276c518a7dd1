//! Sluice's autoscaler: Knative's KPA. So far the pure core: `config-autoscaler` and
//! revision annotations ([`config`], [`revision`]), and the aggregation windows and the
//! decider ([`kpa`]), plain structs fed `now` with no runtime in them. The stats service,
//! the per-revision state machine and the `Scaler` trait build on it.

pub mod config;
pub mod kpa;
pub mod revision;
