//! The queue-proxy's request path, outermost first (Knative's handler chain, §1.3):
//!
//! 1. drainer: health checks and network probes are answered here, whatever the path,
//!    before anything is counted; every other request restarts a drain's quiet period;
//! 2. stats: the request is counted in (direct or proxied) *before* the breaker, so
//!    requests waiting in the queue count as concurrency, and out when its body ends;
//! 3. timeouts: the total, response-start and idle timers cover the breaker wait too;
//! 4. breaker: `containerConcurrency` slots, 10×CC queued, 503 past that (probes skip it);
//! 5. reverse proxy: Knative's header rules, then the app over a pooled connection,
//!    HTTP/2 when the request came as HTTP/2, a tunnel when it asks for an upgrade.

use std::convert::Infallible;
use std::sync::Arc;

use http::header::HeaderValue;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use sluice_core::forward::{self as headers, Found, is_upgrade};
use sluice_core::headers as kh;
use sluice_core::respond;
use sluice_core::serve::{ExchangeDeadline, splice};
use sluice_core::upstream::{self, UpstreamError};
use tokio::time::Instant;

use crate::State;
use crate::guard::RequestGuard;

type ProxyBody = sluice_core::proxy_body::ProxyBody<RequestGuard>;

/// Why a request got no answer from the app. Mapped to a response in one place.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("pending request queue full")]
    QueueFull,
    #[error("request timeout")]
    Timeout,
    #[error("error reaching the app: {0}")]
    Upstream(#[from] UpstreamError),
}

// === impl ProxyError ===

impl ProxyError {
    fn into_response(self) -> Response<ProxyBody> {
        let status = match &self {
            Self::QueueFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Upstream(e) => e.status(),
        };
        respond::text(status, self.to_string())
    }
}

/// One request, from the serving port. `peer_ip` is the connection's peer, rendered once
/// per connection for `X-Forwarded-For`.
pub(crate) async fn handle(
    state: Arc<State>,
    peer_ip: HeaderValue,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let kind = kh::classify(req.headers());
    if kind.health_check {
        // Boxed, like every rare path: the common request future stays small.
        return Ok(Box::pin(health(&state, req.headers())).await);
    }
    if kind.network_probe {
        return Ok(network_probe(&state, req.headers()));
    }
    state.drainer.touch();
    if let Err(why) = headers::check_host(&req) {
        return Ok(respond::text(StatusCode::BAD_REQUEST, why));
    }
    Ok(proxy(state, peer_ip, req, kind).await)
}

/// Knative's health handler: only `K-Network-Probe: queue` is a question it answers.
async fn health(state: &Arc<State>, headers: &HeaderMap) -> Response<ProxyBody> {
    if state.drainer.is_draining() {
        return respond::text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    match headers.get(kh::PROBE) {
        Some(v) if v.as_bytes() == kh::QUEUE.as_bytes() => {}
        other => {
            let value = other.map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            return respond::text(
                StatusCode::BAD_REQUEST,
                format!(
                    "unexpected probe header value: {}",
                    value.unwrap_or_default()
                ),
            );
        }
    }
    if state.prober.probe().await {
        respond::text(StatusCode::OK, kh::QUEUE)
    } else {
        respond::empty(StatusCode::SERVICE_UNAVAILABLE)
    }
}

/// The ingress's reachability probe: echoes `K-Network-Hash`.
fn network_probe(state: &State, headers: &HeaderMap) -> Response<ProxyBody> {
    if state.drainer.is_draining() {
        return respond::text(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
    }
    respond::network_probe(headers)
}

async fn proxy(
    state: Arc<State>,
    peer_ip: HeaderValue,
    mut req: Request<Incoming>,
    kind: kh::RequestKind,
) -> Response<ProxyBody> {
    // Kubelet probes sent with K-Kubelet-Probe go to the app untouched by stats or breaker.
    let probe = kind.kubelet_probe;
    let mut guard = RequestGuard::enter(Arc::clone(&state), !probe, kind.proxied);
    let start = guard.start();
    let mut found = Found::scan(req.headers());
    headers::rewrite_original_host(&mut req, &mut found);
    let upgrade = is_upgrade(&req, found);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));

    // The timers cover the wait for a slot as well as the app's first byte.
    let timeouts = state.timeouts;
    let sent = tokio::time::timeout_at(
        timeouts.first_byte_deadline(start),
        send(&state, &mut guard, req, found, &peer_ip, upgrade, probe),
    )
    .await
    .unwrap_or(Err(ProxyError::Timeout));

    let mut rsp = match sent {
        Ok(rsp) => rsp,
        Err(error) => {
            match &error {
                ProxyError::Upstream(e) if e.is_client_body() => {
                    tracing::debug!(error = %e, "client's request body failed");
                }
                ProxyError::Upstream(e) => tracing::warn!(error = %e, "app unreachable"),
                _ => {}
            }
            let rsp = error.into_response();
            guard.status = rsp.status().as_u16();
            if guard.permit.is_none() && state.breaker.is_some() && !probe {
                guard.app_start = None; // never reached the app
            }
            return rsp;
        }
    };
    guard.status = rsp.status().as_u16();

    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) = (rsp.status(), client_upgrade) {
        let app = hyper::upgrade::on(&mut rsp);
        tunnel(&state, guard, client, app, start + timeouts.total);
        let (parts, _) = rsp.into_parts();
        return Response::from_parts(parts, ProxyBody::empty());
    }
    headers::remove_hop_by_hop(rsp.headers_mut());
    // The body's own timer ends a response that streams too long; a client that stopped
    // reading is cut by its connection at the same deadline.
    rsp.extensions_mut()
        .insert(ExchangeDeadline(start + timeouts.total));
    let (parts, body) = rsp.into_parts();
    Response::from_parts(
        parts,
        ProxyBody::timed(body, guard, start + timeouts.total, timeouts.idle),
    )
}

/// Takes a slot (unless a probe), applies the header rules and sends the request to the
/// app. What it holds (slot, pooled connection) goes into `guard`.
async fn send(
    state: &State,
    guard: &mut RequestGuard,
    mut req: Request<Incoming>,
    found: Found,
    peer_ip: &HeaderValue,
    upgrade: bool,
    probe: bool,
) -> Result<Response<Incoming>, ProxyError> {
    guard.app_start = Some(guard.start());
    if let Some(breaker) = state.breaker.as_ref().filter(|_| !probe) {
        // A free slot is taken without the waiting machinery (and without reading the
        // clock again); the queue only forms when all slots are busy.
        guard.permit = match breaker.reserve() {
            Some(permit) => Some(permit),
            None => {
                let permit = breaker.acquire().await.map_err(|_| ProxyError::QueueFull)?;
                guard.app_start = Some(Instant::now());
                Some(permit)
            }
        };
    }
    if found.needs_forwarded_shim() {
        headers::forwarded_shim(req.headers_mut());
    }
    headers::prepare_request(&mut req, found, peer_ip, &state.default_host, upgrade);
    let req = req.map(upstream::body_of);
    if upgrade {
        Ok(Box::pin(state.upstream.send_upgrade(req))
            .await
            .map_err(UpstreamError::from)?)
    } else if req.version() == Version::HTTP_2 {
        Ok(Box::pin(state.upstream.send_http2(req))
            .await
            .map_err(UpstreamError::from)?)
    } else {
        let (rsp, lease) = state
            .upstream
            .send_http1(req)
            .await
            .map_err(UpstreamError::from)?;
        guard.lease = Some(lease);
        Ok(rsp)
    }
}

/// Splices an upgraded connection to the app's, holding the request's slot and count for
/// the tunnel's whole life, and cutting it at the revision timeout as Knative does.
fn tunnel(
    state: &Arc<State>,
    guard: RequestGuard,
    client: hyper::upgrade::OnUpgrade,
    app: hyper::upgrade::OnUpgrade,
    deadline: Instant,
) {
    let tracked = state.upgrades.track();
    tokio::spawn(async move {
        let _held = (guard, tracked);
        match tokio::time::timeout_at(deadline, splice(client, app)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "upgraded connection ended with error"),
            Err(_) => tracing::debug!("upgraded connection cut at the revision timeout"),
        }
    });
}
