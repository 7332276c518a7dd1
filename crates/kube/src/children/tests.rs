use std::time::Duration;

use http::Method;

use super::*;
use crate::api_server::ApiServer;

fn parent() -> Parent {
    Parent {
        namespace: "default".to_owned(),
        name: "hello".to_owned(),
        uid: "uid-svc".to_owned(),
        labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
        annotations: BTreeMap::from([
            (LAST_APPLIED.to_owned(), "{...}".to_owned()),
            ("note".to_owned(), "kept".to_owned()),
        ]),
        spec: json!({
            "template": {"spec": {"containers": [{"image": "app:1"}]}},
            "traffic": [
                {"latestRevision": true, "percent": 50},
                {"revisionName": "hello-00001", "percent": 50, "tag": "old"}
            ]
        }),
    }
}

#[test]
fn the_configuration_holds_the_template_labelled_and_owned_by_the_service() {
    let c = serde_json::to_value(configuration(&parent())).expect("json");
    assert_eq!(c["apiVersion"], "serving.knative.dev/v1");
    assert_eq!(c["kind"], "Configuration");
    assert_eq!(c["metadata"]["name"], "hello");
    assert_eq!(c["metadata"]["namespace"], "default");
    assert_eq!(
        c["metadata"]["labels"],
        json!({"team": "a", "serving.knative.dev/service": "hello"})
    );
    assert_eq!(c["metadata"]["annotations"], json!({"note": "kept"}));
    assert_eq!(
        c["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "hello",
            "uid": "uid-svc", "controller": true, "blockOwnerDeletion": true
        }])
    );
    assert_eq!(
        c["spec"],
        json!({"template": {"spec": {"containers": [{"image": "app:1"}]}}})
    );
}

#[test]
fn the_route_follows_the_configuration_where_no_revision_is_named() {
    let r = serde_json::to_value(route(&parent())).expect("json");
    assert_eq!(r["kind"], "Route");
    assert_eq!(
        r["spec"]["traffic"],
        json!([
            {"latestRevision": true, "percent": 50, "configurationName": "hello"},
            {"revisionName": "hello-00001", "percent": 50, "tag": "old"}
        ])
    );
    let mut p = parent();
    p.spec = json!({"template": {}});
    let r = serde_json::to_value(route(&p)).expect("json");
    assert_eq!(
        r["spec"]["traffic"],
        json!([{"latestRevision": true, "percent": 100, "configurationName": "hello"}])
    );
}

const CONFIGS: &str = "/apis/serving.knative.dev/v1/namespaces/default/configurations";

fn stored(want: &DynamicObject) -> Value {
    let mut v = serde_json::to_value(want).expect("json");
    v["metadata"]["uid"] = json!("uid-config");
    v["metadata"]["resourceVersion"] = json!("7");
    v["status"] = json!({"latestReadyRevisionName": "hello-00001"});
    v
}

#[tokio::test]
async fn a_missing_child_is_created_an_equal_one_left_and_a_hand_edit_put_back() {
    let (client, mut server) = ApiServer::new();
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &knative_configuration());
    let want = configuration(&parent());
    let task = {
        let want = want.clone();
        tokio::spawn(async move {
            let a = reconcile(&api, &want).await.expect("created");
            let b = reconcile(&api, &want).await.expect("equal");
            let c = reconcile(&api, &want).await.expect("replaced");
            (a, b, c)
        })
    };
    server
        .expect(Method::GET, &format!("{CONFIGS}/hello"))
        .await
        .fail(404, "NotFound");
    let create = server.expect(Method::POST, CONFIGS).await;
    assert_eq!(
        create.body["spec"],
        serde_json::to_value(&want).expect("json")["spec"]
    );
    assert!(
        create.query.contains("fieldManager=sluice"),
        "{}",
        create.query
    );
    create.echo(201);

    server
        .expect(Method::GET, &format!("{CONFIGS}/hello"))
        .await
        .respond(200, &stored(&want));

    let mut edited = stored(&want);
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("app:hand-edited");
    edited["metadata"]["labels"]["extra"] = json!("x");
    server
        .expect(Method::GET, &format!("{CONFIGS}/hello"))
        .await
        .respond(200, &edited);
    let put = server
        .expect(Method::PUT, &format!("{CONFIGS}/hello"))
        .await;
    assert_eq!(
        put.body["spec"]["template"]["spec"]["containers"][0]["image"],
        "app:1"
    );
    assert_eq!(put.body["metadata"]["labels"].get("extra"), None);
    assert_eq!(
        put.body["metadata"]["resourceVersion"], "7",
        "replaced at the version read"
    );
    assert_eq!(
        put.body["status"]["latestReadyRevisionName"], "hello-00001",
        "its status is kept"
    );
    put.echo(200);

    let outcomes = task.await.expect("task");
    assert_eq!(
        outcomes,
        (Outcome::Created, Outcome::Unchanged, Outcome::Replaced)
    );
    server.expect_none(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn one_owned_by_another_is_left_as_it_is_and_named_in_the_error() {
    let (client, mut server) = ApiServer::new();
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &knative_route());
    let want = route(&parent());
    let task = {
        let want = want.clone();
        tokio::spawn(async move { reconcile(&api, &want).await })
    };
    let mut theirs = stored(&want);
    theirs["metadata"]["ownerReferences"][0]["uid"] = json!("uid-someone-else");
    theirs["spec"] = json!({"traffic": []});
    server
        .expect(
            Method::GET,
            "/apis/serving.knative.dev/v1/namespaces/default/routes/hello",
        )
        .await
        .respond(200, &theirs);
    let err = task.await.expect("task").expect_err("not owned");
    assert_eq!(
        err.to_string(),
        "There is an existing Route \"hello\" that we do not own."
    );
    server.expect_none(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn a_refused_write_says_which_object_and_why() {
    let (client, mut server) = ApiServer::new();
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &knative_configuration());
    let want = configuration(&parent());
    let task = {
        let want = want.clone();
        tokio::spawn(async move { reconcile(&api, &want).await })
    };
    server
        .expect(Method::GET, &format!("{CONFIGS}/hello"))
        .await
        .fail(404, "NotFound");
    server
        .expect(Method::POST, CONFIGS)
        .await
        .fail(403, "Forbidden");
    let err = task.await.expect("task").expect_err("refused");
    assert!(
        err.to_string()
            .starts_with("writing Configuration \"hello\": "),
        "{err}"
    );
    assert!(err.to_string().contains("Forbidden"), "{err}");
}

fn refused() -> ChildError {
    ChildError::NotOwned {
        kind: "Route".to_owned(),
        name: "hello".to_owned(),
    }
}

#[test]
fn the_tracker_backs_off_one_service_alone_and_a_change_or_a_hand_edit_makes_it_due() {
    let t0 = Instant::now();
    let s = |d: u64| t0 + Duration::from_secs(d);
    let mut tracker = Tracker::default();
    let hello = parent();
    let mut other = parent();
    other.name = "other".to_owned();
    tracker.set(hello.clone());
    tracker.set(other.clone());
    let mut due: Vec<String> = tracker.due(s(0)).into_iter().map(|p| p.name).collect();
    due.sort();
    assert_eq!(due, ["hello", "other"]);

    tracker.done(&other, Ok(()), s(0));
    assert!(tracker.written("default", "other"));
    // Refused: 1 s, then 2, 4, ... up to 300 s; the other stays written.
    let mut at = 0;
    for wait in [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300] {
        tracker.done(&hello, Err(refused()), s(at));
        assert!(
            tracker.due(s(at + wait - 1)).is_empty(),
            "waits {wait} s after {at}"
        );
        assert_eq!(
            tracker.due(s(at + wait)).len(),
            1,
            "due {wait} s after {at}"
        );
        at += wait;
    }
    assert_eq!(
        tracker.problem("default", "hello"),
        Some(Problem {
            kind: "Route".to_owned(),
            reason: "NotOwned".to_owned(),
            message: "There is an existing Route \"hello\" that we do not own.".to_owned(),
        })
    );
    assert!(!tracker.written("default", "hello"));
    assert!(tracker.written("default", "other"));
    assert_eq!(tracker.problem("default", "other"), None);

    // A change is tried at once, backoff or not; an outcome for the Service as it was is
    // not taken for it as it is.
    tracker.done(&hello, Err(refused()), s(at));
    assert!(tracker.due(s(at)).is_empty());
    let mut changed = hello.clone();
    changed.labels.insert("team".to_owned(), "b".to_owned());
    tracker.set(changed.clone());
    assert_eq!(tracker.due(s(at)).len(), 1);
    tracker.done(&hello, Ok(()), s(at));
    assert!(!tracker.written("default", "hello"));
    tracker.done(&changed, Ok(()), s(at));
    assert!(tracker.written("default", "hello"));
    assert_eq!(tracker.problem("default", "hello"), None);

    // Its own write seen on the watch changes nothing; a hand edit or a delete does.
    tracker.observed("default", "other", "Route", Some(&route(&other)));
    assert!(tracker.due(s(at)).iter().all(|p| p.name != "other"));
    let mut edited = route(&other);
    edited.data["spec"]["traffic"][0]["percent"] = json!(1);
    tracker.observed("default", "other", "Route", Some(&edited));
    assert_eq!(tracker.due(s(at)).len(), 1);
    tracker.done(&other, Ok(()), s(at));
    tracker.observed("default", "other", "Configuration", None);
    assert_eq!(tracker.due(s(at)).len(), 1);

    tracker.remove("default", "other");
    assert!(tracker.due(s(at)).is_empty());
    assert!(!tracker.written("default", "other"));
}
