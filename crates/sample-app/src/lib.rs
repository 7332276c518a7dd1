//! The demo container behind a queue-proxy: Knative's `helloworld-go` (`Hello {TARGET}!`)
//! and `autoscale-go` (`?sleep=MS&prime=N&bloat=MB`) in one app, plus a few endpoints that
//! let tests see the request path from the app's side.
//!
//! | path | answer |
//! |---|---|
//! | `/` | `Hello {TARGET}!`, or autoscale-go's report when `sleep`, `prime` or `bloat` is given |
//! | `/stats` | JSON: requests in flight now, the most ever in flight at once, requests and connections seen |
//! | `/stats/reset` | zeroes the maximum and the count |
//! | `/echo` | streams the request body back |
//! | `/stream?mb=N` | streams N MiB |
//! | `/drip?chunks=N&interval=MS` | N small chunks, MS apart |
//! | `/headers` | the request line and headers as the app saw them |
//! | `/status/CODE` | an empty answer with that status |

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use sluice_core::GuardedBody;
use tokio::net::TcpListener;
use tokio::time::Instant;

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_TARGET: &str = "World";
const CHUNK: usize = 64 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "sample-app",
    version,
    about = "Sluice's demo app (Knative helloworld-go + autoscale-go)"
)]
pub struct Args {
    /// Port to listen on.
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Who to greet.
    #[arg(long, env = "TARGET", default_value = DEFAULT_TARGET)]
    pub target: String,
    /// Address to listen on.
    #[arg(long, env = "SAMPLE_APP_BIND", default_value = "0.0.0.0")]
    pub bind: std::net::IpAddr,
}

/// What the app has seen.
#[derive(Debug, Default)]
pub struct AppStats {
    connections: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
    requests: AtomicU64,
}

#[derive(Debug)]
struct InFlight(Arc<AppStats>);

type AppBody = BoxBody<Bytes, hyper::Error>;

// === impl AppStats ===

impl AppStats {
    fn enter(self: &Arc<Self>) -> InFlight {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    fn json(&self) -> String {
        format!(
            "{{\"in_flight\":{},\"max_in_flight\":{},\"requests\":{},\"connections\":{}}}\n",
            self.in_flight.load(Ordering::Acquire),
            self.max_in_flight.load(Ordering::Acquire),
            self.requests.load(Ordering::Acquire),
            self.connections.load(Ordering::Acquire)
        )
    }

    fn reset(&self) {
        self.max_in_flight.store(0, Ordering::Release);
        self.requests.store(0, Ordering::Release);
        self.connections.store(0, Ordering::Release);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves on `listener` until `shutdown` resolves.
pub async fn serve(listener: TcpListener, target: String, shutdown: impl Future<Output = ()>) {
    let target: Arc<str> = Arc::from(target);
    let stats = Arc::new(AppStats::default());
    sluice_core::serve::serve(
        "sample-app",
        listener,
        move |_peer: SocketAddr| {
            stats.connections.fetch_add(1, Ordering::Relaxed);
            let (target, stats) = (Arc::clone(&target), Arc::clone(&stats));
            service_fn(move |req| handle(Arc::clone(&target), Arc::clone(&stats), req))
        },
        shutdown,
        sluice_core::serve::Serving::new(Duration::from_secs(10)),
    )
    .await;
}

async fn handle(
    target: Arc<str>,
    stats: Arc<AppStats>,
    req: Request<Incoming>,
) -> Result<Response<AppBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if path == "/stats" {
        return Ok(text(StatusCode::OK, stats.json()));
    }
    if path == "/stats/reset" {
        stats.reset();
        return Ok(text(StatusCode::OK, "reset\n"));
    }
    let in_flight = stats.enter();
    let query = parse_query(req.uri().query());
    let rsp = match (req.method(), path.as_str()) {
        (_, "/echo") => Response::new(req.into_body().boxed()),
        (_, "/stream") => stream_mib(num(&query, "mb").unwrap_or(1)),
        (_, "/drip") => drip(
            num(&query, "chunks").unwrap_or(5),
            num(&query, "interval").unwrap_or(100),
        ),
        (_, "/headers") => text(StatusCode::OK, describe(&req)),
        (_, p) if p.starts_with("/status/") => {
            let code = p["/status/".len()..]
                .parse()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok());
            text(code.unwrap_or(StatusCode::BAD_REQUEST), "")
        }
        (&Method::GET | &Method::HEAD | &Method::POST, "/") => root(&target, &query).await,
        _ => text(StatusCode::NOT_FOUND, format!("no such path: {path}\n")),
    };
    // The request counts as in flight until its response body ends.
    let (parts, body) = rsp.into_parts();
    Ok(Response::from_parts(
        parts,
        GuardedBody::new(body, in_flight).boxed(),
    ))
}

/// helloworld-go, or autoscale-go when asked to sleep, compute or allocate.
async fn root(target: &str, query: &HashMap<String, String>) -> Response<AppBody> {
    let (sleep, prime, bloat) = (
        num(query, "sleep"),
        num(query, "prime"),
        num(query, "bloat"),
    );
    if sleep.is_none() && prime.is_none() && bloat.is_none() {
        return text(StatusCode::OK, format!("Hello {target}!\n"));
    }
    let mut out = String::new();
    if let Some(ms) = sleep {
        let start = Instant::now();
        tokio::time::sleep(Duration::from_millis(ms)).await;
        out.push_str(&format!(
            "Slept for {:.2} milliseconds.\n",
            start.elapsed().as_secs_f64() * 1000.0
        ));
    }
    if let Some(n) = prime {
        match largest_prime_below(n) {
            Some(p) => out.push_str(&format!("The largest prime less than {n} is {p}.\n")),
            None => out.push_str(&format!("There are no primes smaller than {n}.\n")),
        }
    }
    if let Some(mb) = bloat {
        let mb = mb.min(1024);
        let mut v = vec![0u8; usize::try_from(mb).unwrap_or(0) * 1024 * 1024];
        // Touch every page so the memory is really allocated.
        for i in (0..v.len()).step_by(4096) {
            v[i] = 1;
        }
        out.push_str(&format!("Allocated {mb} Mb of memory.\n"));
        drop(std::hint::black_box(v));
    }
    text(StatusCode::OK, out)
}

/// Sieve of Eratosthenes, as autoscale-go computes it.
pub fn largest_prime_below(n: u64) -> Option<u64> {
    let n = usize::try_from(n.min(100_000_000)).ok()?;
    if n <= 2 {
        return None;
    }
    let mut composite = vec![false; n];
    let mut i = 2;
    while i * i < n {
        if !composite[i] {
            let mut j = i * i;
            while j < n {
                composite[j] = true;
                j += i;
            }
        }
        i += 1;
    }
    (2..n).rev().find(|&k| !composite[k]).map(|k| k as u64)
}

fn stream_mib(mb: u64) -> Response<AppBody> {
    let chunks = mb.saturating_mul((1024 * 1024 / CHUNK) as u64);
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, hyper::Error>(Frame::data(chunk.clone()))),
    );
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

fn drip(chunks: u64, interval_ms: u64) -> Response<AppBody> {
    let stream = futures_util::stream::iter(0..chunks).then(move |i| async move {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        }
        Ok::<_, hyper::Error>(Frame::data(Bytes::from(format!("chunk {i}\n"))))
    });
    Response::new(BodyExt::boxed(StreamBody::new(stream)))
}

fn describe<B>(req: &Request<B>) -> String {
    let mut out = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
    for (name, value) in req.headers() {
        out.push_str(&format!(
            "{}: {}\n",
            name,
            String::from_utf8_lossy(value.as_bytes())
        ));
    }
    out
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<AppBody> {
    let mut rsp = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *rsp.status_mut() = status;
    rsp
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (!k.is_empty()).then(|| (k.to_owned(), v.to_owned()))
        })
        .collect()
}

fn num(query: &HashMap<String, String>, key: &str) -> Option<u64> {
    query.get(key).and_then(|v| v.parse().ok())
}

/// The sample-app process (the `sample-app` binary, `sluice sample-app`).
pub fn main(args: Args) -> std::process::ExitCode {
    use sluice_core::process::Exit;
    sluice_core::telemetry::init("warn");
    sluice_core::process::run("sample-app", None, async move {
        let addr = std::net::SocketAddr::new(args.bind, args.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|error| Exit::new(1, format!("cannot listen on {addr}: {error}")))?;
        eprintln!("sample-app listening on {addr}");
        serve(listener, args.target, async {
            sluice_core::shutdown::signal().await;
        })
        .await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primes_match_autoscale_go() {
        assert_eq!(largest_prime_below(10_000), Some(9973));
        assert_eq!(largest_prime_below(3), Some(2));
        assert_eq!(largest_prime_below(2), None);
        assert_eq!(largest_prime_below(0), None);
    }

    #[test]
    fn query_parsing_ignores_junk() {
        let q = parse_query(Some("sleep=100&prime=x&&bloat"));
        assert_eq!(num(&q, "sleep"), Some(100));
        assert_eq!(num(&q, "prime"), None);
        assert_eq!(num(&q, "bloat"), None);
        assert!(parse_query(None).is_empty());
    }

    #[test]
    fn stats_track_the_maximum_until_reset() {
        let stats = Arc::new(AppStats::default());
        let a = stats.enter();
        let b = stats.enter();
        drop(a);
        assert!(
            stats
                .json()
                .contains("\"in_flight\":1,\"max_in_flight\":2,\"requests\":2"),
            "{}",
            stats.json()
        );
        drop(b);
        stats.reset();
        assert!(
            stats
                .json()
                .contains("\"in_flight\":0,\"max_in_flight\":0,\"requests\":0")
        );
    }
}
