//! Which pods of each revision are ready, from the EndpointSlices of the revisions'
//! private Services. [`Slices`] is plain bookkeeping fed the watcher's events; it says
//! which revisions each event changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use sluice_control::backend::PodStatus;
use sluice_core::RevisionKey;

use crate::resources::{QUEUE_PORT, REVISION_LABEL};

/// One endpoint of a slice: a pod behind its queue-proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Endpoint {
    pod: String,
    address: SocketAddr,
    state: State,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Starting,
    Ready,
    Stopping,
}

/// A slice's id (namespace, name), and its revision and endpoints.
type Entry = ((String, String), (RevisionKey, Vec<Endpoint>));
type SliceMap = HashMap<(String, String), (RevisionKey, Vec<Endpoint>)>;

/// Every slice of a revision's Service known now, by (namespace, slice name).
#[derive(Debug, Default)]
pub struct Slices {
    slices: SliceMap,
    /// Each revision's slices, so that reading one revision's pods is not a scan.
    index: HashMap<RevisionKey, BTreeSet<(String, String)>>,
    /// While a relist runs: the slices it has listed so far.
    relist: Option<SliceMap>,
}

impl Slices {
    /// A slice was added or changed; returns the revisions it changed.
    pub fn apply(&mut self, slice: &EndpointSlice) -> BTreeSet<RevisionKey> {
        let Some((id, entry)) = read(slice) else {
            return BTreeSet::new();
        };
        let mut changed = BTreeSet::from([entry.0.clone()]);
        self.index
            .entry(entry.0.clone())
            .or_default()
            .insert(id.clone());
        if let Some((old, _)) = self.slices.insert(id.clone(), entry)
            && !changed.contains(&old)
        {
            self.unindex(&old, &id);
            changed.insert(old);
        }
        changed
    }

    /// A slice was deleted.
    pub fn delete(&mut self, slice: &EndpointSlice) -> BTreeSet<RevisionKey> {
        let id = (
            slice.metadata.namespace.clone().unwrap_or_default(),
            slice.metadata.name.clone().unwrap_or_default(),
        );
        let gone = self.slices.remove(&id).map(|(k, _)| k);
        if let Some(key) = &gone {
            self.unindex(key, &id);
        }
        gone.into_iter().collect()
    }

    fn unindex(&mut self, key: &RevisionKey, id: &(String, String)) {
        if let Some(ids) = self.index.get_mut(key) {
            ids.remove(id);
            if ids.is_empty() {
                self.index.remove(key);
            }
        }
    }

    /// The watch restarted: a full list follows ([`Slices::listed`], then
    /// [`Slices::list_done`]).
    pub fn relist(&mut self) {
        self.relist = Some(HashMap::new());
    }

    pub fn listed(&mut self, slice: &EndpointSlice) {
        if let (Some(relist), Some((id, entry))) = (&mut self.relist, read(slice)) {
            relist.insert(id, entry);
        }
    }

    /// The list is complete: it replaces what was known. Returns the revisions it changed.
    pub fn list_done(&mut self) -> BTreeSet<RevisionKey> {
        let Some(next) = self.relist.take() else {
            return BTreeSet::new();
        };
        let before = self.by_revision();
        self.slices = next;
        self.index.clear();
        for (id, (key, _)) in &self.slices {
            self.index
                .entry(key.clone())
                .or_default()
                .insert(id.clone());
        }
        let after = self.by_revision();
        before
            .keys()
            .chain(after.keys())
            .filter(|k| before.get(*k) != after.get(*k))
            .cloned()
            .collect()
    }

    /// The revision's ready pods' queue-proxy addresses, sorted.
    pub fn ready(&self, key: &RevisionKey) -> Vec<SocketAddr> {
        let mut ready: Vec<SocketAddr> = self
            .endpoints(key)
            .filter(|e| e.state == State::Ready)
            .map(|e| e.address)
            .collect();
        ready.sort();
        ready.dedup();
        ready
    }

    /// Every pod of the revision the slices list, by name.
    pub fn pods(&self, key: &RevisionKey) -> Vec<PodStatus> {
        let mut pods: Vec<PodStatus> = self
            .endpoints(key)
            .map(|e| PodStatus {
                name: e.pod.clone(),
                address: e.address,
                state: match e.state {
                    State::Starting => "starting",
                    State::Ready => "ready",
                    State::Stopping => "stopping",
                }
                .to_owned(),
            })
            .collect();
        pods.sort_by(|a, b| a.name.cmp(&b.name));
        pods
    }

    fn endpoints<'a>(&'a self, key: &'a RevisionKey) -> impl Iterator<Item = &'a Endpoint> {
        self.index
            .get(key)
            .into_iter()
            .flatten()
            .filter_map(|id| self.slices.get(id))
            .flat_map(|(_, e)| e)
    }

    fn by_revision(&self) -> BTreeMap<RevisionKey, BTreeSet<(String, SocketAddr, u8)>> {
        let mut out: BTreeMap<_, BTreeSet<_>> = BTreeMap::new();
        for (key, endpoints) in self.slices.values() {
            let set = out.entry(key.clone()).or_default();
            for e in endpoints {
                set.insert((e.pod.clone(), e.address, e.state as u8));
            }
        }
        out
    }
}

/// A slice's id, revision and endpoints; `None` for a slice of no revision.
fn read(slice: &EndpointSlice) -> Option<Entry> {
    let meta = &slice.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let revision = meta.labels.as_ref()?.get(REVISION_LABEL)?;
    let key = RevisionKey::new(&namespace, revision);
    // The Service's `http` port, by its target: the queue-proxy's serving port.
    let port = slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("http"))
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .unwrap_or(QUEUE_PORT);
    let endpoints = slice
        .endpoints
        .iter()
        .filter_map(|e| {
            let ip: IpAddr = e.addresses.first()?.parse().ok()?;
            let conditions = e.conditions.as_ref();
            // Kubernetes: an unknown `ready` is to be read as ready.
            let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
            let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
            let state = match (terminating, ready) {
                (true, _) => State::Stopping,
                (false, true) => State::Ready,
                (false, false) => State::Starting,
            };
            let pod = e
                .target_ref
                .as_ref()
                .and_then(|r| r.name.clone())
                .unwrap_or_else(|| ip.to_string());
            Some(Endpoint {
                pod,
                address: SocketAddr::new(ip, port),
                state,
            })
        })
        .collect();
    Some((
        (namespace, meta.name.clone().unwrap_or_default()),
        (key, endpoints),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{
        Endpoint as K8sEndpoint, EndpointConditions, EndpointPort,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    /// A slice of `revision`'s Service with `(pod, ip, ready, terminating)` endpoints.
    pub(crate) fn slice(
        name: &str,
        revision: &str,
        endpoints: &[(&str, &str, bool, bool)],
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("default".to_owned()),
                labels: Some(BTreeMap::from([
                    (REVISION_LABEL.to_owned(), revision.to_owned()),
                    (
                        "kubernetes.io/service-name".to_owned(),
                        format!("{revision}-private"),
                    ),
                ])),
                ..ObjectMeta::default()
            },
            address_type: "IPv4".to_owned(),
            ports: Some(vec![
                EndpointPort {
                    name: Some("http-autometric".to_owned()),
                    port: Some(9090),
                    ..EndpointPort::default()
                },
                EndpointPort {
                    name: Some("http".to_owned()),
                    port: Some(8012),
                    ..EndpointPort::default()
                },
            ]),
            endpoints: endpoints
                .iter()
                .map(|(pod, ip, ready, terminating)| K8sEndpoint {
                    addresses: vec![(*ip).to_owned()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(*terminating),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".to_owned()),
                        name: Some((*pod).to_owned()),
                        ..ObjectReference::default()
                    }),
                    ..K8sEndpoint::default()
                })
                .collect(),
        }
    }

    fn key(rev: &str) -> RevisionKey {
        RevisionKey::new("default", rev)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("address")
    }

    #[test]
    fn ready_pods_come_from_every_slice_of_the_revision() {
        let mut s = Slices::default();
        let changed = s.apply(&slice(
            "a-00001-private-x1",
            "a-00001",
            &[
                ("p1", "10.0.0.1", true, false),
                ("p2", "10.0.0.2", false, false),
            ],
        ));
        assert_eq!(changed, BTreeSet::from([key("a-00001")]));
        s.apply(&slice(
            "a-00001-private-x2",
            "a-00001",
            &[("p3", "10.0.0.3", true, false)],
        ));
        s.apply(&slice(
            "b-00001-private-x1",
            "b-00001",
            &[("q1", "10.0.1.1", true, false)],
        ));
        assert_eq!(
            s.ready(&key("a-00001")),
            [addr("10.0.0.1:8012"), addr("10.0.0.3:8012")]
        );
        let states: Vec<(String, String)> = s
            .pods(&key("a-00001"))
            .into_iter()
            .map(|p| (p.name, p.state))
            .collect();
        assert_eq!(
            states,
            [
                ("p1".to_owned(), "ready".to_owned()),
                ("p2".to_owned(), "starting".to_owned()),
                ("p3".to_owned(), "ready".to_owned())
            ]
        );
        // A terminating pod leaves rotation; a deleted slice takes its pods away.
        s.apply(&slice(
            "a-00001-private-x1",
            "a-00001",
            &[
                ("p1", "10.0.0.1", false, true),
                ("p2", "10.0.0.2", true, false),
            ],
        ));
        assert_eq!(
            s.ready(&key("a-00001")),
            [addr("10.0.0.2:8012"), addr("10.0.0.3:8012")]
        );
        assert_eq!(s.pods(&key("a-00001"))[0].state, "stopping");
        let gone = s.delete(&slice("a-00001-private-x2", "a-00001", &[]));
        assert_eq!(gone, BTreeSet::from([key("a-00001")]));
        assert_eq!(s.ready(&key("a-00001")), [addr("10.0.0.2:8012")]);
        assert_eq!(s.ready(&key("b-00001")), [addr("10.0.1.1:8012")]);
    }

    #[test]
    fn a_relist_replaces_everything_and_names_what_it_changed() {
        let mut s = Slices::default();
        s.apply(&slice("a-x", "a-00001", &[("p1", "10.0.0.1", true, false)]));
        s.apply(&slice("b-x", "b-00001", &[("q1", "10.0.1.1", true, false)]));
        s.apply(&slice("c-x", "c-00001", &[("r1", "10.0.2.1", true, false)]));
        s.relist();
        // Until the list is done, what was known stands.
        s.listed(&slice("a-x", "a-00001", &[("p1", "10.0.0.1", true, false)]));
        s.listed(&slice("b-x", "b-00001", &[("q2", "10.0.1.2", true, false)]));
        assert_eq!(s.ready(&key("c-00001")), [addr("10.0.2.1:8012")]);
        let changed = s.list_done();
        assert_eq!(changed, BTreeSet::from([key("b-00001"), key("c-00001")]));
        assert!(s.ready(&key("c-00001")).is_empty());
        assert_eq!(s.ready(&key("b-00001")), [addr("10.0.1.2:8012")]);
    }

    #[test]
    fn a_slice_of_no_revision_is_ignored() {
        let mut s = Slices::default();
        let mut other = slice("kubernetes", "x", &[("p", "10.0.0.9", true, false)]);
        other.metadata.labels = None;
        assert!(s.apply(&other).is_empty());
        assert!(s.ready(&key("x")).is_empty());
    }
}
