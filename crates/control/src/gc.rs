//! Knative's revision garbage collection (`config-gc`; `pkg/reconciler/gc/v2/gc.go` and
//! `pkg/gc/config.go` in knative/serving), as plain code fed `now`.
//!
//! A revision is *active* while traffic names it, while it is its Configuration's latest
//! ready one, or while it carries `serving.knative.dev/no-gc: "true"`; only the others are
//! ever collected. Among those, newest last-active first, a revision is *stale* once it is
//! older than `retain-since-create-time` and has not been active for
//! `retain-since-last-active-time` (either `disabled` drops that test; both disabled makes
//! nothing stale). Past `min-non-active-revisions` stale ones, each further stale one is
//! collected; past `max-non-active-revisions` non-active ones, each further one is
//! collected, stale or not.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

/// The ConfigMap's name, in `knative-serving`.
pub const CONFIG_GC: &str = "config-gc";

/// The annotation that keeps a revision from being collected.
pub const NO_GC_ANNOTATION: &str = "serving.knative.dev/no-gc";

/// Whether `annotations` (a revision's template's, or its `Revision` object's) mark it
/// [`NO_GC_ANNOTATION`]: `"true"`, in any case, as Knative reads it.
pub fn marked_no_gc(annotations: &BTreeMap<String, String>) -> bool {
    annotations
        .get(NO_GC_ANNOTATION)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// `config-gc`, parsed. `None` is Knative's `disabled`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GcConfig {
    pub retain_since_create_time: Option<Duration>,
    pub retain_since_last_active_time: Option<Duration>,
    pub min_non_active_revisions: usize,
    pub max_non_active_revisions: Option<usize>,
}

impl Default for GcConfig {
    /// Knative's defaults: 48 h, 15 h, 20 and 1,000.
    fn default() -> Self {
        Self {
            retain_since_create_time: Some(Duration::from_secs(48 * 3600)),
            retain_since_last_active_time: Some(Duration::from_secs(15 * 3600)),
            min_non_active_revisions: 20,
            max_non_active_revisions: Some(1000),
        }
    }
}

const KEYS: [&str; 4] = [
    "retain-since-create-time",
    "retain-since-last-active-time",
    "min-non-active-revisions",
    "max-non-active-revisions",
];

impl GcConfig {
    /// Reads the ConfigMap's data: keys it leaves out keep Knative's defaults; `_example`
    /// and the keys of Knative's older collector are ignored as Knative ignores them. An
    /// error names the key and the value.
    pub fn from_data(data: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut c = Self::default();
        for (key, value) in data {
            let v = value.trim();
            match key.as_str() {
                "retain-since-create-time" => c.retain_since_create_time = duration(key, v)?,
                "retain-since-last-active-time" => {
                    c.retain_since_last_active_time = duration(key, v)?;
                }
                "min-non-active-revisions" => c.min_non_active_revisions = count(key, v)?,
                "max-non-active-revisions" if v == "disabled" => c.max_non_active_revisions = None,
                "max-non-active-revisions" => c.max_non_active_revisions = Some(count(key, v)?),
                "_example"
                | "stale-revision-create-delay"
                | "stale-revision-timeout"
                | "stale-revision-minimum-generations"
                | "stale-revision-lastpinned-debounce" => {}
                other => {
                    return Err(format!(
                        "{other}: not a {CONFIG_GC} key (Knative's are {})",
                        KEYS.join(", ")
                    ));
                }
            }
        }
        if let Some(max) = c.max_non_active_revisions
            && max < c.min_non_active_revisions
        {
            return Err(format!(
                "max-non-active-revisions ({max}) must be at least min-non-active-revisions ({})",
                c.min_non_active_revisions
            ));
        }
        Ok(c)
    }

    /// Nothing can ever be collected.
    pub fn disabled(&self) -> bool {
        self.max_non_active_revisions.is_none()
            && self.retain_since_create_time.is_none()
            && self.retain_since_last_active_time.is_none()
    }
}

fn duration(key: &str, v: &str) -> Result<Option<Duration>, String> {
    if v == "disabled" {
        return Ok(None);
    }
    match sluice_core::duration::parse(v) {
        Some(d) if !d.negative => Ok(Some(d.magnitude)),
        Some(_) => Err(format!(
            "{key}: {v:?} is negative (give a duration, or disabled)"
        )),
        None => Err(format!(
            "{key}: {v:?} is not a duration such as 48h, nor disabled"
        )),
    }
}

fn count(key: &str, v: &str) -> Result<usize, String> {
    v.parse()
        .map_err(|_| format!("{key}: {v:?} is not a whole number of revisions, 0 or more"))
}

/// One revision of a Configuration, as the collector sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub name: String,
    pub created: SystemTime,
    /// When traffic last named it (its creation, if never).
    pub last_active: SystemTime,
    /// Named by traffic, the latest ready one, or marked `no-gc`: never collected.
    pub active: bool,
}

/// Why a revision is collected, for the log and the event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collected {
    pub name: String,
    pub why: String,
}

/// The revisions of one Configuration to collect now, newest last-active first.
pub fn collect(config: &GcConfig, revisions: &[Candidate], now: SystemTime) -> Vec<Collected> {
    let (min, max) = (
        config.min_non_active_revisions,
        config.max_non_active_revisions,
    );
    if revisions.len() <= min || config.disabled() {
        return Vec::new();
    }
    let mut by_activity: Vec<&Candidate> = revisions.iter().collect();
    by_activity.sort_by_key(|r| std::cmp::Reverse(r.last_active));
    let age = |t: SystemTime| now.duration_since(t).unwrap_or_default();
    let (mut stale, mut non_active) = (0, 0);
    let mut out = Vec::new();
    for r in by_activity.into_iter().filter(|r| !r.active) {
        non_active += 1;
        if is_stale(config, r, age) {
            stale += 1;
        }
        let why = if stale > min {
            format!(
                "stale: created {} ago, last active {} ago, and {min} stale ones are kept",
                hours(age(r.created)),
                hours(age(r.last_active))
            )
        } else if let Some(max) = max.filter(|m| non_active > *m) {
            format!("more than {max} non-active revisions: the least recently active goes")
        } else {
            continue;
        };
        out.push(Collected {
            name: r.name.clone(),
            why,
        });
    }
    out
}

fn is_stale(config: &GcConfig, r: &Candidate, age: impl Fn(SystemTime) -> Duration) -> bool {
    let (create, active) = (
        config.retain_since_create_time,
        config.retain_since_last_active_time,
    );
    if create.is_none() && active.is_none() {
        return false;
    }
    if create.is_some_and(|d| age(r.created) < d) {
        return false;
    }
    active.is_none_or(|d| age(r.last_active) >= d)
}

/// A duration as people read it: `36h`, `15m`, `20s`.
fn hours(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

#[cfg(test)]
mod tests;
