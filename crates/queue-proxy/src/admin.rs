//! The queue-proxy's side ports: admin (`/wait-for-drain`, the preStop hook), autoscaling
//! metrics (Knative's protobuf `Stat`, or Prometheus text to a text scraper) and request
//! metrics (Prometheus text).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use prost::Message;
use sluice_core::drain::DrainOutcome;
use sluice_core::metrics::{TEXT_CONTENT_TYPE, encode_text, wants_text};
use sluice_core::respond;

use crate::State;

type Rsp = Response<Full<Bytes>>;

/// How long after a `/wait-for-drain` the queue-proxy expects its own SIGTERM; without
/// one, the hook came from a restart of the app container alone and the drain is undone.
const SIGTERM_EXPECTED_WITHIN: Duration = Duration::from_secs(1);

/// Admin port (8022).
pub(crate) async fn admin<B>(state: Arc<State>, req: Request<B>) -> Result<Rsp, Infallible> {
    Ok(match req.uri().path() {
        "/wait-for-drain" => {
            if !state.sigterm.load(Ordering::Acquire) {
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    tokio::time::sleep(SIGTERM_EXPECTED_WITHIN).await;
                    if !state.sigterm.load(Ordering::Acquire) {
                        state.drainer.reset();
                    }
                });
            }
            match state.drainer.drain().await {
                DrainOutcome::Drained => respond::text(StatusCode::OK, "drained"),
                DrainOutcome::Reset => respond::text(StatusCode::OK, "drain reset"),
            }
        }
        _ => respond::text(
            StatusCode::NOT_FOUND,
            "not found: the admin port serves /wait-for-drain",
        ),
    })
}

/// Autoscaling metrics port (9090): `/metrics`.
pub(crate) async fn autoscaling_metrics<B>(
    state: Arc<State>,
    req: Request<B>,
) -> Result<Rsp, Infallible> {
    if let Some(not_found) = only_metrics(&req) {
        return Ok(not_found);
    }
    let stat = state.latest_stat.load();
    if wants_text(req.headers().get(ACCEPT).map(HeaderValue::as_bytes)) {
        return Ok(text_response(stat_text(&state, &stat)));
    }
    let mut rsp = Response::new(Full::new(Bytes::from(stat.encode_to_vec())));
    rsp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/protobuf"),
    );
    Ok(rsp)
}

/// Request metrics port (9091): `/metrics`.
pub(crate) async fn request_metrics<B>(
    state: Arc<State>,
    req: Request<B>,
) -> Result<Rsp, Infallible> {
    if let Some(not_found) = only_metrics(&req) {
        return Ok(not_found);
    }
    let m = &state.metrics;
    let in_flight = state.stats.lock().concurrency();
    m.in_flight.set(i64::from(in_flight));
    let depth = state.breaker.as_ref().map_or(0, |b| b.in_flight());
    m.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    Ok(text_response(encode_text(m.registry())))
}

/// The metrics ports serve `/metrics` and nothing else.
fn only_metrics<B>(req: &Request<B>) -> Option<Rsp> {
    (req.uri().path() != "/metrics")
        .then(|| respond::text(StatusCode::NOT_FOUND, "not found: try /metrics"))
}

fn text_response(body: Vec<u8>) -> Rsp {
    let mut rsp = Response::new(Full::new(Bytes::from(body)));
    rsp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(TEXT_CONTENT_TYPE));
    rsp
}

/// The autoscaling stat as the Prometheus gauges Knative served before v1.6.
fn stat_text(state: &State, stat: &sluice_proto::Stat) -> Vec<u8> {
    let id = &state.identity;
    let labels = format!(
        "destination_namespace=\"{}\",destination_configuration=\"{}\",destination_revision=\"{}\",destination_pod=\"{}\"",
        escape(&id.namespace),
        escape(&id.configuration),
        escape(&id.revision),
        escape(&id.pod)
    );
    let gauges = [
        (
            "queue_requests_per_second",
            "Number of requests received since last Stat",
            stat.request_count,
        ),
        (
            "queue_proxied_operations_per_second",
            "Number of proxied requests received since last Stat",
            stat.proxied_request_count,
        ),
        (
            "queue_average_concurrent_requests",
            "Number of requests currently being handled by this pod",
            stat.average_concurrent_requests,
        ),
        (
            "queue_average_proxied_concurrent_requests",
            "Number of proxied requests currently being handled by this pod",
            stat.average_proxied_concurrent_requests,
        ),
        (
            "process_uptime",
            "The number of seconds that the process has been up",
            stat.process_uptime,
        ),
    ];
    let mut out = String::with_capacity(1024);
    for (name, help, value) in gauges {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}\n"
        ));
    }
    out.into_bytes()
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
