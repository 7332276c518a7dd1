use super::*;

fn at(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).expect("time")
}

fn facts() -> Facts {
    Facts {
        namespace: "default".into(),
        name: "autoscale-go".into(),
        generation: 1,
        domain: "example.com".into(),
        latest_created: Some("autoscale-go-00001".into()),
        traffic: vec![TrafficFact {
            revision: "autoscale-go-00001".into(),
            percent: 100,
            tag: None,
            ready: false,
            latest: true,
        }],
        ..Facts::default()
    }
}

fn condition<'a>(s: &'a ServiceStatus, t: &str) -> &'a Condition {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition")
}

#[test]
fn a_new_revision_is_unknown_until_ready_then_everything_is_ready() {
    let mut f = facts();
    let s = service_status(&f, None, at(0));
    assert_eq!(condition(&s, "Ready").status, "Unknown");
    assert_eq!(
        condition(&s, "ConfigurationsReady").reason,
        "RevisionMissing"
    );
    assert_eq!(
        s.url.as_deref(),
        Some("http://autoscale-go.default.example.com")
    );
    assert_eq!(
        s.address.as_ref().map(|a| a.url.as_str()),
        Some("http://autoscale-go.default.svc.cluster.local")
    );
    assert_eq!(
        s.latest_created_revision_name.as_deref(),
        Some("autoscale-go-00001")
    );
    assert_eq!(s.latest_ready_revision_name, None);

    f.latest_ready = Some("autoscale-go-00001".into());
    f.traffic[0].ready = true;
    let s2 = service_status(&f, Some(&s), at(5));
    for t in ["Ready", "ConfigurationsReady", "RoutesReady"] {
        let c = condition(&s2, t);
        assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", ""), "{t}");
        assert_eq!(
            c.last_transition_time,
            Some(at(5).to_string()),
            "{t} changed"
        );
    }
    assert_eq!(s2.traffic[0].latest_revision, Some(true));
    // Nothing changed: the times stay.
    let s3 = service_status(&f, Some(&s2), at(9));
    assert_eq!(s3, s2);
    // The JSON is Knative's shape.
    let json = serde_json::to_value(&s3).expect("json");
    assert_eq!(json["observedGeneration"], 1);
    assert_eq!(json["latestReadyRevisionName"], "autoscale-go-00001");
    assert_eq!(json["traffic"][0]["revisionName"], "autoscale-go-00001");
    assert_eq!(json["conditions"][1]["type"], "Ready");
}

#[test]
fn a_refused_spec_is_ready_false_naming_the_field_while_traffic_stays() {
    let mut f = facts();
    f.generation = 2;
    f.latest_ready = Some("autoscale-go-00001".into());
    f.traffic[0].ready = true;
    f.refused =
        Some("spec.template.spec.containerConcurrency: 5000 is over the limit of 1000".into());
    let s = service_status(&f, None, at(0));
    let ready = condition(&s, "Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "InvalidSpec")
    );
    assert!(
        ready.message.contains("containerConcurrency"),
        "{}",
        ready.message
    );
    assert_eq!(condition(&s, "RoutesReady").status, "True");
    assert_eq!(s.observed_generation, 2);
    assert_eq!(s.traffic.len(), 1);
}

#[test]
fn a_failing_latest_revision_is_named_while_the_older_one_serves() {
    let mut f = facts();
    f.latest_created = Some("autoscale-go-00002".into());
    f.latest_ready = Some("autoscale-go-00001".into());
    f.latest_failure = Some("image pull failed".into());
    f.traffic[0].ready = true;
    let s = service_status(&f, None, at(0));
    let c = condition(&s, "ConfigurationsReady");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RevisionFailed")
    );
    assert!(c.message.contains("autoscale-go-00002") && c.message.contains("image pull failed"));
    assert_eq!(condition(&s, "Ready").status, "False");
    // The latest revision's traffic is served by the latest ready one, as Knative shows
    // it: `latestRevision: true` on a target naming 00001.
    assert_eq!(
        (
            s.traffic[0].revision_name.as_str(),
            s.traffic[0].latest_revision
        ),
        ("autoscale-go-00001", Some(true))
    );
}

fn revision_condition<'a>(s: &'a RevisionStatus, t: &str) -> (&'a str, &'a str) {
    let c = s
        .conditions
        .iter()
        .find(|c| c.type_ == t)
        .expect("condition");
    (c.status.as_str(), c.reason.as_str())
}

#[test]
fn a_revision_deploys_becomes_ready_and_stays_ready_at_zero() {
    let mut f = RevisionFacts::default();
    let s = revision_status(&f, None, at(0));
    assert_eq!(revision_condition(&s, "Ready"), ("Unknown", "Deploying"));
    assert_eq!(revision_condition(&s, "Active"), ("Unknown", "Queued"));
    assert_eq!((s.actual_replicas, s.desired_replicas), (0, None));

    f.ready_once = true;
    f.ready_pods = 2;
    f.desired = Some(3);
    let up = revision_status(&f, Some(&s), at(5));
    for t in ["Ready", "ContainerHealthy", "ResourcesAvailable", "Active"] {
        assert_eq!(revision_condition(&up, t).0, "True", "{t}");
    }
    assert_eq!((up.actual_replicas, up.desired_replicas), (2, Some(3)));
    let json = serde_json::to_value(&up).expect("json");
    assert_eq!(
        (
            json["actualReplicas"].clone(),
            json["desiredReplicas"].clone()
        ),
        (2.into(), 3.into())
    );

    f.ready_pods = 0;
    f.desired = Some(0);
    let zero = revision_status(&f, Some(&up), at(9));
    assert_eq!(revision_condition(&zero, "Ready"), ("True", ""));
    assert_eq!(revision_condition(&zero, "Active"), ("False", "NoTraffic"));
    let ready_at = |s: &RevisionStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == "Ready")
            .and_then(|c| c.last_transition_time.clone())
    };
    assert_eq!(ready_at(&zero), ready_at(&up), "Ready did not change");
}

#[test]
fn a_revision_whose_workload_is_refused_is_not_ready_with_the_reason() {
    let f = RevisionFacts {
        failure: Some("creating deployment x: Invalid".into()),
        ..RevisionFacts::default()
    };
    let s = revision_status(&f, None, at(0));
    assert_eq!(revision_condition(&s, "Ready"), ("False", "RevisionFailed"));
    assert_eq!(
        revision_condition(&s, "ResourcesAvailable"),
        ("False", "RevisionFailed")
    );
    let ready = s
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("ready");
    assert_eq!(ready.message, "creating deployment x: Invalid");
}

fn message<'a>(s: &'a RevisionStatus, t: &str) -> &'a str {
    s.conditions
        .iter()
        .find(|c| c.type_ == t)
        .map_or("", |c| c.message.as_str())
}

#[test]
fn a_crashing_app_fails_container_healthy_and_ready_until_a_pod_is_ready() {
    let mut f = RevisionFacts {
        pod_failure: Some(PodFailure::Exited {
            code: 1,
            message: "cannot open /config.yaml".into(),
        }),
        desired: Some(1),
        ..RevisionFacts::default()
    };
    let s = revision_status(&f, None, at(0));
    assert_eq!(
        revision_condition(&s, "ContainerHealthy"),
        ("False", "ExitCode1")
    );
    assert_eq!(revision_condition(&s, "Ready"), ("False", "ExitCode1"));
    assert_eq!(
        message(&s, "Ready"),
        "Container failed with: cannot open /config.yaml"
    );
    assert_eq!(
        revision_condition(&s, "ResourcesAvailable"),
        ("Unknown", "Deploying")
    );

    // A revision that was ready and whose every pod now crashes is not ready (Knative).
    f.ready_once = true;
    let s = revision_status(&f, Some(&s), at(5));
    assert_eq!(revision_condition(&s, "Ready"), ("False", "ExitCode1"));
    assert_eq!(revision_condition(&s, "ResourcesAvailable"), ("True", ""));

    // One ready pod: the failing one is not read (as Knative, with an available replica).
    f.ready_pods = 1;
    let s = revision_status(&f, Some(&s), at(9));
    for t in ["Ready", "ContainerHealthy", "ResourcesAvailable", "Active"] {
        assert_eq!(revision_condition(&s, t).0, "True", "{t}");
    }
}

#[test]
fn an_image_that_cannot_be_pulled_leaves_resources_unavailable_and_a_refusal_comes_first() {
    let pull = PodFailure::Image {
        container: "user-container".into(),
        reason: "ImagePullBackOff".into(),
        message: "Back-off pulling image \"example.com/nope:1\"".into(),
    };
    let mut f = RevisionFacts {
        pod_failure: Some(pull),
        ..RevisionFacts::default()
    };
    let s = revision_status(&f, None, at(0));
    assert_eq!(
        revision_condition(&s, "ResourcesAvailable"),
        ("False", "ImagePullBackOff")
    );
    assert_eq!(
        revision_condition(&s, "Ready"),
        ("False", "ImagePullBackOff")
    );
    assert_eq!(
        message(&s, "Ready"),
        "Back-off pulling image \"example.com/nope:1\""
    );
    assert_eq!(
        revision_condition(&s, "ContainerHealthy"),
        ("Unknown", "Deploying")
    );

    f.failure = Some("scaling: Forbidden".into());
    let s = revision_status(&f, Some(&s), at(1));
    assert_eq!(revision_condition(&s, "Ready"), ("False", "RevisionFailed"));
}

fn ready(status: &str, reason: &str, message: &str) -> Vec<Condition> {
    vec![Condition {
        type_: "Ready".into(),
        status: status.into(),
        last_transition_time: None,
        reason: reason.into(),
        message: message.into(),
    }]
}

#[test]
fn a_change_of_ready_is_told_once_a_failure_as_a_warning() {
    let deploying = ready("Unknown", "Deploying", "");
    let up = ready("True", "", "");
    let crashed = ready("False", "ExitCode1", "Container failed with: boom");
    let note = "Revision x is ready";
    assert_eq!(ready_notice(None, &deploying, note), None);
    assert_eq!(
        ready_notice(Some(&deploying), &up, note),
        Some(Notice {
            warning: false,
            reason: "Ready".into(),
            note: note.into()
        })
    );
    assert_eq!(
        ready_notice(Some(&up), &up, note),
        None,
        "no change, no event"
    );
    // Ready when the control plane started: not news.
    assert_eq!(ready_notice(None, &up, note), None);
    let warned = Some(Notice {
        warning: true,
        reason: "ExitCode1".into(),
        note: "Container failed with: boom".into(),
    });
    assert_eq!(ready_notice(Some(&up), &crashed, note), warned);
    // A failure is told even when what came before is not known.
    assert_eq!(ready_notice(None, &crashed, note), warned);
    assert_eq!(ready_notice(Some(&crashed), &crashed, note), None);
    // Still failing, for another reason: told.
    let pulled = ready("False", "ImagePullBackOff", "Back-off pulling image");
    assert_eq!(
        ready_notice(Some(&crashed), &pulled, note).map(|n| n.reason),
        Some("ImagePullBackOff".into())
    );
}

fn of<'a>(cs: &'a [Condition], t: &str) -> (&'a str, &'a str, &'a str) {
    let c = cs.iter().find(|c| c.type_ == t).expect("condition");
    (c.status.as_str(), c.reason.as_str(), c.message.as_str())
}

#[test]
fn the_configuration_and_route_say_what_the_service_copies_from_them() {
    let mut f = facts();
    let c = configuration_status(&f, None, at(0));
    assert_eq!(
        of(&c.conditions, "Ready"),
        (
            "Unknown",
            "RevisionMissing",
            "Configuration \"autoscale-go\" is waiting for a Revision to become ready."
        )
    );
    assert_eq!(
        c.latest_created_revision_name.as_deref(),
        Some("autoscale-go-00001")
    );
    let r = route_status(&f, None, at(0));
    assert_eq!(
        of(&r.conditions, "AllTrafficAssigned"),
        (
            "Unknown",
            "RevisionMissing",
            "Revision \"autoscale-go-00001\" is not yet ready."
        )
    );
    assert_eq!(
        of(&r.conditions, "IngressReady"),
        (
            "Unknown",
            "IngressNotConfigured",
            "Ingress has not yet been reconciled."
        )
    );
    assert_eq!(
        of(&r.conditions, "CertificateProvisioned"),
        (
            "True",
            "TLSNotEnabled",
            "external-domain-tls is not enabled"
        )
    );
    assert_eq!(of(&r.conditions, "Ready").1, "RevisionMissing");
    // The Service's conditions are the children's Ready.
    let s = service_status(&f, None, at(0));
    assert_eq!(of(&s.conditions, "RoutesReady"), of(&r.conditions, "Ready"));
    assert_eq!(
        of(&s.conditions, "ConfigurationsReady"),
        of(&c.conditions, "Ready")
    );

    f.latest_ready = Some("autoscale-go-00001".into());
    f.traffic[0].ready = true;
    let c2 = configuration_status(&f, Some(&c), at(5));
    assert_eq!(of(&c2.conditions, "Ready"), ("True", "", ""));
    assert_eq!(
        c2.latest_ready_revision_name.as_deref(),
        Some("autoscale-go-00001")
    );
    let r2 = route_status(&f, Some(&r), at(5));
    for t in ["AllTrafficAssigned", "IngressReady", "Ready"] {
        assert_eq!(of(&r2.conditions, t), ("True", "", ""), "{t}");
    }
    let kept = |s: &RouteStatus, t: &str| {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .and_then(|c| c.last_transition_time.clone())
    };
    assert_eq!(kept(&r2, "CertificateProvisioned"), Some(at(0).to_string()));
    assert_eq!(kept(&r2, "Ready"), Some(at(5).to_string()));
    assert_eq!(
        r2.url.as_deref(),
        Some("http://autoscale-go.default.example.com")
    );
    let json = serde_json::to_value(&r2).expect("json");
    assert_eq!(json["traffic"][0]["revisionName"], "autoscale-go-00001");
    assert_eq!(
        json["address"]["url"],
        "http://autoscale-go.default.svc.cluster.local"
    );
}

#[test]
fn a_new_revision_that_fails_while_the_old_one_serves_fails_the_configuration_not_the_route() {
    let mut f = facts();
    f.latest_ready = Some("autoscale-go-00001".into());
    f.traffic[0].ready = true;
    f.latest_created = Some("autoscale-go-00002".into());
    f.latest_failure = Some("exit code 1".into());
    let c = configuration_status(&f, None, at(0));
    assert_eq!(
        of(&c.conditions, "Ready"),
        (
            "False",
            "RevisionFailed",
            "Revision \"autoscale-go-00002\" failed with message: exit code 1."
        )
    );
    let r = route_status(&f, None, at(0));
    assert_eq!(of(&r.conditions, "Ready"), ("True", "", ""));

    // Pinned to the failed one: the route fails too.
    f.traffic[0].revision = "autoscale-go-00002".into();
    f.traffic[0].ready = false;
    let r = route_status(&f, None, at(0));
    assert_eq!(
        of(&r.conditions, "AllTrafficAssigned"),
        (
            "False",
            "RevisionMissing",
            "Revision \"autoscale-go-00002\" failed to become ready."
        )
    );
    assert_eq!(of(&r.conditions, "Ready").0, "False");
}

#[test]
fn a_child_owned_by_another_fails_the_services_condition_for_it() {
    let mut f = facts();
    f.child_problem = Some(crate::children::Problem {
        kind: "Route".into(),
        reason: "NotOwned".into(),
        message: "There is an existing Route \"autoscale-go\" that we do not own.".into(),
    });
    let s = service_status(&f, None, at(0));
    let expected = (
        "False",
        "NotOwned",
        "There is an existing Route \"autoscale-go\" that we do not own.",
    );
    assert_eq!(of(&s.conditions, "RoutesReady"), expected);
    assert_eq!(of(&s.conditions, "Ready"), expected);
    assert_eq!(of(&s.conditions, "ConfigurationsReady").0, "Unknown");
}
