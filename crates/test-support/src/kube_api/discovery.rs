//! Discovery as the API server serves it (the legacy, unaggregated form every kubectl
//! falls back to): `/version`, `/api`, `/api/v1`, `/apis` and each group version's
//! resource list, with the subresources, short names and categories kubectl resolves
//! `kubectl get deploy`, `kubectl scale` and `kubectl get all` through. A custom
//! resource is listed once its CustomResourceDefinition is stored, from that definition.

use serde_json::{Value, json};

use super::{KINDS, Kind};

/// What the double says it is: a Kubernetes 1.33 API server.
pub(super) fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-sluice-double",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub(super) fn core_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// The groups and versions served, given the stored CRDs: `(group, version)`, groups in
/// the order first met.
fn group_versions(crds: &[&Value]) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut add = |g: &str, v: &str| {
        if !g.is_empty() && !out.iter().any(|(og, ov)| og == g && ov == v) {
            out.push((g.to_owned(), v.to_owned()));
        }
    };
    for k in KINDS.iter().filter(|k| !k.custom) {
        add(k.group, k.version);
    }
    for crd in crds {
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        for v in served_versions(crd) {
            add(group, v);
        }
    }
    out
}

fn served_versions(crd: &Value) -> impl Iterator<Item = &str> {
    crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| v["name"].as_str())
}

/// `/apis`.
pub(super) fn groups(crds: &[&Value]) -> Value {
    let mut groups: Vec<Value> = Vec::new();
    for (g, v) in group_versions(crds) {
        let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
        match groups.iter_mut().find(|e| e["name"] == g.as_str()) {
            Some(e) => e["versions"].as_array_mut().expect("versions").push(gv),
            None => groups.push(json!({
                "name": g, "versions": [gv.clone()], "preferredVersion": gv,
            })),
        }
    }
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

const VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

fn resource(k: &Kind, short: &[&str], categories: &[&str], singular: &str) -> Vec<Value> {
    let verbs: &[&str] = if k.view_of.is_some() {
        &["get", "list", "watch"]
    } else {
        &VERBS
    };
    let mut out = vec![json!({
        "name": k.plural,
        "singularName": singular,
        "namespaced": k.namespaced,
        "kind": k.kind,
        "verbs": verbs,
        "shortNames": short,
        "categories": categories,
    })];
    if k.status {
        out.push(json!({
            "name": format!("{}/status", k.plural),
            "singularName": "",
            "namespaced": k.namespaced,
            "kind": k.kind,
            "verbs": ["get", "patch", "update"],
        }));
    }
    if k.scale {
        out.push(json!({
            "name": format!("{}/scale", k.plural),
            "singularName": "",
            "namespaced": k.namespaced,
            "group": "autoscaling",
            "version": "v1",
            "kind": "Scale",
            "verbs": ["get", "patch", "update"],
        }));
    }
    out
}

/// `/api/v1` or `/apis/GROUP/VERSION`; `None` for one not served.
pub(super) fn resources(group: &str, version: &str, crds: &[&Value]) -> Option<Value> {
    let mut list = Vec::new();
    for k in KINDS
        .iter()
        .filter(|k| k.group == group && k.version == version)
    {
        if !k.custom {
            let categories: &[&str] = if k.all { &["all"] } else { &[] };
            list.extend(resource(k, k.short, categories, &k.kind.to_lowercase()));
            continue;
        }
        let Some(crd) = crds.iter().find(|c| {
            c["spec"]["group"] == group
                && c["spec"]["names"]["plural"] == k.plural
                && served_versions(c).any(|v| v == version)
        }) else {
            continue;
        };
        let names = &crd["spec"]["names"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let (short, categories) = (strings(&names["shortNames"]), strings(&names["categories"]));
        let short: Vec<&str> = short.iter().map(String::as_str).collect();
        let categories: Vec<&str> = categories.iter().map(String::as_str).collect();
        let singular = names["singular"]
            .as_str()
            .map_or_else(|| k.kind.to_lowercase(), str::to_owned);
        list.extend(resource(k, &short, &categories, &singular));
    }
    if list.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": list,
    }))
}

/// The printer columns a CRD defines for `version`, if it is stored.
pub(super) fn printer_columns<'a>(crds: &[&'a Value], k: &Kind) -> Option<&'a Vec<Value>> {
    let crd = crds
        .iter()
        .find(|c| c["spec"]["group"] == k.group && c["spec"]["names"]["plural"] == k.plural)?;
    crd["spec"]["versions"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == k.version)?["additionalPrinterColumns"]
        .as_array()
}

/// `/openapi/v3`: the group versions served, each at the URL of its document. A
/// document changes with the CRDs stored (its `hash`), as the API server's does.
pub(super) fn openapi_index(crds: &[&Value]) -> Value {
    let hash: String = crds
        .iter()
        .filter_map(|c| c["metadata"]["resourceVersion"].as_str())
        .collect::<Vec<_>>()
        .join(".");
    let mut paths = serde_json::Map::new();
    paths.insert(
        "api/v1".to_owned(),
        json!({"serverRelativeURL": format!("/openapi/v3/api/v1?hash=v{hash}")}),
    );
    for (g, v) in group_versions(crds) {
        paths.insert(
            format!("apis/{g}/{v}"),
            json!({"serverRelativeURL": format!("/openapi/v3/apis/{g}/{v}?hash=v{hash}")}),
        );
    }
    json!({"paths": paths})
}

/// `/openapi/v3/api/v1` or `/openapi/v3/apis/GROUP/VERSION`: a document with only what
/// kubectl reads from one, a PATCH operation per kind that names its kind and takes
/// `fieldValidation` (so kubectl leaves validation to the server). It has no schemas,
/// so kubectl computes its patches from its own built-in types, or a JSON merge patch for
/// custom resources, as it does for any server whose schema it cannot use.
pub(super) fn openapi_document(group: &str, version: &str, crds: &[&Value]) -> Option<Value> {
    let list = resources(group, version, crds)?;
    let mut paths = serde_json::Map::new();
    let base = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    for r in list["resources"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or_default();
        if name.contains('/') {
            continue;
        }
        let at = if r["namespaced"].as_bool() == Some(true) {
            format!("{base}/namespaces/{{namespace}}/{name}/{{name}}")
        } else {
            format!("{base}/{name}/{{name}}")
        };
        paths.insert(
            at,
            json!({"patch": {
                "operationId": format!("patch{}", r["kind"].as_str().unwrap_or_default()),
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                    {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {"200": {"description": "OK"}},
                "x-kubernetes-action": "patch",
                "x-kubernetes-group-version-kind": {
                    "group": group, "version": version, "kind": r["kind"],
                },
            }}),
        );
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (Sluice's API double)", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

/// `/openapi/v2`, which kubectl before 1.30 or so reads first, and only as protobuf
/// (gnostic's `openapi.v2.Document`): the same PATCH operations as
/// [`openapi_document`], for every group version.
pub(super) fn openapi_v2(crds: &[&Value]) -> Vec<u8> {
    use prost::Message;
    let mut paths = Vec::new();
    let mut gvs = vec![(String::new(), "v1".to_owned())];
    gvs.extend(group_versions(crds));
    for (g, v) in gvs {
        let Some(doc) = openapi_document(&g, &v, crds) else {
            continue;
        };
        for (at, item) in doc["paths"].as_object().into_iter().flatten() {
            let op = &item["patch"];
            let gvk = &op["x-kubernetes-group-version-kind"];
            let yaml = format!(
                "group: {:?}\nversion: {:?}\nkind: {:?}\n",
                gvk["group"].as_str().unwrap_or_default(),
                gvk["version"].as_str().unwrap_or_default(),
                gvk["kind"].as_str().unwrap_or_default()
            );
            let parameters = op["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| v2::ParametersItem {
                    parameter: Some(v2::Parameter {
                        non_body_parameter: Some(v2::NonBodyParameter {
                            query_parameter_sub_schema: Some(v2::QueryParameterSubSchema {
                                r#in: "query".to_owned(),
                                name: p["name"].as_str().unwrap_or_default().to_owned(),
                                r#type: "string".to_owned(),
                            }),
                        }),
                    }),
                })
                .collect();
            paths.push(v2::NamedPathItem {
                name: at.clone(),
                value: Some(v2::PathItem {
                    patch: Some(v2::Operation {
                        operation_id: op["operationId"].as_str().unwrap_or_default().to_owned(),
                        parameters,
                        vendor_extension: vec![
                            v2::NamedAny {
                                name: "x-kubernetes-action".to_owned(),
                                value: Some(v2::Any {
                                    yaml: "patch\n".to_owned(),
                                }),
                            },
                            v2::NamedAny {
                                name: "x-kubernetes-group-version-kind".to_owned(),
                                value: Some(v2::Any { yaml }),
                            },
                        ],
                    }),
                }),
            });
        }
    }
    v2::Document {
        swagger: "2.0".to_owned(),
        info: Some(v2::Info {
            title: "Kubernetes (Sluice's API double)".to_owned(),
            version: "v1.33.0".to_owned(),
        }),
        paths: Some(v2::Paths { path: paths }),
    }
    .encode_to_vec()
}

/// The part of gnostic's `openapi/v2/OpenAPIv2.proto` written here, with its field
/// numbers.
mod v2 {
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Document {
        #[prost(string, tag = "1")]
        pub swagger: String,
        #[prost(message, optional, tag = "2")]
        pub info: Option<Info>,
        #[prost(message, optional, tag = "8")]
        pub paths: Option<Paths>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Info {
        #[prost(string, tag = "1")]
        pub title: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Paths {
        #[prost(message, repeated, tag = "2")]
        pub path: Vec<NamedPathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NamedPathItem {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<PathItem>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct PathItem {
        #[prost(message, optional, tag = "8")]
        pub patch: Option<Operation>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Operation {
        #[prost(string, tag = "5")]
        pub operation_id: String,
        #[prost(message, repeated, tag = "8")]
        pub parameters: Vec<ParametersItem>,
        #[prost(message, repeated, tag = "13")]
        pub vendor_extension: Vec<NamedAny>,
    }

    /// A oneof in the proto; only its `parameter` arm is written.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct ParametersItem {
        #[prost(message, optional, tag = "1")]
        pub parameter: Option<Parameter>,
    }

    /// A oneof in the proto; only its `non_body_parameter` arm is written.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Parameter {
        #[prost(message, optional, tag = "2")]
        pub non_body_parameter: Option<NonBodyParameter>,
    }

    /// A oneof in the proto; only its query arm is written.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NonBodyParameter {
        #[prost(message, optional, tag = "3")]
        pub query_parameter_sub_schema: Option<QueryParameterSubSchema>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct QueryParameterSubSchema {
        #[prost(string, tag = "2")]
        pub r#in: String,
        #[prost(string, tag = "4")]
        pub name: String,
        #[prost(string, tag = "6")]
        pub r#type: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct NamedAny {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<Any>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Any {
        #[prost(string, tag = "2")]
        pub yaml: String,
    }
}
