//! The activator's request path, outermost first (Knative's handler chain, §2.2):
//!
//! 1. probes and health: kubelet probes, `K-Network-Probe` and `/healthz` are answered
//!    here, before anything is counted; every other request restarts a drain's quiet period;
//! 2. revision: from `Knative-Serving-Namespace` / `Knative-Serving-Revision`, 404 if
//!    missing or unknown;
//! 3. stats: the request is counted in *before* the throttler, so time spent held counts
//!    as concurrency (and the first request of an idle revision pokes the autoscaler);
//! 4. timeout: the revision's `timeoutSeconds` covers the hold and the pod's first byte;
//! 5. throttler: a revision slot (held in arrival order while there is no capacity, 503
//!    past the queue depth) and a pod slot, both kept until the response body ends;
//! 6. reverse proxy: `K-Original-Host`, `K-Proxy-Request: activator`, Knative's header
//!    rules, then the pod's queue-proxy; a request that never left is sent once more to
//!    another pod.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use sluice_core::BodyGuard;
use sluice_core::forward::{self, Found, is_upgrade};
use sluice_core::headers as kh;
use sluice_core::respond;
use sluice_core::serve::{ExchangeDeadline, splice};
use sluice_core::upstream::{self, Lease, SendError, UpstreamBody, UpstreamError};
use sluice_proto::v1::Source;
use tokio::time::Instant;

use crate::State;

/// The activator's response body: its guard held until the pod's body ends.
pub type ProxyBody = sluice_core::ProxyBody<RequestGuard>;
use crate::revision::Revision;
use crate::throttler::{Grant, PodTracker, ThrottleError};

/// Why a request got no answer from a pod. Mapped to a response in one place.
#[derive(Debug, thiserror::Error)]
enum ActivatorError {
    #[error(
        "activator queue full: {0} requests are already held for revision {1}, which has no capacity yet"
    )]
    QueueFull(usize, String),
    #[error("revision {0} was removed while this request waited")]
    Removed(String),
    #[error("activator request timeout")]
    Timeout,
    #[error("error reaching revision {0}: {1}")]
    Upstream(String, UpstreamError),
}

/// Everything one request holds until its response ends; dropping it gives it back and
/// records the request.
#[derive(Debug)]
pub struct RequestGuard {
    rev: Arc<Revision>,
    start: Instant,
    status: u16,
    /// Declared before `grant`: the pooled connection goes back before the slots do.
    lease: Option<Lease>,
    grant: Option<Grant>,
    clean: bool,
}

// === impl ActivatorError ===

impl ActivatorError {
    fn into_response(self) -> Response<ProxyBody> {
        let status = match &self {
            Self::QueueFull(..) | Self::Removed(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(_, e) => e.status(),
        };
        respond::text(status, self.to_string())
    }
}

/// One request from the serving port. `peer_ip` is rendered once per connection.
pub(crate) async fn handle(
    state: Arc<State>,
    peer_ip: HeaderValue,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    if let Some(rsp) = probe_or_health(&state, &req) {
        return Ok(rsp);
    }
    state.drainer.touch();
    let rev = match revision(&state, req.headers()) {
        Ok(rev) => rev,
        Err(Unknown::Revision(ns, name)) => {
            // Boxed: the rare path stays out of the common request future.
            match Box::pin(state.registry.wait_for(&ns, &name, UNKNOWN_REVISION_WAIT)).await {
                Some(rev) => rev,
                None => {
                    return Ok(respond::text(
                        StatusCode::NOT_FOUND,
                        format!("revision {ns}/{name} is not known to this activator"),
                    ));
                }
            }
        }
        Err(Unknown::NoHeaders) => {
            return Ok(respond::text(
                StatusCode::NOT_FOUND,
                "no revision: the request needs Knative-Serving-Namespace and \
                 Knative-Serving-Revision headers",
            ));
        }
    };
    Ok(proxy(&state, rev, &peer_ip, req).await)
}

/// How long a request for a revision not known yet waits for the endpoints source to
/// name it (a route and the activator's source are updated separately).
const UNKNOWN_REVISION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a request names no known revision.
enum Unknown {
    NoHeaders,
    Revision(String, String),
}

/// Knative's health, network-probe and activator-probe handlers.
fn probe_or_health(state: &State, req: &Request<Incoming>) -> Option<Response<ProxyBody>> {
    let headers = req.headers();
    if let Some(value) = headers.get(kh::PROBE) {
        let value = value.as_bytes();
        return Some(if value == kh::NETWORK_PROBE.as_bytes() {
            respond::network_probe(headers)
        } else if value == kh::ACTIVATOR.as_bytes() {
            respond::text(StatusCode::OK, kh::ACTIVATOR)
        } else {
            respond::text(
                StatusCode::BAD_REQUEST,
                format!(
                    "unexpected probe header value: {}",
                    String::from_utf8_lossy(value)
                ),
            )
        });
    }
    let kubelet = kh::classify(headers).kubelet_probe;
    let healthz = req.uri().path() == "/healthz" && !headers.contains_key(kh::REVISION);
    if !(kubelet || healthz) {
        return None;
    }
    Some(match state.unhealthy() {
        None => respond::text(StatusCode::OK, kh::ACTIVATOR),
        Some(why) => respond::text(StatusCode::INTERNAL_SERVER_ERROR, why),
    })
}

/// The request's revision, or why there is none.
fn revision(state: &State, headers: &HeaderMap) -> Result<Arc<Revision>, Unknown> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let (Some(ns), Some(name)) = (header(kh::NAMESPACE), header(kh::REVISION)) else {
        return Err(Unknown::NoHeaders);
    };
    state
        .registry
        .get(ns, name)
        .ok_or_else(|| Unknown::Revision(ns.to_owned(), name.to_owned()))
}

async fn proxy(
    state: &State,
    rev: Arc<Revision>,
    peer_ip: &HeaderValue,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let mut guard = RequestGuard::enter(state, Arc::clone(&rev));
    let deadline = guard.start + rev.timeout;
    if req.version() == Version::HTTP_2 {
        restore_client_version(&mut req);
    }
    let found = Found::scan(req.headers());
    let upgrade = is_upgrade(&req, found);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let req = req.map(upstream::body_of);

    let sent = tokio::time::timeout_at(
        deadline,
        send(&rev, &mut guard, req, found, peer_ip, upgrade),
    )
    .await
    .unwrap_or(Err(ActivatorError::Timeout));
    let mut rsp = match sent {
        Ok(rsp) => rsp,
        Err(error) => {
            match &error {
                ActivatorError::Upstream(_, e) if e.is_client_body() => {
                    tracing::debug!(%error, "client's request body failed");
                }
                ActivatorError::Upstream(..) => tracing::warn!(%error, "pod unreachable"),
                _ => {}
            }
            let rsp = error.into_response();
            guard.status = rsp.status().as_u16();
            return rsp;
        }
    };
    guard.status = rsp.status().as_u16();
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) = (rsp.status(), client_upgrade) {
        let pod = hyper::upgrade::on(&mut rsp);
        tunnel(state, guard, client, pod);
        let (parts, _) = rsp.into_parts();
        return Response::from_parts(parts, ProxyBody::empty());
    }
    forward::remove_hop_by_hop(rsp.headers_mut());
    // A client that stops reading holds the pod's slot no longer than the revision's
    // timeout: its connection is cut then.
    rsp.extensions_mut().insert(ExchangeDeadline(deadline));
    let (parts, body) = rsp.into_parts();
    Response::from_parts(parts, ProxyBody::upstream(body, guard))
}

/// Takes the slots, applies the header rules and sends the request to a pod. What it
/// holds (slots, pooled connection) goes into `guard`.
async fn send(
    rev: &Revision,
    guard: &mut RequestGuard,
    mut req: Request<UpstreamBody>,
    found: Found,
    peer_ip: &HeaderValue,
    upgrade: bool,
) -> Result<Response<Incoming>, ActivatorError> {
    let throttled = |e: ThrottleError| match e {
        ThrottleError::QueueFull => ActivatorError::QueueFull(rev.throttler.held(), rev_name(rev)),
        ThrottleError::Removed => ActivatorError::Removed(rev_name(rev)),
    };
    // A request that finds no pod waits for a cold start: measured from its arrival
    // until it is sent.
    let cold = rev.throttler.no_pods();
    if cold {
        rev.metrics.cold_start_requests.inc();
    }
    let mut grant = rev.throttler.acquire().await.map_err(throttled)?;
    if cold {
        rev.metrics
            .cold_start
            .observe(guard.start.elapsed().as_secs_f64());
    }
    {
        let pod = grant.pod.tracker();
        let mut found = found;
        forward::rewrite_host_in(&mut req, &mut found, pod.authority());
        forward::prepare_request(&mut req, found, peer_ip, pod.host(), upgrade);
        req.headers_mut()
            .insert(kh::PROXY, HeaderValue::from_static(kh::ACTIVATOR));
    }
    let mut retried = false;
    loop {
        let pod = Arc::clone(grant.pod.tracker());
        // Boxed: a held request's future must not carry the proxying states it has not
        // reached yet (kilobytes, times 10,000 held requests).
        match Box::pin(pod.upstream().send(req, upgrade)).await {
            Ok((rsp, lease)) => {
                guard.lease = lease;
                guard.grant = Some(grant);
                return Ok(rsp);
            }
            Err(SendError {
                error,
                request: Some(unsent),
            }) if !retried => {
                // Nothing reached the pod: take it out of rotation and try another.
                tracing::debug!(pod = %pod.dest(), %error, "pod unreachable; sending elsewhere");
                rev.quarantine(pod.dest());
                retried = true;
                grant = rev.throttler.repick(grant).await.map_err(throttled)?;
                req = unsent;
                readdress(&mut req, grant.pod.tracker());
            }
            Err(SendError { error, request }) => {
                if request.is_some() {
                    rev.quarantine(pod.dest());
                }
                return Err(ActivatorError::Upstream(rev_name(rev), error));
            }
        }
    }
}

/// A request a gateway carried over a shared HTTP/2 connection goes on as the HTTP/1.x
/// request its client sent (`Sluice-Client-Version`), with its authority as `Host`.
fn restore_client_version<B>(req: &mut Request<B>) {
    let Some(client) = req.headers_mut().remove(kh::CLIENT_VERSION) else {
        return;
    };
    *req.version_mut() = if client.as_bytes() == b"HTTP/1.0" {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if let Some(host) = req
        .uri()
        .authority()
        .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(http::header::HOST, host);
    }
}

/// Points a request that was prepared for one pod at another.
fn readdress(req: &mut Request<UpstreamBody>, pod: &PodTracker) {
    if req.version() >= Version::HTTP_2 {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(pod.authority().clone());
        if let Ok(uri) = http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    } else {
        req.headers_mut()
            .insert(http::header::HOST, pod.host().clone());
    }
}

fn rev_name(rev: &Revision) -> String {
    format!("{}/{}", rev.namespace, rev.name)
}

/// Splices an upgraded connection to the pod's, holding the request's slots for the
/// tunnel's whole life.
fn tunnel(
    state: &State,
    guard: RequestGuard,
    client: hyper::upgrade::OnUpgrade,
    pod: hyper::upgrade::OnUpgrade,
) {
    let tracked = state.upgrades.track();
    tokio::spawn(async move {
        let _held = (guard, tracked);
        if let Err(error) = splice(client, pod).await {
            tracing::debug!(%error, "upgraded connection ended with error");
        }
    });
}

// === impl RequestGuard ===

impl RequestGuard {
    /// Counts the request in; the first for an idle revision sends the poke.
    fn enter(state: &State, rev: Arc<Revision>) -> Self {
        let start = Instant::now();
        rev.metrics.concurrency.inc();
        let poke = rev.report.lock().request_in(start);
        if poke && let Some(pusher) = &state.pusher {
            pusher.poke(
                Source::Activator,
                &state.pod_name,
                &rev.namespace,
                &rev.name,
            );
        }
        Self {
            rev,
            start,
            status: 0,
            lease: None,
            grant: None,
            clean: false,
        }
    }
}

impl BodyGuard for RequestGuard {
    /// The response body ended without error: the connection may be reused.
    fn mark_clean(&mut self) {
        self.clean = true;
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let now = Instant::now();
        if let Some(lease) = self.lease.take() {
            lease.release(self.clean, now);
        }
        self.grant = None;
        self.rev.report.lock().request_out(now);
        self.rev.metrics.concurrency.dec();
        // 499 (nginx's "client closed request") for a request dropped before any answer.
        let status = if self.status == 0 { 499 } else { self.status };
        self.rev
            .metrics
            .record(status, now.saturating_duration_since(self.start));
    }
}
