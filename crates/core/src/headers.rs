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
/// Sluice's own hop header: the HTTP version the client spoke, on a request the gateway
/// carries to the activator over a shared HTTP/2 connection. The activator restores that
/// version and removes the header, so the app sees what the client sent.
pub const CLIENT_VERSION: HeaderName = HeaderName::from_static("sluice-client-version");

/// `K-Proxy-Request` value set by the activator.
pub const ACTIVATOR: &str = "activator";
/// `K-Network-Probe` value for probes the queue-proxy answers.
pub const QUEUE: &str = "queue";
/// `K-Network-Probe` value for the ingress's network probes.
pub const NETWORK_PROBE: &str = "probe";

pub const KUBE_PROBE_UA_PREFIX: &str = "kube-probe/";
pub const ACTIVATOR_UA: &str = "Knative-Activator-Probe";
pub const AUTOSCALING_UA: &str = "Knative-Autoscaling-Probe";

/// What the request path needs to know about a request's Knative headers, found in one
/// pass over the header names (a handful per request) instead of a hash lookup per question.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestKind {
    /// Kubelet, activator or autoscaler probe User-Agent: the drainer answers it.
    pub health_check: bool,
    /// `K-Network-Probe: probe`.
    pub network_probe: bool,
    /// networking's `IsKubeletProbe`: kubelet UA or any `K-Kubelet-Probe` header. Such
    /// requests skip stats and the breaker.
    pub kubelet_probe: bool,
    /// Any `K-Network-Probe` value or a kubelet probe: left out of request metrics.
    pub any_probe: bool,
    /// `K-Proxy-Request: activator`.
    pub proxied: bool,
}

pub fn classify(headers: &HeaderMap) -> RequestKind {
    let mut kind = RequestKind::default();
    for (name, value) in headers {
        let v = value.as_bytes();
        if *name == USER_AGENT {
            let kube = v.starts_with(KUBE_PROBE_UA_PREFIX.as_bytes());
            kind.kubelet_probe |= kube;
            kind.health_check |= kube
                || v.starts_with(ACTIVATOR_UA.as_bytes())
                || v.starts_with(AUTOSCALING_UA.as_bytes());
            continue;
        }
        match name.as_str() {
            "k-network-probe" => {
                kind.any_probe = true;
                kind.network_probe |= v == NETWORK_PROBE.as_bytes();
            }
            "k-kubelet-probe" => kind.kubelet_probe = true,
            "k-proxy-request" => kind.proxied |= v == ACTIVATOR.as_bytes(),
            _ => {}
        }
    }
    kind.any_probe |= kind.kubelet_probe;
    kind
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
        for ua in [
            "kube-probe/1.29",
            "Knative-Activator-Probe",
            "Knative-Autoscaling-Probe",
        ] {
            assert!(classify(&with(USER_AGENT, ua)).health_check, "{ua}");
        }
        assert!(!classify(&with(USER_AGENT, "curl/8")).health_check);
        assert!(
            !classify(&with(KUBELET_PROBE, "queue")).health_check,
            "header alone is not a health check"
        );
        assert!(!classify(&HeaderMap::new()).health_check);
    }

    #[test]
    fn kubelet_probe_accepts_the_header_too() {
        assert!(classify(&with(KUBELET_PROBE, "")).kubelet_probe);
        assert!(classify(&with(USER_AGENT, "kube-probe//")).kubelet_probe);
        assert!(!classify(&with(USER_AGENT, "kube-prob")).kubelet_probe);
    }

    #[test]
    fn network_probe_and_proxied_match_exact_values() {
        assert!(classify(&with(PROBE, "probe")).network_probe);
        let queue = classify(&with(PROBE, "queue"));
        assert!(!queue.network_probe && queue.any_probe);
        assert!(classify(&with(PROXY, "activator")).proxied);
        assert!(!classify(&with(PROXY, "Activator ")).proxied);
    }

    #[test]
    fn classify_finds_everything_in_one_pass() {
        let mut h = with(USER_AGENT, "kube-probe/1.30");
        h.insert(PROXY, HeaderValue::from_static("activator"));
        h.insert(PROBE, HeaderValue::from_static("queue"));
        assert_eq!(
            classify(&h),
            RequestKind {
                health_check: true,
                network_probe: false,
                kubelet_probe: true,
                any_probe: true,
                proxied: true,
            }
        );
        assert_eq!(classify(&HeaderMap::new()), RequestKind::default());
    }
}
