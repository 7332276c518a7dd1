//! The API server's RBAC authorizer, over the double's own `Role`, `ClusterRole`,
//! `RoleBinding` and `ClusterRoleBinding` objects: a request is allowed when a rule bound to
//! its service account names its API group, resource (`services/status` for a
//! subresource), verb and, where the rule lists `resourceNames`, its object's name
//! (Kubernetes' `pkg/registry/rbac/validation` and `plugin/pkg/auth/authorizer/rbac`). A
//! `ClusterRole` bound by a `ClusterRoleBinding` holds everywhere; a role bound by a
//! `RoleBinding` only in that binding's namespace. Aggregated ClusterRoles and
//! non-resource URLs are not read (Sluice's manifests have neither).

use std::collections::BTreeMap;

use serde_json::Value;

use super::KINDS;

/// A service account: `system:serviceaccount:NAMESPACE:NAME`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Account {
    pub(super) namespace: String,
    pub(super) name: String,
}

/// What a request asks to do, as the API server's request-info resolver reads it.
#[derive(Debug)]
pub(super) struct Attributes {
    pub(super) verb: &'static str,
    pub(super) group: String,
    /// `plural`, or `plural/subresource`.
    pub(super) resource: String,
    pub(super) namespace: Option<String>,
    /// The object's (for a list or watch: a `metadata.name=` field selector's).
    pub(super) name: Option<String>,
}

impl Attributes {
    /// The API server's own words for a refusal.
    pub(super) fn forbidden(&self, who: &Account) -> String {
        let plural = self.resource.split('/').next().unwrap_or_default();
        let qualified = if self.group.is_empty() {
            plural.to_owned()
        } else {
            format!("{plural}.{}", self.group)
        };
        let object = match &self.name {
            Some(n) => format!("{qualified} {n:?}"),
            None => qualified,
        };
        let scope = match &self.namespace {
            Some(ns) => format!("in the namespace {ns:?}"),
            None => "at the cluster scope".to_owned(),
        };
        format!(
            "{object} is forbidden: User \"system:serviceaccount:{}:{}\" cannot {} resource {:?} in API group {:?} {scope}",
            who.namespace, who.name, self.verb, self.resource, self.group
        )
    }
}

/// Whether `who` may do `what`, by the RBAC objects in `objects` (the double's store:
/// (kind index, namespace, name) → object).
pub(super) fn allows(
    objects: &BTreeMap<(usize, String, String), Value>,
    who: &Account,
    what: &Attributes,
) -> bool {
    let of_kind = |plural: &str| {
        let kind = KINDS
            .iter()
            .position(|k| k.group == "rbac.authorization.k8s.io" && k.plural == plural);
        objects
            .iter()
            .filter(move |((k, _, _), _)| Some(*k) == kind)
            .map(|((_, ns, name), v)| (ns.as_str(), name.as_str(), v))
    };
    let role = |kind: &str, namespace: &str, name: &str| -> Vec<Value> {
        let (plural, ns) = match kind {
            "ClusterRole" => ("clusterroles", ""),
            "Role" => ("roles", namespace),
            _ => return Vec::new(),
        };
        of_kind(plural)
            .find(|(n, m, _)| *n == ns && *m == name)
            .and_then(|(_, _, v)| v["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    let bound = |binding: &Value| {
        binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount"
                    && s["name"] == who.name
                    && s["namespace"] == who.namespace
            })
    };
    let cluster_wide = of_kind("clusterrolebindings")
        .filter(|(_, _, b)| bound(b))
        .flat_map(|(_, _, b)| {
            if b["roleRef"]["kind"] == "ClusterRole" {
                role(
                    "ClusterRole",
                    "",
                    b["roleRef"]["name"].as_str().unwrap_or_default(),
                )
            } else {
                Vec::new()
            }
        });
    let in_namespace = what.namespace.iter().flat_map(|ns| {
        of_kind("rolebindings")
            .filter(move |(bns, _, b)| bns == ns && bound(b))
            .flat_map(move |(_, _, b)| {
                role(
                    b["roleRef"]["kind"].as_str().unwrap_or_default(),
                    ns,
                    b["roleRef"]["name"].as_str().unwrap_or_default(),
                )
            })
    });
    cluster_wide
        .chain(in_namespace)
        .any(|rule| rule_allows(&rule, what))
}

fn rule_allows(rule: &Value, what: &Attributes) -> bool {
    let has = |field: &str, want: &str| {
        rule[field]
            .as_array()
            .into_iter()
            .flatten()
            .any(|v| v == "*" || v == want)
    };
    let names = rule["resourceNames"].as_array().filter(|n| !n.is_empty());
    has("apiGroups", &what.group)
        && has("resources", &what.resource)
        && has("verbs", what.verb)
        && names.is_none_or(|names| {
            // A create has no name yet, so a rule limited to names never allows one.
            what.name
                .as_ref()
                .is_some_and(|n| names.iter().any(|v| v == n.as_str()))
        })
}
