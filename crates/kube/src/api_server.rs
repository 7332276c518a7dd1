//! The "ApiServerVerifier" of kube-rs's controller examples: a [`kube::Client`] whose
//! requests a test receives one at a time, asserts exactly (method, path, query, body) and
//! answers as the API server would.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

/// The test's side of the client.
pub(crate) struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request the client sent.
pub(crate) struct Call {
    pub(crate) query: String,
    pub(crate) content_type: String,
    pub(crate) body: Value,
    send: SendResponse<Response<Body>>,
}

impl ApiServer {
    pub(crate) fn new() -> (Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), Self(handle))
    }

    /// The next request, which must be `method` on `path`.
    pub(crate) async fn expect(&mut self, method: Method, path: &str) -> Call {
        let next = tokio::time::timeout(Duration::from_secs(10), self.0.next_request());
        let (req, send) = next
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .expect("the client is gone");
        let (parts, body) = req.into_parts();
        assert_eq!(
            (&parts.method, parts.uri.path()),
            (&method, path),
            "the request (query {:?})",
            parts.uri.query()
        );
        let bytes = body.collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("a JSON request body")
        };
        Call {
            query: parts.uri.query().unwrap_or_default().to_owned(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            body,
            send,
        }
    }

    /// Asserts that no request comes within `wait` (of the test's clock).
    pub(crate) async fn expect_none(&mut self, wait: Duration) {
        if let Ok(Some((req, _))) = tokio::time::timeout(wait, self.0.next_request()).await {
            panic!("unexpected request {} {}", req.method(), req.uri());
        }
    }
}

impl Call {
    pub(crate) fn respond(self, status: u16, body: &Value) {
        let response = Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Body::from(serde_json::to_vec(body).expect("json")))
            .expect("response");
        self.send.send_response(response);
    }

    /// Answers with the request's own object, as a create or replace does.
    pub(crate) fn echo(self, status: u16) {
        let body = self.body.clone();
        self.respond(status, &body);
    }

    /// Answers with a Kubernetes `Status` failure.
    pub(crate) fn fail(self, code: u16, reason: &str) {
        self.respond(
            code,
            &json!({
                "kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": reason, "code": code,
                "message": format!("{reason} (from the test)")
            }),
        );
    }
}
