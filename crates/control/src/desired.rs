//! The desired side of the platform: the applied world (services, revisions, traffic,
//! `config-autoscaler`) over a [`ControlPlane`] and whichever backend runs its pods (local
//! processes, or Kubernetes, where `sluice_kube::controller` applies the API server's
//! Services to it), and the admin port that `sluice apply` and `sluice status` use.
//! `sluice run` runs it beside the autoscaler, activator and gateway; `sluice control`
//! runs it alone, with the autoscaler in another process.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use parking_lot::Mutex;
use sluice_core::{RevisionKey, respond};
use sluice_proto::v1;
use sluice_serving::config::AutoscalerConfig;
use sluice_serving::manifest::Manifests;
use sluice_serving::problem::{Problem, lines};

use crate::images::ImageMap;
use crate::status::{DecisionReason, RevisionStatus, ServiceStatus, Status};
use crate::world::{Kept, Local, Revision, ServiceState, Traffic, World};
use crate::{ControlPlane, RevisionSpec, ServiceSpec, TargetSpec};

/// Largest manifest `sluice apply` may send.
const MAX_APPLY_BYTES: usize = 4 << 20;

/// An autoscaler in the control plane's process, as the applied world uses it: it checks
/// a `config-autoscaler` change against its revisions before the change is applied, and
/// status reads its averages as they are now. (One in another process follows the
/// control plane's config feed instead, and status reads the last published decision.)
pub trait LiveAutoscaler: Send + Sync + std::fmt::Debug {
    /// Takes `config`, or changes nothing and names each revision that cannot take it,
    /// with why.
    fn set_config(&self, config: AutoscalerConfig) -> Result<(), Vec<(RevisionKey, String)>>;
    /// Every revision's decision, as it is now.
    fn decisions(&self) -> Vec<v1::Decision>;
}

/// What a [`Desired`] is made with.
#[derive(Debug)]
pub struct DesiredOptions {
    /// Which local command runs each image.
    pub images: ImageMap,
    /// Services' URLs are under it.
    pub domain: String,
    /// The gateway's address, as `sluice status` shows it.
    pub gateway: String,
    /// An autoscaler in this process, if there is one.
    pub autoscaler: Option<std::sync::Arc<dyn LiveAutoscaler>>,
    /// Where accepted applies are kept (`applied/NNNNNN.yaml`), to replay at start.
    pub state: Option<PathBuf>,
    /// Pods run on Kubernetes: containers run their images, and `Service` objects are
    /// applied from the API server, not the admin port.
    pub cluster: bool,
}

/// The applied world and what carries it out.
#[derive(Debug)]
pub struct Desired {
    images: ImageMap,
    domain: String,
    gateway: String,
    /// Applies take turns; status reads the last applied world.
    apply_lock: tokio::sync::Mutex<()>,
    world: Mutex<World>,
    /// Over whichever backend runs the pods (`sluice status` reads them there).
    control: ControlPlane,
    autoscaler: Option<std::sync::Arc<dyn LiveAutoscaler>>,
    state: Option<PathBuf>,
    cluster: bool,
}

impl Desired {
    /// An empty world over `control`.
    pub fn new(control: ControlPlane, o: DesiredOptions) -> Self {
        Self {
            images: o.images,
            domain: o.domain,
            gateway: o.gateway,
            apply_lock: tokio::sync::Mutex::new(()),
            world: Mutex::new(World::default()),
            control,
            autoscaler: o.autoscaler,
            state: o.state,
            cluster: o.cluster,
        }
    }

    /// The control plane it applies through.
    pub fn control(&self) -> &ControlPlane {
        &self.control
    }

    /// Services' URLs are under it.
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// Reads the last applied world.
    pub fn read_world<T>(&self, read: impl FnOnce(&World) -> T) -> T {
        read(&self.world.lock())
    }

    /// Applies manifests: everything or, when any rule is broken, nothing.
    pub async fn apply(&self, m: &Manifests) -> Result<Vec<String>, Vec<Problem>> {
        let _turn = self.apply_lock.lock().await;
        self.apply_locked(m)
    }

    /// [`Desired::apply`] unless `gone` says, once the turn is taken, that what `m` holds
    /// has been deleted meanwhile (`None`): a deletion taken out with
    /// [`Desired::remove_service`] before is then never planned again, and one after
    /// waits for this turn.
    pub async fn apply_unless(
        &self,
        m: &Manifests,
        gone: impl FnOnce() -> bool,
    ) -> Option<Result<Vec<String>, Vec<Problem>>> {
        let _turn = self.apply_lock.lock().await;
        (!gone()).then(|| self.apply_locked(m))
    }

    /// [`Desired::apply`], with the turn already taken.
    fn apply_locked(&self, m: &Manifests) -> Result<Vec<String>, Vec<Problem>> {
        let current = self.world.lock().clone();
        let local = if self.cluster {
            Local::cluster(&self.images)
        } else {
            Local::resolve(m, &self.images)
        };
        let (next, changes) = current.apply(m, &local)?;
        if changes.config {
            // An autoscaler in this process checks it against its revisions now; one in
            // another follows the control plane's config feed (the planner has checked
            // the new config against every revision that stays).
            if let Some(autoscaler) = &self.autoscaler
                && let Err(refused) = autoscaler.set_config(next.config.clone())
            {
                return Err(refused
                    .iter()
                    .map(|(rev, e)| {
                        Problem::new(
                            "ConfigMap config-autoscaler",
                            format!("revision {rev}: {e}"),
                        )
                    })
                    .collect());
            }
            self.control.set_autoscaler_config(&next.config_data);
        }
        self.add_revisions(&next, &changes.new_revisions);
        for (namespace, name) in &changes.traffic {
            let s = &next.services[&(namespace.clone(), name.clone())];
            if let Err(e) = self.control.set_service(service_spec(s)) {
                tracing::error!(service = %name, %e, "the control plane refused planned traffic");
            }
        }
        *self.world.lock() = next;
        let mut summary = changes.summary;
        summary.extend(m.ignored.iter().cloned());
        Ok(summary)
    }

    /// Hands the world's new revisions to the control plane: the activator learns each
    /// before any route names it.
    fn add_revisions(&self, next: &World, new: &[(String, String, String)]) {
        for (namespace, _, name) in new {
            let (_, rev) = next
                .revision(namespace, name)
                .expect("a planned revision is in the next world");
            let key = RevisionKey::new(namespace, name);
            let spec = RevisionSpec {
                pod: rev.pod.clone(),
                initial_scale: rev.initial_scale,
                report: rev.mpa,
                annotations: rev.annotations.clone(),
                template: self.cluster.then(|| kept_template(rev)),
            };
            if let Err(e) = self.control.add_revision(spec) {
                // The world planned a new name: a bug if it happens.
                tracing::error!(revision = %key, %e, "the control plane refused a planned revision");
            }
        }
    }

    /// Plans again the revisions kept from before a restart ([`World::restore`]), before
    /// any service is applied, so that the service's next revision is named after the
    /// last one and a split naming an old one still finds it. Returns why a kept one
    /// could not be planned (it is left out).
    pub async fn restore(&self, kept: Vec<Kept>) -> Vec<Problem> {
        let _turn = self.apply_lock.lock().await;
        let current = self.world.lock().clone();
        let local = if self.cluster {
            Local::cluster(&self.images)
        } else {
            Local::resolve(&Manifests::default(), &self.images)
        };
        let (next, added, problems) = current.restore(kept, &local);
        self.add_revisions(&next, &added);
        *self.world.lock() = next;
        problems
    }

    /// Takes a service and its revisions out (deleted on Kubernetes). Returns whether it
    /// was there.
    pub async fn remove_service(&self, namespace: &str, name: &str) -> bool {
        let _turn = self.apply_lock.lock().await;
        let Some(gone) = self.world.lock().remove_service(namespace, name) else {
            return false;
        };
        // The route goes first, so no gateway sends to a revision being deleted.
        self.control.remove_service(namespace, name);
        for r in &gone.revisions {
            self.control
                .remove_revision(&RevisionKey::new(namespace, &r.name));
        }
        true
    }

    /// Takes revisions `config-gc` collected out of a service, and the control plane
    /// deletes them (never the latest, nor one traffic names: [`World::remove_revisions`]).
    /// The names taken out.
    pub async fn collect(&self, namespace: &str, service: &str, names: &[String]) -> Vec<String> {
        let _turn = self.apply_lock.lock().await;
        let served: std::collections::BTreeSet<String> = self
            .control
            .traffic(namespace, service)
            .unwrap_or_default()
            .into_iter()
            .map(|t| t.revision)
            .collect();
        let (gone, state) = {
            let mut world = self.world.lock();
            let gone = world.remove_revisions(namespace, service, names, &served);
            let state = world
                .services
                .get(&(namespace.to_owned(), service.to_owned()))
                .cloned();
            (gone, state)
        };
        if gone.is_empty() {
            return gone;
        }
        if let Some(s) = state
            && let Err(e) = self.control.set_service(service_spec(&s))
        {
            tracing::error!(service, %e, "the control plane refused a collected service's traffic");
        }
        for r in &gone {
            self.control
                .remove_revision(&RevisionKey::new(namespace, r));
        }
        gone
    }

    /// Services, revisions, traffic, pods and the autoscaler's view, now.
    pub fn status(&self) -> Status {
        let world = self.world.lock().clone();
        // The control plane's decisions are the applied ones, published on change; the
        // averages move every tick, so they are read from an in-process autoscaler as they
        // are now (from the last published decision otherwise).
        let live: HashMap<RevisionKey, v1::Decision> = self
            .autoscaler
            .as_ref()
            .map(|a| a.decisions())
            .unwrap_or_default()
            .into_iter()
            .map(|d| (RevisionKey::new(&d.namespace, &d.revision), d))
            .collect();
        let backend = self.control.backend();
        let services =
            world
                .services
                .values()
                .map(|s| ServiceStatus {
                    name: s.name.clone(),
                    namespace: s.namespace.clone(),
                    url: sluice_core::address::service_url(&self.domain, &s.namespace, &s.name),
                    traffic: self.traffic(s),
                    revisions: s
                        .revisions
                        .iter()
                        .map(|r| {
                            let key = RevisionKey::new(&s.namespace, &r.name);
                            let d = self.control.decision(&key);
                            let d = d.as_ref();
                            RevisionStatus {
                                name: r.name.clone(),
                                desired: d.map_or(-1, |d| d.desired_scale),
                                ready: u32::try_from(backend.ready(&key).len()).unwrap_or(u32::MAX),
                                concurrency: live.get(&key).or(d).map_or(0.0, |d| d.stable_value),
                                panic: live.get(&key).or(d).is_some_and(|d| d.panic),
                                mode: d
                                    .map_or(v1::Mode::Proxy, v1::Decision::mode)
                                    .label()
                                    .to_owned(),
                                error: backend.last_error(&key),
                                pods: backend.pods(&key),
                                reason: live.get(&key).or(d).and_then(|d| d.reason.as_ref()).map(
                                    |r| DecisionReason {
                                        kind: r.kind.clone(),
                                        message: r.message.clone(),
                                    },
                                ),
                                last_cold_start_seconds: self
                                    .control
                                    .last_cold_start(&key)
                                    .map(|d| d.as_secs_f64()),
                            }
                        })
                        .collect(),
                })
                .collect();
        Status {
            gateway: self.gateway.clone(),
            services,
            components: Vec::new(),
        }
    }

    /// The service's traffic as served: a target of the latest revision names the latest
    /// ready one (the control plane's), the others as written.
    pub fn traffic(&self, s: &ServiceState) -> Vec<Traffic> {
        let Some(served) = self.control.traffic(&s.namespace, &s.name) else {
            return s.traffic.clone();
        };
        s.traffic
            .iter()
            .zip(served)
            .map(|(written, served)| Traffic {
                revision: served.revision,
                ..written.clone()
            })
            .collect()
    }

    /// Parses and applies manifests sent to the admin port; kept in the state directory
    /// once accepted, so that a restart replays them.
    pub async fn apply_text(&self, text: &str) -> Result<Vec<String>, Vec<Problem>> {
        let m = Manifests::parse("apply", text)?;
        // Kept in the same turn, so that the kept applies replay in the order they ran.
        let _turn = self.apply_lock.lock().await;
        let summary = self.apply_locked(&m)?;
        if let Some(dir) = &self.state
            && let Err(e) = keep(dir, text)
        {
            // Applied but not kept: say so rather than lose it silently at a restart.
            return Ok(summary
                .into_iter()
                .chain([format!("warning: not kept for a restart: {e}")])
                .collect());
        }
        Ok(summary)
    }

    /// Applies again, in order, what the state directory kept. Returns how many applies.
    pub async fn replay(&self) -> Result<usize, String> {
        let Some(dir) = &self.state else {
            return Ok(0);
        };
        let dir = dir.join("applied");
        let mut files: Vec<PathBuf> = match std::fs::read_dir(&dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(format!("{}: {e}", dir.display())),
        };
        files.sort();
        for path in &files {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let m = Manifests::parse(&path.display().to_string(), &text)
                .map_err(|e| lines(&e).join("; "))?;
            self.apply(&m)
                .await
                .map_err(|e| format!("{}: {}", path.display(), lines(&e).join("; ")))?;
        }
        Ok(files.len())
    }
}

/// What the control plane serves of a service: its revisions and its traffic as written
/// (a target of the latest revision resolved by the control plane).
fn service_spec(s: &ServiceState) -> ServiceSpec {
    ServiceSpec {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
        revisions: s.revisions.iter().map(|r| r.name.clone()).collect(),
        traffic: s
            .traffic
            .iter()
            .map(|t| TargetSpec {
                revision: (!t.latest).then(|| t.revision.clone()),
                percent: t.percent,
                tag: t.tag.clone().unwrap_or_default(),
            })
            .collect(),
    }
}

/// The revision as its `Revision` object keeps it: its template's labels and annotations,
/// the generation it was made at, and its spec.
fn kept_template(rev: &Revision) -> serde_json::Value {
    let t = &rev.template;
    let mut labels = t.metadata.labels.clone();
    labels.insert(
        sluice_serving::labels::CONFIGURATION_GENERATION_LABEL.to_owned(),
        rev.generation.to_string(),
    );
    let mut kept = serde_json::json!({
        "metadata": {"labels": labels, "annotations": t.metadata.annotations},
        "spec": t.spec,
    });
    // Fields left unset are left out, not written `null` (which a CRD's schema refuses).
    sluice_serving::manifest::strip_nulls(&mut kept);
    kept
}

/// Writes one accepted apply as the next `applied/NNNNNN.yaml` (via a temporary file, so a
/// crash leaves no half-written apply behind).
fn keep(dir: &std::path::Path, text: &str) -> std::io::Result<()> {
    let dir = dir.join("applied");
    std::fs::create_dir_all(&dir)?;
    let next = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok()?.path().file_stem()?.to_str()?.parse::<u64>().ok())
        .max()
        .map_or(1, |n| n + 1);
    let tmp = dir.join(format!("{next:06}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(format!("{next:06}.yaml")))
}

/// The admin port: `GET /status` (JSON), `POST /apply` (YAML manifests), `GET /healthz`.
async fn admin_page(
    platform: Arc<Desired>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/status") => {
            let body =
                serde_json::to_vec_pretty(&platform.status()).expect("a status always serializes");
            let mut rsp = Response::new(Full::new(Bytes::from(body)));
            rsp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            rsp
        }
        (&Method::POST, "/apply") if platform.cluster => respond::text(
            StatusCode::METHOD_NOT_ALLOWED,
            "on Kubernetes, Services are applied to the API server: kubectl apply -f FILE\n",
        ),
        (&Method::POST, "/apply") => {
            let text = match manifests_body(req).await {
                Ok(text) => text,
                Err(refused) => return Ok(refused),
            };
            let applied = platform.apply_text(&text).await;
            match applied {
                Ok(summary) => respond::text(StatusCode::OK, summary.join("\n") + "\n"),
                Err(errors) => respond::text(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!(
                        "refused; nothing was changed:\n  {}\n",
                        lines(&errors).join("\n  ")
                    ),
                ),
            }
        }
        (&Method::GET, "/healthz") => respond::text(StatusCode::OK, "sluice"),
        _ => respond::text(
            StatusCode::NOT_FOUND,
            "not found: this port serves GET /status, POST /apply and GET /healthz",
        ),
    })
}

/// The manifests a `POST /apply` carries (at most 4 MiB), or the answer that refuses them.
pub async fn manifests_body(req: Request<Incoming>) -> Result<String, Response<Full<Bytes>>> {
    match Limited::new(req.into_body(), MAX_APPLY_BYTES)
        .collect()
        .await
    {
        Ok(b) => Ok(String::from_utf8_lossy(&b.to_bytes()).into_owned()),
        Err(e) => Err(respond::text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("cannot read the manifests: {e}"),
        )),
    }
}

/// Serves the admin port until `shutdown`.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    desired: Arc<Desired>,
    shutdown: impl Future<Output = ()>,
) {
    let page = move |_| {
        let desired = Arc::clone(&desired);
        hyper::service::service_fn(move |req| admin_page(Arc::clone(&desired), req))
    };
    sluice_core::serve::serve(
        "admin",
        listener,
        page,
        shutdown,
        sluice_core::serve::Serving::new(std::time::Duration::from_secs(1)),
    )
    .await;
}
