//! Short plain-text responses: the one shape every error takes on its way to a client.

use bytes::Bytes;
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

const TEXT_PLAIN: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

/// A response with `body` as plain text.
pub fn text<B: From<Bytes>>(status: StatusCode, body: impl Into<Bytes>) -> Response<B> {
    let body = body.into();
    let mut rsp = Response::new(B::from(body.clone()));
    *rsp.status_mut() = status;
    rsp.headers_mut().insert(CONTENT_TYPE, TEXT_PLAIN);
    rsp.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    rsp
}

/// The answer to the ingress's network probe (`K-Network-Probe: probe`): 200 echoing
/// `K-Network-Hash`, or 400 without one.
pub fn network_probe<B: From<Bytes>>(headers: &http::HeaderMap) -> Response<B> {
    match headers.get(crate::headers::HASH) {
        None => text(StatusCode::BAD_REQUEST, "no K-Network-Hash header"),
        Some(hash) => {
            let mut rsp = empty(StatusCode::OK);
            rsp.headers_mut().insert(crate::headers::HASH, hash.clone());
            rsp
        }
    }
}

/// A response with no body.
pub fn empty<B: From<Bytes>>(status: StatusCode) -> Response<B> {
    let mut rsp = Response::new(B::from(Bytes::new()));
    *rsp.status_mut() = status;
    rsp
}

#[cfg(test)]
mod tests {
    use http_body_util::{BodyExt, Full};

    use super::*;

    #[tokio::test]
    async fn text_sets_status_type_length_and_body() {
        let rsp: Response<Full<Bytes>> = text(StatusCode::SERVICE_UNAVAILABLE, "queue full");
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()[CONTENT_LENGTH], "10");
        assert!(
            rsp.headers()[CONTENT_TYPE]
                .to_str()
                .is_ok_and(|t| t.starts_with("text/plain"))
        );
        let body = rsp
            .into_body()
            .collect()
            .await
            .expect("full body")
            .to_bytes();
        assert_eq!(body, "queue full");
    }
}
