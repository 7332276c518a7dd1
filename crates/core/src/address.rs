//! Addresses: in flags and environment variables, and the URL a service is served at.

/// A gRPC peer: `http://host:port`, or `host:port` (the scheme is added). `None` for
/// anything else, which the caller reports.
pub fn grpc(value: &str) -> Option<http::Uri> {
    let value = value.trim();
    let with_scheme = if value.contains("://") {
        value.to_owned()
    } else {
        format!("http://{value}")
    };
    match with_scheme.parse::<http::Uri>() {
        Ok(uri) if uri.scheme_str() == Some("http") && uri.authority().is_some() => Some(uri),
        _ => None,
    }
}

/// [`grpc`] for a flag: an empty or absent value is `None`; a bad one is added to `bad`.
pub fn grpc_flag(flag: &str, value: Option<&str>, bad: &mut Vec<String>) -> Option<http::Uri> {
    let value = value.filter(|v| !v.trim().is_empty())?;
    let uri = grpc(value);
    if uri.is_none() {
        bad.push(format!("--{flag}={value:?}: expected http://host:port"));
    }
    uri
}

/// The URL of a service under `domain`: `http://{name}.{namespace}.{domain}`.
pub fn service_url(domain: &str, namespace: &str, name: &str) -> String {
    format!("http://{name}.{namespace}.{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheme_is_added_and_only_http_is_taken() {
        assert_eq!(
            grpc("127.0.0.1:9").map(|u| u.to_string()),
            Some("http://127.0.0.1:9/".into())
        );
        assert!(grpc("http://autoscaler:8080").is_some());
        for bad in ["https://x:1", "http://[::1", "http://", ""] {
            assert!(grpc(bad).is_none(), "{bad}");
        }
        let mut bad = Vec::new();
        assert!(grpc_flag("control", Some(""), &mut bad).is_none());
        assert!(grpc_flag("control", None, &mut bad).is_none());
        assert!(bad.is_empty());
        assert!(grpc_flag("control", Some("https://x:1"), &mut bad).is_none());
        assert_eq!(
            bad,
            ["--control=\"https://x:1\": expected http://host:port"]
        );
    }
}
