//! The one question asked of a queue-proxy before traffic goes to its pod (Knative's
//! §2.6): `GET /healthz` with `K-Network-Probe: queue`, answered 200 `queue` when the
//! app is ready. The activator asks it before using a pod; the local supervisor asks it
//! to learn that a pod it started is ready.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HOST, USER_AGENT};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use crate::headers as kh;

/// Whether the queue-proxy at `addr` says its pod is ready, within `timeout`.
pub async fn queue_proxy_ready(addr: SocketAddr, timeout: Duration) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .ok()?;
        tokio::spawn(conn);
        let req = Request::get("/healthz")
            .header(HOST, addr.to_string())
            .header(kh::PROBE, kh::QUEUE)
            .header(USER_AGENT, kh::ACTIVATOR_UA)
            .body(Empty::<Bytes>::new())
            .ok()?;
        let rsp = sender.send_request(req).await.ok()?;
        if rsp.status() != StatusCode::OK {
            return Some(false);
        }
        let body = rsp.into_body().collect().await.ok()?.to_bytes();
        Some(body == kh::QUEUE.as_bytes())
    };
    matches!(tokio::time::timeout(timeout, attempt).await, Ok(Some(true)))
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http::Response;
    use http_body_util::Full;
    use hyper::service::service_fn;

    use super::*;
    use crate::serve::{Serving, serve};

    /// A server that answers every request with `status` and `body`.
    async fn answering(status: StatusCode, body: &'static str) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(
            "probe-test",
            listener,
            move |_| {
                service_fn(move |req: Request<hyper::body::Incoming>| {
                    let asked = req.headers().get(kh::PROBE).is_some_and(|v| v == kh::QUEUE);
                    let mut rsp = Response::new(Full::new(Bytes::from_static(if asked {
                        body.as_bytes()
                    } else {
                        b"not asked"
                    })));
                    *rsp.status_mut() = status;
                    std::future::ready(Ok::<_, Infallible>(rsp))
                })
            },
            std::future::pending(),
            Serving::new(Duration::from_secs(1)),
        ));
        addr
    }

    #[tokio::test]
    async fn ready_only_on_200_queue() {
        let limit = Duration::from_secs(2);
        let ok = answering(StatusCode::OK, "queue").await;
        assert!(queue_proxy_ready(ok, limit).await);
        let other = answering(StatusCode::OK, "something else").await;
        assert!(
            !queue_proxy_ready(other, limit).await,
            "the body must be `queue`"
        );
        let down = answering(StatusCode::SERVICE_UNAVAILABLE, "queue").await;
        assert!(!queue_proxy_ready(down, limit).await);
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        assert!(!queue_proxy_ready(refused, limit).await);
    }
}
