//! What is wrong with users' input, named where it is: one [`Problem`] per broken rule,
//! and all of them at once (`sluice run`, `sluice apply` and the admin port print every
//! one, and change nothing).

use std::fmt;

/// One broken rule: where (a file, a service, a field path such as
/// `spec.traffic[0].percent`) and what.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub at: String,
    pub message: String,
}

impl Problem {
    pub fn new(at: impl Into<String>, message: impl fmt::Display) -> Self {
        Self {
            at: at.into(),
            message: message.to_string(),
        }
    }

    /// The same problem inside `outer` (a file, a service): `outer: at`.
    pub fn within(mut self, outer: &str) -> Self {
        self.at = if self.at.is_empty() {
            outer.to_owned()
        } else {
            format!("{outer}: {}", self.at)
        };
        self
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.at.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.at, self.message)
        }
    }
}

/// Each problem as the line users read.
pub fn lines(problems: &[Problem]) -> Vec<String> {
    problems.iter().map(ToString::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_reads_where_then_what_and_nests() {
        let p = Problem::new("spec.traffic[0].percent", "120 is over 100");
        assert_eq!(p.to_string(), "spec.traffic[0].percent: 120 is over 100");
        assert_eq!(
            p.within("service default/hello").to_string(),
            "service default/hello: spec.traffic[0].percent: 120 is over 100"
        );
        assert_eq!(
            Problem::new("", "no manifest").within("a.yaml").to_string(),
            "a.yaml: no manifest"
        );
    }
}
