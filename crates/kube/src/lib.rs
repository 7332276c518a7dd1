//! Sluice on Kubernetes.
//!
//! - [`resources`]: a revision as a Deployment (app + injected queue-proxy) and a private
//!   Service, pure functions of its spec.
//! - [`drift`]: whether an object is still as Sluice made it.
//! - [`endpoints`]: ready pods from the EndpointSlices of those Services.
//! - [`pods`]: why a revision's pods do not come up, from its Pod objects.
//! - [`children`]: a Knative `Service`'s `Configuration` and `Route`.
//! - [`backend`]: the control plane's [`sluice_control::Backend`] over them.
//! - [`status`]: a Knative `Service`'s status, as Knative writes it.
//! - [`controller`]: Knative's objects from the API server into the applied world, and
//!   their statuses and events back.
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`leader`]: the leader's address on its component's selector-less Service.

pub mod backend;
pub mod children;
pub mod controller;
pub mod drift;
pub mod endpoints;
pub mod leader;
pub mod lease;
pub mod pods;
pub mod resources;
pub mod status;

#[cfg(test)]
mod api_server;

pub use backend::{KubeBackend, Writer};
pub use resources::Injection;

/// This machine's name (a pod's name, on Kubernetes).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "sluice".to_owned())
}
