//! The gateway's request path:
//!
//! 1. probes: `K-Network-Probe` and kubelet probes are answered here;
//! 2. host: `Host` (or the h2 authority), port dropped, to a service's route; an unknown
//!    host gets 404 with the known hosts;
//! 3. split: the route picks a revision by weight;
//! 4. stats: a revision scaled on the gateway's view counts the request in (and a request
//!    for one at zero pokes the autoscaler);
//! 5. backend: in serve mode the ready pod with the fewest requests in flight; in proxy
//!    mode, or with no ready pod, or when a pod refuses the connection before the request
//!    left, the activator, told the revision in `Knative-Serving-Namespace` /
//!    `Knative-Serving-Revision`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;

use http::header::{HOST, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use sluice_core::forward::{self, Found, is_upgrade};
use sluice_core::headers as kh;
use sluice_core::serve::{ExchangeDeadline, splice};
use sluice_core::upstream::{
    self, Lease, MuxStream, SendError, Upstream, UpstreamBody, UpstreamError,
};
use sluice_core::{BodyGuard, ReqEvent, respond};
use sluice_proto::v1::Source;
use tokio::time::Instant;

use crate::State;
use crate::routes::{Mode, PodSlot, Rev};

/// The gateway's response body: its guard held until the upstream body ends.
pub type ProxyBody = sluice_core::ProxyBody<RequestGuard>;

/// How often a revision at zero may be poked.
const POKE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything one request holds until its response ends.
#[derive(Debug)]
pub struct RequestGuard {
    rev: Arc<Rev>,
    start: Instant,
    /// The answer's status; 0 until there is one.
    status: u16,
    counted: bool,
    /// Declared before `pod`: the pooled connection goes back before the slot.
    lease: Option<Lease>,
    /// A stream on a shared connection to the activator.
    stream: Option<MuxStream>,
    pod: Option<PodSlot>,
    clean: bool,
}

/// One request from the serving port.
pub(crate) async fn handle(
    state: Arc<State>,
    peer_ip: HeaderValue,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let headers = req.headers();
    if headers
        .get(kh::PROBE)
        .is_some_and(|v| v.as_bytes() == kh::NETWORK_PROBE.as_bytes())
    {
        return Ok(respond::network_probe(headers));
    }
    if kh::classify(headers).kubelet_probe {
        return Ok(match state.unready() {
            Some(why) => respond::text(StatusCode::SERVICE_UNAVAILABLE, why),
            None => respond::text(StatusCode::OK, "gateway"),
        });
    }
    state.drainer.touch();
    if let Err(why) = forward::check_host(&req) {
        return Ok(respond::text(StatusCode::BAD_REQUEST, why));
    }
    let Some(host) = host_of(&req) else {
        return Ok(unknown_host(&state, "(none)"));
    };
    let Some(route) = state.routes.lookup(&host) else {
        return Ok(unknown_host(&state, &host));
    };
    let Some(rev) = route.pick().cloned() else {
        return Ok(respond::text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{host} has no revision with a share of its traffic"),
        ));
    };
    drop(route);
    let start = Instant::now();
    let mut guard = RequestGuard::enter(&state, rev, start);
    let found = Found::scan(req.headers());
    let upgrade = is_upgrade(&req, found);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let req = req.map(upstream::body_of);
    let mut rsp = match send(&state, &mut guard, req, found, &peer_ip, upgrade).await {
        Ok(rsp) => rsp,
        Err(error) => {
            let rsp = error.into_response();
            guard.status = rsp.status().as_u16();
            return Ok(rsp);
        }
    };
    guard.status = rsp.status().as_u16();
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(client)) = (rsp.status(), client_upgrade) {
        let upstream = hyper::upgrade::on(&mut rsp);
        let tracked = state.upgrades.track();
        tokio::spawn(async move {
            let _held = (guard, tracked);
            if let Err(error) = splice(client, upstream).await {
                tracing::debug!(%error, "upgraded connection ended with error");
            }
        });
        let (parts, _) = rsp.into_parts();
        return Ok(Response::from_parts(parts, ProxyBody::empty()));
    }
    forward::remove_hop_by_hop(rsp.headers_mut());
    if let Some(timeout) = guard.rev.backends().timeout {
        rsp.extensions_mut()
            .insert(ExchangeDeadline(start + timeout));
    }
    let (parts, body) = rsp.into_parts();
    Ok(Response::from_parts(
        parts,
        ProxyBody::upstream(body, guard),
    ))
}

/// The request's host, lower-cased and without a port (borrowed when it already is).
fn host_of<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    // An absolute-form target's (or h2's) authority wins over `Host`.
    let raw = match req.uri().authority() {
        Some(a) => a.as_str(),
        None => req.headers().get(HOST)?.to_str().ok()?,
    };
    let host = if raw.starts_with('[') {
        raw.find(']').map_or(raw, |end| &raw[..=end])
    } else {
        raw.split_once(':').map_or(raw, |(h, _)| h)
    };
    Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    })
}

fn unknown_host(state: &State, host: &str) -> Response<ProxyBody> {
    let hosts = state.routes.hosts();
    let known = if hosts.is_empty() {
        "none: no service is running".to_owned()
    } else {
        hosts.join("\n  ")
    };
    respond::text(
        StatusCode::NOT_FOUND,
        format!("no service for host {host}; known hosts:\n  {known}\n"),
    )
}

/// Why a request got no answer; mapped to a response in one place.
#[derive(Debug, thiserror::Error)]
enum GatewayError {
    #[error("revision {0} has no ready pod and this gateway has no activator to hold the request")]
    NoBackend(String),
    #[error("error reaching revision {0}: {1}")]
    Upstream(String, UpstreamError),
}

// === impl GatewayError ===

impl GatewayError {
    fn into_response(self) -> Response<ProxyBody> {
        let status = match &self {
            // No pod and nowhere to hold the request: unavailable, not a bad gateway.
            Self::NoBackend(_) => StatusCode::SERVICE_UNAVAILABLE,
            // The mapping every proxy shares: 400 for the client's own body, else 502.
            Self::Upstream(_, e) => {
                let status = e.status();
                if status == StatusCode::BAD_REQUEST {
                    tracing::debug!(error = %self, "client's request body failed");
                } else {
                    tracing::warn!(error = %self, "no answer");
                }
                status
            }
        };
        respond::text(status, self.to_string())
    }
}

/// Picks the backend and sends. A request that a pod never received goes to the
/// activator instead.
async fn send(
    state: &State,
    guard: &mut RequestGuard,
    mut req: Request<UpstreamBody>,
    found: Found,
    peer_ip: &HeaderValue,
    upgrade: bool,
) -> Result<Response<Incoming>, GatewayError> {
    let rev = Arc::clone(&guard.rev);
    let name = || format!("{}/{}", rev.namespace, rev.name);
    let backends = rev.backends();
    let pod = match backends.mode {
        Mode::Serve => backends.pick(),
        Mode::Proxy | Mode::Unspecified => None,
    };
    drop(backends);
    if let Some(pod) = pod {
        let upstream = Arc::clone(&pod.0.upstream);
        forward::prepare_request(&mut req, found, peer_ip, &pod.0.host, upgrade);
        guard.pod = Some(pod);
        match upstream.send(req, upgrade).await {
            Ok((rsp, lease)) => {
                guard.lease = lease;
                return Ok(rsp);
            }
            Err(SendError {
                error,
                request: Some(unsent),
            }) => {
                tracing::debug!(pod = %upstream.addr(), %error, "pod unreachable; sending to the activator");
                guard.pod = None;
                req = unsent;
            }
            Err(SendError { error, .. }) => return Err(GatewayError::Upstream(name(), error)),
        }
    } else {
        let host = state
            .activator
            .as_ref()
            .map_or_else(|| HeaderValue::from_static("activator"), |a| a.1.clone());
        forward::prepare_request(&mut req, found, peer_ip, &host, upgrade);
    }
    let Some((activator, _)) = &state.activator else {
        return Err(GatewayError::NoBackend(name()));
    };
    let headers = req.headers_mut();
    headers.insert(kh::NAMESPACE, rev.namespace_header.clone());
    headers.insert(kh::REVISION, rev.name_header.clone());
    if activator.is_multiplexed() && !upgrade {
        // Boxed: the standalone gateway's path, kept out of the in-process one's future.
        return Box::pin(send_multiplexed(activator, guard, req))
            .await
            .map_err(|e| GatewayError::Upstream(name(), e));
    }
    match activator.send(req, upgrade).await {
        Ok((rsp, lease)) => {
            guard.lease = lease;
            Ok(rsp)
        }
        Err(e) => Err(GatewayError::Upstream(name(), e.error)),
    }
}

/// To an activator in another process, over its shared HTTP/2 connections: an HTTP/1.x
/// request travels in HTTP/2 form and says which version it was (`Sluice-Client-Version`),
/// which the activator restores, so a held request costs no socket of its own.
async fn send_multiplexed(
    activator: &Upstream,
    guard: &mut RequestGuard,
    mut req: Request<UpstreamBody>,
) -> Result<Response<Incoming>, UpstreamError> {
    let version = req.version();
    if version < Version::HTTP_2 {
        let client = if version == Version::HTTP_10 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        let authority = req
            .headers_mut()
            .remove(HOST)
            .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            .unwrap_or_else(|| Authority::from_static("activator"));
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(authority);
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
        *req.version_mut() = Version::HTTP_2;
        req.headers_mut()
            .insert(kh::CLIENT_VERSION, HeaderValue::from_static(client));
    }
    let (rsp, stream) = activator.send_multiplexed(req).await.map_err(|e| e.error)?;
    guard.stream = Some(stream);
    Ok(rsp)
}

// === impl RequestGuard ===

impl RequestGuard {
    fn enter(state: &State, rev: Arc<Rev>, now: Instant) -> Self {
        let counted = rev.reports();
        if counted {
            rev.stats.lock().handle(ReqEvent::In, now);
            if !rev.backends().mode.is_serve() {
                poke(state, &rev, now);
            }
        }
        rev.metrics.in_flight.inc();
        Self {
            rev,
            start: now,
            status: 0,
            counted,
            lease: None,
            stream: None,
            pod: None,
            clean: false,
        }
    }
}

/// Tells the autoscaler at once that a revision it scales on the gateway's view has a
/// request while it is at zero (at most once a second).
fn poke(state: &State, rev: &Rev, now: Instant) {
    let Some(pusher) = &state.pusher else { return };
    {
        let mut poked = rev.poked.lock();
        if poked.is_some_and(|at| now.saturating_duration_since(at) < POKE_EVERY) {
            return;
        }
        *poked = Some(now);
    }
    pusher.poke(Source::Gateway, &state.pod_name, &rev.namespace, &rev.name);
}

impl BodyGuard for RequestGuard {
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
        self.pod = None;
        if self.counted {
            self.rev.stats.lock().handle(ReqEvent::Out, now);
        }
        self.rev.metrics.in_flight.dec();
        // 499 (nginx's "client closed request") for a request dropped before any answer.
        let status = if self.status == 0 { 499 } else { self.status };
        self.rev
            .metrics
            .record(status, now.saturating_duration_since(self.start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host: &str) -> Request<()> {
        Request::builder()
            .header(HOST, host)
            .body(())
            .expect("request")
    }

    #[test]
    fn host_drops_the_port_and_case() {
        assert_eq!(
            host_of(&req("Hello.Default.Example.com:8080")).as_deref(),
            Some("hello.default.example.com")
        );
        assert_eq!(
            host_of(&req("hello.default.example.com")).as_deref(),
            Some("hello.default.example.com")
        );
        assert_eq!(host_of(&req("[::1]:80")).as_deref(), Some("[::1]"));
        assert_eq!(host_of(&req("[::1]")).as_deref(), Some("[::1]"));
        let h2 = Request::builder()
            .uri("http://h2.default.example.com:81/")
            .body(())
            .expect("request");
        assert_eq!(host_of(&h2).as_deref(), Some("h2.default.example.com"));
    }
}
