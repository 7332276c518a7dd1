//! Where the activator learns revisions and their pods: a feed of
//! [`RevisionEndpoints`], either in the same process (the local runtime, tests) or the
//! control plane's `sluice.v1.EndpointsService/Watch` over gRPC. Either way the activator
//! gets the whole state, a `synced` marker, then every change, and keeps its last state
//! while a remote source is away.

use std::collections::HashSet;
use std::sync::Arc;

use sluice_core::feed::{self, Feed, Follower, ItemKey};
use sluice_proto::v1::RevisionEndpoints;

use crate::revision::Registry;

/// Where an activator gets its endpoints.
#[derive(Clone, Debug)]
pub enum EndpointsSource {
    /// A feed in the same process.
    InProcess(Feed<RevisionEndpoints>),
    /// An `EndpointsService` at this address (`http://host:port`): the control plane.
    Grpc(http::Uri),
}

/// Keeps `registry` equal to what `source` says, until the process ends.
pub(crate) async fn follow(source: EndpointsSource, registry: Arc<Registry>) {
    let mut follower = RegistryFollower(registry);
    match source {
        EndpointsSource::InProcess(feed) => feed::follow_local(&feed, &mut follower).await,
        EndpointsSource::Grpc(uri) => {
            feed::follow_remote("endpoints", uri, feed::watch_endpoints, &mut follower).await;
        }
    }
}

struct RegistryFollower(Arc<Registry>);

impl Follower<RevisionEndpoints> for RegistryFollower {
    fn apply(&mut self, item: &RevisionEndpoints) {
        self.0.apply(item);
    }

    fn retain(&mut self, listed: &HashSet<ItemKey>) {
        let keep = listed
            .iter()
            .map(|k| (k.namespace.clone(), k.name.clone()))
            .collect();
        self.0.retain(&keep);
    }
}
