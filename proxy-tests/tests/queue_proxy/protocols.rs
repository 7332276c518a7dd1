//! HTTP/2 (h2c), gRPC, websockets and large streamed bodies through the queue-proxy.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;
use sluice_test_support::client::{self, h2c, http1};
use sluice_test_support::grpc::{EchoClient, pb::EchoRequest};
use sluice_test_support::{queue_proxy_args, start_pod, start_queue_proxy};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn h2c_in_means_http2_to_the_app() {
    let (_app, qp) = start_pod(2, &[]).await;
    let req = Request::get(qp.url("/headers"))
        .body(Full::default())
        .unwrap();
    let reply = client::send(&h2c(), req).await.unwrap();
    assert_eq!(reply.status, 200);
    let text = reply.text();
    assert!(text.lines().next().unwrap().ends_with("HTTP/2.0"), "{text}");
    let req = Request::get(qp.url("/headers"))
        .body(Full::default())
        .unwrap();
    let text = client::send(&http1(), req).await.unwrap().text();
    assert!(text.lines().next().unwrap().ends_with("HTTP/1.1"), "{text}");
}

#[tokio::test]
async fn grpc_unary_and_server_stream() {
    let echo = sluice_test_support::grpc::start_echo().await;
    let qp = start_queue_proxy(queue_proxy_args(echo.addr.port(), 10, &[])).await;
    let mut client = EchoClient::connect(qp.url("")).await.unwrap();
    let reply = client
        .unary(EchoRequest {
            message: "hello".into(),
            count: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "hello");
    let mut stream = client
        .server_stream(EchoRequest {
            message: "tick".into(),
            count: 100,
        })
        .await
        .unwrap()
        .into_inner();
    let mut indexes = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        assert_eq!(msg.message, "tick");
        indexes.push(msg.index);
    }
    assert_eq!(indexes, (0..100).collect::<Vec<_>>());
}

#[tokio::test]
async fn websocket_echo_holds_a_slot_while_open() {
    let ws_app = sluice_test_support::websocket::start_echo().await;
    let qp = start_queue_proxy(queue_proxy_args(ws_app.addr.port(), 1, &[])).await;
    let stream = tokio::net::TcpStream::connect(qp.serving).await.unwrap();
    let (mut ws, rsp) = tokio_tungstenite::client_async(format!("ws://{}/ws", qp.serving), stream)
        .await
        .unwrap();
    assert_eq!(rsp.status(), 101);
    for i in 0..3 {
        ws.send(Message::text(format!("msg {i}"))).await.unwrap();
        let echoed = ws.next().await.unwrap().unwrap();
        assert_eq!(echoed.into_text().unwrap().as_str(), format!("msg {i}"));
    }
    // The one slot (CC=1) is held by the open websocket: the next request queues.
    let url = qp.url("/");
    let queued = tokio::spawn(async move { client::get(&url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !queued.is_finished(),
        "a request waits while the websocket holds the slot"
    );
    ws.close(None).await.unwrap();
    drop(ws);
    let reply = tokio::time::timeout(Duration::from_secs(5), queued)
        .await
        .expect("released")
        .unwrap();
    // It got the slot and reached the app, which speaks only websocket and drops a plain
    // GET: the queue-proxy's 502, not the queue's 503.
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply.text().starts_with("error reaching the app"),
        "{}",
        reply.text()
    );
}

const HUNDRED_MB: u64 = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_each_way() {
    let (_app, qp) = start_pod(2, &[]).await;
    // Download: counted as it streams, never collected whole.
    let rsp = client::http1_streaming(&qp.url("/stream?mb=100")).await;
    assert_eq!(rsp.status(), 200);
    assert_eq!(client::count_body(rsp.into_body()).await, HUNDRED_MB);

    // Upload: 100 MiB generated chunk by chunk, echoed back by the app.
    let req = Request::post(qp.url("/echo"))
        .body(client::generated_body(100))
        .unwrap();
    let rsp = client::streaming_client().request(req).await.unwrap();
    assert_eq!(rsp.status(), 200);
    assert_eq!(client::count_body(rsp.into_body()).await, HUNDRED_MB);
}
