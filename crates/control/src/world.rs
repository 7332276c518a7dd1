//! What the platform runs: services, their revisions and traffic, and `config-autoscaler`.
//! [`World::apply`] is pure: it checks a set of manifests against what runs and returns
//! the next world and what changed, or every rule broken, each naming its field. Nothing
//! changes unless everything passes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use sluice_serving::config::{AutoscalerConfig, MPA_CLASS};
use sluice_serving::manifest::{Container, Manifests, RevisionTemplate, Service, TrafficTarget};
use sluice_serving::problem::Problem;
use sluice_serving::revision::RevisionScaling;

use crate::images::ImageMap;

/// Knative's `max-revision-timeout-seconds` default.
const MAX_TIMEOUT_SECONDS: u32 = 600;
/// Knative's `revision-timeout-seconds` default.
const DEFAULT_TIMEOUT_SECONDS: u32 = 300;
/// Knative's `container-concurrency-max-limit` default.
const MAX_CONTAINER_CONCURRENCY: u32 = 1000;
/// Env vars Knative sets itself and refuses in a template.
const RESERVED_ENV: [&str; 4] = ["PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"];

/// What the planner knows of where pods run, found out before planning: on this machine,
/// which command runs each image and which programs cannot be run ([`Local::resolve`]);
/// on Kubernetes, nothing ([`Local::cluster`]): a container runs its image there.
#[derive(Debug)]
pub struct Local<'a> {
    pub images: &'a ImageMap,
    /// Programs the manifests' containers name that are not on this machine.
    pub missing: BTreeSet<String>,
    /// Pods run on Kubernetes: containers need an image, not a local command.
    pub cluster: bool,
}

#[derive(Clone, Debug, Default)]
pub struct World {
    /// Shared, so that planning an apply copies pointers, not every revision's spec.
    pub services: BTreeMap<(String, String), Arc<ServiceState>>,
    pub config_data: BTreeMap<String, String>,
    pub config: AutoscalerConfig,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServiceState {
    pub namespace: String,
    pub name: String,
    /// Oldest first; the last is the latest.
    pub revisions: Vec<Revision>,
    pub traffic: Vec<Traffic>,
    /// The traffic as written (re-resolved when `latestRevision` moves).
    pub traffic_spec: Option<Vec<TrafficTarget>>,
    pub generation: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Revision {
    pub name: String,
    pub template: RevisionTemplate,
    pub annotations: BTreeMap<String, String>,
    pub pod: PodSpec,
    /// Scales on the gateway's view (`mpa.autoscaling.knative.dev`).
    pub mpa: bool,
    /// Pods it starts with, as Knative creates a revision's Deployment.
    pub initial_scale: u32,
    /// Its service's generation (of its template) it was made at: `NAME-0000N` is N.
    pub generation: u32,
}

/// A revision found kept where its pods run (a `Revision` object on Kubernetes), to plan
/// again as it was made.
#[derive(Clone, Debug, PartialEq)]
pub struct Kept {
    pub namespace: String,
    pub service: String,
    pub name: String,
    pub generation: u32,
    pub template: RevisionTemplate,
}

/// How to run one pod of a revision: the control plane's spec.
pub use crate::PodSpec;

/// One checked traffic target: a revision's name, its percent and its tag. A target of
/// the latest revision (`latest`) names the latest *created* here; the control plane
/// serves it to the latest *ready* one. The manifest's shape (`manifest::TrafficTarget`)
/// is what users write; the wire's (`v1::TrafficTarget`, empty tag for none) is what the
/// control plane serves.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    pub revision: String,
    pub percent: u32,
    pub tag: Option<String>,
    /// Written as the latest revision (`latestRevision: true`, or no `traffic`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub latest: bool,
}

/// What an apply changed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Changes {
    /// New revisions, as (namespace, service, revision).
    pub new_revisions: Vec<(String, String, String)>,
    /// Services whose traffic changed or that have a new revision (new ones included).
    pub traffic: Vec<(String, String)>,
    pub config: bool,
    /// One line per change, for the user.
    pub summary: Vec<String>,
}

// === impl World ===

impl World {
    /// Checks `m` against this world; the next world and what changed, or every error.
    pub fn apply(
        &self,
        m: &Manifests,
        local: &Local<'_>,
    ) -> Result<(World, Changes), Vec<Problem>> {
        let mut errors = Vec::new();
        let mut next = self.clone();
        let mut changes = Changes::default();
        if let Some(data) = &m.config_autoscaler
            && *data != self.config_data
        {
            match AutoscalerConfig::from_data(data) {
                Ok(config) => {
                    next.config = config;
                    next.config_data = data.clone();
                    changes.config = true;
                    changes
                        .summary
                        .push("configmap/config-autoscaler configured".to_owned());
                }
                Err(e) => errors.push(Problem::new("ConfigMap config-autoscaler", e)),
            }
        }
        // A service given twice is applied twice, in order (as two `kubectl apply`s):
        // one file can make a revision and then split traffic onto the next. What is
        // reported is each new revision and, per service, how its final traffic differs
        // from before the apply (not the steps in between).
        let mut touched: Vec<((String, String), Vec<String>)> = Vec::new();
        for s in &m.services {
            let key = (s.namespace().to_owned(), s.metadata.name.clone());
            let at = format!("service {}/{}", key.0, key.1);
            match plan_service(
                next.services.get(&key).map(|s| &**s),
                s,
                local,
                &next.config,
            ) {
                Ok((state, new_revision)) => {
                    let i = touched
                        .iter()
                        .position(|(k, _)| *k == key)
                        .unwrap_or_else(|| {
                            touched.push((key.clone(), Vec::new()));
                            touched.len() - 1
                        });
                    if let Some(rev) = new_revision {
                        touched[i].1.push(format!("{at}: revision {rev} created"));
                        changes
                            .new_revisions
                            .push((key.0.clone(), key.1.clone(), rev));
                    }
                    next.services.insert(key, Arc::new(state));
                }
                Err(e) => errors.extend(e.into_iter().map(|p| p.within(&at))),
            }
        }
        for ((namespace, name), mut lines) in touched {
            let at = format!("service {namespace}/{name}");
            let key = (namespace, name);
            let traffic = &next.services[&key].traffic;
            let moved = self.services.get(&key).map(|o| &o.traffic) != Some(traffic);
            if moved {
                let split: Vec<String> = traffic
                    .iter()
                    .map(|t| {
                        let once = if t.latest {
                            " (latest, once ready)"
                        } else {
                            ""
                        };
                        format!("{} {}%{once}", t.revision, t.percent)
                    })
                    .collect();
                lines.push(format!("{at}: traffic {}", split.join(", ")));
            }
            if moved || !lines.is_empty() {
                // A new revision is one more the latest revision's traffic may take.
                changes.traffic.push(key);
            }
            if lines.is_empty() {
                lines.push(format!("{at}: unchanged"));
            }
            changes.summary.append(&mut lines);
        }
        // A new config must suit every revision that stays.
        if changes.config {
            for s in next.services.values() {
                for r in &s.revisions {
                    if let Err(e) = RevisionScaling::resolve(
                        &next.config,
                        &r.annotations,
                        r.pod.container_concurrency,
                    ) {
                        errors.push(Problem::new(
                            "ConfigMap config-autoscaler",
                            format!("revision {}/{} cannot take it: {e}", s.namespace, r.name),
                        ));
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok((next, changes))
        } else {
            Err(errors)
        }
    }

    /// The world with the revisions kept from before (a restart), planned again as they
    /// were made, oldest first, and each service's generation from them; the services'
    /// traffic comes with their next apply. Returns the next world, the revisions it
    /// added, and why any kept one could not be planned (it is left out).
    pub fn restore(
        &self,
        mut kept: Vec<Kept>,
        local: &Local<'_>,
    ) -> (World, Vec<(String, String, String)>, Vec<Problem>) {
        kept.sort_by_key(|k| k.generation);
        let mut next = self.clone();
        let mut added = Vec::new();
        let mut problems = Vec::new();
        for k in kept {
            let key = (k.namespace.clone(), k.service.clone());
            let mut state = next.services.get(&key).map_or_else(
                || ServiceState {
                    namespace: k.namespace.clone(),
                    name: k.service.clone(),
                    revisions: Vec::new(),
                    traffic: Vec::new(),
                    traffic_spec: None,
                    generation: 0,
                },
                |s| (**s).clone(),
            );
            if state.revisions.iter().any(|r| r.name == k.name) {
                continue;
            }
            let at = format!("revision {}/{}", k.namespace, k.name);
            match plan_revision(
                &k.namespace,
                &k.service,
                &k.name,
                &k.template,
                local,
                &next.config,
            ) {
                Ok(mut rev) => {
                    rev.generation = k.generation;
                    state.generation = state.generation.max(k.generation);
                    state.revisions.push(rev);
                    added.push((k.namespace, k.service, k.name));
                    next.services.insert(key, Arc::new(state));
                }
                Err(e) => problems.extend(e.into_iter().map(|p| p.within(&at))),
            }
        }
        (next, added, problems)
    }

    /// Takes the service out (deleted on Kubernetes): its state, if it was there.
    pub fn remove_service(&mut self, namespace: &str, name: &str) -> Option<ServiceState> {
        self.services
            .remove(&(namespace.to_owned(), name.to_owned()))
            .map(Arc::unwrap_or_clone)
    }

    /// Takes collected revisions out of a service: never its latest, nor one its traffic
    /// names as written or as `served` (the latest ready one). The names taken out.
    pub fn remove_revisions(
        &mut self,
        namespace: &str,
        service: &str,
        names: &[String],
        served: &BTreeSet<String>,
    ) -> Vec<String> {
        let Some(state) = self
            .services
            .get_mut(&(namespace.to_owned(), service.to_owned()))
        else {
            return Vec::new();
        };
        let latest = state.revisions.last().map(|r| r.name.clone());
        let keep = |name: &String| {
            Some(name) == latest.as_ref()
                || served.contains(name)
                || state.traffic.iter().any(|t| t.revision == *name)
        };
        let gone: Vec<String> = names
            .iter()
            .filter(|n| !keep(n) && state.revisions.iter().any(|r| r.name == **n))
            .cloned()
            .collect();
        if !gone.is_empty() {
            Arc::make_mut(state)
                .revisions
                .retain(|r| !gone.contains(&r.name));
        }
        gone
    }

    pub fn revision(&self, namespace: &str, name: &str) -> Option<(&ServiceState, &Revision)> {
        self.services
            .values()
            .filter(|s| s.namespace == namespace)
            .find_map(|s| {
                s.revisions
                    .iter()
                    .find(|r| r.name == name)
                    .map(|r| (&**s, r))
            })
    }
}

/// One service's next state, and the name of the revision it adds, if any.
fn plan_service(
    old: Option<&ServiceState>,
    s: &Service,
    local: &Local<'_>,
    config: &AutoscalerConfig,
) -> Result<(ServiceState, Option<String>), Vec<Problem>> {
    let mut errors = Vec::new();
    let name = &s.metadata.name;
    if let Err(e) = dns_label(name) {
        errors.push(Problem::new("metadata.name", e));
    }
    let namespace = s.namespace();
    if let Err(e) = dns_label(namespace) {
        errors.push(Problem::new("metadata.namespace", e));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut state = old.cloned().unwrap_or_else(|| ServiceState {
        namespace: namespace.to_owned(),
        name: name.clone(),
        revisions: Vec::new(),
        traffic: Vec::new(),
        traffic_spec: None,
        generation: 0,
    });
    let template = &s.spec.template;
    let latest = state.revisions.last();
    let mut new_revision = None;
    let unchanged = latest.is_some_and(|r| {
        let mut t = template.clone();
        if t.metadata.name.is_empty() {
            t.metadata.name = r.template.metadata.name.clone();
        }
        t == r.template
    }) || (!template.metadata.name.is_empty()
        // A named revision given again as it is: nothing to make (re-applying a file
        // that names each revision changes nothing).
        && state.revisions.iter().any(|r| r.template == *template));
    if !unchanged {
        let generation = state.generation + 1;
        let given = template.metadata.name.as_str();
        let rev_name = match Some(given).filter(|n| !n.is_empty()) {
            Some(n) => {
                if !n.starts_with(&format!("{name}-")) {
                    errors.push(Problem::new(
                        "spec.template.metadata.name",
                        format!("{n:?} must start with \"{name}-\""),
                    ));
                }
                if let Err(e) = dns_label(n) {
                    errors.push(Problem::new("spec.template.metadata.name", e));
                }
                if state.revisions.iter().any(|r| r.name == n) {
                    errors.push(Problem::new(
                        "spec.template.metadata.name",
                        format!(
                            "revision {n} already exists with a different template; change \
                             the name or leave it out"
                        ),
                    ));
                }
                n.to_owned()
            }
            None => format!("{name}-{generation:05}"),
        };
        match plan_revision(namespace, name, &rev_name, template, local, config) {
            Ok(mut rev) => {
                rev.generation = generation;
                state.revisions.push(rev);
                state.generation = generation;
                new_revision = Some(rev_name);
            }
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // As `kubectl apply`: the manifest is the whole desired spec.
    state.traffic_spec = s.spec.traffic.clone();
    state.traffic = resolve_traffic(&state, state.traffic_spec.as_deref())?;
    Ok((state, new_revision))
}

fn plan_revision(
    namespace: &str,
    service: &str,
    name: &str,
    t: &RevisionTemplate,
    local: &Local<'_>,
    config: &AutoscalerConfig,
) -> Result<Revision, Vec<Problem>> {
    let mut errors = Vec::new();
    let spec = &t.spec;
    let container = match spec.containers.as_slice() {
        [c] => c,
        [] => {
            return Err(vec![Problem::new(
                "spec.template.spec.containers",
                "one container is required",
            )]);
        }
        _ => {
            return Err(vec![Problem::new(
                "spec.template.spec.containers",
                "Sluice runs one container per revision",
            )]);
        }
    };
    let at = "spec.template.spec.containers[0]";
    let argv = if local.cluster {
        if container.image.as_deref().is_none_or(str::is_empty) {
            errors.push(Problem::new(
                format!("{at}.image"),
                "give an image: on Kubernetes a container runs its image",
            ));
        }
        Vec::new()
    } else {
        argv(container, local.images).unwrap_or_else(|mut p| {
            p.at = format!("{at}{}", p.at);
            errors.push(p);
            Vec::new()
        })
    };
    if let Some(program) = argv.first()
        && local.missing.contains(program)
    {
        errors.push(Problem::new(
            format!("{at}.command"),
            format!(
                "program {program:?} not found{}",
                if program.contains('/') {
                    ""
                } else {
                    " on PATH"
                }
            ),
        ));
    }
    let mut env = Vec::new();
    for (i, e) in container.env.iter().enumerate() {
        if RESERVED_ENV.contains(&e.name.as_str()) {
            errors.push(Problem::new(
                format!("{at}.env[{i}].name"),
                format!("{} is reserved: Knative sets it", e.name),
            ));
        } else if e.value_from.is_some() {
            // Kubernetes resolves it (the container runs as written).
            if local.cluster {
                continue;
            }
            errors.push(Problem::new(
                format!("{at}.env[{i}].valueFrom"),
                "not supported by the local runtime; give a value",
            ));
        } else {
            env.push((e.name.clone(), e.value.clone().unwrap_or_default()));
        }
    }
    if container.ports.len() > 1 {
        errors.push(Problem::new(
            format!("{at}.ports"),
            "at most one port may be named",
        ));
    }
    let cc = spec.container_concurrency.unwrap_or(0);
    if cc > MAX_CONTAINER_CONCURRENCY {
        errors.push(Problem::new(
            "spec.template.spec.containerConcurrency",
            format!("{cc} is over the limit of {MAX_CONTAINER_CONCURRENCY}"),
        ));
    }
    let timeout = spec.timeout_seconds.unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout) {
        errors.push(Problem::new(
            "spec.template.spec.timeoutSeconds",
            format!("{timeout} must be from 1 to {MAX_TIMEOUT_SECONDS}"),
        ));
    }
    for (field, value) in [
        (
            "responseStartTimeoutSeconds",
            spec.response_start_timeout_seconds,
        ),
        ("idleTimeoutSeconds", spec.idle_timeout_seconds),
    ] {
        if let Some(v) = value
            && v > timeout
        {
            errors.push(Problem::new(
                format!("spec.template.spec.{field}"),
                format!("{v} must not exceed timeoutSeconds ({timeout})"),
            ));
        }
    }
    let annotations = t.metadata.annotations.clone();
    if let Some(Err(e)) = sluice_serving::progress::progress_deadline(&annotations) {
        errors.push(Problem::new("spec.template.metadata.annotations", e));
    }
    let initial_scale = match RevisionScaling::resolve(config, &annotations, cc) {
        Ok(scaling) => scaling.initial_scale,
        Err(e) => {
            errors.push(Problem::new("spec.template.metadata.annotations", e));
            0
        }
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mpa = annotations
        .get("autoscaling.knative.dev/class")
        .is_some_and(|c| c == MPA_CLASS);
    Ok(Revision {
        name: name.to_owned(),
        template: t.clone(),
        annotations,
        mpa,
        initial_scale,
        generation: 0,
        pod: PodSpec {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            revision: name.to_owned(),
            argv,
            env,
            container_concurrency: cc,
            timeout_seconds: timeout,
            response_start_timeout_seconds: spec.response_start_timeout_seconds,
            idle_timeout_seconds: spec.idle_timeout_seconds,
            readiness_probe: container.readiness_probe.clone(),
            container: serde_json::to_value(container).ok(),
        },
    })
}

fn resolve_traffic(
    s: &ServiceState,
    spec: Option<&[TrafficTarget]>,
) -> Result<Vec<Traffic>, Vec<Problem>> {
    let Some(latest) = s.revisions.last() else {
        return Ok(Vec::new());
    };
    let Some(spec) = spec else {
        return Ok(vec![Traffic {
            revision: latest.name.clone(),
            percent: 100,
            tag: None,
            latest: true,
        }]);
    };
    let mut errors = Vec::new();
    let mut out = Vec::new();
    let mut tags = BTreeMap::new();
    for (i, t) in spec.iter().enumerate() {
        let at = format!("spec.traffic[{i}]");
        let revision = match (t.revision_name.as_deref(), t.latest_revision) {
            (Some(_), Some(true)) => {
                errors.push(Problem::new(
                    &at,
                    "revisionName and latestRevision: true name two targets; give one",
                ));
                continue;
            }
            (Some(name), _) => {
                if !s.revisions.iter().any(|r| r.name == name) {
                    let known: Vec<&str> = s.revisions.iter().map(|r| r.name.as_str()).collect();
                    errors.push(Problem::new(
                        format!("{at}.revisionName"),
                        format!("no revision {name} (this service has {})", known.join(", ")),
                    ));
                    continue;
                }
                name.to_owned()
            }
            (None, Some(true)) => latest.name.clone(),
            (None, _) => {
                errors.push(Problem::new(
                    &at,
                    "give revisionName, or latestRevision: true",
                ));
                continue;
            }
        };
        let percent = t.percent.unwrap_or(0);
        if percent > 100 {
            errors.push(Problem::new(
                format!("{at}.percent"),
                format!("{percent} is over 100"),
            ));
        }
        if let Some(tag) = &t.tag {
            if let Err(e) = dns_label(tag) {
                errors.push(Problem::new(format!("{at}.tag"), e));
            }
            if tags.insert(tag.clone(), ()).is_some() {
                errors.push(Problem::new(
                    format!("{at}.tag"),
                    format!("{tag} is used twice"),
                ));
            }
        }
        out.push(Traffic {
            revision,
            percent,
            tag: t.tag.clone(),
            latest: t.revision_name.is_none(),
        });
    }
    let total: u32 = spec.iter().map(|t| t.percent.unwrap_or(0)).sum();
    if total != 100 {
        errors.push(Problem::new(
            "spec.traffic",
            format!("the percentages add up to {total}, not 100"),
        ));
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// A Kubernetes DNS-1035 label: lower-case letters, digits and '-', starting with a
/// letter, ending with a letter or digit, at most 63 characters.
fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a DNS label (lower-case letters, digits and '-', starting with a \
             letter, at most 63 characters)"
        ))
    }
}

/// The command a container runs: its `command` and `args`, or its image's local command
/// and `args`. A problem's `at` is the rest of the path after the container's.
pub fn argv(container: &Container, images: &ImageMap) -> Result<Vec<String>, Problem> {
    if !container.command.is_empty() {
        return Ok(container
            .command
            .iter()
            .chain(&container.args)
            .cloned()
            .collect());
    }
    match container.image.as_deref() {
        Some(image) => match images.command(image) {
            Some(cmd) => Ok(cmd.iter().chain(&container.args).cloned().collect()),
            None => Err(Problem::new(
                ".image",
                format!(
                    "{image} has no local command: give the container a `command`, or map \
                     the image in an --images file"
                ),
            )),
        },
        None => Err(Problem::new("", "give an image or a command")),
    }
}

#[cfg(test)]
mod tests;
