//! `sluice run`: the whole platform on one machine from Knative `Service` manifests.
//!
//! - [`manifest`], [`images`]: what users write, and which local command runs an image.
//! - [`world`]: the pure planner: services, revisions and traffic, every rule checked.
//! - [`platform`]: the control plane (with the local process backend), autoscaler,
//!   activator and gateway wired together, and the admin port.
//! - [`cli`], [`display`]: `sluice run`, `sluice apply`, `sluice status`.

pub mod cli;
pub mod display;
pub mod images;
pub mod manifest;
pub mod platform;
pub mod world;

pub use platform::{Options, Platform, Status};
