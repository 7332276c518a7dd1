//! Knative's labels, on every object of a revision (and copied by Kubernetes onto the
//! EndpointSlices of its Service).

pub const SERVICE_LABEL: &str = "serving.knative.dev/service";
pub const CONFIGURATION_LABEL: &str = "serving.knative.dev/configuration";
pub const REVISION_LABEL: &str = "serving.knative.dev/revision";
/// The generation of its Configuration (its Service's template) a revision was made at:
/// `NAME-0000N` is made at generation N.
pub const CONFIGURATION_GENERATION_LABEL: &str = "serving.knative.dev/configurationGeneration";
/// Knative's label of a revision's private Service (the one that selects its pods).
pub const SERVICE_TYPE_LABEL: &str = "networking.internal.knative.dev/serviceType";
