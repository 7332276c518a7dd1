//! Knative's header and User-Agent vocabulary (`networking/pkg/http/header`), and the
//! classifications every component makes from it.

use http::HeaderMap;
use http::header::{HeaderName, USER_AGENT};

pub const PROBE: HeaderName = HeaderName::from_static("k-network-probe");
pub const HASH: HeaderName = HeaderName::from_static("k-network-hash");
pub const KUBELET_PROBE: HeaderName = HeaderName::from_static("k-kubelet-probe");
pub const PROXY: HeaderName = HeaderName::from_static("k-proxy-request");
pub const ORIGINAL_HOST: HeaderName = HeaderName::from_static("k-original-host");
pub const REVISION: HeaderName = HeaderName::from_static("knative-serving-revision");
pub const NAMESPACE: HeaderName = HeaderName::from_static("knative-serving-namespace");
pub const ROUTE_TAG: HeaderName = HeaderName::from_static("knative-serving-tag");
pub const DEFAULT_ROUTE: HeaderName = HeaderName::from_static("knative-serving-default-route");
pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `K-Proxy-Request` value set by the activator.
pub const ACTIVATOR: &str = "activator";
/// `K-Network-Probe` value for probes the queue-proxy answers.
pub const QUEUE: &str = "queue";
/// `K-Network-Probe` value for the ingress's network probes.
pub const NETWORK_PROBE: &str = "probe";

pub const KUBE_PROBE_UA_PREFIX: &str = "kube-probe/";
pub const ACTIVATOR_UA: &str = "Knative-Activator-Probe";
pub const AUTOSCALING_UA: &str = "Knative-Autoscaling-Probe";

fn user_agent(headers: &HeaderMap) -> &[u8] {
    headers.get(USER_AGENT).map_or(&[], |v| v.as_bytes())
}

/// A health check the drainer answers itself (kubelet, activator or autoscaler probe UA).
pub fn is_health_check(headers: &HeaderMap) -> bool {
    let ua = user_agent(headers);
    ua.starts_with(KUBE_PROBE_UA_PREFIX.as_bytes())
        || ua.starts_with(ACTIVATOR_UA.as_bytes())
        || ua.starts_with(AUTOSCALING_UA.as_bytes())
}

/// networking's `IsKubeletProbe`: the kubelet UA or any `K-Kubelet-Probe` header. Such
/// requests skip stats and the breaker.
pub fn is_kubelet_probe(headers: &HeaderMap) -> bool {
    user_agent(headers).starts_with(KUBE_PROBE_UA_PREFIX.as_bytes())
        || headers.contains_key(KUBELET_PROBE)
}

/// `K-Network-Probe: probe`, the ingress's reachability probe.
pub fn is_network_probe(headers: &HeaderMap) -> bool {
    headers
        .get(PROBE)
        .is_some_and(|v| v.as_bytes() == NETWORK_PROBE.as_bytes())
}

/// Any `K-Network-Probe` value or a kubelet probe: left out of request metrics.
pub fn is_any_probe(headers: &HeaderMap) -> bool {
    headers.contains_key(PROBE) || is_kubelet_probe(headers)
}

/// `K-Proxy-Request: activator`.
pub fn is_proxied(headers: &HeaderMap) -> bool {
    headers
        .get(PROXY)
        .is_some_and(|v| v.as_bytes() == ACTIVATOR.as_bytes())
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn with(name: HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn health_checks_are_known_user_agents() {
        assert!(is_health_check(&with(USER_AGENT, "kube-probe/1.29")));
        assert!(is_health_check(&with(
            USER_AGENT,
            "Knative-Activator-Probe"
        )));
        assert!(is_health_check(&with(
            USER_AGENT,
            "Knative-Autoscaling-Probe"
        )));
        assert!(!is_health_check(&with(USER_AGENT, "curl/8")));
        assert!(
            !is_health_check(&with(KUBELET_PROBE, "queue")),
            "header alone is not a health check"
        );
        assert!(!is_health_check(&HeaderMap::new()));
    }

    #[test]
    fn kubelet_probe_accepts_the_header_too() {
        assert!(is_kubelet_probe(&with(KUBELET_PROBE, "")));
        assert!(is_kubelet_probe(&with(USER_AGENT, "kube-probe//")));
        assert!(!is_kubelet_probe(&with(USER_AGENT, "kube-prob")));
    }

    #[test]
    fn network_probe_and_proxied_match_exact_values() {
        assert!(is_network_probe(&with(PROBE, "probe")));
        assert!(!is_network_probe(&with(PROBE, "queue")));
        assert!(is_any_probe(&with(PROBE, "queue")));
        assert!(is_proxied(&with(PROXY, "activator")));
        assert!(!is_proxied(&with(PROXY, "Activator ")));
    }
}
