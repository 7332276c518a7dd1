//! Where the gateway's routing table comes from: the control plane's routes feed, in the
//! same process (`sluice run`) or over gRPC (`--control`, `sluice.v1.RoutesService/Watch`).
//! While a remote control plane is away the gateway keeps routing with its last table,
//! and takes the whole table again when it is back.

use std::collections::HashSet;
use std::net::SocketAddr;

use sluice_core::feed::{self, Follower, ItemKey, Route, Source};
use sluice_proto::v1;

use crate::routes::{RevisionBackends, Routes, ServiceRoute, TrafficTarget};

/// Knative's default `timeoutSeconds`, for a route that says 0.
const DEFAULT_TIMEOUT_SECONDS: u64 = 300;

/// Where a gateway gets its routes: a feed in this process, or a control plane's
/// `RoutesService` (`http://host:port`).
pub type RoutesSource = Source<Route>;

/// Keeps `routes` equal to what `source` says, until the task is dropped.
pub(crate) async fn follow(source: RoutesSource, routes: Routes) {
    let mut follower = TableFollower(routes);
    feed::follow("routes", source, feed::watch_routes, &mut follower).await;
}

struct TableFollower(Routes);

impl Follower<Route> for TableFollower {
    fn apply(&mut self, item: &Route) {
        let routes = &self.0;
        match item {
            Route::Service(s) if s.removed => routes.remove_service(&s.namespace, &s.name),
            Route::Service(s) => routes.set_service(service_route(s)),
            Route::Revision(r) if r.removed => routes.remove_revision(&r.namespace, &r.revision),
            Route::Revision(r) => routes.set_backends(revision_backends(r)),
        }
    }

    fn retain(&mut self, listed: &HashSet<ItemKey>) {
        let of = |kind| {
            listed
                .iter()
                .filter(|k| k.kind == kind)
                .map(|k| (k.namespace.clone(), k.name.clone()))
                .collect::<HashSet<_>>()
        };
        self.0.retain(&of("service"), &of("revision"));
    }

    fn synced(&mut self) {
        self.0.mark_synced();
    }
}

fn service_route(s: &v1::ServiceRoute) -> ServiceRoute {
    ServiceRoute {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        traffic: s
            .traffic
            .iter()
            .map(|t| TrafficTarget {
                revision: t.revision.clone(),
                percent: t.percent,
                tag: (!t.tag.is_empty()).then(|| t.tag.clone()),
            })
            .collect(),
    }
}

fn revision_backends(r: &v1::RevisionRoute) -> RevisionBackends {
    let pods = r
        .addresses
        .iter()
        .filter_map(|a| match a.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(e) => {
                tracing::warn!(revision = %r.revision, address = %a, %e, "a pod address is not host:port; skipped");
                None
            }
        })
        .collect();
    RevisionBackends {
        namespace: r.namespace.clone(),
        name: r.revision.clone(),
        mode: r.mode(),
        pods,
        report: r.report,
        timeout_seconds: Some(match r.timeout_seconds {
            0 => DEFAULT_TIMEOUT_SECONDS,
            t => u64::from(t),
        }),
    }
}
