use std::time::Duration;

use http::Method;
use serde_json::json;
use sluice_control::backend::Backend;
use sluice_core::RevisionKey;
use tokio::sync::mpsc;

use super::*;
use crate::api_server::ApiServer;
use crate::resources::tests::revision;

const KSVC: &str = "/apis/serving.knative.dev/v1/namespaces/default/services/autoscale-go";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";
const DEPLOYMENT: &str =
    "/apis/apps/v1/namespaces/default/deployments/autoscale-go-00001-deployment";
const SERVICES: &str = "/api/v1/namespaces/default/services";
const BAD_KSVC: &str = "/apis/serving.knative.dev/v1/namespaces/default/services/bad";
const REVISIONS: &str = "/apis/serving.knative.dev/v1/namespaces/default/revisions";

fn start() -> (Arc<KubeBackend>, ApiServer) {
    let (client, api) = ApiServer::new();
    let (changed, _) = mpsc::unbounded_channel();
    let (backend, writer) = KubeBackend::new(client, Injection::default(), changed);
    tokio::spawn(writer.run());
    (backend, api)
}

fn key() -> RevisionKey {
    RevisionKey::new("default", "autoscale-go-00001")
}

fn ksvc() -> serde_json::Value {
    json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "autoscale-go", "namespace": "default", "uid": "uid-1"}
    })
}

#[tokio::test]
async fn a_revision_is_created_owned_by_its_service_and_scaled_through_the_subresource() {
    let (backend, mut api) = start();
    backend.create(&revision(json!({"image": "example.com/app"})));

    api.expect(Method::GET, KSVC).await.respond(200, &ksvc());
    let call = api.expect(Method::POST, DEPLOYMENTS).await;
    assert!(call.query.contains("fieldManager=sluice"), "{}", call.query);
    assert_eq!(
        call.body["metadata"]["name"],
        "autoscale-go-00001-deployment"
    );
    assert_eq!(call.body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(call.body["spec"]["replicas"], 1);
    assert_eq!(
        call.body["spec"]["template"]["spec"]["containers"][1]["name"],
        "queue-proxy"
    );
    call.echo(201);
    // A Service there already, owned by the Knative Service (an earlier control plane
    // made it), is adopted.
    let call = api.expect(Method::POST, SERVICES).await;
    assert_eq!(call.body["metadata"]["name"], "autoscale-go-00001-private");
    assert_eq!(
        call.body["spec"]["selector"]["serving.knative.dev/revision"],
        "autoscale-go-00001"
    );
    let made = call.body.clone();
    call.fail(409, "AlreadyExists");
    api.expect(
        Method::GET,
        &format!("{SERVICES}/autoscale-go-00001-private"),
    )
    .await
    .respond(200, &made);

    backend.scale(&key(), 3);
    let call = api
        .expect(Method::PATCH, &format!("{DEPLOYMENT}/scale"))
        .await;
    assert_eq!(call.content_type, "application/merge-patch+json");
    assert_eq!(call.body, json!({"spec": {"replicas": 3}}));
    call.respond(
        200,
        &json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": "autoscale-go-00001-deployment"},
                "spec": {"replicas": 3}}),
    );
    api.expect_none(Duration::from_millis(100)).await;
    assert_eq!(backend.last_error(&key()), None);
}

#[tokio::test(start_paused = true)]
async fn a_refused_scale_is_retried_and_a_newer_one_takes_its_place() {
    let (backend, mut api) = start();
    backend.scale(&key(), 3);
    api.expect(Method::PATCH, &format!("{DEPLOYMENT}/scale"))
        .await
        .fail(500, "InternalError");
    // While the writer waits to retry (0.2 s), the autoscaler decides again.
    tokio::time::sleep(Duration::from_millis(10)).await;
    backend.scale(&key(), 5);
    assert!(
        backend
            .last_error(&key())
            .is_some_and(|e| e.contains("scaling to 3")),
        "{:?}",
        backend.last_error(&key())
    );
    let call = api
        .expect(Method::PATCH, &format!("{DEPLOYMENT}/scale"))
        .await;
    assert_eq!(call.body, json!({"spec": {"replicas": 5}}), "3 is moot");
    call.respond(
        200,
        &json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {}}),
    );
    api.expect_none(Duration::from_secs(10)).await;
    assert_eq!(backend.last_error(&key()), None);
}

#[tokio::test(start_paused = true)]
async fn an_unreachable_api_server_is_retried_in_order() {
    let (backend, mut api) = start();
    backend.create(&revision(json!({"image": "example.com/app"})));
    backend.scale(&key(), 2);
    // The create's first step fails twice; nothing after it goes first.
    api.expect(Method::GET, KSVC)
        .await
        .fail(503, "ServiceUnavailable");
    api.expect(Method::GET, KSVC)
        .await
        .fail(503, "ServiceUnavailable");
    api.expect(Method::GET, KSVC).await.respond(200, &ksvc());
    api.expect(Method::POST, DEPLOYMENTS).await.echo(201);
    api.expect(Method::POST, SERVICES).await.echo(201);
    let call = api
        .expect(Method::PATCH, &format!("{DEPLOYMENT}/scale"))
        .await;
    assert_eq!(call.body, json!({"spec": {"replicas": 2}}));
}

#[tokio::test]
async fn a_revision_of_a_deleted_service_is_not_created_and_says_why() {
    let (backend, mut api) = start();
    backend.create(&revision(json!({"image": "example.com/app"})));
    api.expect(Method::GET, KSVC).await.fail(404, "NotFound");
    api.expect_none(Duration::from_millis(100)).await;
    let error = backend.last_error(&key()).expect("an error");
    assert!(
        error.contains("service default/autoscale-go is gone"),
        "{error}"
    );

    // The delete goes on: nothing there is fine.
    backend.delete(&key());
    let call = api.expect(Method::DELETE, DEPLOYMENT).await;
    assert_eq!(call.body["propagationPolicy"], "Background");
    call.fail(404, "NotFound");
    api.expect(
        Method::DELETE,
        "/api/v1/namespaces/default/services/autoscale-go-00001-private",
    )
    .await
    .respond(
        200,
        &json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "metadata": {}}),
    );
    api.expect(Method::DELETE, &format!("{REVISIONS}/autoscale-go-00001"))
        .await
        .fail(404, "NotFound");
    api.expect_none(Duration::from_millis(100)).await;
    // The delete succeeded, so the create's error is cleared with it.
    assert_eq!(backend.last_error(&key()), None);
}

/// `autoscale-go-00001`'s spec under another service and revision name.
fn revision_of(service: &str, name: &str) -> RevisionSpec {
    let mut spec = revision(json!({"image": "example.com/app"}));
    spec.pod.service = service.to_owned();
    spec.pod.revision = name.to_owned();
    spec
}

fn scale_path(revision: &str) -> String {
    format!("{DEPLOYMENTS}/{revision}-deployment/scale")
}

fn scaled(call: crate::api_server::Call) {
    call.respond(
        200,
        &json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {}}),
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_create_holds_up_only_its_own_revision_and_backs_off() {
    let (backend, mut api) = start();
    let bad = RevisionKey::new("default", "bad-00001");
    backend.create(&revision_of("bad", "bad-00001"));
    api.expect(Method::GET, BAD_KSVC)
        .await
        .respond(200, &ksvc());
    api.expect(Method::POST, DEPLOYMENTS)
        .await
        .fail(422, "Invalid");
    let refused = tokio::time::Instant::now();
    // The writer takes the answer in (well before the retry at 0.2 s).
    tokio::time::sleep(Duration::from_millis(10)).await;
    let error = backend.last_error(&bad).expect("the refusal");
    assert!(
        error.contains("creating deployment bad-00001-deployment"),
        "{error}"
    );
    assert!(error.contains("Invalid (from the test)"), "{error}");

    // While it waits to be tried again, another revision scales (from zero) and a third
    // is created.
    backend.scale(&key(), 1);
    let good = revision_of("other", "other-00002");
    backend.create(&good);
    scaled(
        api.expect(Method::PATCH, &scale_path("autoscale-go-00001"))
            .await,
    );
    api.expect(
        Method::GET,
        "/apis/serving.knative.dev/v1/namespaces/default/services/other",
    )
    .await
    .respond(200, &ksvc());
    api.expect(Method::POST, DEPLOYMENTS).await.echo(201);
    api.expect(Method::POST, SERVICES).await.echo(201);
    assert_eq!(backend.last_error(&good.key()), None);
    assert_eq!(backend.last_error(&key()), None);

    // The refused one is tried again after 0.2 s, then 0.4 s: backing off, not given up.
    for _ in 0..2 {
        api.expect(Method::GET, BAD_KSVC)
            .await
            .respond(200, &ksvc());
        api.expect(Method::POST, DEPLOYMENTS)
            .await
            .fail(422, "Invalid");
    }
    let waited = refused.elapsed();
    assert!(
        (Duration::from_millis(600)..Duration::from_millis(700)).contains(&waited),
        "{waited:?}"
    );

    // Deleted (its service was fixed or removed): the create is dropped, the delete runs.
    backend.delete(&bad);
    api.expect(
        Method::DELETE,
        &format!("{DEPLOYMENTS}/bad-00001-deployment"),
    )
    .await
    .fail(404, "NotFound");
    api.expect(Method::DELETE, &format!("{SERVICES}/bad-00001-private"))
        .await
        .fail(404, "NotFound");
    api.expect(Method::DELETE, &format!("{REVISIONS}/bad-00001"))
        .await
        .fail(404, "NotFound");
    api.expect_none(Duration::from_secs(120)).await;
    assert_eq!(backend.last_error(&bad), None);
}

#[tokio::test]
async fn a_deployment_of_the_name_that_the_service_does_not_own_is_left_alone() {
    let (backend, mut api) = start();
    backend.create(&revision(json!({"image": "example.com/app"})));
    api.expect(Method::GET, KSVC).await.respond(200, &ksvc());
    let call = api.expect(Method::POST, DEPLOYMENTS).await;
    let mut theirs = call.body.clone();
    call.fail(409, "AlreadyExists");
    theirs["metadata"]["ownerReferences"] = json!([]);
    api.expect(Method::GET, DEPLOYMENT)
        .await
        .respond(200, &theirs);
    api.expect_none(Duration::from_millis(300)).await;
    let error = backend.last_error(&key()).expect("an error");
    assert!(
        error.contains("deployment autoscale-go-00001-deployment exists and is not owned by service autoscale-go"),
        "{error}"
    );
}

#[tokio::test]
async fn a_container_kubernetes_cannot_run_is_reported_not_retried() {
    let (backend, mut api) = start();
    backend.create(&revision(json!({"command": ["/app"]})));
    api.expect(Method::GET, KSVC).await.respond(200, &ksvc());
    api.expect_none(Duration::from_millis(200)).await;
    let error = backend.last_error(&key()).expect("an error");
    assert!(error.contains("give an image"), "{error}");
}

#[tokio::test]
async fn a_revision_with_its_template_is_kept_as_a_revision_object_first() {
    let (backend, mut api) = start();
    let mut spec = revision(json!({"image": "example.com/app"}));
    spec.template = Some(json!({
        "metadata": {
            "labels": {"team": "a", "serving.knative.dev/configurationGeneration": "1"},
            "annotations": {"autoscaling.knative.dev/target": "10"}
        },
        "spec": {"containerConcurrency": 10, "containers": [{"image": "example.com/app"}]}
    }));
    backend.create(&spec);
    api.expect(Method::GET, KSVC).await.respond(200, &ksvc());
    let call = api.expect(Method::POST, REVISIONS).await;
    let body = &call.body;
    assert_eq!(
        (
            &body["apiVersion"],
            &body["kind"],
            &body["metadata"]["name"]
        ),
        (
            &json!("serving.knative.dev/v1"),
            &json!("Revision"),
            &json!("autoscale-go-00001")
        )
    );
    let labels = &body["metadata"]["labels"];
    assert_eq!(labels["team"], "a", "the template's labels");
    assert_eq!(labels["serving.knative.dev/configurationGeneration"], "1");
    assert_eq!(labels["serving.knative.dev/configuration"], "autoscale-go");
    assert_eq!(labels["serving.knative.dev/service"], "autoscale-go");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "sluice");
    assert_eq!(
        body["metadata"]["annotations"]["autoscaling.knative.dev/target"],
        "10"
    );
    assert_eq!(body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    assert_eq!(body["spec"]["containerConcurrency"], 10);
    call.echo(201);
    api.expect(Method::POST, DEPLOYMENTS).await.echo(201);
    api.expect(Method::POST, SERVICES).await.echo(201);
    api.expect_none(Duration::from_millis(100)).await;
    assert_eq!(backend.last_error(&key()), None);
}
