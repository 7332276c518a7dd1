//! Knative Serving's API as Sluice reads it, shared by the planner (`sluice-control`)
//! and the autoscaler, with no runtime in it.
//!
//! - [`manifest`]: the `serving.knative.dev/v1` `Service` schema and manifests as users
//!   write them (strict fields, ConfigMaps beside them).
//! - [`config`]: `config-autoscaler`, every key, with Knative's defaults and bounds.
//! - [`revision`]: a revision's `autoscaling.knative.dev/*` annotations over that config.
//! - [`labels`]: Knative's labels on a revision's objects.
//! - [`progress`]: the `serving.knative.dev/progress-deadline` annotation.
//! - [`problem`]: what is wrong with users' input, and where.

pub mod config;
pub mod labels;
pub mod manifest;
pub mod problem;
pub mod progress;
pub mod revision;
