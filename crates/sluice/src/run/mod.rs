//! `sluice run`: the whole platform on one machine from Knative `Service` manifests.

pub mod images;
pub mod manifest;
pub mod world;
