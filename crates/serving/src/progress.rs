//! How long a revision's pods may take to come up: Knative's
//! `serving.knative.dev/progress-deadline` annotation over `config-deployment`'s default.

use std::collections::BTreeMap;

/// The annotation that sets how long a revision's Deployment may take to come up
/// (Knative's; a Go duration).
pub const PROGRESS_DEADLINE_ANNOTATION: &str = "serving.knative.dev/progress-deadline";

/// Knative's `config-deployment` `progress-deadline` default: 600 s.
pub const DEFAULT_PROGRESS_DEADLINE_SECONDS: i32 = 600;

/// The Deployment's `progressDeadlineSeconds` from
/// [`PROGRESS_DEADLINE_ANNOTATION`], rounded up to whole seconds as Knative does; `None`
/// when absent; `Err` for a value that is not a positive duration.
pub fn progress_deadline(annotations: &BTreeMap<String, String>) -> Option<Result<i32, String>> {
    let v = annotations.get(PROGRESS_DEADLINE_ANNOTATION)?;
    let parsed =
        sluice_core::duration::parse(v.trim()).filter(|d| !d.negative && !d.magnitude.is_zero());
    Some(match parsed {
        Some(d) => Ok(i32::try_from(
            d.magnitude.as_secs() + u64::from(d.magnitude.subsec_nanos() > 0),
        )
        .unwrap_or(i32::MAX)),
        None => Err(format!(
            "{PROGRESS_DEADLINE_ANNOTATION}: {v:?} is not a positive duration (such as 600s or 10m)"
        )),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_deadline_annotation_is_a_positive_duration_rounded_up_to_seconds() {
        let deadline = |v: &str| {
            progress_deadline(&BTreeMap::from([(
                PROGRESS_DEADLINE_ANNOTATION.to_owned(),
                v.to_owned(),
            )]))
        };
        assert_eq!(deadline("3s"), Some(Ok(3)));
        assert_eq!(deadline("1.5s"), Some(Ok(2)));
        assert_eq!(deadline("10m"), Some(Ok(600)));
        for bad in ["0s", "-5s", "soon", ""] {
            let e = deadline(bad).expect("present").expect_err(bad);
            assert!(e.contains(PROGRESS_DEADLINE_ANNOTATION), "{e}");
        }
        assert_eq!(progress_deadline(&BTreeMap::new()), None);
    }
}
