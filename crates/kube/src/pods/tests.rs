use serde_json::json;

use super::*;

fn pod(name: &str, revision: &str, status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {REVISION_LABEL: revision},
        },
        "status": status,
    }))
    .expect("a Pod")
}

fn user(state: serde_json::Value, last: serde_json::Value) -> serde_json::Value {
    json!({
        "name": "user-container", "image": "example.com/app", "imageID": "",
        "ready": false, "restartCount": 3, "state": state, "lastState": last,
    })
}

fn queue(state: serde_json::Value) -> serde_json::Value {
    json!({
        "name": "queue-proxy", "image": "sluice-queue-proxy", "imageID": "",
        "ready": false, "restartCount": 0, "state": state, "lastState": {},
    })
}

#[test]
fn an_app_that_exits_fails_its_container_with_the_exit_code_and_message() {
    let p = pod(
        "crash-00001-1",
        "crash-00001",
        json!({"containerStatuses": [
            queue(json!({"running": {}})),
            user(
                json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}),
                json!({"terminated": {"exitCode": 1, "reason": "Error", "message": "cannot open /config.yaml\n"}}),
            ),
        ]}),
    );
    let why = failure(&p).expect("a failure");
    assert_eq!(
        why,
        PodFailure::Exited {
            code: 1,
            message: "cannot open /config.yaml".into()
        }
    );
    assert_eq!(
        why.condition(),
        (
            "ContainerHealthy",
            "ExitCode1".to_owned(),
            "Container failed with: cannot open /config.yaml".to_owned()
        )
    );
}

#[test]
fn an_image_that_cannot_be_pulled_leaves_resources_unavailable_with_the_kubelets_words() {
    let p = pod(
        "pull-00001-1",
        "pull-00001",
        json!({"containerStatuses": [
            user(
                json!({"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"example.com/nope:1\""}}),
                json!({}),
            ),
            queue(json!({"running": {}})),
        ]}),
    );
    assert_eq!(
        failure(&p).expect("a failure").condition(),
        (
            "ResourcesAvailable",
            "ImagePullBackOff".to_owned(),
            "Back-off pulling image \"example.com/nope:1\"".to_owned()
        )
    );
    // The queue-proxy's image is read too: a wrong --queue-proxy-image fails every pod.
    let p = pod(
        "pull-00001-2",
        "pull-00001",
        json!({"containerStatuses": [
            user(json!({"running": {}}), json!({})),
            queue(json!({"waiting": {"reason": "ErrImagePull", "message": "not found"}})),
        ]}),
    );
    assert_eq!(
        failure(&p),
        Some(PodFailure::Image {
            container: "queue-proxy".into(),
            reason: "ErrImagePull".into(),
            message: "not found".into()
        })
    );
}

#[test]
fn an_unschedulable_pod_says_why_before_any_container_state() {
    let p = pod(
        "big-00001-1",
        "big-00001",
        json!({"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/3 nodes are available: 3 Insufficient cpu.",
        }]}),
    );
    assert_eq!(
        failure(&p).expect("a failure").condition(),
        (
            "ResourcesAvailable",
            "Unschedulable".to_owned(),
            "0/3 nodes are available: 3 Insufficient cpu.".to_owned()
        )
    );
}

#[test]
fn starting_running_and_normally_ended_pods_are_not_failures() {
    for status in [
        json!({}),
        json!({"containerStatuses": [
            user(json!({"waiting": {"reason": "ContainerCreating"}}), json!({})),
            queue(json!({"waiting": {"reason": "ContainerCreating"}})),
        ]}),
        json!({"containerStatuses": [user(json!({"running": {}}), json!({})), queue(json!({"running": {}}))]}),
        json!({"containerStatuses": [
            user(json!({"terminated": {"exitCode": 0, "reason": "Completed"}}), json!({})),
        ]}),
        json!({"conditions": [{"type": "PodScheduled", "status": "True"}]}),
    ] {
        assert_eq!(failure(&pod("p", "r", status.clone())), None, "{status}");
    }
}

#[test]
fn each_revision_gets_its_first_failing_pod_by_name() {
    let exited = |code: i32| {
        json!({"containerStatuses": [user(
            json!({"waiting": {"reason": "CrashLoopBackOff"}}),
            json!({"terminated": {"exitCode": code, "message": ""}}),
        )]})
    };
    let mut gone = pod("a-00001-0", "a-00001", exited(9));
    gone.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
    ));
    let mut unlabelled = pod("a-00001-00", "a-00001", exited(7));
    unlabelled.metadata.labels = None;
    let pods = [
        pod("a-00001-3", "a-00001", exited(3)),
        pod("a-00001-1", "a-00001", exited(1)),
        pod("a-00001-2", "a-00001", exited(2)),
        pod("a-00001-0b", "a-00001", json!({})),
        gone,
        unlabelled,
        pod("b-00001-1", "b-00001", exited(137)),
    ];
    let first = first_failures(&pods);
    assert_eq!(
        first,
        BTreeMap::from([
            (
                RevisionKey::new("default", "a-00001"),
                PodFailure::Exited {
                    code: 1,
                    message: String::new()
                }
            ),
            (
                RevisionKey::new("default", "b-00001"),
                PodFailure::Exited {
                    code: 137,
                    message: String::new()
                }
            ),
        ])
    );
}

fn deployment_with(revision: &str, conditions: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {
            "name": format!("{revision}-deployment"),
            "namespace": "default",
            "labels": {REVISION_LABEL: revision},
        },
        "status": {"conditions": conditions},
    }))
    .expect("a Deployment")
}

#[test]
fn a_passed_progress_deadline_or_a_replica_failure_is_the_revisions_rollout_failure() {
    let stuck = deployment_with(
        "slow-00001",
        json!([
            {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
             "message": "ReplicaSet \"slow-00001-deployment-5d4\" has timed out progressing."},
        ]),
    );
    let refused = deployment_with(
        "quota-00001",
        json!([
            {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
            {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
             "message": "pods \"quota-00001-deployment-x\" is forbidden: exceeded quota: compute"},
        ]),
    );
    let fine = deployment_with(
        "fine-00001",
        json!([
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
            {"type": "ReplicaFailure", "status": "False"},
        ]),
    );
    let failures = rollout_failures([&stuck, &refused, &fine]);
    assert_eq!(failures.len(), 2, "{failures:?}");
    let (t, reason, message) = failures[&RevisionKey::new("default", "slow-00001")].condition();
    assert_eq!(
        (t, reason.as_str()),
        ("ResourcesAvailable", "ProgressDeadlineExceeded")
    );
    assert!(message.contains("has timed out progressing"), "{message}");
    let (_, reason, message) = failures[&RevisionKey::new("default", "quota-00001")].condition();
    assert_eq!(reason, "FailedCreate");
    assert!(message.contains("exceeded quota"), "{message}");
}
