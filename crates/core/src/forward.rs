//! Knative's header rules for a request on its way to the next hop (§1.3, §1.10, §2.11):
//! the forwarded shim, `K-Original-Host` in both directions, Knative's routing headers
//! removed, hop-by-hop headers removed, the peer appended to `X-Forwarded-For`. Upgrade
//! headers survive on upgrade requests. The queue-proxy and the activator share them.

use crate::headers as kh;
use http::header::{
    CONNECTION, HOST, HeaderMap, HeaderName, HeaderValue, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};
use http::uri::{Authority, Scheme, Uri};
use http::{Request, Version};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY_AUTHENTICATE: HeaderName = HeaderName::from_static("proxy-authenticate");
const PROXY_AUTHORIZATION: HeaderName = HeaderName::from_static("proxy-authorization");

/// Which of the headers the rules care about a message carries, found in one pass over
/// its names: most requests carry none of them, and then no rule costs a hash lookup.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Found(u32);

impl Found {
    const HOP_BY_HOP: u32 = 1 << 0;
    const CONNECTION: u32 = 1 << 1;
    const UPGRADE: u32 = 1 << 2;
    const KNATIVE_ROUTING: u32 = 1 << 3;
    const X_FORWARDED: u32 = 1 << 4;
    const X_FORWARDED_FOR: u32 = 1 << 5;
    const FORWARDED: u32 = 1 << 6;
    const ORIGINAL_HOST: u32 = 1 << 7;
    const HOST: u32 = 1 << 8;

    pub fn scan(headers: &HeaderMap) -> Self {
        let mut found = 0;
        for name in headers.keys() {
            found |= match name.as_str() {
                "connection" => Self::CONNECTION | Self::HOP_BY_HOP,
                "upgrade" => Self::UPGRADE | Self::HOP_BY_HOP,
                "keep-alive"
                | "proxy-connection"
                | "proxy-authenticate"
                | "proxy-authorization"
                | "te"
                | "trailer"
                | "transfer-encoding" => Self::HOP_BY_HOP,
                "knative-serving-revision" | "knative-serving-namespace" => Self::KNATIVE_ROUTING,
                "x-forwarded-for" => Self::X_FORWARDED_FOR | Self::X_FORWARDED,
                "x-forwarded-host" | "x-forwarded-proto" => Self::X_FORWARDED,
                "forwarded" => Self::FORWARDED,
                "k-original-host" => Self::ORIGINAL_HOST,
                "host" => Self::HOST,
                _ => 0,
            };
        }
        Self(found)
    }

    fn has(self, flag: u32) -> bool {
        self.0 & flag != 0
    }

    /// `X-Forwarded-*` present and `Forwarded` absent: [`forwarded_shim`] has work to do.
    pub fn needs_forwarded_shim(self) -> bool {
        self.has(Self::X_FORWARDED) && !self.has(Self::FORWARDED)
    }
}

/// RFC 9112 §3.2: an HTTP/1.1 request must carry exactly one `Host` (repeated only with
/// the same value), unless its target is in absolute form, whose authority wins. `Err` is
/// the 400's body.
pub fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    if req.version() >= Version::HTTP_2 || req.uri().authority().is_some() {
        return Ok(());
    }
    let mut hosts = req.headers().get_all(HOST).iter();
    match hosts.next() {
        None if req.version() == Version::HTTP_11 => Err("an HTTP/1.1 request needs a Host header"),
        None => Ok(()),
        Some(first) if hosts.all(|h| h == first) => Ok(()),
        Some(_) => Err("more than one Host header, with different values"),
    }
}

/// Whether the request asks to switch protocols (HTTP/1.1 `Connection: upgrade`).
pub fn is_upgrade<B>(req: &Request<B>, found: Found) -> bool {
    req.version() == Version::HTTP_11
        && found.has(Found::UPGRADE)
        && has_token(req.headers(), CONNECTION, "upgrade")
}

/// Knative's `RewriteHostOut`: `K-Original-Host` becomes the Host the app sees.
pub fn rewrite_original_host<B>(req: &mut Request<B>, found: &mut Found) {
    if !found.has(Found::ORIGINAL_HOST) {
        return;
    }
    found.0 = (found.0 & !Found::ORIGINAL_HOST) | Found::HOST;
    if let Some(host) = req.headers_mut().remove(kh::ORIGINAL_HOST) {
        if req.version() >= Version::HTTP_2 {
            if let Ok(authority) = Authority::try_from(host.as_bytes()) {
                let mut parts = req.uri().clone().into_parts();
                parts.authority = Some(authority);
                parts.scheme.get_or_insert(Scheme::HTTP);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
            req.headers_mut().remove(HOST);
        } else {
            req.headers_mut().insert(HOST, host);
        }
    }
}

/// The activator's `RewriteHostIn`: the Host the client asked for moves into
/// `K-Original-Host` (unless an earlier hop put one there), and the request is addressed
/// to `dest`, the pod. `prepare_request` then sets `Host: dest` on HTTP/1.1.
pub fn rewrite_host_in<B>(req: &mut Request<B>, found: &mut Found, dest: &Authority) {
    let host = if found.has(Found::HOST) {
        req.headers_mut().remove(HOST)
    } else {
        None
    };
    found.0 &= !Found::HOST;
    let original = host.or_else(|| {
        req.uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    if let Some(original) = original
        && !found.has(Found::ORIGINAL_HOST)
    {
        req.headers_mut().insert(kh::ORIGINAL_HOST, original);
        found.0 |= Found::ORIGINAL_HOST;
    }
    if req.uri().authority().is_some() {
        let mut parts = req.uri().clone().into_parts();
        parts.authority = Some(dest.clone());
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

/// Everything the reverse proxy changes before the request leaves for the app.
pub fn prepare_request<B>(
    req: &mut Request<B>,
    found: Found,
    peer_ip: &HeaderValue,
    default_host: &HeaderValue,
    upgrade: bool,
) {
    let headers = req.headers_mut();
    if found.has(Found::KNATIVE_ROUTING) {
        headers.remove(kh::REVISION);
        headers.remove(kh::NAMESPACE);
    }
    if found.has(Found::HOP_BY_HOP) {
        let upgrade_to = if upgrade {
            headers.get(UPGRADE).cloned()
        } else {
            None
        };
        remove_hop_by_hop_present(headers);
        if let Some(proto) = upgrade_to {
            headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
            headers.insert(UPGRADE, proto);
        }
    }
    if found.has(Found::X_FORWARDED_FOR) {
        append_forwarded_for(headers, peer_ip);
    } else {
        headers.insert(kh::X_FORWARDED_FOR, peer_ip.clone());
    }

    if req.version() >= Version::HTTP_2 {
        // h2 upstream: the URI keeps the original authority (it becomes :authority);
        // the connection itself goes to the app's port.
        if req.uri().scheme().is_none() {
            let mut parts = req.uri().clone().into_parts();
            parts.scheme = Some(Scheme::HTTP);
            if parts.authority.is_none() {
                parts.authority = Authority::try_from(default_host.as_bytes()).ok();
            }
            if parts.path_and_query.is_none() {
                parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
            }
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
    } else {
        // h1 upstream: origin-form target; the Host header carries the authority.
        let mut has_host = found.has(Found::HOST);
        if req.uri().authority().is_some() {
            // An absolute-form target's authority wins over any Host (RFC 9112 §3.2.2).
            if let Some(a) = req
                .uri()
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                req.headers_mut().insert(HOST, a);
                has_host = true;
            }
            let pq = req.uri().path_and_query().cloned();
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = pq.or(Some(http::uri::PathAndQuery::from_static("/")));
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        if !has_host {
            req.headers_mut().insert(HOST, default_host.clone());
        }
        *req.version_mut() = Version::HTTP_11;
    }
}

/// Hop-by-hop headers are for one connection only; the app's response loses them too
/// (except on a 101, where they carry the protocol switch).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    if Found::scan(headers).has(Found::HOP_BY_HOP) {
        remove_hop_by_hop_present(headers);
    }
}

fn remove_hop_by_hop_present(headers: &mut HeaderMap) {
    if let Some(conn) = headers.remove(CONNECTION)
        && let Ok(list) = conn.to_str()
    {
        for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if let Ok(name) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(name);
            }
        }
    }
    // `TE: trailers` is end-to-end in practice: gRPC requires it.
    let te_trailers = has_token(headers, TE, "trailers");
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        PROXY_AUTHENTICATE,
        PROXY_AUTHORIZATION,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        UPGRADE,
    ] {
        headers.remove(name);
    }
    if te_trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
}

fn append_forwarded_for(headers: &mut HeaderMap, peer_ip: &HeaderValue) {
    let prior: Vec<&[u8]> = headers
        .get_all(kh::X_FORWARDED_FOR)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect();
    if prior.is_empty() {
        headers.insert(kh::X_FORWARDED_FOR, peer_ip.clone());
        return;
    }
    let mut joined = prior.join(&b", "[..]);
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(peer_ip.as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(kh::X_FORWARDED_FOR, v);
    }
}

/// Builds `Forwarded` from the `X-Forwarded-*` headers when it is absent (only the
/// queue-proxy does, as Knative's), before this hop is appended to `X-Forwarded-For`.
pub fn forwarded_shim(headers: &mut HeaderMap) {
    if headers.contains_key(kh::FORWARDED) {
        return;
    }
    let get = |name: HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (xff, xfh, xfp) = (
        get(kh::X_FORWARDED_FOR),
        get(kh::X_FORWARDED_HOST),
        get(kh::X_FORWARDED_PROTO),
    );
    if xff.is_empty() && xfh.is_empty() && xfp.is_empty() {
        return;
    }
    let mut fwd = String::new();
    if xff.is_empty() {
        if !xfh.is_empty() {
            fwd.push_str("host=");
            fwd.push_str(xfh);
        }
        if !xfp.is_empty() {
            if !fwd.is_empty() {
                fwd.push(';');
            }
            fwd.push_str("proto=");
            fwd.push_str(xfp);
        }
    } else {
        for (i, node) in xff.split(',').map(str::trim).enumerate() {
            if i > 0 {
                fwd.push_str(", ");
            }
            fwd.push_str("for=");
            if node.contains(':') {
                fwd.push_str("\"[");
                fwd.push_str(node);
                fwd.push_str("]\"");
            } else {
                fwd.push_str(node);
            }
            if i == 0 {
                if !xfh.is_empty() {
                    fwd.push_str(";host=");
                    fwd.push_str(xfh);
                }
                if !xfp.is_empty() {
                    fwd.push_str(";proto=");
                    fwd.push_str(xfp);
                }
            }
        }
    }
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        headers.insert(kh::FORWARDED, v);
    }
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

#[cfg(test)]
mod tests;
