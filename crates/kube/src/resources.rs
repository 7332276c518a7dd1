//! What a revision is on Kubernetes, as pure functions of its spec: a Deployment running
//! the app container with the queue-proxy injected beside it, and the Service selecting its
//! pods, named and labelled as Knative's revision reconciler makes them
//! (`pkg/reconciler/revision/resources` in knative/serving).

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, HTTPHeader,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSpec as K8sPodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecurityContext, Service, ServicePort,
    ServiceSpec as K8sServiceSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_control::RevisionSpec;

pub use sluice_serving::labels::{
    CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, REVISION_LABEL, SERVICE_LABEL,
    SERVICE_TYPE_LABEL,
};
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGER: &str = "sluice";

/// The queue-proxy's ports (Knative's numbers and names).
pub const QUEUE_PORT: u16 = 8012;
pub const QUEUE_TLS_PORT: u16 = 8112;
pub const QUEUE_ADMIN_PORT: u16 = 8022;
pub const AUTOSCALING_METRICS_PORT: u16 = 9090;
pub const USER_METRICS_PORT: u16 = 9091;
/// The app's port when its container names none (Knative's default).
pub const DEFAULT_USER_PORT: u16 = 8080;
/// The app container's name when the template gives none (Knative's).
pub const USER_CONTAINER: &str = "user-container";
pub const QUEUE_CONTAINER: &str = "queue-proxy";

/// What the control plane injects into every revision's pods: the queue-proxy's image and
/// where it reports its stats.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// An image whose entrypoint is the queue-proxy (Sluice's `sluice-queue-proxy`, or
    /// anything that honours Knative's queue-proxy contract).
    pub queue_proxy_image: String,
    /// The autoscaler's gRPC address for stats (`SLUICE_AUTOSCALER_ADDRESS`), e.g.
    /// `http://autoscaler.sluice-system.svc.cluster.local:8080`.
    pub autoscaler: String,
    /// The namespace Sluice runs in (`SYSTEM_NAMESPACE`).
    pub system_namespace: String,
    /// The queue-proxy's CPU request (Knative's `queue-sidecar-cpu-request`, 25m).
    pub queue_cpu_request: String,
}

impl Default for Injection {
    fn default() -> Self {
        Self {
            queue_proxy_image: "sluice-queue-proxy:latest".to_owned(),
            autoscaler: "http://autoscaler.sluice-system.svc.cluster.local:8080".to_owned(),
            system_namespace: "sluice-system".to_owned(),
            queue_cpu_request: "25m".to_owned(),
        }
    }
}

/// The object that owns a revision's Deployment and Service: its Knative `Service`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub name: String,
    pub uid: String,
}

impl Owner {
    pub(crate) fn reference(&self) -> OwnerReference {
        OwnerReference {
            api_version: "serving.knative.dev/v1".to_owned(),
            kind: "Service".to_owned(),
            name: self.name.clone(),
            uid: self.uid.clone(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        }
    }
}

/// A revision's Deployment: Knative names it `{revision}-deployment`.
pub fn deployment_name(revision: &str) -> String {
    format!("{revision}-deployment")
}

/// A revision's private Service (the one selecting its pods): `{revision}-private`.
pub fn service_name(revision: &str) -> String {
    format!("{revision}-private")
}

/// The labels every object of the revision carries.
pub fn labels(spec: &RevisionSpec) -> BTreeMap<String, String> {
    let pod = &spec.pod;
    BTreeMap::from([
        (SERVICE_LABEL.to_owned(), pod.service.clone()),
        (CONFIGURATION_LABEL.to_owned(), pod.service.clone()),
        (REVISION_LABEL.to_owned(), pod.revision.clone()),
        (MANAGED_BY_LABEL.to_owned(), MANAGER.to_owned()),
    ])
}

/// Knative's `Revision` resource (`serving.knative.dev/v1`).
pub fn knative_revision() -> kube::core::ApiResource {
    kube::core::ApiResource::from_gvk_with_plural(
        &kube::core::GroupVersionKind::gvk("serving.knative.dev", "v1", "Revision"),
        "revisions",
    )
}

/// The revision's `Revision` object, owned by its Knative Service: its template's labels
/// (with the revision's own), annotations and spec, from which a restarted control plane
/// plans it again. `None` for a revision kept without its template (a local one).
pub fn revision_object(spec: &RevisionSpec, owner: &Owner) -> Option<kube::core::DynamicObject> {
    let template = spec.template.as_ref()?;
    let pod = &spec.pod;
    let mut labels: BTreeMap<String, String> =
        serde_json::from_value(template["metadata"]["labels"].clone()).unwrap_or_default();
    labels.extend(self::labels(spec));
    let annotations: BTreeMap<String, String> =
        serde_json::from_value(template["metadata"]["annotations"].clone()).unwrap_or_default();
    let mut o = kube::core::DynamicObject::new(&pod.revision, &knative_revision())
        .within(&pod.namespace)
        .data(serde_json::json!({ "spec": template["spec"] }));
    o.metadata.labels = Some(labels);
    o.metadata.annotations = Some(annotations).filter(|a| !a.is_empty());
    o.metadata.owner_references = Some(vec![owner.reference()]);
    Some(o)
}

/// What selects the revision's pods.
fn selector(spec: &RevisionSpec) -> BTreeMap<String, String> {
    BTreeMap::from([(REVISION_LABEL.to_owned(), spec.pod.revision.clone())])
}

/// Why a revision's container cannot be run on Kubernetes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ResourceError {
    #[error("the revision has no container as written (its spec came from a local manifest)")]
    NoContainer,
    #[error("spec.template.spec.containers[0]: {0}")]
    Container(String),
    #[error("spec.template.spec.containers[0]: give an image")]
    NoImage,
}

pub use sluice_serving::progress::{
    DEFAULT_PROGRESS_DEADLINE_SECONDS, PROGRESS_DEADLINE_ANNOTATION, progress_deadline,
};

/// The revision's Deployment at its initial scale.
pub fn deployment(
    spec: &RevisionSpec,
    owner: &Owner,
    inject: &Injection,
) -> Result<Deployment, ResourceError> {
    let (user, user_port) = user_container(spec)?;
    let labels = labels(spec);
    let pod = &spec.pod;
    Ok(Deployment {
        metadata: ObjectMeta {
            name: Some(deployment_name(&pod.revision)),
            namespace: Some(pod.namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(spec.annotations.clone()).filter(|a| !a.is_empty()),
            owner_references: Some(vec![owner.reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(spec.initial_scale).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(selector(spec)),
                ..LabelSelector::default()
            },
            progress_deadline_seconds: Some(
                progress_deadline(&spec.annotations)
                    .and_then(Result::ok)
                    .unwrap_or(DEFAULT_PROGRESS_DEADLINE_SECONDS),
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(spec.annotations.clone()).filter(|a| !a.is_empty()),
                    ..ObjectMeta::default()
                }),
                spec: Some(K8sPodSpec {
                    containers: vec![user, queue_proxy(spec, user_port, inject)],
                    // A pod gets the revision's timeout to finish its requests (Knative).
                    termination_grace_period_seconds: Some(i64::from(pod.timeout_seconds)),
                    enable_service_links: Some(false),
                    ..K8sPodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        status: None,
    })
}

/// The revision's private Service: selects its pods, on the queue-proxy's ports.
pub fn service(spec: &RevisionSpec, owner: &Owner) -> Service {
    let pod = &spec.pod;
    let mut labels = labels(spec);
    labels.insert(SERVICE_TYPE_LABEL.to_owned(), "Private".to_owned());
    Service {
        metadata: ObjectMeta {
            name: Some(service_name(&pod.revision)),
            namespace: Some(pod.namespace.clone()),
            labels: Some(labels),
            owner_references: Some(vec![owner.reference()]),
            ..ObjectMeta::default()
        },
        spec: Some(service_spec(spec)),
        status: None,
    }
}

/// The private Service's spec: its selector (the revision's pods) and ports.
pub fn service_spec(spec: &RevisionSpec) -> K8sServiceSpec {
    let port = |name: &str, port: u16, target: u16| ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(target))),
        protocol: Some("TCP".to_owned()),
        ..ServicePort::default()
    };
    K8sServiceSpec {
        selector: Some(selector(spec)),
        ports: Some(vec![
            port("http", 80, QUEUE_PORT),
            port(
                "http-autometric",
                AUTOSCALING_METRICS_PORT,
                AUTOSCALING_METRICS_PORT,
            ),
            port("http-usermetric", USER_METRICS_PORT, USER_METRICS_PORT),
        ]),
        ..K8sServiceSpec::default()
    }
}

/// The app's container as written, with what Knative's reconciler changes: its port named
/// `user-port`, Knative's env vars, the readiness probe moved to the queue-proxy (an exec
/// probe stays), and a preStop hook that waits for the queue-proxy to drain.
fn user_container(spec: &RevisionSpec) -> Result<(Container, u16), ResourceError> {
    let pod = &spec.pod;
    let mut written = pod.container.clone().ok_or(ResourceError::NoContainer)?;
    sluice_serving::manifest::strip_nulls(&mut written);
    let port = written
        .get("ports")
        .and_then(|p| p.get(0))
        .and_then(|p| p.get("containerPort"))
        .and_then(serde_json::Value::as_u64)
        .map_or(Ok(DEFAULT_USER_PORT), |p| {
            u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| {
                ResourceError::Container(format!("ports[0].containerPort {p} is not a port"))
            })
        })?;
    if let Some(o) = written.as_object_mut() {
        o.remove("ports");
    }
    let mut c: Container =
        serde_json::from_value(written).map_err(|e| ResourceError::Container(e.to_string()))?;
    if c.image.as_deref().is_none_or(str::is_empty) {
        return Err(ResourceError::NoImage);
    }
    if c.name.is_empty() {
        c.name = USER_CONTAINER.to_owned();
    }
    // Knative's default: a crash's last log lines become its termination message, which
    // the Revision's status shows.
    c.termination_message_policy
        .get_or_insert_with(|| "FallbackToLogsOnError".to_owned());
    c.ports = Some(vec![ContainerPort {
        name: Some("user-port".to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }]);
    let env = c.env.get_or_insert_with(Vec::new);
    for (name, value) in [
        ("PORT", port.to_string()),
        ("K_REVISION", pod.revision.clone()),
        ("K_CONFIGURATION", pod.service.clone()),
        ("K_SERVICE", pod.service.clone()),
    ] {
        env.push(value_env(name, value));
    }
    if c.readiness_probe.as_ref().is_some_and(|p| p.exec.is_none()) {
        c.readiness_probe = None;
    }
    c.lifecycle = Some(Lifecycle {
        pre_stop: Some(LifecycleHandler {
            http_get: Some(HTTPGetAction {
                path: Some("/wait-for-drain".to_owned()),
                port: IntOrString::Int(i32::from(QUEUE_ADMIN_PORT)),
                ..HTTPGetAction::default()
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    });
    Ok((c, port))
}

/// The queue-proxy sidecar: Knative's env contract, ports and readiness probe, under the
/// restricted security profile.
fn queue_proxy(spec: &RevisionSpec, user_port: u16, inject: &Injection) -> Container {
    let pod = &spec.pod;
    let optional = |v: Option<u32>| v.map(|s| s.to_string()).unwrap_or_default();
    let mut env: Vec<EnvVar> = [
        ("SERVING_NAMESPACE", pod.namespace.clone()),
        ("SERVING_SERVICE", pod.service.clone()),
        ("SERVING_CONFIGURATION", pod.service.clone()),
        ("SERVING_REVISION", pod.revision.clone()),
        ("QUEUE_SERVING_PORT", QUEUE_PORT.to_string()),
        ("QUEUE_SERVING_TLS_PORT", QUEUE_TLS_PORT.to_string()),
        ("USER_PORT", user_port.to_string()),
        (
            "CONTAINER_CONCURRENCY",
            pod.container_concurrency.to_string(),
        ),
        ("REVISION_TIMEOUT_SECONDS", pod.timeout_seconds.to_string()),
        (
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            optional(pod.response_start_timeout_seconds),
        ),
        (
            "REVISION_IDLE_TIMEOUT_SECONDS",
            optional(pod.idle_timeout_seconds),
        ),
        (
            "SERVING_READINESS_PROBE",
            pod.queue_readiness_probe(user_port).to_string(),
        ),
        ("SERVING_LOGGING_CONFIG", String::new()),
        ("SERVING_LOGGING_LEVEL", String::new()),
        ("SYSTEM_NAMESPACE", inject.system_namespace.clone()),
        ("SLUICE_AUTOSCALER_ADDRESS", inject.autoscaler.clone()),
    ]
    .into_iter()
    .map(|(name, value)| value_env(name, value))
    .collect();
    for (name, field) in [
        ("SERVING_POD", "metadata.name"),
        ("SERVING_POD_IP", "status.podIP"),
        ("HOST_IP", "status.hostIP"),
    ] {
        env.push(EnvVar {
            name: name.to_owned(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: field.to_owned(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        });
    }
    let port = |name: &str, port: u16| ContainerPort {
        name: Some(name.to_owned()),
        container_port: i32::from(port),
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    };
    // The user's probe timing (Knative copies it; the queue-proxy runs the probe itself).
    let written = pod.readiness_probe.as_ref();
    let timing = |key: &str| {
        written
            .and_then(|p| p.get(key))
            .and_then(serde_json::Value::as_i64)
            .and_then(|v| i32::try_from(v).ok())
    };
    Container {
        name: QUEUE_CONTAINER.to_owned(),
        image: Some(inject.queue_proxy_image.clone()),
        env: Some(env),
        ports: Some(vec![
            port("queue-port", QUEUE_PORT),
            port("queue-admin", QUEUE_ADMIN_PORT),
            port("http-autometric", AUTOSCALING_METRICS_PORT),
            port("http-usermetric", USER_METRICS_PORT),
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                port: IntOrString::Int(i32::from(QUEUE_PORT)),
                http_headers: Some(vec![HTTPHeader {
                    name: "K-Network-Probe".to_owned(),
                    value: "queue".to_owned(),
                }]),
                ..HTTPGetAction::default()
            }),
            period_seconds: timing("periodSeconds"),
            timeout_seconds: timing("timeoutSeconds"),
            success_threshold: timing("successThreshold"),
            failure_threshold: timing("failureThreshold"),
            initial_delay_seconds: timing("initialDelaySeconds"),
            ..Probe::default()
        }),
        resources: Some(ResourceRequirements {
            requests: Some(BTreeMap::from([(
                "cpu".to_owned(),
                Quantity(inject.queue_cpu_request.clone()),
            )])),
            ..ResourceRequirements::default()
        }),
        security_context: Some(restricted()),
        ..Container::default()
    }
}

/// Kubernetes' restricted pod security profile for a container, as Knative sets it on
/// the queue-proxy.
pub fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            ..SeccompProfile::default()
        }),
        ..SecurityContext::default()
    }
}

fn value_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

#[cfg(test)]
pub(crate) mod tests;
