//! The `Service` controller: kube-runtime's [`Controller`] over every `serving.knative.dev/v1`
//! `Service`, owning its `Configuration` and `Route`. Each reconcile plans the Service's
//! spec (once per `metadata.generation`, as `sluice apply` plans a manifest) and makes its
//! two children match the spec last accepted, from the watches' caches; a write the API
//! server refuses fails that Service alone, which backs off (1 s doubling to 5 min) while
//! every other goes on. A child deleted or edited by hand triggers its owner's reconcile,
//! which puts it back. A deleted Service is taken out of the world as the watch sees it go.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use parking_lot::Mutex;

use super::{Desired, Objects, apply, id, remove};
use crate::backend::knative_service;
use crate::children::{self, ChildError, FIRST_BACKOFF, Outcome};
use crate::resources::SERVICE_LABEL;

/// Reconciles running at once (their planning takes turns; their child writes do not).
const CONCURRENCY: u16 = 8;

/// A Service reconciled is looked at again after this even if nothing changed (a cache
/// that missed an event is then caught up).
const RESYNC: Duration = Duration::from_secs(300);

/// What every reconcile shares.
pub(super) struct Context {
    client: Client,
    desired: Arc<Desired>,
    objects: Arc<Mutex<Objects>>,
    services: Store<DynamicObject>,
    configurations: Store<DynamicObject>,
    routes: Store<DynamicObject>,
    /// The Services of the watch's last list (while it is read).
    listing: Mutex<Option<BTreeSet<(String, String)>>>,
    /// Told once every Service of the first list has been planned.
    first: Mutex<First>,
}

#[derive(Default)]
struct First {
    tx: Option<tokio::sync::oneshot::Sender<()>>,
    /// Those of the first list not planned yet (`None`: the list is not read yet).
    waiting: Option<BTreeSet<(String, String)>>,
}

/// A Service whose children could not be written as they should be.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub(super) struct ChildrenNotWritten {
    #[source]
    source: ChildError,
    /// When to try again: that Service's own back-off.
    retry_in: Duration,
}

/// Runs the controller until the task is aborted: `listed` is sent once every Service of
/// the first list has been planned.
pub(super) async fn run(
    client: Client,
    desired: Arc<Desired>,
    objects: Arc<Mutex<Objects>>,
    listed: tokio::sync::oneshot::Sender<()>,
) {
    let service = knative_service();
    let writer = reflector::store::Writer::new(service.clone());
    let (configurations, configuration_events) =
        cache(client.clone(), children::knative_configuration());
    let (routes, route_events) = cache(client.clone(), children::knative_route());
    let ctx = Arc::new(Context {
        client: client.clone(),
        desired,
        objects,
        services: writer.as_reader(),
        configurations,
        routes,
        listing: Mutex::new(None),
        first: Mutex::new(First {
            tx: Some(listed),
            waiting: None,
        }),
    });
    let api: Api<DynamicObject> = Api::all_with(client, &service);
    let tap = Arc::clone(&ctx);
    let services = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default()).default_backoff(),
    )
    .then(move |event| {
        let ctx = Arc::clone(&tap);
        async move {
            if let Ok(e) = &event {
                ctx.seen(e).await;
            }
            event
        }
    })
    .applied_objects();
    let store = ctx.services.clone();
    let results = Controller::for_stream_with(services, store, service)
        .owns_stream_with(configuration_events, children::knative_configuration())
        .owns_stream_with(route_events, children::knative_route())
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .run(reconcile, error_policy, ctx);
    let mut results = std::pin::pin!(results);
    while let Some(r) = results.next().await {
        match r {
            Ok(_) | Err(controller::Error::ObjectNotFound(_)) => {}
            // Said (and backed off) by the error policy.
            Err(controller::Error::ReconcilerFailed(..)) => {}
            Err(e) => tracing::warn!(error = %e, "the Service controller"),
        }
    }
}

/// The children of kind `resource` (those labelled with their Service), cached as a watch
/// sees them, without their status; the stream (which runs the watch) says which changed or went.
fn cache(
    client: Client,
    resource: ApiResource,
) -> (
    Store<DynamicObject>,
    impl futures_util::Stream<Item = Result<DynamicObject, watcher::Error>> + Send + 'static,
) {
    let writer = reflector::store::Writer::new(resource.clone());
    let store = writer.as_reader();
    let api: Api<DynamicObject> = Api::all_with(client, &resource);
    let events = watcher(api, watcher::Config::default().labels(SERVICE_LABEL))
        .default_backoff()
        // What a child is made of is compared; its field history and status are not (a
        // replace leaves the status as the API server has it).
        .modify(|o| {
            o.metadata.managed_fields = None;
            if let Some(data) = o.data.as_object_mut() {
                data.remove("status");
            }
        });
    (
        store,
        reflector::reflector(writer, events).touched_objects(),
    )
}

impl Context {
    /// What the Service watch saw, before the controller does: a deleted Service is taken
    /// out; after each list, those the list no longer has (deleted while the watch was
    /// down, or restored from their Revisions but gone) are too.
    async fn seen(&self, event: &watcher::Event<DynamicObject>) {
        match event {
            watcher::Event::Delete(o) => {
                let (ns, name) = id(o);
                self.gone(&ns, &name).await;
            }
            watcher::Event::Init => *self.listing.lock() = Some(BTreeSet::new()),
            watcher::Event::InitApply(o) => {
                if let Some(l) = &mut *self.listing.lock() {
                    l.insert(id(o));
                }
            }
            watcher::Event::InitDone => {
                let Some(listed) = self.listing.lock().take() else {
                    return;
                };
                let mut known: BTreeSet<(String, String)> =
                    self.objects.lock().services.keys().cloned().collect();
                self.desired
                    .read_world(|w| known.extend(w.services.keys().cloned()));
                for (ns, name) in known.into_iter().filter(|k| !listed.contains(k)) {
                    self.gone(&ns, &name).await;
                }
                let planned: BTreeSet<(String, String)> = {
                    let objs = self.objects.lock();
                    listed
                        .iter()
                        .filter(|k| objs.services.get(*k).is_some_and(|s| s.observed.is_some()))
                        .cloned()
                        .collect()
                };
                let mut first = self.first.lock();
                if first.tx.is_some() && first.waiting.is_none() {
                    first.waiting = Some(listed.difference(&planned).cloned().collect());
                }
                first.tell_if_done();
            }
            watcher::Event::Apply(_) => {}
        }
    }

    async fn gone(&self, ns: &str, name: &str) {
        remove(&self.desired, &self.objects, ns, name).await;
        self.planned(ns, name);
    }

    /// The Service has been planned (or is gone): one fewer for the first list.
    fn planned(&self, ns: &str, name: &str) {
        let mut first = self.first.lock();
        if let Some(w) = &mut first.waiting {
            w.remove(&(ns.to_owned(), name.to_owned()));
        }
        first.tell_if_done();
    }

    /// Whether the Service is no longer in the watch's cache (deleted).
    fn deleted(&self, ns: &str, name: &str) -> bool {
        let at = ObjectRef::new_with(name, knative_service()).within(ns);
        self.services.get(&at).is_none()
    }
}

impl First {
    fn tell_if_done(&mut self) {
        if self.waiting.as_ref().is_some_and(BTreeSet::is_empty)
            && let Some(tx) = self.tx.take()
        {
            let _ = tx.send(());
        }
    }
}

/// Plans the Service's spec if it is new, then makes its `Configuration` and `Route` match
/// the spec last accepted (none accepted yet: nothing to make).
async fn reconcile(
    service: Arc<DynamicObject>,
    ctx: Arc<Context>,
) -> Result<Action, ChildrenNotWritten> {
    let (ns, name) = id(&service);
    apply(&ctx.desired, &ctx.objects, &service, || {
        ctx.deleted(&ns, &name)
    })
    .await;
    ctx.planned(&ns, &name);
    let Some(parent) = ctx.objects.lock().children.parent(&ns, &name) else {
        return Ok(Action::await_change());
    };
    // Read once the caches hold a first list, so a child that exists is not made again.
    let _ = futures_util::join!(
        ctx.configurations.wait_until_ready(),
        ctx.routes.wait_until_ready()
    );
    let configuration = ctx
        .configurations
        .get(&ObjectRef::new_with(&name, children::knative_configuration()).within(&ns));
    let route = ctx
        .routes
        .get(&ObjectRef::new_with(&name, children::knative_route()).within(&ns));
    let result = children::write(
        &ctx.client,
        &parent,
        [configuration.as_deref(), route.as_deref()],
    )
    .await;
    let mut objs = ctx.objects.lock();
    let objs = &mut *objs;
    match result {
        // Gone: the watch will say so.
        Ok(None) => Ok(Action::await_change()),
        Ok(Some([c, r])) => {
            // One made again (deleted by hand) has its status written again.
            if let Some(seen) = objs.services.get_mut(&(ns, name)) {
                if c == Outcome::Created {
                    seen.configuration = None;
                }
                if r == Outcome::Created {
                    seen.route = None;
                }
            }
            objs.children.done(&parent, Ok(()));
            Ok(Action::requeue(RESYNC))
        }
        Err(source) => {
            let retry_in = objs
                .children
                .done(&parent, Err(&source))
                .unwrap_or(FIRST_BACKOFF);
            Err(ChildrenNotWritten { source, retry_in })
        }
    }
}

/// A Service whose children were not written is tried again after its own back-off.
fn error_policy(service: Arc<DynamicObject>, e: &ChildrenNotWritten, _: Arc<Context>) -> Action {
    let (ns, name) = id(&service);
    tracing::warn!(service = %name, namespace = %ns, retry_in = ?e.retry_in, "{e}");
    Action::requeue(e.retry_in)
}
