use super::*;
use crate::images::SAMPLE_APP;

fn service(extra_template: &str, traffic: &str) -> String {
    format!(
        r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
spec:
  template:
    {extra_template}
    spec:
      containers:
        - image: gcr.io/knative-samples/helloworld-go
          env:
            - name: TARGET
              value: "v1"
{traffic}
"#
    )
}

fn apply(world: &World, yaml: &str) -> Result<(World, Changes), Vec<String>> {
    let m = Manifests::parse("test.yaml", yaml).expect("parses");
    let images = ImageMap::default();
    world
        .apply(&m, &Local::resolve(&m, &images))
        .map_err(|e| sluice_serving::problem::lines(&e))
}

#[test]
fn a_template_change_makes_the_next_revision_and_an_unchanged_one_does_not() {
    let (w1, c1) = apply(&World::default(), &service("", "")).expect("valid");
    assert_eq!(
        c1.new_revisions,
        [("default".into(), "hello".into(), "hello-00001".into())]
    );
    let s = &w1.services[&("default".to_owned(), "hello".to_owned())];
    assert_eq!(
        s.traffic,
        [Traffic {
            revision: "hello-00001".into(),
            percent: 100,
            tag: None,
            latest: true,
        }]
    );
    assert_eq!(s.revisions[0].pod.argv, [SAMPLE_APP]);
    assert_eq!(
        s.revisions[0].pod.env,
        [("TARGET".to_owned(), "v1".to_owned())]
    );
    assert_eq!(s.revisions[0].pod.timeout_seconds, 300);

    let (w2, c2) = apply(&w1, &service("", "")).expect("valid");
    assert!(
        c2.new_revisions.is_empty() && c2.traffic.is_empty(),
        "{c2:?}"
    );
    assert_eq!(c2.summary, ["service default/hello: unchanged"]);

    let v2 = service("", "").replace("value: \"v1\"", "value: \"v2\"");
    let (w3, c3) = apply(&w2, &v2).expect("valid");
    assert_eq!(c3.new_revisions[0].2, "hello-00002");
    let s = &w3.services[&("default".to_owned(), "hello".to_owned())];
    assert_eq!(
        s.traffic[0].revision, "hello-00002",
        "latest takes the traffic"
    );
    assert_eq!(s.revisions.len(), 2);
}

#[test]
fn a_service_given_twice_reports_its_final_traffic_against_the_world_before() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/traffic-split.yaml"
    ))
    .expect("example");
    let (w1, c1) = apply(&World::default(), &yaml).expect("valid");
    assert_eq!(
        c1.summary,
        [
            "service default/hello: revision hello-v1 created",
            "service default/hello: revision hello-v2 created",
            "service default/hello: traffic hello-v1 50%, hello-v2 50% (latest, once ready)",
        ],
        "the first document's 100% to hello-v1 was a step, not the result"
    );
    assert_eq!(c1.traffic, [("default".to_owned(), "hello".to_owned())]);
    // Again: the first document alone would send everything to hello-v2, the second
    // splits again; nothing changes and nothing is reported as changed.
    let (_, c2) = apply(&w1, &yaml).expect("valid");
    assert_eq!(c2.summary, ["service default/hello: unchanged"]);
    assert!(
        c2.traffic.is_empty() && c2.new_revisions.is_empty(),
        "{c2:?}"
    );
}

#[test]
fn annotations_are_part_of_the_template() {
    let (w1, _) = apply(&World::default(), &service("", "")).expect("valid");
    let annotated = service(
        "metadata:\n      annotations:\n        autoscaling.knative.dev/max-scale: \"3\"",
        "",
    );
    let (_, c) = apply(&w1, &annotated).expect("valid");
    assert_eq!(c.new_revisions[0].2, "hello-00002");
}

#[test]
fn a_split_with_tags_resolves_names_and_latest() {
    let (w1, _) = apply(&World::default(), &service("", "")).expect("valid");
    let v2 = service("", "").replace("value: \"v1\"", "value: \"v2\"");
    let split = format!(
        "{}  traffic:\n    - revisionName: hello-00001\n      percent: 50\n      tag: blue\n    \
         - latestRevision: true\n      percent: 50\n      tag: green\n",
        v2
    );
    let (w2, c) = apply(&w1, &split).expect("valid");
    assert_eq!(c.traffic.len(), 1);
    let s = &w2.services[&("default".to_owned(), "hello".to_owned())];
    assert_eq!(
        s.traffic,
        [
            Traffic {
                revision: "hello-00001".into(),
                percent: 50,
                tag: Some("blue".into()),
                latest: false,
            },
            Traffic {
                revision: "hello-00002".into(),
                percent: 50,
                tag: Some("green".into()),
                latest: true,
            }
        ]
    );
}

#[test]
fn traffic_rules_are_each_reported_with_their_field_and_nothing_changes() {
    let (w1, _) = apply(&World::default(), &service("", "")).expect("valid");
    let bad = format!(
        "{}  traffic:\n    - revisionName: hello-00009\n      percent: 60\n    \
         - revisionName: hello-00001\n      latestRevision: true\n      percent: 30\n    \
         - percent: 5\n      tag: Bad_Tag\n",
        service("", "")
    );
    let errors = apply(&w1, &bad).expect_err("refused");
    let all = errors.join("\n");
    for want in [
        "service default/hello: spec.traffic[0].revisionName: no revision hello-00009 (this service has hello-00001)",
        "spec.traffic[1]: revisionName and latestRevision: true name two targets",
        "spec.traffic[2]: give revisionName, or latestRevision: true",
        "spec.traffic: the percentages add up to 95, not 100",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    // The world that refused is the one that stays.
    assert_eq!(w1.services.len(), 1);
}

#[test]
fn bad_revisions_name_their_fields() {
    let bad = service(
        "metadata:\n      name: other-name\n      annotations:\n        autoscaling.knative.dev/target: \"-3\"",
        "",
    )
    .replace(
        "image: gcr.io/knative-samples/helloworld-go",
        "image: example.com/unmapped:1",
    )
    .replace("name: TARGET", "name: PORT");
    let errors = apply(&World::default(), &bad).expect_err("refused");
    let all = errors.join("\n");
    for want in [
        "spec.template.metadata.name: \"other-name\" must start with \"hello-\"",
        "spec.template.spec.containers[0].image: example.com/unmapped:1 has no local command",
        "spec.template.spec.containers[0].env[0].name: PORT is reserved",
        "spec.template.metadata.annotations: ",
        "autoscaling.knative.dev/target",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn the_planner_takes_what_is_missing_from_its_input_not_from_the_machine() {
    let yaml = service("", "").replace(
        "image: gcr.io/knative-samples/helloworld-go",
        "image: x\n          command: [\"not-on-any-machine\"]",
    );
    let m = Manifests::parse("test.yaml", &yaml).expect("parses");
    let images = ImageMap::default();
    let told = |missing: &[&str]| Local {
        images: &images,
        missing: missing.iter().map(|p| (*p).to_owned()).collect(),
        cluster: false,
    };
    assert!(
        World::default().apply(&m, &told(&[])).is_ok(),
        "nothing said missing: planned, though no machine has it"
    );
    let errors = World::default()
        .apply(&m, &told(&["not-on-any-machine"]))
        .map_err(|e| sluice_serving::problem::lines(&e))
        .expect_err("refused");
    assert!(errors.join("\n").contains("not found"), "{errors:?}");
}

#[test]
fn a_missing_program_is_refused() {
    let yaml = service("", "").replace(
        "image: gcr.io/knative-samples/helloworld-go",
        "image: x\n          command: [\"/nonexistent/app\"]",
    );
    let errors = apply(&World::default(), &yaml).expect_err("refused");
    assert!(
        errors
            .join("\n")
            .contains("containers[0].command: program \"/nonexistent/app\" not found"),
        "{errors:?}"
    );
    let on_path = service("", "").replace(
        "image: gcr.io/knative-samples/helloworld-go",
        "image: x\n          command: [\"sh\", \"-c\", \"exit 0\"]",
    );
    apply(&World::default(), &on_path).expect("sh is on PATH");
}

#[test]
fn a_config_change_is_checked_against_running_revisions() {
    let yaml = service(
        "metadata:\n      annotations:\n        autoscaling.knative.dev/window: \"10s\"",
        "",
    );
    let (w1, _) = apply(&World::default(), &yaml).expect("valid");
    let config = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: config-autoscaler\n  \
                  namespace: knative-serving\ndata:\n  stable-window: \"20s\"\n";
    let (w2, c) = apply(&w1, config).expect("valid");
    assert!(c.config);
    assert_eq!(w2.config_data["stable-window"], "20s");
    let bad = config.replace("20s", "forever");
    let errors = apply(&w2, &bad).expect_err("refused");
    assert!(
        errors[0].starts_with("ConfigMap config-autoscaler:"),
        "{errors:?}"
    );
}

#[test]
fn named_revisions_keep_their_name_and_cannot_change_silently() {
    let named = service("metadata:\n      name: hello-first", "");
    let (w1, c) = apply(&World::default(), &named).expect("valid");
    assert_eq!(c.new_revisions[0].2, "hello-first");
    let changed = named.replace("value: \"v1\"", "value: \"v2\"");
    let errors = apply(&w1, &changed).expect_err("refused");
    assert!(
        errors[0].contains("revision hello-first already exists with a different template"),
        "{errors:?}"
    );
}

#[test]
fn the_mpa_class_is_noticed() {
    let yaml = service(
        "metadata:\n      annotations:\n        autoscaling.knative.dev/class: mpa.autoscaling.knative.dev",
        "",
    );
    let (w, _) = apply(&World::default(), &yaml).expect("valid");
    let (_, rev) = w.revision("default", "hello-00001").expect("exists");
    assert!(rev.mpa);
}

#[test]
fn on_kubernetes_a_container_runs_its_image_as_written() {
    let images = ImageMap::default();
    let cluster = Local::cluster(&images);
    // No local command for this image, and a valueFrom: both fine on Kubernetes.
    let yaml = service("", "").replace(
        "value: \"v1\"",
        "value: \"v1\"\n            - name: POD\n              valueFrom: {fieldRef: {fieldPath: metadata.name}}",
    ).replace("gcr.io/knative-samples/helloworld-go", "registry.example.com/app:1");
    let m = Manifests::parse("test.yaml", &yaml).expect("parses");
    let (next, _) = World::default().apply(&m, &cluster).expect("planned");
    let (_, rev) = next.revision("default", "hello-00001").expect("revision");
    let container = rev
        .pod
        .container
        .as_ref()
        .expect("the container as written");
    assert_eq!(container["image"], "registry.example.com/app:1");
    assert_eq!(
        container["env"][1]["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    assert!(rev.pod.argv.is_empty());
    // The same manifest is refused locally, naming why.
    let local = World::default().apply(&m, &Local::resolve(&m, &images));
    assert!(local.is_err());

    let no_image = service("", "").replace(
        "- image: gcr.io/knative-samples/helloworld-go",
        "- command: [\"/app\"]",
    );
    let m = Manifests::parse("test.yaml", &no_image).expect("parses");
    let errors = World::default().apply(&m, &cluster).expect_err("refused");
    let lines = sluice_serving::problem::lines(&errors);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("spec.template.spec.containers[0].image")
                && l.contains("give an image")),
        "{lines:?}"
    );
}

#[test]
fn a_removed_service_leaves_the_others() {
    let (w, _) = apply(&World::default(), &service("", "")).expect("applied");
    let other = service("", "").replace("name: hello", "name: other");
    let (mut w, _) = apply(&w, &other).expect("applied");
    let gone = w.remove_service("default", "hello").expect("was there");
    assert_eq!(gone.revisions[0].name, "hello-00001");
    assert!(w.revision("default", "hello-00001").is_none());
    assert!(w.revision("default", "other-00001").is_some());
    assert!(w.remove_service("default", "hello").is_none());
}

#[test]
fn a_progress_deadline_that_is_not_a_positive_duration_is_refused_naming_the_annotation() {
    let with = |v: &str| {
        service(
            &format!(
                "metadata:\n      annotations:\n        serving.knative.dev/progress-deadline: \"{v}\""
            ),
            "",
        )
    };
    let errors = apply(&World::default(), &with("soon"))
        .expect_err("refused")
        .join("\n");
    assert!(
        errors.contains(
            "spec.template.metadata.annotations: serving.knative.dev/progress-deadline: \"soon\" is not a positive duration"
        ),
        "{errors}"
    );
    apply(&World::default(), &with("0s")).expect_err("zero is refused");
    apply(&World::default(), &with("90s")).expect("valid");
}
