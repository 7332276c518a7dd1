//! The app container's readiness, probed as Knative's queue-proxy does (§1.5): the
//! reconciler hands the user's probe over in `SERVING_READINESS_PROBE` and the
//! queue-proxy runs it when the kubelet (or activator) asks whether the pod is ready.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use parking_lot::Mutex;
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Aggressive probing (period 0): the longest pause between attempts (Knative's interval;
/// the first pauses are 1, 2, 4 … ms, so an app that starts in a few milliseconds is seen
/// within a millisecond or two), each attempt's bound, and for how long.
pub const AGGRESSIVE_INTERVAL: Duration = Duration::from_millis(50);
pub const AGGRESSIVE_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(100);
pub const AGGRESSIVE_POLL_TIMEOUT: Duration = Duration::from_secs(10);
/// What the queue-proxy sends as its User-Agent: Knative leaves major/minor empty.
const PROBE_USER_AGENT: &str = "kube-probe//";

/// One resolved readiness check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSpec {
    pub action: ProbeAction,
    /// 0: aggressive mode.
    pub period: Duration,
    /// Per attempt in normal mode.
    pub timeout: Duration,
    pub success_threshold: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProbeAction {
    Tcp(SocketAddr),
    Http {
        addr: SocketAddr,
        path: String,
        headers: Vec<(String, String)>,
    },
    Grpc {
        addr: SocketAddr,
        service: String,
    },
}

/// Why `SERVING_READINESS_PROBE` was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProbeParseError {
    #[error("not valid probe JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("{0}")]
    Unsupported(String),
}

// Kubernetes' corev1.Probe, the fields the queue-proxy uses.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ProbeJson {
    tcp_socket: Option<TcpJson>,
    http_get: Option<HttpJson>,
    grpc: Option<GrpcJson>,
    exec: Option<serde_json::Value>,
    #[serde(default)]
    timeout_seconds: u32,
    #[serde(default)]
    period_seconds: u32,
    #[serde(default)]
    success_threshold: u32,
}

#[derive(Debug, Deserialize)]
struct TcpJson {
    host: Option<String>,
    port: PortJson,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HttpJson {
    host: Option<String>,
    port: PortJson,
    path: Option<String>,
    scheme: Option<String>,
    #[serde(default)]
    http_headers: Vec<HeaderJson>,
}

#[derive(Debug, Deserialize)]
struct GrpcJson {
    port: u16,
    service: Option<String>,
}

#[derive(Debug, Deserialize)]
struct HeaderJson {
    name: String,
    value: String,
}

/// Kubernetes' IntOrString; a named port cannot be resolved here.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PortJson {
    Number(u16),
    Name(String),
}

/// Parses `SERVING_READINESS_PROBE`: one probe object, or with multi-container probing
/// an array of them.
pub fn parse(json: &str, multi: bool) -> Result<Vec<ProbeSpec>, ProbeParseError> {
    let probes: Vec<ProbeJson> = if multi {
        serde_json::from_str(json)?
    } else {
        vec![serde_json::from_str(json)?]
    };
    probes.into_iter().map(resolve).collect()
}

fn resolve(p: ProbeJson) -> Result<ProbeSpec, ProbeParseError> {
    let unsupported = |m: &str| ProbeParseError::Unsupported(m.to_owned());
    let addr = |host: Option<String>, port: PortJson| -> Result<SocketAddr, ProbeParseError> {
        let port = match port {
            PortJson::Number(n) => n,
            PortJson::Name(s) => s.parse().map_err(|_| {
                ProbeParseError::Unsupported(format!(
                    "named port {s:?} must be resolved to a number"
                ))
            })?,
        };
        let host = host
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let ip = host.parse().map_err(|_| {
            ProbeParseError::Unsupported(format!("probe host {host:?} must be an IP address"))
        })?;
        Ok(SocketAddr::new(ip, port))
    };
    let action = match (p.tcp_socket, p.http_get, p.grpc, p.exec) {
        (Some(t), None, None, None) => ProbeAction::Tcp(addr(t.host, t.port)?),
        (None, Some(h), None, None) => {
            if h.scheme
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case("http"))
            {
                return Err(unsupported("only HTTP probes are supported, not HTTPS"));
            }
            let path = h
                .path
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "/".to_owned());
            let path = if path.starts_with('/') {
                path
            } else {
                format!("/{path}")
            };
            ProbeAction::Http {
                addr: addr(h.host, h.port)?,
                path,
                headers: h
                    .http_headers
                    .into_iter()
                    .map(|h| (h.name, h.value))
                    .collect(),
            }
        }
        (None, None, Some(g), None) => ProbeAction::Grpc {
            addr: SocketAddr::from(([127, 0, 0, 1], g.port)),
            service: g.service.unwrap_or_default(),
        },
        (None, None, None, Some(_)) => {
            return Err(unsupported(
                "exec probes are run by the kubelet, not the queue-proxy",
            ));
        }
        (None, None, None, None) => {
            return Err(unsupported("a probe needs tcpSocket, httpGet or grpc"));
        }
        _ => {
            return Err(unsupported(
                "a probe may have only one of tcpSocket, httpGet, grpc, exec",
            ));
        }
    };
    let period = Duration::from_secs(p.period_seconds.into());
    Ok(ProbeSpec {
        action,
        period,
        timeout: Duration::from_secs(p.timeout_seconds.max(1).into()),
        success_threshold: p.success_threshold.max(1),
    })
}

/// Runs the probes. Concurrent callers share one probe run and its result.
#[derive(Debug)]
pub struct Prober {
    probes: Vec<(ProbeSpec, AtomicU32)>,
    in_flight: Mutex<Option<Shared<BoxFuture<'static, bool>>>>,
}

// === impl Prober ===

impl Prober {
    pub fn new(probes: Vec<ProbeSpec>) -> Arc<Self> {
        Arc::new(Self {
            probes: probes.into_iter().map(|p| (p, AtomicU32::new(0))).collect(),
            in_flight: Mutex::new(None),
        })
    }

    /// Whether the app is ready. No probes configured: always ready (as Knative).
    pub async fn probe(self: &Arc<Self>) -> bool {
        if self.probes.is_empty() {
            return true;
        }
        let run = {
            let mut slot = self.in_flight.lock();
            match &*slot {
                Some(run) => run.clone(),
                None => {
                    let me = Arc::clone(self);
                    let run = async move {
                        let ready = futures_util::future::join_all(
                            (0..me.probes.len()).map(|i| me.run_one(i)),
                        )
                        .await
                        .into_iter()
                        .all(|ok| ok);
                        *me.in_flight.lock() = None;
                        ready
                    }
                    .boxed()
                    .shared();
                    *slot = Some(run.clone());
                    run
                }
            }
        };
        run.await
    }

    async fn run_one(&self, i: usize) -> bool {
        let (spec, successes) = &self.probes[i];
        let threshold = spec.success_threshold;
        if !spec.period.is_zero() {
            let ok = attempt(&spec.action, spec.timeout).await.is_ok();
            return record(successes, ok) >= threshold;
        }
        // Aggressive mode: poll until enough consecutive successes or the poll timeout.
        let give_up = Instant::now() + AGGRESSIVE_POLL_TIMEOUT;
        let mut last_error = None;
        let mut pause = FIRST_PAUSE;
        loop {
            let result = attempt(&spec.action, AGGRESSIVE_ATTEMPT_TIMEOUT).await;
            let ok = result.is_ok();
            if let Err(e) = result {
                last_error = Some(e);
            }
            if record(successes, ok) >= threshold {
                return true;
            }
            if Instant::now() + pause >= give_up {
                if let Some(error) = last_error {
                    tracing::warn!(%error, probe = ?spec.action, "app not ready after polling");
                }
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = next_pause(pause);
        }
    }
}

const FIRST_PAUSE: Duration = Duration::from_millis(1);

/// Aggressive mode's pauses double from `FIRST_PAUSE` up to `AGGRESSIVE_INTERVAL`.
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(AGGRESSIVE_INTERVAL)
}

/// Consecutive successes after this attempt, kept across calls (as Knative).
fn record(successes: &AtomicU32, ok: bool) -> u32 {
    if ok {
        successes.fetch_add(1, Ordering::AcqRel) + 1
    } else {
        successes.store(0, Ordering::Release);
        0
    }
}

type ProbeError = Box<dyn std::error::Error + Send + Sync>;

async fn attempt(action: &ProbeAction, limit: Duration) -> Result<(), ProbeError> {
    let run = async {
        match action {
            ProbeAction::Tcp(addr) => TcpStream::connect(addr).await.map(drop).map_err(Into::into),
            ProbeAction::Http {
                addr,
                path,
                headers,
            } => http_probe(*addr, path, headers).await,
            ProbeAction::Grpc { addr, service } => grpc_probe(*addr, service).await,
        }
    };
    tokio::time::timeout(limit, run)
        .await
        .map_err(|_| format!("no answer within {limit:?}"))?
}

/// `GET`, keep-alive off, 200–399 passes.
async fn http_probe(
    addr: SocketAddr,
    path: &str,
    headers: &[(String, String)],
) -> Result<(), ProbeError> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::USER_AGENT, PROBE_USER_AGENT)
        .header(http::header::CONNECTION, "close");
    for (name, value) in headers {
        req = req.header(name.as_str(), value.as_str());
    }
    let rsp = send.send_request(req.body(Empty::<Bytes>::new())?).await?;
    let status = rsp.status().as_u16();
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe answered {status}").into())
    }
}

/// `grpc.health.v1.Health/Check`; passes only on SERVING.
async fn grpc_probe(addr: SocketAddr, service: &str) -> Result<(), ProbeError> {
    let io = TokioIo::new(TcpStream::connect(addr).await?);
    let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
    tokio::spawn(conn);
    // HealthCheckRequest { string service = 1; } behind gRPC's 5-byte frame header.
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        msg.push(0x0a);
        encode_varint(service.len() as u64, &mut msg);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(msg.len())?.to_be_bytes());
    frame.extend_from_slice(&msg);
    let uri: Uri = format!("http://{addr}/grpc.health.v1.Health/Check").parse()?;
    let req = Request::post(uri)
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from(frame)))?;
    let rsp = send.send_request(req).await?;
    let status_in_headers = rsp.headers().get("grpc-status").cloned();
    let collected = rsp.into_body().collect().await?;
    let grpc_status = status_in_headers.or_else(|| {
        collected
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
    });
    if grpc_status.as_ref().map(|v| v.as_bytes()) != Some(b"0") {
        return Err(format!("gRPC health check failed with grpc-status {grpc_status:?}").into());
    }
    // HealthCheckResponse { ServingStatus status = 1; } SERVING = 1.
    let body = collected.to_bytes();
    if body.len() >= 7 && body[5] == 0x08 && body[6] == 0x01 {
        Ok(())
    } else {
        Err("gRPC health check: service not SERVING".into())
    }
}

fn encode_varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

#[cfg(test)]
mod tests;
