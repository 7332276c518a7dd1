//! The routing table: hosts to services, services to weighted revisions, revisions to
//! their backends (ready pods in serve mode, the activator in proxy mode).
//!
//! Requests read the table without locks ([`ArcSwap`]); updates rebuild the host map and
//! swap it. A revision's state (its pods' connection pools and in-flight counts, its
//! stats) lives in one [`Rev`] shared by every table that names it, so a new split or a
//! new pod list keeps the requests in flight and the pooled connections.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use http::HeaderValue;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_core::RequestStats;
use sluice_core::address::service_url;
use sluice_core::upstream::Upstream;
use tokio::time::Instant;

use crate::metrics::{Metrics, RevisionMetrics};

/// Idle connections kept per pod.
const MAX_IDLE_PER_POD: usize = 100;

/// Where a revision's requests go: Knative's serve mode (straight to a ready pod's
/// queue-proxy) or proxy mode (through the activator; also what unspecified means).
pub use sluice_proto::v1::Mode;

/// One service's traffic split.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRoute {
    pub name: String,
    pub namespace: String,
    pub traffic: Vec<TrafficTarget>,
}

/// A share of a service's traffic. A tagged target is also reachable alone at
/// `{tag}-{service}.{namespace}.{domain}`.
///
/// This is the static routes file's shape (`--routes`: YAML, unknown fields refused, no tag
/// spelled as none) and the gateway's table's; the control plane's feed carries the wire's
/// `v1::TrafficTarget` (an empty tag for none), converted on arrival (`source.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficTarget {
    pub revision: String,
    pub percent: u32,
    #[serde(default)]
    pub tag: Option<String>,
}

/// Where one revision's requests go now.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevisionBackends {
    pub namespace: String,
    pub name: String,
    #[serde(default)]
    pub mode: Mode,
    /// Ready pods' queue-proxies.
    #[serde(default)]
    pub pods: Vec<SocketAddr>,
    /// Stream this revision's concurrency to the autoscaler (class
    /// `mpa.autoscaling.knative.dev`: it scales on the gateway's view).
    #[serde(default)]
    pub report: bool,
    /// The revision's `timeoutSeconds`: an exchange still going past it (a client that
    /// stopped reading) has its connection cut.
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

/// The routing table's handle: cheap to clone, every clone the same table.
#[derive(Clone, Debug)]
pub struct Routes {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    domain: String,
    hosts: ArcSwap<HashMap<String, Arc<Route>>>,
    /// Every revision a service names or a backend update mentioned.
    revisions: Mutex<HashMap<(String, String), Arc<Rev>>>,
    services: Mutex<BTreeMap<(String, String), ServiceRoute>>,
    metrics: Arc<Metrics>,
    /// A whole table has arrived (or none is awaited).
    synced: std::sync::atomic::AtomicBool,
}

/// One host's targets, picked by smooth weighted round robin: a 50/50 split alternates.
#[derive(Debug)]
pub(crate) struct Route {
    targets: Vec<(Arc<Rev>, i64)>,
    current: Mutex<Vec<i64>>,
}

/// One revision as the gateway sees it.
#[derive(Debug)]
pub(crate) struct Rev {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) namespace_header: HeaderValue,
    pub(crate) name_header: HeaderValue,
    backends: ArcSwap<Backends>,
    report: AtomicBool,
    pub(crate) stats: Mutex<RequestStats>,
    /// When the last poke went out (scale-from-zero for a gateway-scaled revision).
    pub(crate) poked: Mutex<Option<Instant>>,
    pub(crate) metrics: RevisionMetrics,
}

#[derive(Debug, Default)]
pub(crate) struct Backends {
    pub(crate) mode: Mode,
    pub(crate) timeout: Option<std::time::Duration>,
    pods: Vec<Arc<Pod>>,
    /// Rotates the starting point of the least-in-flight scan, so ties spread.
    next: AtomicUsize,
}

/// A ready pod's queue-proxy.
#[derive(Debug)]
pub(crate) struct Pod {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) host: HeaderValue,
    in_flight: AtomicU32,
}

/// A request's place on a pod, given back when dropped.
#[derive(Debug)]
pub(crate) struct PodSlot(pub(crate) Arc<Pod>);

// === impl Routes ===

impl Routes {
    /// An empty table for hosts under `domain` (`example.com` in Knative's default).
    pub fn new(domain: &str) -> Self {
        Self {
            inner: Arc::new(Inner {
                domain: domain.trim_matches('.').to_ascii_lowercase(),
                hosts: ArcSwap::from_pointee(HashMap::new()),
                revisions: Mutex::new(HashMap::new()),
                services: Mutex::new(BTreeMap::new()),
                metrics: Arc::new(Metrics::new().expect("a fresh registry takes each family once")),
                synced: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Whether a whole routing table has arrived (see [`Routes::mark_synced`]).
    pub fn synced(&self) -> bool {
        self.inner.synced.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The table is whole: its source answered with all of it once (it stays so while
    /// that source is away: the last table keeps routing).
    pub fn mark_synced(&self) {
        self.inner
            .synced
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// The gateway's metrics (served on its metrics port).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    pub fn domain(&self) -> &str {
        &self.inner.domain
    }

    /// The URL of a service (`http://{name}.{namespace}.{domain}`).
    pub fn url(&self, namespace: &str, name: &str) -> String {
        service_url(&self.inner.domain, namespace, name)
    }

    /// Adds or replaces a service's split. Its revisions need no backends yet: until
    /// they have some, their requests go to the activator.
    pub fn set_service(&self, service: ServiceRoute) {
        let mut services = self.inner.services.lock();
        services.insert((service.namespace.clone(), service.name.clone()), service);
        self.rebuild(&services);
    }

    /// Stops routing a service's hosts.
    pub fn remove_service(&self, namespace: &str, name: &str) {
        let mut services = self.inner.services.lock();
        services.remove(&(namespace.to_owned(), name.to_owned()));
        self.rebuild(&services);
    }

    /// Replaces where a revision's requests go. Pods already known keep their pooled
    /// connections and in-flight counts.
    pub fn set_backends(&self, b: RevisionBackends) {
        let rev = self.rev(&b.namespace, &b.name);
        let old = rev.backends.load();
        let pods = b
            .pods
            .iter()
            .map(|addr| {
                old.pods
                    .iter()
                    .find(|p| p.upstream.addr() == *addr)
                    .map_or_else(|| Arc::new(Pod::new(*addr)), Arc::clone)
            })
            .collect();
        rev.report.store(b.report, Ordering::Relaxed);
        if old.mode.is_serve() != b.mode.is_serve() {
            rev.metrics.switched(b.mode);
        }
        rev.backends.store(Arc::new(Backends {
            mode: b.mode,
            timeout: b.timeout_seconds.map(std::time::Duration::from_secs),
            pods,
            next: AtomicUsize::new(0),
        }));
    }

    /// Forgets a revision no service names any more.
    pub fn remove_revision(&self, namespace: &str, name: &str) {
        let removed = self
            .inner
            .revisions
            .lock()
            .remove(&(namespace.to_owned(), name.to_owned()));
        if let Some(rev) = removed {
            rev.metrics.forget();
        }
    }

    /// Forgets every service and revision not listed (a source's whole state ended).
    pub fn retain(
        &self,
        services: &std::collections::HashSet<(String, String)>,
        revisions: &std::collections::HashSet<(String, String)>,
    ) {
        {
            let mut all = self.inner.services.lock();
            let before = all.len();
            all.retain(|k, _| services.contains(k));
            if all.len() != before {
                self.rebuild(&all);
            }
        }
        let gone: Vec<(String, String)> = self
            .inner
            .revisions
            .lock()
            .keys()
            .filter(|k| !revisions.contains(*k))
            .cloned()
            .collect();
        for (namespace, name) in gone {
            self.remove_revision(&namespace, &name);
        }
    }

    /// Every routed host, sorted (the 404 page lists them).
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.inner.hosts.load().keys().cloned().collect();
        hosts.sort();
        hosts
    }

    pub(crate) fn lookup(&self, host: &str) -> Option<Arc<Route>> {
        self.inner.hosts.load().get(host).cloned()
    }

    /// Revisions whose concurrency goes to the autoscaler.
    pub(crate) fn reporting(&self) -> Vec<Arc<Rev>> {
        self.inner
            .revisions
            .lock()
            .values()
            .filter(|r| r.report.load(Ordering::Relaxed))
            .cloned()
            .collect()
    }

    fn rev(&self, namespace: &str, name: &str) -> Arc<Rev> {
        let mut revisions = self.inner.revisions.lock();
        Arc::clone(
            revisions
                .entry((namespace.to_owned(), name.to_owned()))
                .or_insert_with(|| Arc::new(Rev::new(namespace, name, &self.inner.metrics))),
        )
    }

    fn rebuild(&self, services: &BTreeMap<(String, String), ServiceRoute>) {
        let mut hosts = HashMap::new();
        for s in services.values() {
            let host = |prefix: &str| {
                format!("{prefix}{}.{}.{}", s.name, s.namespace, self.inner.domain)
                    .to_ascii_lowercase()
            };
            let targets = s
                .traffic
                .iter()
                .filter(|t| t.percent > 0)
                .map(|t| (self.rev(&s.namespace, &t.revision), i64::from(t.percent)))
                .collect();
            hosts.insert(host(""), Arc::new(Route::new(targets)));
            for t in &s.traffic {
                if let Some(tag) = &t.tag {
                    let rev = self.rev(&s.namespace, &t.revision);
                    hosts.insert(
                        host(&format!("{tag}-")),
                        Arc::new(Route::new(vec![(rev, 1)])),
                    );
                }
            }
        }
        self.inner.hosts.store(Arc::new(hosts));
    }
}

// === impl Route ===

impl Route {
    fn new(targets: Vec<(Arc<Rev>, i64)>) -> Self {
        let n = targets.len();
        Self {
            targets,
            current: Mutex::new(vec![0; n]),
        }
    }

    /// The next revision by smooth weighted round robin (nginx's): every pick adds each
    /// weight to its running score, takes the highest, and takes the total off it.
    pub(crate) fn pick(&self) -> Option<&Arc<Rev>> {
        match self.targets.as_slice() {
            [] => None,
            [(only, _)] => Some(only),
            targets => {
                let mut current = self.current.lock();
                let total: i64 = targets.iter().map(|(_, w)| w).sum();
                let mut best = 0;
                for (i, (_, weight)) in targets.iter().enumerate() {
                    current[i] += weight;
                    if current[i] > current[best] {
                        best = i;
                    }
                }
                current[best] -= total;
                Some(&targets[best].0)
            }
        }
    }
}

// === impl Rev ===

impl Rev {
    fn new(namespace: &str, name: &str, metrics: &Arc<Metrics>) -> Self {
        let header = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        Self {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            namespace_header: header(namespace),
            name_header: header(name),
            backends: ArcSwap::from_pointee(Backends::default()),
            report: AtomicBool::new(false),
            stats: Mutex::new(RequestStats::new(Instant::now())),
            poked: Mutex::new(None),
            metrics: metrics.revision(namespace, name),
        }
    }

    pub(crate) fn backends(&self) -> arc_swap::Guard<Arc<Backends>> {
        self.backends.load()
    }

    pub(crate) fn reports(&self) -> bool {
        self.report.load(Ordering::Relaxed)
    }
}

// === impl Backends ===

impl Backends {
    /// The pod with the fewest requests in flight (ties: the next in rotation), with a
    /// slot taken on it.
    pub(crate) fn pick(&self) -> Option<PodSlot> {
        let n = self.pods.len();
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best = &self.pods[start];
        let mut best_load = best.in_flight.load(Ordering::Relaxed);
        for i in 1..n {
            let pod = &self.pods[(start + i) % n];
            let load = pod.in_flight.load(Ordering::Relaxed);
            if load < best_load {
                best = pod;
                best_load = load;
            }
        }
        best.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(PodSlot(Arc::clone(best)))
    }
}

// === impl Pod ===

impl Pod {
    fn new(addr: SocketAddr) -> Self {
        Self {
            upstream: Upstream::new(addr, MAX_IDLE_PER_POD),
            host: HeaderValue::from_str(&addr.to_string())
                .expect("a socket address is a valid header value"),
            in_flight: AtomicU32::new(0),
        }
    }
}

impl Drop for PodSlot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(traffic: &[(&str, u32, Option<&str>)]) -> ServiceRoute {
        ServiceRoute {
            name: "hello".into(),
            namespace: "default".into(),
            traffic: traffic
                .iter()
                .map(|(r, p, t)| TrafficTarget {
                    revision: (*r).into(),
                    percent: *p,
                    tag: t.map(str::to_owned),
                })
                .collect(),
        }
    }

    fn picks(routes: &Routes, host: &str, n: usize) -> Vec<String> {
        let route = routes.lookup(host).expect("routed");
        (0..n)
            .map(|_| route.pick().expect("a target").name.clone())
            .collect()
    }

    #[test]
    fn a_50_50_split_alternates() {
        let routes = Routes::new("example.com");
        routes.set_service(service(&[
            ("hello-00001", 50, None),
            ("hello-00002", 50, None),
        ]));
        let got = picks(&routes, "hello.default.example.com", 6);
        assert_eq!(
            got,
            ["hello-00001", "hello-00002"].repeat(3),
            "a 50/50 split takes turns"
        );
    }

    #[test]
    fn weights_are_exact_over_a_cycle_and_zero_gets_nothing() {
        let routes = Routes::new("example.com");
        routes.set_service(service(&[("a", 80, None), ("b", 20, None), ("c", 0, None)]));
        let got = picks(&routes, "hello.default.example.com", 100);
        assert_eq!(got.iter().filter(|r| *r == "a").count(), 80);
        assert_eq!(got.iter().filter(|r| *r == "b").count(), 20);
        assert!(!got.iter().any(|r| r == "c"));
    }

    #[test]
    fn tags_get_their_own_host_and_the_domain_is_configurable() {
        let routes = Routes::new("Local.Test.");
        routes.set_service(service(&[
            ("hello-00001", 100, Some("current")),
            ("hello-00002", 0, Some("candidate")),
        ]));
        assert_eq!(
            routes.hosts(),
            [
                "candidate-hello.default.local.test",
                "current-hello.default.local.test",
                "hello.default.local.test"
            ]
        );
        assert_eq!(
            picks(&routes, "candidate-hello.default.local.test", 2),
            ["hello-00002", "hello-00002"]
        );
        assert_eq!(
            routes.url("default", "hello"),
            "http://hello.default.local.test"
        );
    }

    #[test]
    fn least_in_flight_pod_and_backends_survive_updates() {
        let routes = Routes::new("example.com");
        routes.set_service(service(&[("r", 100, None)]));
        let a: SocketAddr = "127.0.0.1:1001".parse().expect("addr");
        let b: SocketAddr = "127.0.0.1:1002".parse().expect("addr");
        routes.set_backends(RevisionBackends {
            namespace: "default".into(),
            name: "r".into(),
            mode: Mode::Serve,
            pods: vec![a, b],
            report: false,
            timeout_seconds: None,
        });
        let rev = Arc::clone(
            routes
                .lookup("hello.default.example.com")
                .expect("routed")
                .pick()
                .expect("target"),
        );
        let backends = rev.backends();
        let first = backends.pick().expect("a pod");
        let second = backends.pick().expect("a pod");
        assert_ne!(
            first.0.upstream.addr(),
            second.0.upstream.addr(),
            "the busy pod is skipped"
        );
        // A new pod list keeps the pod that stays, with its in-flight count.
        let c: SocketAddr = "127.0.0.1:1003".parse().expect("addr");
        routes.set_backends(RevisionBackends {
            namespace: "default".into(),
            name: "r".into(),
            mode: Mode::Serve,
            pods: vec![a, c],
            report: false,
            timeout_seconds: None,
        });
        let backends = rev.backends();
        drop(second);
        assert_eq!(
            first.0.upstream.addr(),
            a,
            "the scan starts at the first pod"
        );
        let next = backends.pick().expect("a pod");
        assert_eq!(next.0.upstream.addr(), c, "a still has a request in flight");
        assert!(
            Arc::ptr_eq(&rev, &routes.rev("default", "r")),
            "one Rev per revision"
        );
    }
}
