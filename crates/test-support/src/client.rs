//! Small HTTP clients for tests: HTTP/1.1 with keep-alive, h2c prior knowledge.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

pub fn h2c() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub async fn send(client: &HttpClient, req: Request<Full<Bytes>>) -> Result<Reply, String> {
    let rsp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let (parts, body) = rsp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("{e:?}"))?
        .to_bytes();
    Ok(Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    })
}

/// `GET url` with extra headers, on a fresh HTTP/1.1 client.
pub async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&http1(), req.body(Full::default()).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

pub async fn get(url: &str) -> Reply {
    get_with(url, &[]).await
}

/// The sample app's view: (in flight now, most at once, requests seen).
pub async fn app_stats(app: SocketAddr) -> (u64, u64, u64) {
    let v = app_stats_json(app).await;
    let n = |k: &str| v[k].as_u64().expect("a number");
    (n("in_flight"), n("max_in_flight"), n("requests"))
}

/// Connections the sample app has accepted (its own `/stats` call included).
pub async fn app_connections(app: SocketAddr) -> u64 {
    app_stats_json(app).await["connections"]
        .as_u64()
        .expect("a number")
}

async fn app_stats_json(app: SocketAddr) -> serde_json::Value {
    let reply = get(&format!("http://{app}/stats")).await;
    serde_json::from_slice(&reply.body).expect("stats JSON")
}

pub async fn reset_app_stats(app: SocketAddr) {
    get(&format!("http://{app}/stats/reset")).await;
}

/// `GET url`, returning the response with its body still streaming.
pub async fn http1_streaming(url: &str) -> http::Response<hyper::body::Incoming> {
    http1()
        .request(Request::get(url).body(Full::default()).expect("request"))
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e:?}"))
}

/// A client whose request bodies are streams, for uploads that are never held whole.
pub fn streaming_client<B>() -> Client<HttpConnector, B>
where
    B: hyper::body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    Client::builder(TokioExecutor::new()).build_http()
}

/// Reads a body to its end, counting bytes without keeping them.
pub async fn count_body<B>(mut body: B) -> u64
where
    B: hyper::body::Body + Unpin,
    B::Error: std::fmt::Debug,
    B::Data: bytes::Buf,
{
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        n += frame
            .expect("body frame")
            .into_data()
            .map_or(0, |d| bytes::Buf::remaining(&d) as u64);
    }
    n
}

/// `mib` MiB generated one MiB at a time: an upload that is never held whole.
pub fn generated_body(
    mib: usize,
) -> http_body_util::StreamBody<
    impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, std::io::Error>>
    + Unpin
    + Send
    + 'static,
> {
    let chunk = Bytes::from(vec![b'u'; 1 << 20]);
    http_body_util::StreamBody::new(futures_util::stream::iter(
        (0..mib).map(move |_| Ok(hyper::body::Frame::data(chunk.clone()))),
    ))
}
