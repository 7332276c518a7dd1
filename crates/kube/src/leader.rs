//! The leader's address on its component's Service, as Knative publishes its autoscaler
//! buckets' owners: the Service (`control`, `autoscaler`) has no selector, so every
//! replica can be Ready — a rolling update proceeds and a budget allows a disruption —
//! while clients reach only the leader, through the one EndpointSlice it writes on taking
//! the Lease. A standby that takes over rewrites the slice with its own address.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::{Api, Client};

use crate::backend::FIELD_MANAGER;

/// The leader's address on a selector-less Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderEndpoint {
    pub namespace: String,
    /// The Service's name.
    pub service: String,
    /// This replica's pod IP.
    pub ip: IpAddr,
    /// This replica's pod name (the endpoint's `targetRef`).
    pub pod: String,
    /// The Service's ports by name, each with the port this replica serves it on and
    /// its `appProtocol`.
    pub ports: Vec<(String, u16, Option<String>)>,
}

impl LeaderEndpoint {
    /// The slice's name: the Service's, suffixed (a name the EndpointSlice controller
    /// never writes; it writes none for a selector-less Service anyway).
    pub fn slice_name(&self) -> String {
        format!("{}-leader", self.service)
    }

    /// The EndpointSlice naming this replica as the Service's one endpoint, owned by the
    /// Service (`service_uid`) as the EndpointSlice controller owns the slices it writes,
    /// so that it goes when the Service does.
    pub fn slice(&self, service_uid: Option<&str>) -> EndpointSlice {
        let owner = service_uid.map(|uid| OwnerReference {
            api_version: "v1".to_owned(),
            kind: "Service".to_owned(),
            name: self.service.clone(),
            uid: uid.to_owned(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        });
        let labels = [
            ("kubernetes.io/service-name", self.service.as_str()),
            ("endpointslice.kubernetes.io/managed-by", FIELD_MANAGER),
            ("app.kubernetes.io/part-of", "sluice"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(self.slice_name()),
                namespace: Some(self.namespace.clone()),
                labels: Some(labels),
                owner_references: owner.map(|o| vec![o]),
                ..ObjectMeta::default()
            },
            address_type: if self.ip.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned(),
            endpoints: vec![Endpoint {
                addresses: vec![self.ip.to_string()],
                conditions: Some(EndpointConditions {
                    ready: Some(true),
                    serving: Some(true),
                    terminating: Some(false),
                }),
                target_ref: Some(k8s_openapi::api::core::v1::ObjectReference {
                    kind: Some("Pod".to_owned()),
                    name: Some(self.pod.clone()),
                    namespace: Some(self.namespace.clone()),
                    ..Default::default()
                }),
                ..Endpoint::default()
            }],
            ports: Some(
                self.ports
                    .iter()
                    .map(|(name, port, app)| EndpointPort {
                        name: Some(name.clone()),
                        port: Some(i32::from(*port)),
                        protocol: Some("TCP".to_owned()),
                        app_protocol: app.clone(),
                    })
                    .collect(),
            ),
        }
    }
}

/// Writes the slice: replaced at the version read, or created, owned by its Service (not
/// owned while the Service is missing). A write that loses a race (409) is tried once
/// more with what is there then.
pub async fn publish(client: &Client, leader: &LeaderEndpoint) -> Result<(), kube::Error> {
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    let services: Api<Service> = Api::namespaced(client.clone(), &leader.namespace);
    let uid = services
        .get_opt(&leader.service)
        .await?
        .and_then(|s| s.metadata.uid);
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &leader.namespace);
    let name = leader.slice_name();
    let mut tries = 0;
    loop {
        tries += 1;
        let mut slice = leader.slice(uid.as_deref());
        let written = match api.get_opt(&name).await? {
            Some(current)
                if current.endpoints == slice.endpoints
                    && current.ports == slice.ports
                    && current.metadata.owner_references == slice.metadata.owner_references =>
            {
                return Ok(());
            }
            Some(current) => {
                slice.metadata.resource_version = current.metadata.resource_version;
                api.replace(&name, &params, &slice).await
            }
            None => api.create(&params, &slice).await,
        };
        match written {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 && tries < 2 => {}
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::api_server::ApiServer;

    fn leader() -> LeaderEndpoint {
        LeaderEndpoint {
            namespace: "sluice-system".to_owned(),
            service: "control".to_owned(),
            ip: "10.1.2.3".parse().expect("ip"),
            pod: "control-abc".to_owned(),
            ports: vec![(
                "grpc".to_owned(),
                8090,
                Some("kubernetes.io/h2c".to_owned()),
            )],
        }
    }

    const SLICES: &str = "/apis/discovery.k8s.io/v1/namespaces/sluice-system/endpointslices";
    const SERVICE: &str = "/api/v1/namespaces/sluice-system/services/control";

    fn service() -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "control", "namespace": "sluice-system", "uid": "svc-uid"},
            "spec": {"ports": [{"name": "grpc", "port": 8090}]},
        })
    }

    #[tokio::test]
    async fn a_slice_written_while_its_service_is_missing_has_no_owner() {
        let (client, mut server) = ApiServer::new();
        let task = tokio::spawn(async move { publish(&client, &leader()).await });
        let not_found = json!({"kind": "Status", "code": 404, "reason": "NotFound"});
        server
            .expect(Method::GET, SERVICE)
            .await
            .respond(404, &not_found);
        server
            .expect(Method::GET, &format!("{SLICES}/control-leader"))
            .await
            .respond(404, &not_found);
        let create = server.expect(Method::POST, SLICES).await;
        assert!(
            create.body["metadata"].get("ownerReferences").is_none(),
            "{}",
            create.body
        );
        let created = create.body.clone();
        create.respond(201, &created);
        task.await.expect("publish").expect("created");
    }

    #[tokio::test]
    async fn the_leader_creates_its_slice_then_replaces_another_leaders_at_its_version() {
        let (client, mut server) = ApiServer::new();
        let task = tokio::spawn(async move {
            publish(&client, &leader()).await.expect("created");
            publish(&client, &leader()).await.expect("replaced");
            publish(&client, &leader()).await.expect("left as it is");
        });

        server
            .expect(Method::GET, SERVICE)
            .await
            .respond(200, &service());
        server
            .expect(Method::GET, &format!("{SLICES}/control-leader"))
            .await
            .respond(
                404,
                &json!({"kind": "Status", "code": 404, "reason": "NotFound"}),
            );
        let create = server.expect(Method::POST, SLICES).await;
        assert_eq!(
            create.body,
            json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": "control-leader", "namespace": "sluice-system",
                    "labels": {
                        "kubernetes.io/service-name": "control",
                        "endpointslice.kubernetes.io/managed-by": "sluice",
                        "app.kubernetes.io/part-of": "sluice",
                    },
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Service", "name": "control",
                        "uid": "svc-uid", "controller": true, "blockOwnerDeletion": true,
                    }],
                },
                "addressType": "IPv4",
                "endpoints": [{
                    "addresses": ["10.1.2.3"],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "targetRef": {"kind": "Pod", "name": "control-abc", "namespace": "sluice-system"},
                }],
                "ports": [{"name": "grpc", "port": 8090, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"}],
            })
        );
        assert!(
            create.query.contains("fieldManager=sluice"),
            "{}",
            create.query
        );
        let created = create.body.clone();
        create.respond(201, &created);

        // Another replica led meanwhile: its address is replaced, at the version read.
        let mut theirs = created.clone();
        theirs["metadata"]["resourceVersion"] = json!("7");
        theirs["endpoints"][0]["addresses"] = json!(["10.9.9.9"]);
        server
            .expect(Method::GET, SERVICE)
            .await
            .respond(200, &service());
        server
            .expect(Method::GET, &format!("{SLICES}/control-leader"))
            .await
            .respond(200, &theirs);
        let replace = server
            .expect(Method::PUT, &format!("{SLICES}/control-leader"))
            .await;
        assert_eq!(replace.body["metadata"]["resourceVersion"], "7");
        assert_eq!(
            replace.body["endpoints"][0]["addresses"],
            json!(["10.1.2.3"])
        );
        let mut ours = replace.body.clone();
        replace.respond(200, &ours);

        // Already ours: nothing is written.
        ours["metadata"]["resourceVersion"] = json!("8");
        server
            .expect(Method::GET, SERVICE)
            .await
            .respond(200, &service());
        server
            .expect(Method::GET, &format!("{SLICES}/control-leader"))
            .await
            .respond(200, &ours);
        task.await.expect("publish");
        server
            .expect_none(std::time::Duration::from_millis(50))
            .await;
    }
}
