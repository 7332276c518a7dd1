//! A Kubernetes API server test double on loopback, for the cluster mode's end-to-end
//! tests (no real kube-apiserver can run on these machines).
//!
//! What it does as the API server does:
//! - get, list and watch, namespaced or across namespaces, with label selectors
//!   (`k`, `!k`, `k=v`, `k==v`, `k!=v`, comma-joined);
//! - every write bumps one `resourceVersion` counter; a watch resumes after the version it
//!   is given, and one older than the kept history gets a 410 `Expired` ERROR event, so a
//!   client must relist;
//! - create (409 `AlreadyExists`), replace (409 `Conflict` on a stale `resourceVersion`),
//!   merge patch (`application/merge-patch+json`; a strategic merge patch is applied as a
//!   merge patch) and JSON patch, delete;
//! - `uid`, `creationTimestamp`, `generation` (bumped when `spec` changes);
//! - the `status` subresource (a write there changes only status; a write to the object
//!   leaves its status), and the `scale` subresource of Deployments (`autoscaling/v1`);
//! - deletion cascades to objects whose `ownerReferences` name the deleted one.
//!
//! - the validation of a pod template (a Deployment's or a Pod's) that Sluice's writes can
//!   run into: 422 `Invalid` for a `volumeMounts[].name` with no such volume, a probe port
//!   outside 1–65535, two containers of one name ([`validate`]);
//! - what `kubectl` needs (1.27 to 1.33 are tested): `/version`, legacy discovery with
//!   subresources, short names and categories, a custom resource listed once its
//!   CustomResourceDefinition is stored ([`discovery`]); OpenAPI v3, and v2 as protobuf,
//!   with only the PATCH operations kubectl checks for `fieldValidation`; `meta.k8s.io`
//!   Tables from a CRD's printer columns ([`present`]); field selectors on any field
//!   (`metadata.name` for `kubectl wait` and `delete`, `involvedObject.*` for `describe`);
//!   core/v1 Events as a read-only view of the events.k8s.io/v1 ones.
//!
//! Where it differs: no authentication, admission or other schema validation (objects are
//! stored as sent, `fieldValidation` is ignored, and a custom resource is served before
//! its CRD exists), no server-side apply, no pagination (`limit` is ignored), no
//! bookmarks, a namespace need not exist, strategic merge patches merge lists whole, the
//! OpenAPI documents carry no schemas (so kubectl patches from its built-in types, or with
//! a JSON merge patch), Tables have their own columns only for Pods and Deployments (Name
//! and Age for the other built-in kinds), and the kinds it serves are the ones Sluice
//! and its install use ([`KINDS`]).

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::broadcast;

/// A resource the double serves.
struct Kind {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    /// Has a `status` subresource.
    status: bool,
    /// Has a `scale` subresource (`autoscaling/v1`).
    scale: bool,
    /// Short names for discovery (`kubectl get deploy`).
    short: &'static [&'static str],
    /// In the `all` category (`kubectl get all`).
    all: bool,
    /// Defined by a CustomResourceDefinition: listed in discovery only once one is
    /// stored, which also gives its printer columns, short names and categories.
    custom: bool,
    /// Another kind's objects seen through this API (core/v1 `events` shows the
    /// events.k8s.io/v1 ones, converted, as the API server does); read-only here.
    view_of: Option<&'static str>,
}

const fn kind(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
) -> Kind {
    Kind {
        group,
        version,
        plural,
        kind,
        namespaced: true,
        status: false,
        scale: false,
        short: &[],
        all: false,
        custom: false,
        view_of: None,
    }
}

const KNATIVE: &str = "serving.knative.dev";

const KINDS: &[Kind] = &[
    Kind {
        status: true,
        short: &["svc"],
        all: true,
        ..kind("", "v1", "services", "Service")
    },
    Kind {
        short: &["cm"],
        ..kind("", "v1", "configmaps", "ConfigMap")
    },
    Kind {
        status: true,
        short: &["po"],
        all: true,
        ..kind("", "v1", "pods", "Pod")
    },
    Kind {
        namespaced: false,
        status: true,
        short: &["ns"],
        ..kind("", "v1", "namespaces", "Namespace")
    },
    Kind {
        short: &["sa"],
        ..kind("", "v1", "serviceaccounts", "ServiceAccount")
    },
    Kind {
        status: true,
        short: &["quota"],
        ..kind("", "v1", "resourcequotas", "ResourceQuota")
    },
    Kind {
        short: &["ev"],
        view_of: Some("events.k8s.io"),
        ..kind("", "v1", "events", "Event")
    },
    Kind {
        status: true,
        scale: true,
        short: &["deploy"],
        all: true,
        ..kind("apps", "v1", "deployments", "Deployment")
    },
    kind("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice"),
    Kind {
        short: &["ev"],
        ..kind("events.k8s.io", "v1", "events", "Event")
    },
    kind("coordination.k8s.io", "v1", "leases", "Lease"),
    Kind {
        status: true,
        short: &["pdb"],
        ..kind(
            "policy",
            "v1",
            "poddisruptionbudgets",
            "PodDisruptionBudget",
        )
    },
    kind("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    kind(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
    ),
    Kind {
        namespaced: false,
        ..kind(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
        )
    },
    Kind {
        namespaced: false,
        ..kind(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
        )
    },
    Kind {
        namespaced: false,
        status: true,
        short: &["crd", "crds"],
        ..kind(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
        )
    },
    Kind {
        status: true,
        custom: true,
        ..kind(KNATIVE, "v1", "revisions", "Revision")
    },
    Kind {
        status: true,
        custom: true,
        ..kind(KNATIVE, "v1", "configurations", "Configuration")
    },
    Kind {
        status: true,
        custom: true,
        ..kind(KNATIVE, "v1", "routes", "Route")
    },
    Kind {
        status: true,
        custom: true,
        ..kind(KNATIVE, "v1", "services", "Service")
    },
];

/// Watch events kept for resuming; older versions get 410.
const HISTORY: usize = 10_000;

/// The double's state, shared by its connections.
#[derive(Default)]
struct Store {
    /// (kind index, namespace, name) → object.
    objects: BTreeMap<(usize, String, String), Value>,
    /// Every write, oldest first: (resourceVersion, kind index, type, object).
    history: VecDeque<Event>,
    version: u64,
}

impl Store {
    /// The stored CustomResourceDefinitions.
    fn crds(&self) -> Vec<&Value> {
        let Some(crd) = KINDS
            .iter()
            .position(|k| k.plural == "customresourcedefinitions")
        else {
            return Vec::new();
        };
        self.objects
            .iter()
            .filter(|((k, _, _), _)| *k == crd)
            .map(|(_, v)| v)
            .collect()
    }
}

#[derive(Clone, Debug)]
struct Event {
    version: u64,
    kind: usize,
    type_: &'static str,
    object: Value,
}

/// A running API server double.
pub struct KubeApi {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    events: broadcast::Sender<Event>,
    serving: Mutex<Option<tokio::task::JoinHandle<()>>>,
    uids: Arc<AtomicU64>,
    /// The service account each `User-Agent` (its product, before `/`) is taken for
    /// ([`KubeApi::act_as`]).
    accounts: Mutex<BTreeMap<String, rbac::Account>>,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl KubeApi {
    /// Serves on an ephemeral loopback port.
    pub async fn start() -> Arc<Self> {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind");
        let listener = socket.listen(1024).expect("listen");
        let addr = listener.local_addr().expect("addr");
        let (events, _) = broadcast::channel(HISTORY);
        let api = Arc::new(Self {
            addr,
            store: Arc::new(Mutex::new(Store::default())),
            events,
            serving: Mutex::new(None),
            uids: Arc::new(AtomicU64::new(1)),
            accounts: Mutex::new(BTreeMap::new()),
        });
        api.serve(listener);
        api
    }

    /// Takes requests whose `User-Agent` is `agent` (`sluice-control/0.1.0` for
    /// `sluice-control`) for those of the service account `namespace/service_account`,
    /// and authorizes them as the API server's RBAC does, by the `Role`s, `ClusterRole`s
    /// and bindings stored ([`rbac`]): one refused is answered 403 `Forbidden` with the
    /// API server's message. Requests of any other agent (the tests' own, `kubectl`'s)
    /// are allowed, as a cluster admin's; discovery is open to all, as on a cluster.
    pub fn act_as(&self, agent: &str, namespace: &str, service_account: &str) {
        self.accounts.lock().insert(
            agent.to_owned(),
            rbac::Account {
                namespace: namespace.to_owned(),
                name: service_account.to_owned(),
            },
        );
    }

    /// Why the request is refused (the API server's message), if its agent's service
    /// account may not make it.
    fn forbidden(
        &self,
        parts: &http::request::Parts,
        p: &Path,
        query: &BTreeMap<String, String>,
        watch: bool,
    ) -> Option<String> {
        let agent = parts
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.split('/').next())?;
        let who = self.accounts.lock().get(agent).cloned()?;
        let verb = match (&parts.method, &p.name) {
            (&Method::GET, Some(_)) => "get",
            (&Method::GET, None) if watch => "watch",
            (&Method::GET, None) => "list",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, Some(_)) => "delete",
            (&Method::DELETE, None) => "deletecollection",
            _ => return None,
        };
        let name = match verb {
            "create" => None,
            "list" | "watch" => query.get("fieldSelector").and_then(|f| {
                f.split(',')
                    .find_map(|t| t.strip_prefix("metadata.name="))
                    .map(str::to_owned)
            }),
            _ => p.name.clone(),
        };
        let kind = &KINDS[p.view.unwrap_or(p.kind)];
        let what = rbac::Attributes {
            verb,
            group: kind.group.to_owned(),
            resource: match &p.sub {
                Some(sub) => format!("{}/{sub}", kind.plural),
                None => kind.plural.to_owned(),
            },
            namespace: p.namespace.clone(),
            name,
        };
        let allowed = rbac::allows(&self.store.lock().objects, &who, &what);
        (!allowed).then(|| what.forbidden(&who))
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops answering: the port closes and every connection (watches too) is cut. The
    /// state stays, for [`KubeApi::resume`].
    pub async fn stop(&self) {
        let task = self.serving.lock().take();
        if let Some(task) = task {
            task.abort();
            // Its listener and connections are closed once it has ended.
            let _ = task.await;
        }
    }

    /// Serves again on the same port, with the state it had.
    pub async fn resume(self: &Arc<Self>) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("reuseaddr");
        socket.bind(self.addr).expect("the same port again");
        self.serve(socket.listen(1024).expect("listen"));
    }

    /// Drops the watch history up to now: a watch resuming from an older version gets
    /// 410 `Expired` (as after an etcd compaction).
    pub fn compact(&self) {
        self.store.lock().history.clear();
    }

    /// The object at `path` (e.g. `/apis/apps/v1/namespaces/default/deployments/x`).
    pub fn get(&self, path: &str) -> Option<Value> {
        let p = parse_path(path)?;
        let store = self.store.lock();
        store
            .objects
            .get(&(p.kind, p.namespace.unwrap_or_default(), p.name?))
            .cloned()
    }

    /// Every object of the collection at `path` (namespaced or not).
    pub fn list(&self, path: &str) -> Vec<Value> {
        let Some(p) = parse_path(path) else {
            return Vec::new();
        };
        let store = self.store.lock();
        store
            .objects
            .iter()
            .filter(|((k, ns, _), _)| *k == p.kind && p.namespace.as_ref().is_none_or(|n| n == ns))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Creates `obj` in the collection at `path` as a client's POST would (also while
    /// stopped); the HTTP status it would have answered.
    pub fn create_object(&self, path: &str, obj: Value) -> u16 {
        match parse_path(path) {
            Some(p) if p.view.is_some() => 405,
            Some(p) if p.name.is_none() => self.create(&p, obj).status().as_u16(),
            _ => 404,
        }
    }

    /// Replaces the object at `path` as a client's PUT would (409 when `obj` carries a
    /// stale `resourceVersion`); the HTTP status.
    pub fn replace_object(&self, path: &str, obj: Value) -> u16 {
        match parse_path(path).filter(|p| p.view.is_none()) {
            Some(p) => match p.name.clone() {
                Some(name) => self
                    .update(&p, &name, p.sub.as_deref(), |_| Ok(obj))
                    .status()
                    .as_u16(),
                None => 404,
            },
            None => 404,
        }
    }

    /// Creates `obj` in the collection at `path`, or replaces the one of its name with it
    /// at that one's `resourceVersion` (what `kubectl apply` ends in); the HTTP status.
    pub fn apply_object(&self, path: &str, mut obj: Value) -> u16 {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let object = format!("{}/{name}", path.trim_end_matches('/'));
        match self.get(&object) {
            Some(current) => {
                obj["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"].clone();
                self.replace_object(&object, obj)
            }
            None => self.create_object(path, obj),
        }
    }

    /// Deletes the object at `path` as a client's DELETE would; the HTTP status.
    pub fn delete_object(&self, path: &str) -> u16 {
        match parse_path(path).filter(|p| p.view.is_none()) {
            Some(p) => match p.name.clone() {
                Some(name) => self.delete(&p, &name).status().as_u16(),
                None => 404,
            },
            None => 404,
        }
    }

    /// Discovery, `/version` and OpenAPI v3 ([`discovery`]); `None` for any other path.
    fn discovery(&self, path: &str) -> Option<Response<Body>> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let store = self.store.lock();
        let crds = store.crds();
        let found = |v: Option<Value>| match v {
            Some(v) => json_response(200, &v),
            None => status(
                404,
                "NotFound",
                &format!("the server could not find {path}"),
            ),
        };
        Some(match parts.as_slice() {
            ["version"] => json_response(200, &discovery::version()),
            ["api"] => json_response(200, &discovery::core_versions()),
            ["apis"] => json_response(200, &discovery::groups(&crds)),
            ["api", version] => found(discovery::resources("", version, &crds)),
            ["apis", group, version] => found(discovery::resources(group, version, &crds)),
            ["apis", _] => found(None),
            ["openapi", "v3"] => json_response(200, &discovery::openapi_index(&crds)),
            ["openapi", "v3", "api", version] => {
                found(discovery::openapi_document("", version, &crds))
            }
            ["openapi", "v3", "apis", group, version] => {
                found(discovery::openapi_document(group, version, &crds))
            }
            ["openapi", "v2"] => Response::builder()
                .status(200)
                .header(
                    http::header::CONTENT_TYPE,
                    "application/com.github.proto-openapi.spec.v2.v1.0+protobuf",
                )
                .body(Full::new(Bytes::from(discovery::openapi_v2(&crds))).boxed_unsync())
                .expect("response"),
            ["openapi", ..] => found(None),
            _ => return None,
        })
    }

    /// Writes so far (the `resourceVersion` counter): every create, change and delete.
    pub fn writes(&self) -> u64 {
        self.store.lock().version
    }

    fn serve(self: &Arc<Self>, listener: TcpListener) {
        let api = Arc::clone(self);
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let api = Arc::clone(&api);
                connections.spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let api = Arc::clone(&api);
                        async move { Ok::<_, Infallible>(api.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
                // Finished connections are reaped as others come.
                while connections.try_join_next().is_some() {}
            }
        });
        *self.serving.lock() = Some(task);
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_owned();
        let query = parse_query(parts.uri.query().unwrap_or_default());
        if parts.method == Method::GET
            && let Some(answer) = self.discovery(&path)
        {
            return answer;
        }
        let Some(p) = parse_path(&path) else {
            return status(404, "NotFound", &format!("the double serves no {path}"));
        };
        let watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");
        if let Some(why) = self.forbidden(&parts, &p, &query, watch) {
            return status(403, "Forbidden", &why);
        }
        let accept = parts
            .headers
            .get(http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let reading = Reading {
            table: present::wants_table(accept),
            include: query.get("includeObject").cloned().unwrap_or_default(),
            labels: query.get("labelSelector").cloned().unwrap_or_default(),
            fields: query.get("fieldSelector").cloned().unwrap_or_default(),
        };
        if p.view.is_some() && parts.method != Method::GET {
            return status(
                405,
                "MethodNotAllowed",
                &format!("the double serves {path} read-only (write events.k8s.io/v1 events)"),
            );
        }
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => return status(400, "BadRequest", &e.to_string()),
        };
        let parsed = || -> Result<Value, Box<Response<Body>>> {
            serde_json::from_slice(&body)
                .map_err(|e| Box::new(status(400, "BadRequest", &format!("body: {e}"))))
        };
        match (&parts.method, p.name.clone(), p.sub.as_deref()) {
            (&Method::GET, None, None) if watch => self.watch(&p, &query, reading),
            (&Method::GET, None, None) => self.list_response(&p, &reading),
            (&Method::GET, Some(name), sub) => self.read(&p, &name, sub, &reading),
            (&Method::POST, None, None) => match parsed() {
                Ok(v) => self.create(&p, v),
                Err(r) => *r,
            },
            (&Method::PUT, Some(name), sub) => match parsed() {
                Ok(v) => self.update(&p, &name, sub, |_| Ok(v)),
                Err(r) => *r,
            },
            (&Method::PATCH, Some(name), sub) => {
                let patch = match parsed() {
                    Ok(v) => v,
                    Err(r) => return *r,
                };
                let json_patch = content_type.starts_with("application/json-patch+json");
                if content_type.starts_with("application/apply-patch") {
                    return status(
                        415,
                        "UnsupportedMediaType",
                        "the double has no server-side apply",
                    );
                }
                self.update(&p, &name, sub, move |current| {
                    let mut next = current.clone();
                    if json_patch {
                        apply_json_patch(&mut next, &patch)?;
                    } else {
                        merge(&mut next, &patch);
                    }
                    Ok(next)
                })
            }
            (&Method::DELETE, Some(name), None) => self.delete(&p, &name),
            _ => status(405, "MethodNotAllowed", &format!("{} {path}", parts.method)),
        }
    }

    fn list_response(&self, p: &Path, reading: &Reading) -> Response<Body> {
        let store = self.store.lock();
        let items: Vec<Value> = store
            .objects
            .iter()
            .filter(|((k, ns, _), v)| {
                *k == p.kind
                    && p.namespace.as_ref().is_none_or(|n| n == ns)
                    && matches_labels(v, &reading.labels)
            })
            .map(|(_, v)| v.clone())
            .collect();
        let shown = Presenter::new(&store, p, reading.clone());
        let items: Vec<Value> = items.iter().filter_map(|v| shown.object(v)).collect();
        let kind = &KINDS[shown.kind];
        if reading.table {
            return json_response(200, &shown.table(&items, Some(store.version.to_string())));
        }
        json_response(
            200,
            &json!({
                "apiVersion": api_version(kind),
                "kind": format!("{}List", kind.kind),
                "metadata": {"resourceVersion": store.version.to_string()},
                "items": items,
            }),
        )
    }

    fn read(&self, p: &Path, name: &str, sub: Option<&str>, reading: &Reading) -> Response<Body> {
        let store = self.store.lock();
        let key = (
            p.kind,
            p.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        );
        let Some(obj) = store.objects.get(&key) else {
            return not_found(p, name);
        };
        match sub {
            None | Some("status") => {
                let shown = Presenter::new(&store, p, Reading::default());
                let obj = shown.object(obj).unwrap_or_default();
                if reading.table {
                    json_response(200, &shown.table(&[obj], None))
                } else {
                    json_response(200, &obj)
                }
            }
            Some("scale") if KINDS[p.kind].scale => json_response(200, &scale_of(obj)),
            Some(s) => status(404, "NotFound", &format!("no subresource {s}")),
        }
    }

    fn create(&self, p: &Path, mut obj: Value) -> Response<Body> {
        let kind = &KINDS[p.kind];
        let ns = p.namespace.clone().unwrap_or_default();
        let mut name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if name.is_empty() {
            match obj["metadata"]["generateName"].as_str() {
                Some(prefix) => {
                    name = format!("{prefix}{:05x}", self.uids.fetch_add(1, Ordering::Relaxed));
                }
                None => return status(422, "Invalid", "metadata.name: Required value"),
            }
        }
        if let Some(why) = validate::invalid(kind.kind, &obj) {
            return status(422, "Invalid", &why);
        }
        let mut store = self.store.lock();
        let key = (p.kind, ns.clone(), name.clone());
        if store.objects.contains_key(&key) {
            return status(
                409,
                "AlreadyExists",
                &format!("{} {name:?} already exists", kind.plural),
            );
        }
        store.version += 1;
        let version = store.version;
        let meta = &mut obj["metadata"];
        meta["name"] = json!(name);
        if kind.namespaced {
            meta["namespace"] = json!(ns);
        }
        meta["uid"] = json!(format!(
            "00000000-0000-4000-8000-{:012x}",
            self.uids.fetch_add(1, Ordering::Relaxed)
        ));
        meta["resourceVersion"] = json!(version.to_string());
        meta["creationTimestamp"] = json!(now());
        meta["generation"] = json!(1);
        obj["apiVersion"] = json!(api_version(kind));
        obj["kind"] = json!(kind.kind);
        if kind.status && p.group_is_custom() {
            // A custom resource's status is written through its subresource only.
            if let Some(o) = obj.as_object_mut() {
                o.remove("status");
            }
        }
        store.objects.insert(key, obj.clone());
        self.record(&mut store, p.kind, "ADDED", &obj);
        json_response(201, &obj)
    }

    /// Replace or patch: `next` makes the new object (or status, or scale) from the
    /// current one.
    fn update(
        &self,
        p: &Path,
        name: &str,
        sub: Option<&str>,
        next: impl FnOnce(&Value) -> Result<Value, Invalid>,
    ) -> Response<Body> {
        let kind = &KINDS[p.kind];
        let mut store = self.store.lock();
        let key = (
            p.kind,
            p.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        );
        let Some(current) = store.objects.get(&key).cloned() else {
            return not_found(p, name);
        };
        let given = match sub {
            Some("scale") if kind.scale => next(&scale_of(&current)),
            None | Some("status") => next(&current),
            Some(s) => return status(404, "NotFound", &format!("no subresource {s}")),
        };
        let given = match given {
            Ok(v) => v,
            Err(Invalid(m)) => return status(422, "Invalid", &m),
        };
        let stale = given["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|rv| Some(rv) != current["metadata"]["resourceVersion"].as_str());
        if stale {
            return status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {} {name:?}: the object has been \
                     modified; please apply your changes to the latest version and try again",
                    kind.plural
                ),
            );
        }
        let mut obj = current.clone();
        match sub {
            Some("scale") => {
                obj["spec"]["replicas"] = given["spec"]["replicas"].clone();
            }
            Some("status") => obj["status"] = given["status"].clone(),
            _ => {
                obj = given;
                // What only the server sets stays as it was.
                for field in [
                    "uid",
                    "creationTimestamp",
                    "generation",
                    "namespace",
                    "name",
                ] {
                    obj["metadata"][field] = current["metadata"][field].clone();
                }
                if kind.status {
                    obj["status"] = current["status"].clone();
                }
                obj["apiVersion"] = json!(api_version(kind));
                obj["kind"] = json!(kind.kind);
                if let Some(why) = validate::invalid(kind.kind, &obj) {
                    return status(422, "Invalid", &why);
                }
            }
        }
        if let Some(o) = obj.as_object_mut()
            && o.get("status").is_some_and(Value::is_null)
        {
            o.remove("status");
        }
        if obj["spec"] != current["spec"] {
            let g = current["metadata"]["generation"].as_i64().unwrap_or(1);
            obj["metadata"]["generation"] = json!(g + 1);
        }
        if obj == current {
            // Nothing changed: no new version, no event (as the API server does).
            return json_response(
                200,
                &if sub == Some("scale") {
                    scale_of(&obj)
                } else {
                    obj
                },
            );
        }
        store.version += 1;
        obj["metadata"]["resourceVersion"] = json!(store.version.to_string());
        store.objects.insert(key, obj.clone());
        self.record(&mut store, p.kind, "MODIFIED", &obj);
        json_response(
            200,
            &if sub == Some("scale") {
                scale_of(&obj)
            } else {
                obj
            },
        )
    }

    fn delete(&self, p: &Path, name: &str) -> Response<Body> {
        let mut store = self.store.lock();
        let key = (
            p.kind,
            p.namespace.clone().unwrap_or_default(),
            name.to_owned(),
        );
        let Some(obj) = store.objects.remove(&key) else {
            return not_found(p, name);
        };
        store.version += 1;
        self.record(&mut store, p.kind, "DELETED", &obj);
        // Background cascade: what it owns goes too, and what that owns.
        let mut owners = vec![
            obj["metadata"]["uid"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        ];
        while let Some(uid) = owners.pop() {
            let owned: Vec<(usize, String, String)> = store
                .objects
                .iter()
                .filter(|(_, v)| {
                    v["metadata"]["ownerReferences"]
                        .as_array()
                        .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)))
                })
                .map(|(k, _)| k.clone())
                .collect();
            for k in owned {
                if let Some(o) = store.objects.remove(&k) {
                    store.version += 1;
                    owners.push(o["metadata"]["uid"].as_str().unwrap_or_default().to_owned());
                    self.record(&mut store, k.0, "DELETED", &o);
                }
            }
        }
        json_response(200, &obj)
    }

    fn record(&self, store: &mut Store, kind: usize, type_: &'static str, object: &Value) {
        let event = Event {
            version: store.version,
            kind,
            type_,
            object: object.clone(),
        };
        if store.history.len() == HISTORY {
            store.history.pop_front();
        }
        store.history.push_back(event.clone());
        let _ = self.events.send(event);
    }

    /// A watch: newline-delimited events from after `resourceVersion` (or the current
    /// objects as ADDED when none is given), until `timeoutSeconds`.
    fn watch(
        &self,
        p: &Path,
        query: &BTreeMap<String, String>,
        reading: Reading,
    ) -> Response<Body> {
        let selector = reading.labels.clone();
        let timeout = query
            .get("timeoutSeconds")
            .and_then(|t| t.parse().ok())
            .map_or(Duration::from_secs(300), Duration::from_secs);
        let from: Option<u64> = query
            .get("resourceVersion")
            .filter(|v| !v.is_empty() && *v != "0")
            .and_then(|v| v.parse().ok());
        let mut live = self.events.subscribe();
        let (first, mut last, shown) = {
            let store = self.store.lock();
            let shown = Presenter::new(&store, p, reading);
            let wanted = |kind: usize, v: &Value| {
                kind == p.kind
                    && p.namespace
                        .as_ref()
                        .is_none_or(|n| v["metadata"]["namespace"].as_str() == Some(n))
                    && matches_labels(v, &selector)
            };
            match from {
                Some(v)
                    if v < store.version
                        && store.history.front().is_none_or(|e| e.version > v + 1) =>
                {
                    let gone = json!({
                        "type": "ERROR",
                        "object": {
                            "kind": "Status", "apiVersion": "v1", "metadata": {},
                            "status": "Failure", "reason": "Expired", "code": 410,
                            "message": format!("too old resource version: {v} ({})", store.version),
                        }
                    });
                    return json_lines(vec![gone], None);
                }
                Some(v) => (
                    store
                        .history
                        .iter()
                        .filter(|e| e.version > v && wanted(e.kind, &e.object))
                        .filter_map(|e| shown.event(e.type_, &e.object))
                        .collect::<Vec<_>>(),
                    store.version,
                    shown,
                ),
                None => (
                    store
                        .objects
                        .iter()
                        .filter(|((k, _, _), v)| wanted(*k, v))
                        .filter_map(|(_, v)| shown.event("ADDED", v))
                        .collect(),
                    store.version,
                    shown,
                ),
            }
        };
        let kind = p.kind;
        let namespace = p.namespace.clone();
        let stream = async_stream(move |tx| async move {
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => return,
                    e = live.recv() => match e {
                        Ok(e) => {
                            if e.version <= last
                                || e.kind != kind
                                || namespace.as_ref().is_some_and(|n| e.object["metadata"]["namespace"].as_str() != Some(n))
                                || !matches_labels(&e.object, &selector)
                            {
                                continue;
                            }
                            last = e.version;
                            let Some(event) = shown.event(e.type_, &e.object) else {
                                continue;
                            };
                            if tx.send(event).await.is_err() {
                                return;
                            }
                        }
                        // Fell behind: end the watch; the client resumes from what it saw.
                        Err(_) => return,
                    }
                }
            }
        });
        json_lines(first, Some(stream))
    }
}

/// How a read asked to see objects.
#[derive(Clone, Debug, Default)]
struct Reading {
    /// As a `meta.k8s.io/v1` Table.
    table: bool,
    /// `includeObject` for a Table's rows.
    include: String,
    labels: String,
    fields: String,
}

/// Presents stored objects as a read asked for them (see [`present`]).
struct Presenter {
    /// The kind shown (core/v1 `Event` for a view of events.k8s.io ones).
    kind: usize,
    view: bool,
    columns: Option<Vec<Value>>,
    reading: Reading,
}

impl Presenter {
    fn new(store: &Store, p: &Path, reading: Reading) -> Self {
        let kind = p.view.unwrap_or(p.kind);
        let crds = store.crds();
        Self {
            kind,
            view: p.view.is_some(),
            columns: discovery::printer_columns(&crds, &KINDS[kind]).cloned(),
            reading,
        }
    }

    /// The object as shown, or `None` if the field selector leaves it out.
    fn object(&self, stored: &Value) -> Option<Value> {
        let v = if self.view {
            present::core_event(stored)
        } else {
            stored.clone()
        };
        present::matches_fields(&v, &self.reading.fields).then_some(v)
    }

    fn table(&self, objects: &[Value], resource_version: Option<String>) -> Value {
        present::table(
            &KINDS[self.kind],
            self.columns.as_ref(),
            objects,
            &self.reading.include,
            present::epoch_seconds(&now()).unwrap_or(0),
            resource_version,
        )
    }

    /// A watch event's line, or `None` if the object is left out.
    fn event(&self, type_: &str, stored: &Value) -> Option<Value> {
        let object = self.object(stored)?;
        let object = if self.reading.table {
            let rv = object["metadata"]["resourceVersion"]
                .as_str()
                .map(str::to_owned);
            self.table(&[object], rv)
        } else {
            object
        };
        Some(json!({"type": type_, "object": object}))
    }
}

/// A response body: whole, or a stream of lines.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>;

fn json_response(code: u16, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed_unsync())
        .expect("response")
}

fn status(code: u16, reason: &str, message: &str) -> Response<Body> {
    json_response(
        code,
        &json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "reason": reason, "code": code, "message": message,
        }),
    )
}

fn not_found(p: &Path, name: &str) -> Response<Body> {
    status(
        404,
        "NotFound",
        &format!(
            "{}.{} {name:?} not found",
            KINDS[p.kind].plural, KINDS[p.kind].group
        ),
    )
}

/// A watch's body: `first` events, then whatever `rest` sends, a JSON object per line.
fn json_lines(
    first: Vec<Value>,
    rest: Option<tokio::sync::mpsc::Receiver<Value>>,
) -> Response<Body> {
    let head = futures_util::stream::iter(first);
    let tail = futures_util::stream::unfold(rest, |rx| async move {
        let mut rx = rx?;
        let v = rx.recv().await?;
        Some((v, Some(rx)))
    });
    let frames = head
        .chain(tail)
        .map(|v| Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{v}\n")))));
    Response::builder()
        .status(200)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(StreamBody::new(frames).boxed_unsync())
        .expect("response")
}

/// Runs `f` with the sending half of a channel; the receiving half is returned.
fn async_stream<F, Fut>(f: F) -> tokio::sync::mpsc::Receiver<Value>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Value>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(f(tx));
    rx
}

fn api_version(kind: &Kind) -> String {
    if kind.group.is_empty() {
        kind.version.to_owned()
    } else {
        format!("{}/{}", kind.group, kind.version)
    }
}

fn scale_of(obj: &Value) -> Value {
    let selector = obj["spec"]["selector"]["matchLabels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default();
    json!({
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {
            "name": obj["metadata"]["name"],
            "namespace": obj["metadata"]["namespace"],
            "uid": obj["metadata"]["uid"],
            "resourceVersion": obj["metadata"]["resourceVersion"],
        },
        "spec": {"replicas": obj["spec"]["replicas"].as_i64().unwrap_or(1)},
        "status": {
            "replicas": obj["status"]["replicas"].as_i64().unwrap_or(0),
            "selector": selector,
        },
    })
}

fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// RFC 7386 merge patch.
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// RFC 6902 JSON patch: add, replace, remove, test.
/// Why a patch cannot be applied (answered 422 `Invalid`).
struct Invalid(String);

fn apply_json_patch(target: &mut Value, patch: &Value) -> Result<(), Invalid> {
    let bad = Invalid;
    for op in patch
        .as_array()
        .ok_or_else(|| bad("a JSON patch is a list".into()))?
    {
        let path = op["path"]
            .as_str()
            .ok_or_else(|| bad("op without path".into()))?;
        let (parent_path, last) = path
            .rsplit_once('/')
            .ok_or_else(|| bad(format!("path {path}")))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        match op["op"].as_str() {
            Some("test") => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(bad(format!("test failed at {path}")));
                }
            }
            Some(kind @ ("add" | "replace" | "remove")) => {
                let parent = if parent_path.is_empty() {
                    Some(&mut *target)
                } else {
                    target.pointer_mut(parent_path)
                };
                let parent = parent.ok_or_else(|| bad(format!("no {parent_path}")))?;
                match (kind, parent) {
                    ("remove", Value::Object(o)) => {
                        o.remove(&last);
                    }
                    (_, Value::Object(o)) => {
                        o.insert(last, op["value"].clone());
                    }
                    (_, Value::Array(a)) => {
                        let i = if last == "-" {
                            a.len()
                        } else {
                            last.parse().map_err(|_| bad(format!("index {last}")))?
                        };
                        match kind {
                            "remove" if i < a.len() => {
                                a.remove(i);
                            }
                            "replace" if i < a.len() => a[i] = op["value"].clone(),
                            "add" if i <= a.len() => a.insert(i, op["value"].clone()),
                            _ => return Err(bad(format!("index {i} out of range"))),
                        }
                    }
                    _ => return Err(bad(format!("{parent_path} is not a container"))),
                }
            }
            other => return Err(bad(format!("op {other:?} is not supported by the double"))),
        }
    }
    Ok(())
}

/// Whether the object's labels satisfy the selector.
fn matches_labels(obj: &Value, selector: &str) -> bool {
    let labels = &obj["metadata"]["labels"];
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            if let Some((k, v)) = term.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                labels[k.trim()].as_str() == Some(v.trim())
            } else if let Some(k) = term.strip_prefix('!') {
                labels.get(k.trim()).is_none()
            } else {
                labels.get(term).is_some()
            }
        })
}

fn parse_query(q: &str) -> BTreeMap<String, String> {
    q.split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            Some((decode(k)?, decode(v)?))
        })
        .collect()
}

fn decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A request path, understood.
#[derive(Debug)]
struct Path {
    /// The kind stored.
    kind: usize,
    /// The kind asked for, when it is a view of `kind` ([`Kind::view_of`]).
    view: Option<usize>,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Path {
    fn group_is_custom(&self) -> bool {
        KINDS[self.kind].custom
    }
}

fn parse_path(path: &str) -> Option<Path> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        rest => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some((*name).to_owned()), None),
        [plural, name, sub] => (*plural, Some((*name).to_owned()), Some((*sub).to_owned())),
        _ => return None,
    };
    let asked = KINDS
        .iter()
        .position(|k| k.group == group && k.version == version && k.plural == plural)?;
    if !KINDS[asked].namespaced && namespace.is_some() {
        return None;
    }
    let (kind, view) = match KINDS[asked].view_of {
        Some(of) => (
            KINDS
                .iter()
                .position(|k| k.group == of && k.plural == plural)?,
            Some(asked),
        ),
        None => (asked, None),
    };
    Some(Path {
        kind,
        view,
        namespace,
        name,
        sub,
    })
}

mod discovery;
mod present;
mod rbac;
mod validate;

/// A kubeconfig naming the double at `url` (context `fake`, namespace `default`, no
/// credentials: the double checks none).
pub fn kubeconfig(url: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\n\
         contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    \
         namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
    )
}

#[cfg(test)]
mod tests;
