//! The double, driven by kube-rs as Sluice drives a real API server.

use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{
    DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::{Api, Client};
use serde_json::json;

use super::*;

async fn client(api: &KubeApi) -> Client {
    Client::try_from(kube::Config::new(api.url().parse().expect("url"))).expect("client")
}

fn deployment(name: &str, replicas: i32, labels: Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "c", "image": "x"}]}}
        }
    }))
    .expect("deployment")
}

#[tokio::test]
async fn create_get_list_by_label_and_409s() {
    let api = KubeApi::start().await;
    let deployments: Api<Deployment> = Api::namespaced(client(&api).await, "default");
    let pp = PostParams::default();
    let a = deployments
        .create(&pp, &deployment("a", 1, json!({"tier": "web"})))
        .await
        .expect("create a");
    let meta = &a.metadata;
    assert!(meta.uid.is_some() && meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    deployments
        .create(&pp, &deployment("b", 1, json!({"tier": "db"})))
        .await
        .expect("create b");
    let again = deployments
        .create(&pp, &deployment("a", 1, json!({})))
        .await;
    assert!(matches!(again, Err(kube::Error::Api(s)) if s.is_already_exists()));

    let count = |selector: &'static str| {
        let deployments = deployments.clone();
        async move {
            let lp = ListParams::default().labels(selector);
            deployments.list(&lp).await.expect("list").items.len()
        }
    };
    assert_eq!(count("tier=web").await, 1);
    assert_eq!(count("tier!=web").await, 1);
    assert_eq!(count("tier").await, 2);
    assert_eq!(count("!tier").await, 0);
    let all: Api<Deployment> = Api::all(client(&api).await);
    assert_eq!(
        all.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        2
    );
    let missing = deployments.get("c").await;
    assert!(matches!(missing, Err(kube::Error::Api(s)) if s.is_not_found()));

    // A replace with a stale resourceVersion is refused.
    let mut stale = a.clone();
    let mut fresh = a.clone();
    fresh.spec.as_mut().expect("spec").replicas = Some(2);
    let fresh = deployments
        .replace("a", &pp, &fresh)
        .await
        .expect("replace");
    assert_eq!(fresh.metadata.generation, Some(2), "spec changed");
    stale.spec.as_mut().expect("spec").replicas = Some(5);
    let refused = deployments.replace("a", &pp, &stale).await;
    assert!(matches!(refused, Err(kube::Error::Api(s)) if s.is_conflict()));
}

#[tokio::test]
async fn the_scale_and_status_subresources_write_only_their_part() {
    let api = KubeApi::start().await;
    let deployments: Api<Deployment> = Api::namespaced(client(&api).await, "default");
    deployments
        .create(&PostParams::default(), &deployment("a", 1, json!({})))
        .await
        .expect("create");
    let scale = deployments.get_scale("a").await.expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(1));
    assert_eq!(
        scale.status.map(|s| s.selector),
        Some(Some("app=a".to_owned()))
    );
    deployments
        .patch_scale(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 4}})),
        )
        .await
        .expect("patch scale");
    let status = json!({"status": {"replicas": 4, "readyReplicas": 3}});
    deployments
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("patch status");
    // A write to the object leaves the status; one to the status leaves the spec.
    deployments
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"replicas": 0}, "metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .expect("patch");
    let status_only =
        json!({"spec": {"replicas": 9}, "status": {"replicas": 4, "readyReplicas": 4}});
    deployments
        .patch_status("a", &PatchParams::default(), &Patch::Merge(&status_only))
        .await
        .expect("patch status");
    let d = deployments.get("a").await.expect("get");
    assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(4));
    let st = d.status.expect("status");
    assert_eq!((st.replicas, st.ready_replicas), (Some(4), Some(4)));
    assert_eq!(d.metadata.labels.expect("labels")["x"], "y");
    // A JSON patch, as Knative's scaler sends.
    let req = http::Request::patch("/apis/apps/v1/namespaces/default/deployments/a")
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(br#"[{"op": "replace", "path": "/spec/replicas", "value": 2}]"#.to_vec())
        .expect("request");
    client(&api)
        .await
        .request_text(req)
        .await
        .expect("json patch");
    assert_eq!(
        deployments
            .get("a")
            .await
            .expect("get")
            .spec
            .and_then(|s| s.replicas),
        Some(2)
    );
}

#[tokio::test]
async fn a_watch_resumes_from_a_version_and_a_compacted_one_is_410() {
    let api = KubeApi::start().await;
    let maps: Api<ConfigMap> = Api::namespaced(client(&api).await, "default");
    let cm = |name: &str| -> ConfigMap {
        serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"k": name}}, "data": {"a": "1"}}),
        )
        .expect("cm")
    };
    maps.create(&PostParams::default(), &cm("one"))
        .await
        .expect("create");
    let listed = maps.list(&ListParams::default()).await.expect("list");
    let rv = listed.metadata.resource_version.expect("rv");
    maps.create(&PostParams::default(), &cm("two"))
        .await
        .expect("create");
    maps.create(&PostParams::default(), &cm("three"))
        .await
        .expect("create");
    maps.delete("two", &DeleteParams::default())
        .await
        .expect("delete");

    // From the listed version: only what came after, filtered by label.
    let mut events = maps
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .expect("watch")
        .boxed();
    let mut seen = Vec::new();
    while let Some(e) = events.try_next().await.expect("event") {
        match e {
            WatchEvent::Added(o) => {
                seen.push(format!("added {}", o.metadata.name.unwrap_or_default()))
            }
            WatchEvent::Deleted(o) => {
                seen.push(format!("deleted {}", o.metadata.name.unwrap_or_default()))
            }
            other => seen.push(format!("{other:?}")),
        }
        if seen.len() == 3 {
            break;
        }
    }
    assert_eq!(seen, ["added two", "added three", "deleted two"]);

    // Live events reach a watch started at the current version.
    let now = maps
        .list(&ListParams::default())
        .await
        .expect("list")
        .metadata
        .resource_version
        .expect("rv");
    let mut live = maps
        .watch(&WatchParams::default().labels("k=four").timeout(5), &now)
        .await
        .expect("watch")
        .boxed();
    maps.create(&PostParams::default(), &cm("five"))
        .await
        .expect("create");
    maps.create(&PostParams::default(), &cm("four"))
        .await
        .expect("create");
    let e = tokio::time::timeout(Duration::from_secs(5), live.try_next())
        .await
        .expect("in time")
        .expect("ok");
    assert!(matches!(e, Some(WatchEvent::Added(o)) if o.metadata.name.as_deref() == Some("four")));

    // After a compaction, an old version is gone: 410, so the client relists.
    api.compact();
    let mut old = maps
        .watch(&WatchParams::default().timeout(2), &rv)
        .await
        .expect("watch")
        .boxed();
    match old.try_next().await.expect("event") {
        Some(WatchEvent::Error(e)) => assert_eq!(e.code, 410),
        other => panic!("expected 410, got {other:?}"),
    }
}

#[tokio::test]
async fn kube_runtimes_watcher_relists_after_410_and_sees_everything() {
    let api = KubeApi::start().await;
    let c = client(&api).await;
    let leases: Api<Lease> = Api::namespaced(c.clone(), "default");
    let lease = |name: &str| -> Lease {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {}})).expect("lease")
    };
    leases
        .create(&PostParams::default(), &lease("a"))
        .await
        .expect("create");
    let (reader, writer) = kube::runtime::reflector::store::<Lease>();
    let stream = kube::runtime::reflector(
        writer,
        kube::runtime::watcher(leases.clone(), Default::default()),
    );
    let task = tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {}
    });
    reader.wait_until_ready().await.expect("ready");
    // Cut every connection, compact, write, and come back: the watcher must relist.
    // b is written while the watcher is cut off, and the history compacted, so it can
    // only learn of b by relisting after its resumed watch gets 410.
    api.stop().await;
    let b = serde_json::to_value(lease("b")).expect("json");
    assert_eq!(
        api.create_object("/apis/coordination.k8s.io/v1/namespaces/default/leases", b),
        201
    );
    api.compact();
    api.resume().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while reader.state().len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the watcher never saw b"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    task.abort();
}

#[tokio::test]
async fn deleting_an_owner_deletes_what_it_owns() {
    let api = KubeApi::start().await;
    let deployments: Api<Deployment> = Api::namespaced(client(&api).await, "default");
    let owner = deployments
        .create(&PostParams::default(), &deployment("owner", 1, json!({})))
        .await
        .expect("create");
    let mut owned = deployment("owned", 1, json!({}));
    owned.metadata.owner_references = Some(vec![
        k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "owner".into(),
            uid: owner.metadata.uid.clone().expect("uid"),
            ..Default::default()
        },
    ]);
    deployments
        .create(&PostParams::default(), &owned)
        .await
        .expect("create");
    deployments
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete");
    assert!(deployments.get_opt("owned").await.expect("get").is_none());
}

#[tokio::test]
async fn a_pod_template_a_real_api_server_refuses_is_refused_422_naming_the_field() {
    let api = KubeApi::start().await;
    let deployments: Api<Deployment> = Api::namespaced(client(&api).await, "default");
    let pp = PostParams::default();
    let with = |containers: Value| {
        let mut d = serde_json::to_value(deployment("d", 1, json!({}))).expect("json");
        d["spec"]["template"]["spec"]["containers"] = containers;
        serde_json::from_value::<Deployment>(d).expect("deployment")
    };
    let refused = async |d: Deployment| match deployments.create(&pp, &d).await {
        Err(kube::Error::Api(s)) if s.code == 422 => s.message,
        other => panic!("not refused: {other:?}"),
    };
    let m = refused(with(json!([{"name": "c", "image": "x",
        "volumeMounts": [{"name": "secret", "mountPath": "/etc/secret"}]}])))
    .await;
    assert_eq!(
        m,
        "Deployment.apps \"d\" is invalid: spec.template.spec.containers[0].volumeMounts[0].name: \
         Not found: \"secret\""
    );
    let m = refused(with(json!([{"name": "c", "image": "x",
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 0}}}])))
    .await;
    assert!(
        m.ends_with("spec.template.spec.containers[0].livenessProbe.httpGet.port: Invalid value: 0: must be between 1 and 65535, inclusive"),
        "{m}"
    );
    let m = refused(with(
        json!([{"name": "c", "image": "x"}, {"name": "c", "image": "y"}]),
    ))
    .await;
    assert!(
        m.ends_with("spec.template.spec.containers[1].name: Duplicate value: \"c\""),
        "{m}"
    );
    assert!(
        api.list("/apis/apps/v1/namespaces/default/deployments")
            .is_empty()
    );

    // A valid one is stored; a replace that breaks it is refused and changes nothing.
    let ok = deployments
        .create(&pp, &deployment("d", 1, json!({})))
        .await
        .expect("valid");
    let mut bad = serde_json::to_value(&ok).expect("json");
    bad["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "gone", "mountPath": "/x"}]);
    let bad: Deployment = serde_json::from_value(bad).expect("deployment");
    let r = deployments.replace("d", &pp, &bad).await;
    assert!(matches!(r, Err(kube::Error::Api(s)) if s.code == 422));
    let d = api
        .get("/apis/apps/v1/namespaces/default/deployments/d")
        .expect("there");
    assert_eq!(
        d["metadata"]["resourceVersion"],
        json!(ok.metadata.resource_version)
    );
}

/// `GET path` with `accept`, as JSON.
async fn raw_get(api: &KubeApi, path: &str, accept: &str) -> (u16, Value) {
    let c = client(api).await;
    let req = http::Request::get(path)
        .header(http::header::ACCEPT, accept)
        .body(Vec::new())
        .expect("request");
    match c.request::<Value>(req).await {
        Ok(v) => (200, v),
        Err(kube::Error::Api(s)) => (s.code, Value::Null),
        Err(e) => panic!("GET {path}: {e}"),
    }
}

fn knative_crd(plural: &str, kind: &str, short: &[&str]) -> Value {
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": format!("{plural}.serving.knative.dev")},
        "spec": {
            "group": "serving.knative.dev", "scope": "Namespaced",
            "names": {"plural": plural, "singular": kind.to_lowercase(), "kind": kind,
                      "shortNames": short, "categories": ["all", "knative"]},
            "versions": [{"name": "v1", "served": true, "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Ready", "type": "string",
                     "jsonPath": ".status.conditions[?(@.type=='Ready')].status"},
                ]}],
        },
    })
}

#[tokio::test]
async fn discovery_lists_built_in_kinds_and_custom_ones_once_their_crd_is_stored() {
    let api = KubeApi::start().await;
    let (code, apps) = raw_get(&api, "/apis/apps/v1", "application/json").await;
    assert_eq!(code, 200);
    let names: Vec<&str> = apps["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["deployments", "deployments/status", "deployments/scale"]
    );
    assert_eq!(apps["resources"][0]["shortNames"], json!(["deploy"]));
    assert_eq!(apps["resources"][2]["kind"], "Scale");
    assert_eq!(apps["resources"][2]["group"], "autoscaling");

    // No CRD, no Knative group.
    let (_, groups) = raw_get(&api, "/apis", "application/json").await;
    let has_knative = |groups: &Value| {
        groups["groups"]
            .as_array()
            .expect("groups")
            .iter()
            .any(|g| g["name"] == "serving.knative.dev")
    };
    assert!(!has_knative(&groups));
    assert_eq!(
        raw_get(&api, "/apis/serving.knative.dev/v1", "application/json")
            .await
            .0,
        404
    );

    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    assert_eq!(
        api.create_object(crds, knative_crd("services", "Service", &["ksvc"])),
        201
    );
    let (_, groups) = raw_get(&api, "/apis", "application/json").await;
    assert!(has_knative(&groups));
    let (_, knative) = raw_get(&api, "/apis/serving.knative.dev/v1", "application/json").await;
    assert_eq!(knative["resources"][0]["name"], "services");
    assert_eq!(knative["resources"][0]["shortNames"], json!(["ksvc"]));
    assert_eq!(
        knative["resources"][0]["categories"],
        json!(["all", "knative"])
    );
    assert_eq!(knative["resources"][1]["name"], "services/status");
    // Only the stored CRD's kinds: no revisions yet.
    assert_eq!(knative["resources"].as_array().map(Vec::len), Some(2));

    // OpenAPI v3 names every group version, each with a PATCH per kind.
    let (_, index) = raw_get(&api, "/openapi/v3", "application/json").await;
    let url = index["paths"]["apis/serving.knative.dev/v1"]["serverRelativeURL"]
        .as_str()
        .expect("the Knative group's document");
    let (_, doc) = raw_get(
        &api,
        url.split('?').next().expect("path"),
        "application/json",
    )
    .await;
    let patch = &doc["paths"]["/apis/serving.knative.dev/v1/namespaces/{namespace}/services/{name}"]
        ["patch"];
    assert_eq!(patch["x-kubernetes-group-version-kind"]["kind"], "Service");
    assert_eq!(patch["parameters"][0]["name"], "fieldValidation");
}

#[tokio::test]
async fn kubectls_table_from_a_crds_printer_columns_and_core_events_filtered_by_field() {
    let api = KubeApi::start().await;
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    assert_eq!(
        api.create_object(crds, knative_crd("services", "Service", &["ksvc"])),
        201
    );
    let ksvcs = "/apis/serving.knative.dev/v1/namespaces/default/services";
    for name in ["a", "b"] {
        assert_eq!(
            api.create_object(ksvcs, json!({"metadata": {"name": name}})),
            201
        );
    }
    let status = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
    let c = client(&api).await;
    let req = http::Request::patch(format!("{ksvcs}/a/status"))
        .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
        .body(serde_json::to_vec(&status).expect("json"))
        .expect("request");
    c.request::<Value>(req).await.expect("status");

    let accept = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json";
    let (_, table) = raw_get(&api, ksvcs, accept).await;
    assert_eq!(table["kind"], "Table");
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(columns, ["Name", "Ready"]);
    assert_eq!(table["rows"][0]["cells"], json!(["a", "True"]));
    assert_eq!(table["rows"][1]["cells"], json!(["b", "<none>"]));
    assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    // One object, and a name picked by field.
    let (_, one) = raw_get(&api, &format!("{ksvcs}/b"), accept).await;
    assert_eq!(one["rows"][0]["cells"][0], "b");
    let (_, by_name) = raw_get(
        &api,
        &format!("{ksvcs}?fieldSelector=metadata.name%3Db"),
        "application/json",
    )
    .await;
    assert_eq!(by_name["items"].as_array().map(Vec::len), Some(1));
    assert_eq!(by_name["items"][0]["metadata"]["name"], "b");

    // An events.k8s.io event is seen through core/v1, renamed, and read-only there.
    let event = json!({
        "metadata": {"name": "a.1"},
        "regarding": {"kind": "Service", "name": "a", "namespace": "default"},
        "reason": "Created", "note": "Created Revision \"a-00001\"", "type": "Normal",
        "action": "Create", "reportingController": "sluice-control",
        "reportingInstance": "host", "eventTime": "2026-12-07T00:00:00.000000Z",
    });
    assert_eq!(
        api.create_object("/apis/events.k8s.io/v1/namespaces/default/events", event),
        201
    );
    let core = "/api/v1/namespaces/default/events";
    let (_, about_a) = raw_get(
        &api,
        &format!("{core}?fieldSelector=involvedObject.name%3Da,involvedObject.kind%3DService"),
        "application/json",
    )
    .await;
    assert_eq!(about_a["kind"], "EventList");
    assert_eq!(
        about_a["items"][0]["message"],
        "Created Revision \"a-00001\""
    );
    assert_eq!(about_a["items"][0]["reportingComponent"], "sluice-control");
    let (_, about_b) = raw_get(
        &api,
        &format!("{core}?fieldSelector=involvedObject.name%3Db"),
        "application/json",
    )
    .await;
    assert_eq!(about_b["items"], json!([]));
    assert_eq!(
        api.create_object(core, json!({"metadata": {"name": "x"}})),
        405
    );
}

/// A client whose requests say they come from `agent`.
fn client_as(api: &KubeApi, agent: &str) -> Client {
    let mut config = kube::Config::new(api.url().parse().expect("url"));
    config.headers.push((
        http::header::USER_AGENT,
        format!("{agent}/0.1.0").parse().expect("agent"),
    ));
    Client::try_from(config).expect("client")
}

#[tokio::test]
async fn an_agents_requests_are_authorized_by_its_service_accounts_roles() {
    let api = KubeApi::start().await;
    let rbac = |plural: &str, ns: Option<&str>, o: Value| {
        let path = match ns {
            Some(ns) => format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/{plural}"),
            None => format!("/apis/rbac.authorization.k8s.io/v1/{plural}"),
        };
        assert_eq!(api.create_object(&path, o), 201, "{plural}");
    };
    let subjects = json!([{"kind": "ServiceAccount", "name": "ctl", "namespace": "system"}]);
    rbac(
        "clusterroles",
        None,
        json!({"metadata": {"name": "ctl"}, "rules": [
            {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get", "list"]},
        ]}),
    );
    rbac(
        "clusterrolebindings",
        None,
        json!({"metadata": {"name": "ctl"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "ctl"},
        "subjects": subjects}),
    );
    rbac(
        "roles",
        Some("system"),
        json!({"metadata": {"name": "lease"}, "rules": [
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["mine"],
             "verbs": ["get", "list", "create"]},
        ]}),
    );
    rbac(
        "rolebindings",
        Some("system"),
        json!({"metadata": {"name": "lease"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "lease"},
        "subjects": subjects}),
    );
    api.act_as("sluice-ctl", "system", "ctl");
    let ctl = client_as(&api, "sluice-ctl");
    let forbidden = |r: Result<_, kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.is_forbidden() => s.message,
        other => panic!("not forbidden: {:?}", other.map(|_: ()| ())),
    };

    // The ClusterRole holds in every namespace, for its verbs only.
    let everywhere: Api<Deployment> = Api::all(ctl.clone());
    everywhere.list(&ListParams::default()).await.expect("list");
    let default: Api<Deployment> = Api::namespaced(ctl.clone(), "default");
    let said = forbidden(
        default
            .create(&PostParams::default(), &deployment("a", 1, json!({})))
            .await
            .map(|_| ()),
    );
    assert_eq!(
        said,
        "deployments.apps is forbidden: User \"system:serviceaccount:system:ctl\" cannot \
         create resource \"deployments\" in API group \"apps\" in the namespace \"default\""
    );
    let said = forbidden(
        default
            .patch_scale("a", &PatchParams::default(), &Patch::Merge(json!({})))
            .await
            .map(|_| ()),
    );
    assert!(
        said.starts_with("deployments.apps \"a\" is forbidden")
            && said.contains("cannot patch resource \"deployments/scale\""),
        "{said}"
    );

    // The Role only in its binding's namespace.
    let lease = |ns: &str| {
        serde_json::from_value::<Lease>(json!({"metadata": {"name": "l", "namespace": ns}}))
            .expect("lease")
    };
    let leases: Api<Lease> = Api::namespaced(ctl.clone(), "system");
    leases
        .create(&PostParams::default(), &lease("system"))
        .await
        .expect("create in system");
    let elsewhere: Api<Lease> = Api::namespaced(ctl.clone(), "default");
    let said = forbidden(
        elsewhere
            .create(&PostParams::default(), &lease("default"))
            .await
            .map(|_| ()),
    );
    assert!(said.contains("in the namespace \"default\""), "{said}");

    // Names: a get of that name, a list by its name only, and never a create.
    let configs: Api<ConfigMap> = Api::namespaced(ctl.clone(), "system");
    assert!(
        configs.get_opt("mine").await.expect("get mine").is_none(),
        "allowed, and not there"
    );
    forbidden(configs.get("theirs").await.map(|_| ()));
    configs
        .list(&ListParams::default().fields("metadata.name=mine"))
        .await
        .expect("list by name");
    forbidden(configs.list(&ListParams::default()).await.map(|_| ()));
    let mine: ConfigMap =
        serde_json::from_value(json!({"metadata": {"name": "mine"}})).expect("configmap");
    forbidden(
        configs
            .create(&PostParams::default(), &mine)
            .await
            .map(|_| ()),
    );

    // Another agent (the tests', kubectl's) is a cluster admin; discovery is open.
    let admin: Api<Deployment> = Api::namespaced(client(&api).await, "default");
    admin
        .create(&PostParams::default(), &deployment("a", 1, json!({})))
        .await
        .expect("an admin creates");
    ctl.apiserver_version().await.expect("/version");
}
