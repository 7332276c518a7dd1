//! Knative manifests as users write them: `serving.knative.dev/v1` `Service`, and the
//! `config-autoscaler` ConfigMap. One or several YAML documents per file, or a folder of
//! `.yaml`/`.yml` files. Parsing only: the rules that need the running platform (does
//! this revision exist?) are in the planner (`sluice_control::world`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::problem::Problem;

pub const SERVICE_API_VERSION: &str = "serving.knative.dev/v1";
pub const CONFIG_AUTOSCALER: &str = "config-autoscaler";
pub const KNATIVE_NAMESPACE: &str = "knative-serving";
pub const DEFAULT_NAMESPACE: &str = "default";
/// Largest manifest file, and largest `sluice apply` (all files together): Kubernetes'
/// API server takes request bodies up to 3 MiB.
pub const MAX_MANIFEST_BYTES: u64 = 3 << 20;
/// Kubernetes' limit on an object's annotations, keys and values together.
pub const MAX_ANNOTATIONS_BYTES: usize = 256 << 10;

/// The fields each part of a document may have: Knative's and Kubernetes' own (as
/// `kubectl apply` with strict field validation knows them), used by Sluice or not. Any
/// other field is a mistake (`trafic:`, `containerz:`) and is refused by name.
const ROOT_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];
const CONFIG_MAP_FIELDS: &[&str] = &[
    "apiVersion",
    "kind",
    "metadata",
    "data",
    "binaryData",
    "immutable",
];
const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "annotations",
    "labels",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "ownerReferences",
    "finalizers",
    "managedFields",
    "selfLink",
];
const SERVICE_SPEC_FIELDS: &[&str] = &["template", "traffic"];
const TEMPLATE_FIELDS: &[&str] = &["metadata", "spec"];
const REVISION_SPEC_FIELDS: &[&str] = &[
    "containerConcurrency",
    "timeoutSeconds",
    "responseStartTimeoutSeconds",
    "idleTimeoutSeconds",
    "containers",
    "serviceAccountName",
    "automountServiceAccountToken",
    "volumes",
    "imagePullSecrets",
    "enableServiceLinks",
    "nodeSelector",
    "tolerations",
    "affinity",
    "runtimeClassName",
    "securityContext",
    "dnsPolicy",
    "dnsConfig",
    "hostAliases",
    "priorityClassName",
    "schedulerName",
    "topologySpreadConstraints",
    "initContainers",
];
const CONTAINER_FIELDS: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "env",
    "envFrom",
    "ports",
    "readinessProbe",
    "livenessProbe",
    "startupProbe",
    "resources",
    "imagePullPolicy",
    "workingDir",
    "volumeMounts",
    "securityContext",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "stdin",
    "stdinOnce",
    "tty",
];
const ENV_FIELDS: &[&str] = &["name", "value", "valueFrom"];
const PORT_FIELDS: &[&str] = &["containerPort", "name", "protocol", "hostIP", "hostPort"];
const TRAFFIC_FIELDS: &[&str] = &[
    "revisionName",
    "latestRevision",
    "percent",
    "tag",
    "configurationName",
    "url",
];

/// Everything a set of documents asks for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Manifests {
    pub services: Vec<Service>,
    /// `config-autoscaler`'s `data`, if one was among the documents.
    pub config_autoscaler: Option<BTreeMap<String, String>>,
    /// Documents read but not acted on, with why (shown to the user).
    pub ignored: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub template: RevisionTemplate,
    /// Absent: all traffic to the latest revision.
    #[serde(default)]
    pub traffic: Option<Vec<TrafficTarget>>,
}

/// `spec.template`: every change to it makes a new revision.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionTemplate {
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: RevisionSpec,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionSpec {
    pub container_concurrency: Option<u32>,
    pub timeout_seconds: Option<u32>,
    pub response_start_timeout_seconds: Option<u32>,
    pub idle_timeout_seconds: Option<u32>,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
    /// Kubernetes' `corev1.Probe`, handed to the queue-proxy as Knative does.
    #[serde(default)]
    pub readiness_probe: Option<serde_json::Value>,
    /// The other fields Kubernetes knows (`resources`, `volumeMounts`, …): kept as written
    /// for Kubernetes to run; the local runtime does not read them.
    #[serde(flatten)]
    pub rest: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    pub name: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_from: Option<serde_json::Value>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub container_port: Option<u32>,
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficTarget {
    #[serde(default)]
    pub revision_name: Option<String>,
    #[serde(default)]
    pub latest_revision: Option<bool>,
    #[serde(default)]
    pub percent: Option<u32>,
    #[serde(default)]
    pub tag: Option<String>,
}

/// The parts of any document needed to tell what it is.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Head {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    metadata: ObjectMeta,
}

#[derive(Deserialize)]
struct ConfigMap {
    #[serde(default)]
    data: BTreeMap<String, String>,
}

// === impl Manifests ===

impl Manifests {
    /// Reads files and folders (a folder: its `.yaml` and `.yml` files, sorted). Every
    /// problem is reported, each prefixed with its file and document.
    pub fn read(paths: &[PathBuf]) -> Result<Self, Vec<Problem>> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            match yaml_files(path) {
                Ok(mut found) if found.is_empty() => {
                    errors.push(Problem::new(
                        path.display().to_string(),
                        "no .yaml or .yml file in it",
                    ));
                    found.clear();
                }
                Ok(found) => files.extend(found),
                Err(e) => errors.push(Problem::new(path.display().to_string(), e)),
            }
        }
        let mut out = Self::default();
        for file in &files {
            match read_manifest(file) {
                Ok(text) => {
                    if let Err(mut e) = out.add(&file.display().to_string(), &text) {
                        errors.append(&mut e);
                    }
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }

    /// Parses one text of YAML documents (`source` names it in messages).
    pub fn parse(source: &str, text: &str) -> Result<Self, Vec<Problem>> {
        let mut out = Self::default();
        out.add(source, text)?;
        Ok(out)
    }

    fn add(&mut self, source: &str, text: &str) -> Result<(), Vec<Problem>> {
        let mut errors = Vec::new();
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let at = format!("{source} (document {})", i + 1);
            let value = match serde_norway::Value::deserialize(doc) {
                Ok(serde_norway::Value::Null) => continue, // an empty document
                Ok(v) => v,
                Err(e) => {
                    errors.push(Problem::new(&at, format!("not valid YAML: {e}")));
                    // The parser cannot resync after a syntax error.
                    break;
                }
            };
            if let Err(e) = self.add_document(&at, value) {
                errors.push(e);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    fn add_document(&mut self, at: &str, value: serde_norway::Value) -> Result<(), Problem> {
        let problem = |e: &dyn std::fmt::Display| Problem::new(at, e);
        // Re-read from text so that errors carry the field's path.
        let text = serde_norway::to_string(&value).map_err(|e| problem(&e))?;
        let head: Head = serde_norway::from_str(&text).map_err(|e| problem(&e))?;
        match (head.api_version.as_str(), head.kind.as_str()) {
            (SERVICE_API_VERSION, "Service") => {
                check_service_fields(&value).map_err(|e| problem(&e))?;
                let service: Service = serde_norway::from_str(&text).map_err(|e| problem(&e))?;
                self.services.push(service);
                Ok(())
            }
            ("v1", "ConfigMap") if head.metadata.name == CONFIG_AUTOSCALER => {
                let ns = head
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or(KNATIVE_NAMESPACE);
                if ns != KNATIVE_NAMESPACE {
                    return Err(problem(&format!(
                        "metadata.namespace: ConfigMap {CONFIG_AUTOSCALER} belongs in \
                         namespace {KNATIVE_NAMESPACE}, not {ns}"
                    )));
                }
                known_fields(&value, "", CONFIG_MAP_FIELDS).map_err(|e| problem(&e))?;
                let cm: ConfigMap = serde_norway::from_str(&text).map_err(|e| problem(&e))?;
                self.config_autoscaler = Some(cm.data);
                Ok(())
            }
            ("v1", "ConfigMap") => {
                self.ignored.push(format!(
                    "{at}: ConfigMap {} ignored: only {CONFIG_AUTOSCALER} is read",
                    head.metadata.name
                ));
                Ok(())
            }
            ("", _) | (_, "") => Err(problem(
                &"not a Kubernetes object: apiVersion and kind are required",
            )),
            (api, kind) => Err(problem(&format!(
                "{kind} ({api}) is not supported: Sluice reads Service \
                 ({SERVICE_API_VERSION}) and the ConfigMap {CONFIG_AUTOSCALER}"
            ))),
        }
    }
}

/// Refuses a Service with a field Kubernetes and Knative do not know, naming it, or with
/// more annotations than Kubernetes stores.
fn check_service_fields(doc: &serde_norway::Value) -> Result<(), String> {
    use serde_norway::Value;
    let get = |v: &'_ Value, key: &str| -> Option<Value> { v.get(key).cloned() };
    known_fields(doc, "", ROOT_FIELDS)?;
    if let Some(meta) = get(doc, "metadata") {
        known_fields(&meta, "metadata.", METADATA_FIELDS)?;
        annotations_fit(&meta, "metadata.annotations")?;
    }
    let Some(spec) = get(doc, "spec") else {
        return Ok(());
    };
    known_fields(&spec, "spec.", SERVICE_SPEC_FIELDS)?;
    for (i, target) in list(&spec, "traffic").iter().enumerate() {
        known_fields(target, &format!("spec.traffic[{i}]."), TRAFFIC_FIELDS)?;
    }
    let Some(template) = get(&spec, "template") else {
        return Ok(());
    };
    known_fields(&template, "spec.template.", TEMPLATE_FIELDS)?;
    if let Some(meta) = get(&template, "metadata") {
        known_fields(&meta, "spec.template.metadata.", METADATA_FIELDS)?;
        annotations_fit(&meta, "spec.template.metadata.annotations")?;
    }
    let Some(rspec) = get(&template, "spec") else {
        return Ok(());
    };
    known_fields(&rspec, "spec.template.spec.", REVISION_SPEC_FIELDS)?;
    for (i, c) in list(&rspec, "containers").iter().enumerate() {
        let at = format!("spec.template.spec.containers[{i}].");
        known_fields(c, &at, CONTAINER_FIELDS)?;
        for (j, e) in list(c, "env").iter().enumerate() {
            known_fields(e, &format!("{at}env[{j}]."), ENV_FIELDS)?;
        }
        for (j, p) in list(c, "ports").iter().enumerate() {
            known_fields(p, &format!("{at}ports[{j}]."), PORT_FIELDS)?;
        }
    }
    Ok(())
}

/// The items of a list field (none when absent or not a list: the typed parse reports that).
fn list(v: &serde_norway::Value, key: &str) -> Vec<serde_norway::Value> {
    v.get(key)
        .and_then(serde_norway::Value::as_sequence)
        .cloned()
        .unwrap_or_default()
}

/// Every key of the mapping `v` (at `path`) is one of `known`.
fn known_fields(v: &serde_norway::Value, path: &str, known: &[&str]) -> Result<(), String> {
    let Some(map) = v.as_mapping() else {
        return Ok(());
    };
    for key in map.keys() {
        let name = match key.as_str() {
            Some(k) => k.to_owned(),
            None => format!("{key:?}"),
        };
        if !known.contains(&name.as_str()) {
            return Err(format!(
                "{path}{name}: unknown field (strict field validation, as kubectl apply \
                 does); known here: {}",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

fn annotations_fit(meta: &serde_norway::Value, path: &str) -> Result<(), String> {
    let Some(map) = meta
        .get("annotations")
        .and_then(serde_norway::Value::as_mapping)
    else {
        return Ok(());
    };
    let size: usize = map
        .iter()
        .map(|(k, v)| k.as_str().map_or(0, str::len) + v.as_str().map_or(0, str::len))
        .sum();
    if size > MAX_ANNOTATIONS_BYTES {
        return Err(format!(
            "{path}: {size} bytes of annotations; Kubernetes takes at most {MAX_ANNOTATIONS_BYTES} \
             (256 KiB), keys and values together"
        ));
    }
    Ok(())
}

/// A manifest file's text, refused before it is read when it is over
/// [`MAX_MANIFEST_BYTES`].
pub fn read_manifest(path: &Path) -> Result<String, Problem> {
    let problem = |e: &dyn std::fmt::Display| Problem::new(path.display().to_string(), e);
    let len = std::fs::metadata(path)
        .map_err(|e| problem(&format!("cannot read: {e}")))?
        .len();
    if len > MAX_MANIFEST_BYTES {
        return Err(problem(&format!(
            "{len} bytes; a manifest may be at most {MAX_MANIFEST_BYTES} bytes (3 MiB, as \
             Kubernetes' API server takes)"
        )));
    }
    std::fs::read_to_string(path).map_err(|e| problem(&format!("cannot read: {e}")))
}

/// `path` itself, or a folder's `.yaml` and `.yml` files, sorted.
pub fn yaml_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if !path.is_dir() {
        std::fs::metadata(path)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    Ok(files)
}

impl Service {
    pub fn namespace(&self) -> &str {
        self.metadata
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty())
            .unwrap_or(DEFAULT_NAMESPACE)
    }
}

/// Drops every `null` member, recursively (a field left out, to Kubernetes).
pub fn strip_nulls(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(o) => {
            o.retain(|_, v| !v.is_null());
            o.values_mut().for_each(strip_nulls);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::lines;

    const HELLO: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: helloworld-go
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/max-scale: "20"
    spec:
      containerConcurrency: 5
      containers:
        - image: ghcr.io/knative/helloworld-go:latest
          env:
            - name: TARGET
              value: "Knative"
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: config-autoscaler
  namespace: knative-serving
data:
  stable-window: "6s"
"#;

    #[test]
    fn reads_a_service_and_the_autoscaler_config_from_one_file() {
        let m = Manifests::parse("hello.yaml", HELLO).expect("valid");
        assert_eq!(m.services.len(), 1);
        let s = &m.services[0];
        assert_eq!(s.metadata.name, "helloworld-go");
        assert_eq!(s.namespace(), "default");
        assert_eq!(s.spec.template.spec.container_concurrency, Some(5));
        assert_eq!(
            s.spec.template.metadata.annotations["autoscaling.knative.dev/max-scale"],
            "20"
        );
        assert_eq!(
            s.spec.template.spec.containers[0].env[0].value.as_deref(),
            Some("Knative")
        );
        assert_eq!(m.config_autoscaler.expect("config")["stable-window"], "6s");
    }

    #[test]
    fn errors_name_the_document_and_the_field() {
        let bad = HELLO.replace("containerConcurrency: 5", "containerConcurrency: five");
        let errors = Manifests::parse("hello.yaml", &bad)
            .map_err(|e| lines(&e))
            .expect_err("invalid");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].starts_with("hello.yaml (document 1): "),
            "{}",
            errors[0]
        );
        assert!(
            errors[0].contains("spec.template.spec.containerConcurrency"),
            "the field is named: {}",
            errors[0]
        );
    }

    #[test]
    fn unsupported_kinds_and_misplaced_config_are_refused() {
        let errors = Manifests::parse(
            "x.yaml",
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n---\n\
             apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-autoscaler, namespace: default}\n---\n\
             just: text\n",
        ).map_err(|e| lines(&e)).expect_err("refused");
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].contains("Deployment (apps/v1) is not supported"));
        assert!(errors[1].contains("belongs in namespace knative-serving"));
        assert!(errors[2].contains("apiVersion and kind are required"));
    }

    #[test]
    fn other_configmaps_are_ignored_with_a_note() {
        let m = Manifests::parse(
            "x.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: config-network, namespace: knative-serving}\n",
        )
        .expect("valid");
        assert_eq!(m.ignored.len(), 1);
        assert!(m.services.is_empty());
    }

    #[test]
    fn syntax_errors_are_reported() {
        let errors = Manifests::parse("x.yaml", "kind: [unclosed\n")
            .map_err(|e| lines(&e))
            .expect_err("bad");
        assert!(errors[0].contains("not valid YAML"), "{errors:?}");
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let misspelt = [
            (
                "  trafic:\n    - percent: 100\n",
                "spec.trafic: unknown field",
            ),
            (
                "  template:\n    spec:\n      containerz:\n        - image: x\n",
                "spec.template.spec.containerz: unknown field",
            ),
            (
                "  template:\n    spec:\n      containers:\n        - image: x\n          envv: []\n",
                "spec.template.spec.containers[0].envv: unknown field",
            ),
            (
                "  traffic:\n    - percent: 100\n      revison: a\n",
                "spec.traffic[0].revison: unknown field",
            ),
        ];
        for (spec, want) in misspelt {
            let doc = format!(
                "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n{spec}"
            );
            let errors = Manifests::parse("x.yaml", &doc)
                .map_err(|e| lines(&e))
                .expect_err(want);
            assert!(errors[0].contains(want), "{want}: {errors:?}");
        }
        // Fields Kubernetes knows but Sluice does not use are accepted.
        let known = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: s, uid: u, generation: 2}
spec:
  template:
    spec:
      serviceAccountName: sa
      containers:
        - image: x
          resources: {limits: {cpu: 1}}
          ports: [{containerPort: 8080, protocol: TCP}]
"#;
        Manifests::parse("x.yaml", known).expect("known fields are fine");
    }

    #[test]
    fn annotations_over_256_kib_are_refused() {
        let big = "x".repeat(MAX_ANNOTATIONS_BYTES);
        let doc = format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata: {{name: s}}\nspec:\n  template:\n    metadata:\n      annotations:\n        a: \"{big}\"\n"
        );
        let errors = Manifests::parse("x.yaml", &doc)
            .map_err(|e| lines(&e))
            .expect_err("too big");
        assert!(
            errors[0].contains("spec.template.metadata.annotations:")
                && errors[0].contains("256 KiB"),
            "{errors:?}"
        );
    }

    #[test]
    fn a_manifest_over_the_size_limit_is_refused_before_it_is_read() {
        let dir = std::env::temp_dir().join(format!("sluice-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("big.yaml");
        let f = std::fs::File::create(&file).expect("file");
        f.set_len(MAX_MANIFEST_BYTES + 1).expect("sparse file");
        let errors = Manifests::read(&[file])
            .map_err(|e| lines(&e))
            .expect_err("too big");
        assert!(
            errors[0].contains("a manifest may be at most"),
            "{errors:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
