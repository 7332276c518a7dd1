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
    let as_stored: DynamicObject = serde_json::from_value(stored(&want)).expect("object");
    let mut edited = stored(&want);
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("app:hand-edited");
    edited["metadata"]["labels"]["extra"] = json!("x");
    let edited: DynamicObject = serde_json::from_value(edited).expect("object");
    let task = {
        let want = want.clone();
        tokio::spawn(async move {
            let a = reconcile(&api, &want, None).await.expect("created");
            let b = reconcile(&api, &want, Some(&as_stored))
                .await
                .expect("equal");
            let c = reconcile(&api, &want, Some(&edited))
                .await
                .expect("replaced");
            (a, b, c)
        })
    };
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

    // Equal: no request. Edited by hand: replaced.
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
        "replaced at the version seen"
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
    let mut theirs = stored(&want);
    theirs["metadata"]["ownerReferences"][0]["uid"] = json!("uid-someone-else");
    theirs["spec"] = json!({"traffic": []});
    let theirs: DynamicObject = serde_json::from_value(theirs).expect("object");
    let err = reconcile(&api, &want, Some(&theirs))
        .await
        .expect_err("not owned");
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
        tokio::spawn(async move { reconcile(&api, &want, None).await })
    };
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
fn the_tracker_backs_off_one_service_alone_and_a_change_starts_over() {
    let mut tracker = Tracker::default();
    let hello = parent();
    let mut other = parent();
    other.name = "other".to_owned();
    assert_eq!(tracker.parent("default", "hello"), None);
    tracker.set(hello.clone());
    tracker.set(other.clone());
    assert_eq!(tracker.parent("default", "hello"), Some(hello.clone()));

    assert_eq!(tracker.done(&other, Ok(())), None);
    assert!(tracker.written("default", "other"));
    // Refused: 1 s, then 2, 4, ... up to 300 s; the other stays written.
    for wait in [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300] {
        assert_eq!(
            tracker.done(&hello, Err(&refused())),
            Some(Duration::from_secs(wait))
        );
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

    // A change starts the back-off over; an outcome for the Service as it was is not
    // taken for it as it is.
    let mut changed = hello.clone();
    changed.labels.insert("team".to_owned(), "b".to_owned());
    tracker.set(changed.clone());
    assert_eq!(tracker.done(&hello, Ok(())), None);
    assert!(!tracker.written("default", "hello"));
    assert_eq!(
        tracker.done(&changed, Err(&refused())),
        Some(Duration::from_secs(1))
    );
    assert_eq!(
        tracker.done(&changed, Err(&refused())),
        Some(Duration::from_secs(2))
    );
    assert_eq!(tracker.done(&changed, Ok(())), None);
    assert!(tracker.written("default", "hello"));
    assert_eq!(tracker.problem("default", "hello"), None);

    // A changed Service is not written until its children are made again.
    let mut again = changed.clone();
    again.spec["traffic"][0]["percent"] = json!(1);
    tracker.set(again);
    assert!(!tracker.written("default", "hello"));

    tracker.remove("default", "other");
    assert!(!tracker.written("default", "other"));
    assert_eq!(tracker.parent("default", "other"), None);
}

#[test]
fn a_step_is_read_from_the_copy_last_seen() {
    let want = route(&parent());
    assert_eq!(step(&want, None).expect("step"), Step::Create(want.clone()));
    let seen: DynamicObject = serde_json::from_value(stored(&want)).expect("object");
    assert_eq!(step(&want, Some(&seen)).expect("step"), Step::Unchanged);
    let mut edited = seen.clone();
    edited.data["spec"]["traffic"][0]["percent"] = json!(1);
    let Step::Replace(next) = step(&want, Some(&edited)).expect("step") else {
        panic!("a hand edit is replaced");
    };
    assert_eq!(next.data["spec"], want.data["spec"]);
    assert_eq!(next.metadata.resource_version.as_deref(), Some("7"));
    assert_eq!(next.metadata.uid.as_deref(), Some("uid-config"));
    assert_eq!(
        next.data["status"]["latestReadyRevisionName"],
        "hello-00001"
    );
}

#[tokio::test]
async fn a_copy_seen_out_of_date_is_read_again_once() {
    let (client, mut server) = ApiServer::new();
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &knative_route());
    let want = route(&parent());
    let task = {
        let want = want.clone();
        tokio::spawn(async move { reconcile(&api, &want, None).await })
    };
    // The watch had not seen it: made by someone else meanwhile, and not ours.
    let routes = "/apis/serving.knative.dev/v1/namespaces/default/routes";
    server
        .expect(Method::POST, routes)
        .await
        .fail(409, "AlreadyExists");
    let mut theirs = stored(&want);
    theirs["metadata"]["ownerReferences"] = json!([]);
    server
        .expect(Method::GET, &format!("{routes}/hello"))
        .await
        .respond(200, &theirs);
    let err = task.await.expect("task").expect_err("not owned");
    assert!(matches!(err, ChildError::NotOwned { .. }), "{err}");
    server.expect_none(Duration::from_millis(50)).await;

    // Ours, changed since the copy seen: replaced at the version read.
    let (client, mut server) = ApiServer::new();
    let api: Api<DynamicObject> = Api::namespaced_with(client, "default", &knative_route());
    let seen: DynamicObject = serde_json::from_value(stored(&want)).expect("object");
    let mut edited = seen.clone();
    edited.data["spec"]["traffic"][0]["percent"] = json!(1);
    let task = {
        let want = want.clone();
        tokio::spawn(async move { reconcile(&api, &want, Some(&edited)).await })
    };
    server
        .expect(Method::PUT, &format!("{routes}/hello"))
        .await
        .fail(409, "Conflict");
    let mut fresh = stored(&want);
    fresh["metadata"]["resourceVersion"] = json!("9");
    fresh["spec"]["traffic"][0]["percent"] = json!(2);
    server
        .expect(Method::GET, &format!("{routes}/hello"))
        .await
        .respond(200, &fresh);
    let put = server.expect(Method::PUT, &format!("{routes}/hello")).await;
    assert_eq!(put.body["metadata"]["resourceVersion"], "9");
    assert_eq!(
        put.body["spec"],
        serde_json::to_value(&want).expect("json")["spec"]
    );
    put.echo(200);
    assert_eq!(
        task.await.expect("task").expect("replaced"),
        Outcome::Replaced
    );
}

#[tokio::test]
async fn no_child_is_made_again_for_a_service_gone() {
    let (client, mut server) = ApiServer::new();
    let p = parent();
    let seen: DynamicObject = serde_json::from_value(stored(&configuration(&p))).expect("object");
    let task = {
        let p = p.clone();
        tokio::spawn(async move { write(&client, &p, [Some(&seen), None]).await })
    };
    let service = "/apis/serving.knative.dev/v1/namespaces/default/services/hello";
    // Made again under its name since: another Service, whose children are its own.
    server.expect(Method::GET, service).await.respond(
        200,
        &json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default", "uid": "uid-new"}
        }),
    );
    assert_eq!(task.await.expect("task").expect("written"), None);
    server.expect_none(Duration::from_millis(50)).await;

    // Still there: the missing Route is made.
    let (client, mut server) = ApiServer::new();
    let seen: DynamicObject = serde_json::from_value(stored(&configuration(&p))).expect("object");
    let task = {
        let p = p.clone();
        tokio::spawn(async move { write(&client, &p, [Some(&seen), None]).await })
    };
    server.expect(Method::GET, service).await.respond(
        200,
        &json!({
            "apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "namespace": "default", "uid": "uid-svc"}
        }),
    );
    server
        .expect(
            Method::POST,
            "/apis/serving.knative.dev/v1/namespaces/default/routes",
        )
        .await
        .echo(201);
    assert_eq!(
        task.await.expect("task").expect("written"),
        Some([Outcome::Unchanged, Outcome::Created])
    );
}
