//! Sluice's autoscaler: Knative's KPA. So far the pure core ([`kpa`]): the aggregation
//! windows and the decider, plain structs fed `now` with no runtime in them. The stats
//! service, the per-revision state machine and the `Scaler` trait build on it.

pub mod kpa;
