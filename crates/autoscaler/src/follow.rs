//! A standalone autoscaler that learns revisions from the control plane: it follows the
//! control plane's `EndpointsService` (`--control`), as Knative's autoscaler watches
//! PodAutoscalers and their revisions' endpoints. Each revision listed is registered with
//! its annotations and containerConcurrency, and takes its reachability (routed or not);
//! its pods are the replicas set on its workload and the ready addresses listed; a
//! revision gone from the stream is forgotten. It also follows the control plane's
//! `ConfigService`: the applied `config-autoscaler` replaces the one it started with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use sluice_core::feed::{self, Follower, ItemKey, Source};
use sluice_proto::v1::{ConfigMap, RevisionEndpoints};

use crate::config::AutoscalerConfig;

use crate::kpa::PodCounts;
use crate::scaler::{RevisionKey, Scaler};
use crate::service::Autoscaler;

/// Pod counts as the control plane's stream says them. Scales nothing itself: the control
/// plane applies the decisions it follows.
#[derive(Debug, Default)]
pub struct StreamPods {
    pods: Mutex<HashMap<RevisionKey, PodCounts>>,
}

impl Scaler for StreamPods {
    fn pods(&self, revision: &RevisionKey) -> Option<PodCounts> {
        Some(self.pods.lock().get(revision).copied().unwrap_or_default())
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        tracing::trace!(%revision, replicas, "scale: carried out by the control plane");
    }
}

/// Keeps `autoscaler`'s revisions and `pods` equal to the control plane's endpoints
/// feed, in this process or over gRPC, for as long as the task runs.
pub async fn follow(
    source: Source<RevisionEndpoints>,
    autoscaler: Autoscaler,
    pods: Arc<StreamPods>,
) {
    let mut follower = Revisions {
        autoscaler,
        pods,
        registered: HashMap::new(),
        reachable: HashMap::new(),
    };
    feed::follow("revisions", source, feed::watch_endpoints, &mut follower).await;
}

struct Revisions {
    autoscaler: Autoscaler,
    pods: Arc<StreamPods>,
    /// What each revision was registered with, so that a change of its pods alone does
    /// not register it again.
    registered: HashMap<RevisionKey, (BTreeMap<String, String>, u32)>,
    /// Each registered revision's reachability as last set.
    reachable: HashMap<RevisionKey, bool>,
}

impl Revisions {
    fn forget(&mut self, key: &RevisionKey) {
        self.pods.pods.lock().remove(key);
        self.reachable.remove(key);
        if self.registered.remove(key).is_some() {
            self.autoscaler.remove_revision(key);
        }
    }
}

impl Follower<RevisionEndpoints> for Revisions {
    fn apply(&mut self, r: &RevisionEndpoints) {
        let key = RevisionKey::new(&r.namespace, &r.revision);
        if r.removed {
            self.forget(&key);
            return;
        }
        let ready = u32::try_from(r.addresses.len()).unwrap_or(u32::MAX);
        self.pods.pods.lock().insert(
            key.clone(),
            PodCounts {
                ready,
                replicas: r.replicas,
            },
        );
        let annotations: BTreeMap<String, String> = r
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let spec = (annotations, r.container_concurrency);
        if self.registered.get(&key) != Some(&spec) {
            match self
                .autoscaler
                .upsert_revision(&key, spec.0.clone(), r.container_concurrency)
            {
                Ok(()) => {
                    tracing::info!(revision = %key, "revision registered from the control plane");
                    self.registered.insert(key.clone(), spec);
                }
                // The control plane checked it against the same keys: a config that
                // differs between the two (a --config file here) can still refuse it.
                Err(e) => {
                    tracing::error!(revision = %key, %e, "a revision's annotations were refused");
                    return;
                }
            }
        }
        let reachable = !r.unreachable;
        if self.reachable.get(&key) != Some(&reachable) {
            self.autoscaler.set_reachable(&key, reachable);
            self.reachable.insert(key, reachable);
        }
    }

    fn retain(&mut self, listed: &HashSet<ItemKey>) {
        let gone: Vec<RevisionKey> = self
            .registered
            .keys()
            .filter(|k| {
                !listed.contains(&ItemKey {
                    kind: "revision",
                    namespace: k.namespace.clone(),
                    name: k.name.clone(),
                })
            })
            .cloned()
            .collect();
        for key in gone {
            self.forget(&key);
        }
    }
}

/// Keeps `autoscaler`'s config equal to the control plane's `config-autoscaler`, for as
/// long as the task runs. Until the control plane has one (or once it is deleted), the
/// config the process started with holds. `synced` turns true once the control plane's
/// whole config has been applied, so that revisions are registered under it (as
/// Knative's controllers wait for their informers' caches).
pub async fn follow_config(
    source: Source<ConfigMap>,
    autoscaler: Autoscaler,
    started_with: AutoscalerConfig,
    synced: tokio::sync::watch::Sender<bool>,
) {
    let mut follower = Config {
        autoscaler,
        started_with,
        applied: None,
        synced,
    };
    feed::follow("config", source, feed::watch_config, &mut follower).await;
}

struct Config {
    autoscaler: Autoscaler,
    started_with: AutoscalerConfig,
    /// The control plane's data last applied.
    applied: Option<BTreeMap<String, String>>,
    synced: tokio::sync::watch::Sender<bool>,
}

const CONFIG_AUTOSCALER: &str = "config-autoscaler";

impl Config {
    fn set(&mut self, data: Option<BTreeMap<String, String>>) {
        if data == self.applied {
            return;
        }
        let config = match &data {
            None => self.started_with.clone(),
            Some(d) => match AutoscalerConfig::from_data(d) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(%e, "the control plane's config-autoscaler is invalid; kept the current one");
                    return;
                }
            },
        };
        // The control plane checked it against the same revisions.
        match self.autoscaler.set_config(config) {
            Ok(()) => {
                tracing::info!(
                    from_control_plane = data.is_some(),
                    "config-autoscaler applied"
                );
                self.applied = data;
            }
            Err(refused) => {
                for (revision, e) in refused.0 {
                    tracing::error!(%revision, %e, "config-autoscaler refused; kept the current one");
                }
            }
        }
    }
}

impl Follower<ConfigMap> for Config {
    fn apply(&mut self, c: &ConfigMap) {
        if c.name != CONFIG_AUTOSCALER {
            return;
        }
        let data = (!c.removed).then(|| c.data.clone().into_iter().collect());
        self.set(data);
    }

    fn retain(&mut self, listed: &HashSet<ItemKey>) {
        if !listed.iter().any(|k| k.name == CONFIG_AUTOSCALER) {
            self.set(None);
        }
    }

    fn synced(&mut self) {
        self.synced.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::service::Options;

    fn config_map(name: &str, data: &[(&str, &str)], removed: bool) -> ConfigMap {
        ConfigMap {
            namespace: "knative-serving".into(),
            name: name.into(),
            data: data
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            removed,
        }
    }

    #[tokio::test]
    async fn the_control_planes_config_replaces_the_started_one_until_it_is_deleted() {
        let started = AutoscalerConfig::default();
        let autoscaler = Autoscaler::new(
            started.clone(),
            Arc::new(StreamPods::default()),
            Options {
                tick: Duration::from_secs(2),
                auto_register: false,
                wall_clock: false,
            },
        );
        let mut follower = Config {
            autoscaler: autoscaler.clone(),
            started_with: started,
            applied: None,
            synced: tokio::sync::watch::Sender::new(false),
        };
        let window = |a: &Autoscaler| a.config().stable_window;
        assert_eq!(window(&autoscaler), Duration::from_secs(60));

        follower.apply(&config_map(
            "config-autoscaler",
            &[("stable-window", "6s")],
            false,
        ));
        assert_eq!(window(&autoscaler), Duration::from_secs(6));

        follower.apply(&config_map(
            "config-defaults",
            &[("stable-window", "7s")],
            false,
        ));
        assert_eq!(
            window(&autoscaler),
            Duration::from_secs(6),
            "other ConfigMaps ignored"
        );

        follower.apply(&config_map(
            "config-autoscaler",
            &[("stable-window", "soon")],
            false,
        ));
        assert_eq!(
            window(&autoscaler),
            Duration::from_secs(6),
            "an invalid one kept out"
        );

        follower.apply(&config_map("config-autoscaler", &[], true));
        assert_eq!(
            window(&autoscaler),
            Duration::from_secs(60),
            "deleted: the started one"
        );

        follower.apply(&config_map(
            "config-autoscaler",
            &[("stable-window", "6s")],
            false,
        ));
        follower.retain(&HashSet::new());
        assert_eq!(
            window(&autoscaler),
            Duration::from_secs(60),
            "not listed on a resync: the started one"
        );
    }
}
