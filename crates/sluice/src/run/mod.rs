//! `sluice run`: the whole platform on one machine from Knative `Service` manifests.
//!
//! - [`manifest`], [`images`]: what users write, and which local command runs an image.
//! - [`world`]: the pure planner: services, revisions and traffic, every rule checked.
//! - [`desired`]: the applied world, the control plane over the local process backend,
//!   and the admin port.
//! - [`platform`]: that with the autoscaler, activator and gateway, in one process.
//! - [`control`]: that alone (`sluice control`), the others in their own processes.
//! - [`distributed`]: `sluice run --distributed`: every part in its own process, kept
//!   running by this one, which also runs the pods (the node).
//! - [`kube`]: `sluice control --kubernetes`: Services from the API server, statuses
//!   written back.
//! - [`problem`]: what is wrong with users' input, and where.
//! - [`cli`], [`display`]: `sluice run`, `sluice apply`, `sluice status`.

pub mod cli;
pub mod control;
pub mod desired;
pub mod display;
pub mod distributed;
pub mod images;
pub mod kube;
pub mod manifest;
pub mod platform;
pub mod problem;
pub mod world;

pub use platform::{Options, Platform, Status};
