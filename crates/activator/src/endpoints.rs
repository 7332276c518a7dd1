//! Where the activator learns revisions and their pods: a feed of
//! [`RevisionEndpoints`], either in the same process (the local runtime, tests) or the
//! control plane's `sluice.v1.EndpointsService/Watch` over gRPC. Either way the activator
//! gets the whole state, a `synced` marker, then every change, and keeps its last state
//! while a remote source is away.

use std::collections::HashSet;
use std::sync::Arc;

use sluice_core::feed::{self, Follower, ItemKey, Source};
use sluice_proto::v1::RevisionEndpoints;

use crate::revision::Registry;

/// Where an activator gets its endpoints: a feed in this process, or the control
/// plane's `EndpointsService` (`http://host:port`).
pub type EndpointsSource = Source<RevisionEndpoints>;

/// Keeps `registry` equal to what `source` says, until the process ends.
pub(crate) async fn follow(source: EndpointsSource, registry: Arc<Registry>) {
    let mut follower = RegistryFollower(registry);
    feed::follow("endpoints", source, feed::watch_endpoints, &mut follower).await;
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
