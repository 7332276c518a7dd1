//! `sluice run`: the whole platform on one machine from Knative `Service` manifests.
//!
//! - [`manifest`] and [`problem`] (from `sluice-serving`), [`world`] and [`images`] (from
//!   `sluice-control`): what users write, the pure planner, which command runs an image.
//! - [`desired`] (from `sluice-control`): the applied world over the control plane, and
//!   the admin port.
//! - [`platform`]: that with the autoscaler, activator and gateway, in one process.
//! - [`control`]: that alone (`sluice control`), the others in their own processes.
//! - [`distributed`]: `sluice run --distributed`: every part in its own process, kept
//!   running by this one, which also runs the pods (the node).
//! - [`kube`]: `sluice control --kubernetes`: Services from the API server, statuses
//!   written back.
//! - [`cli`], [`display`]: `sluice run`, `sluice apply`, `sluice status`.

pub mod cli;
pub mod control;
pub mod display;
pub mod distributed;
pub mod kube;
pub mod platform;

pub use platform::{Options, Platform, Status};
// The planner and Knative's API types, where they live now; kept at their old paths.
pub use sluice_control::{desired, images, world};
pub use sluice_serving::{manifest, problem};
