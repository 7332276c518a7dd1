//! Property tests of the inputs users write for `sluice`: Service manifests and `sluice
//! simulate` scenarios. No input may panic; a refused field is named in the error.

use proptest::prelude::*;
use sluice::run::manifest::Manifests;
use sluice::simulate::Scenario;

const SERVICE: &str = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: s
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/target: \"10\"
    spec:
      containerConcurrency: 5
      containers:
        - image: gcr.io/knative-samples/helloworld-go
          env: [{name: TARGET, value: x}]
  traffic:
    - latestRevision: true
      percent: 100
";

/// Places in a Service where a field may be added, with the indent its keys have there.
const PLACES: &[(&str, &str, &str)] = &[
    ("metadata:\n", "  ", "metadata."),
    ("spec:\n  template:", "  ", "spec."),
    ("    spec:\n", "      ", "spec.template.spec."),
    (
        "        - image",
        "          ",
        "spec.template.spec.containers[0].",
    ),
    ("    - latestRevision: true\n", "      ", "spec.traffic[0]."),
];

proptest! {
    #[test]
    fn any_text_as_a_manifest_never_panics(text in "\\PC{0,200}") {
        let _ = Manifests::parse("fuzz.yaml", &text);
    }

    #[test]
    fn yaml_shaped_noise_never_panics(
        lines in prop::collection::vec("( {0,6})(- )?[a-zA-Z]{1,12}: ?(\"[^\"]{0,8}\"|[0-9]{1,4}|\\[\\]|\\{\\}|)", 0..12)
    ) {
        let text = format!("apiVersion: serving.knative.dev/v1\nkind: Service\n{}", lines.join("\n"));
        let _ = Manifests::parse("fuzz.yaml", &text);
    }

    #[test]
    fn an_unknown_field_anywhere_is_refused_by_its_path(
        place in 0..PLACES.len(),
        name in "zz[a-z]{1,10}",
        value in "[a-z0-9]{1,8}",
    ) {
        let (anchor, indent, path) = PLACES[place];
        let at = SERVICE.find(anchor).expect("anchor");
        let line_end = at + SERVICE[at..].find('\n').expect("a line") + 1;
        let (head, tail) = SERVICE.split_at(line_end);
        // A field of the mapping that starts on the anchor's line (or below it).
        let doc = format!("{head}{indent}{name}: {value}\n{tail}");
        let errors = Manifests::parse("x.yaml", &doc).expect_err("an unknown field");
        let want = format!("{path}{name}: unknown field");
        prop_assert!(
            errors.iter().any(|e| e.to_string().contains(&want)),
            "{want} in {errors:?}\n{doc}"
        );
    }

    #[test]
    fn any_text_as_a_scenario_never_panics(text in "\\PC{0,200}") {
        let _ = Scenario::from_yaml(&text);
    }

    #[test]
    fn scenario_fields_with_bad_values_are_named(
        field in prop::sample::select(vec!["duration", "tick", "pods.startup"]),
        bad in prop_oneof![Just("soon".to_owned()), Just("-3s".to_owned()), "[a-z]{1,6}"],
    ) {
        let mut duration = "60s".to_owned();
        let mut tick = "2s".to_owned();
        let mut startup = "3s".to_owned();
        match field {
            "duration" => duration = bad.clone(),
            "tick" => tick = bad.clone(),
            _ => startup = bad.clone(),
        }
        let text = format!(
            "revision: {{}}\npods: {{initial: 1, startup: \"{startup}\"}}\ntraffic:\n  - {{from: 0s, to: 30s, concurrency: 5}}\nduration: \"{duration}\"\ntick: \"{tick}\"\n"
        );
        let e = Scenario::from_yaml(&text).expect_err("a bad value");
        prop_assert_eq!(e.field.as_str(), field, "{}", e);
    }
}
