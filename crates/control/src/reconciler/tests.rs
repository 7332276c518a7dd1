use std::collections::BTreeMap;

use super::*;
use crate::spec::PodSpec;

fn spec(name: &str, cc: u32) -> RevisionSpec {
    RevisionSpec {
        pod: PodSpec {
            namespace: "default".into(),
            service: "hello".into(),
            revision: name.into(),
            argv: vec!["sample-app".into()],
            env: Vec::new(),
            container_concurrency: cc,
            timeout_seconds: 30,
            response_start_timeout_seconds: None,
            idle_timeout_seconds: None,
            readiness_probe: None,
            container: None,
        },
        initial_scale: 1,
        report: false,
        annotations: BTreeMap::new(),
        template: None,
    }
}

fn key(name: &str) -> RevisionKey {
    RevisionKey::new("default", name)
}

fn decision(name: &str, mode: v1::Mode, replicas: i32) -> v1::Decision {
    v1::Decision {
        namespace: "default".into(),
        revision: name.into(),
        mode: mode.into(),
        replicas,
        ..v1::Decision::default()
    }
}

fn target(revision: Option<&str>, percent: u32) -> TargetSpec {
    TargetSpec {
        revision: revision.map(str::to_owned),
        percent,
        tag: String::new(),
    }
}

fn service(revisions: &[&str], traffic: Vec<TargetSpec>) -> ServiceSpec {
    ServiceSpec {
        namespace: "default".into(),
        name: "hello".into(),
        revisions: revisions.iter().map(|r| (*r).to_owned()).collect(),
        traffic,
    }
}

/// Each revision's reachability, as published.
fn reachability(out: &[Action]) -> Vec<(String, bool)> {
    out.iter()
        .filter_map(|a| match a {
            Action::Endpoints(e) => Some((e.revision.clone(), e.unreachable)),
            _ => None,
        })
        .collect()
}

/// The service route published, as (revision, percent) pairs.
fn served(out: &[Action]) -> Option<Vec<(String, u32)>> {
    out.iter().find_map(|a| match a {
        Action::Route(Route::Service(s)) => Some(
            s.traffic
                .iter()
                .map(|t| (t.revision.clone(), t.percent))
                .collect(),
        ),
        _ => None,
    })
}

fn revision_route(actions: &[Action]) -> Option<&v1::RevisionRoute> {
    actions.iter().find_map(|a| match a {
        Action::Route(Route::Revision(r)) => Some(r),
        _ => None,
    })
}

fn endpoints(actions: &[Action]) -> Option<&v1::RevisionEndpoints> {
    actions.iter().find_map(|a| match a {
        Action::Endpoints(e) => Some(e),
        _ => None,
    })
}

#[test]
fn a_new_revision_is_created_then_known_to_the_activators_in_proxy_mode() {
    let mut r = Reconciler::new();
    let out = r.add_revision(spec("hello-00001", 5)).expect("added");
    assert_eq!(out[0], Action::Create(spec("hello-00001", 5)));
    let e = endpoints(&out).expect("endpoints published");
    assert_eq!((e.container_concurrency, e.timeout_seconds), (5, 30));
    assert!(e.addresses.is_empty());
    let route = revision_route(&out).expect("route published");
    assert_eq!(route.mode(), v1::Mode::Proxy, "no decision yet: proxy");
    assert_eq!(route.timeout_seconds, 30);
    assert_eq!(
        r.add_revision(spec("hello-00001", 5)),
        Ok(Vec::new()),
        "the same spec again"
    );
    assert_eq!(
        r.add_revision(spec("hello-00001", 7)),
        Err(Refused::Immutable(key("hello-00001")))
    );
}

#[test]
fn decisions_set_the_mode_and_apply_the_replicas_the_autoscaler_set() {
    let mut r = Reconciler::new();
    r.add_revision(spec("hello-00001", 0)).expect("added");
    // No replicas set yet (-1): nothing to apply.
    let out = r.decision(&decision("hello-00001", v1::Mode::Proxy, -1));
    assert!(!out.iter().any(|a| matches!(a, Action::Scale(..))));
    let out = r.decision(&decision("hello-00001", v1::Mode::Serve, 3));
    assert_eq!(out[0], Action::Scale(key("hello-00001"), 3));
    assert_eq!(revision_route(&out).expect("route").mode(), v1::Mode::Serve);
    // Sent again (the backend lost it): applied again.
    let out = r.decision(&decision("hello-00001", v1::Mode::Serve, 3));
    assert_eq!(out[0], Action::Scale(key("hello-00001"), 3));
    assert_eq!(
        r.decision_of(&key("hello-00001")).map(|d| d.replicas),
        Some(3)
    );
    // Unknown revisions and removals change nothing.
    assert!(
        r.decision(&decision("other-00001", v1::Mode::Serve, 4))
            .is_empty()
    );
    let removed = v1::Decision {
        removed: true,
        ..decision("hello-00001", v1::Mode::Proxy, 0)
    };
    assert!(r.decision(&removed).is_empty());
}

#[test]
fn ready_pods_reach_routes_and_endpoints_sorted() {
    let mut r = Reconciler::new();
    r.add_revision(spec("hello-00001", 0)).expect("added");
    let a: SocketAddr = "127.0.0.1:2000".parse().expect("addr");
    let b: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
    let out = r.ready(&key("hello-00001"), vec![a, b]);
    let want = ["127.0.0.1:1000", "127.0.0.1:2000"];
    assert_eq!(endpoints(&out).expect("endpoints").addresses, want);
    assert_eq!(revision_route(&out).expect("route").addresses, want);
    assert!(r.ready(&key("unknown-00001"), vec![a]).is_empty());
}

#[test]
fn traffic_must_name_known_revisions() {
    let mut r = Reconciler::new();
    r.add_revision(spec("hello-00001", 0)).expect("added");
    let target = |rev: &str, percent| target(Some(rev), percent);
    let bad = service(
        &["hello-00001"],
        vec![target("hello-00001", 50), target("hello-00002", 50)],
    );
    assert!(matches!(
        r.set_service(bad),
        Err(Refused::UnknownRevision { revision, .. }) if revision == "hello-00002"
    ));
    let good = service(&["hello-00001"], vec![target("hello-00001", 100)]);
    let out = r.set_service(good).expect("set");
    assert!(matches!(&out[0], Action::Route(Route::Service(s)) if s.traffic.len() == 1));
    let out = r.remove_service("default", "hello");
    assert!(matches!(&out[0], Action::Route(Route::Service(s)) if s.removed));
    assert!(r.remove_service("default", "hello").is_empty());
}

#[test]
fn a_removed_revision_leaves_the_feeds_before_its_workload_goes() {
    let mut r = Reconciler::new();
    r.add_revision(spec("hello-00001", 0)).expect("added");
    let out = r.remove_revision(&key("hello-00001"));
    assert!(matches!(&out[0], Action::Route(Route::Revision(x)) if x.removed));
    assert!(matches!(&out[1], Action::Endpoints(x) if x.removed));
    assert_eq!(out[2], Action::Delete(key("hello-00001")));
    assert!(r.remove_revision(&key("hello-00001")).is_empty());
    assert!(
        r.ready(&key("hello-00001"), Vec::new()).is_empty(),
        "forgotten: nothing more is published for it"
    );
}

#[test]
fn a_revision_no_route_names_is_unreachable_and_unknown_counts_as_reachable() {
    let mut r = Reconciler::new();
    let out = r.add_revision(spec("hello-00001", 0)).expect("added");
    assert!(
        !endpoints(&out).expect("endpoints").unreachable,
        "its service's traffic is not known yet"
    );
    r.add_revision(spec("hello-00002", 0)).expect("added");
    let to = |rev: &str| {
        service(
            &["hello-00001", "hello-00002"],
            vec![target(Some(rev), 100)],
        )
    };
    let out = r.set_service(to("hello-00001")).expect("set");
    assert_eq!(
        reachability(&out),
        [("hello-00001".into(), false), ("hello-00002".into(), true)]
    );
    // The rollout: all traffic to the new revision.
    let out = r.set_service(to("hello-00002")).expect("set");
    assert_eq!(
        reachability(&out),
        [("hello-00001".into(), true), ("hello-00002".into(), false)]
    );
}

#[test]
fn the_latest_revision_takes_traffic_only_once_ready_and_never_goes_back() {
    let mut r = Reconciler::new();
    let pod: SocketAddr = "127.0.0.1:1000".parse().expect("addr");
    let latest = || vec![target(None, 100)];
    // A first revision takes its traffic at once (held in the activator until ready).
    r.add_revision(spec("hello-00001", 0)).expect("added");
    let out = r
        .set_service(service(&["hello-00001"], latest()))
        .expect("set");
    assert_eq!(served(&out), Some(vec![("hello-00001".into(), 100)]));
    assert!(!r.is_ready(&key("hello-00001")));
    r.ready(&key("hello-00001"), vec![pod]);
    assert!(r.is_ready(&key("hello-00001")));

    // A second: the traffic stays until it has a ready pod; meanwhile it is pending, not
    // unreachable (the autoscaler keeps its initial scale).
    r.add_revision(spec("hello-00002", 0)).expect("added");
    let out = r
        .set_service(service(&["hello-00001", "hello-00002"], latest()))
        .expect("set");
    assert_eq!(served(&out), Some(vec![("hello-00001".into(), 100)]));
    assert_eq!(
        reachability(&out),
        [("hello-00001".into(), false), ("hello-00002".into(), false)]
    );
    assert_eq!(
        r.traffic("default", "hello"),
        Some(
            &[v1::TrafficTarget {
                revision: "hello-00001".into(),
                percent: 100,
                tag: String::new()
            }][..]
        )
    );
    // Its first ready pod moves the traffic, and the old revision becomes unreachable.
    let out = r.ready(&key("hello-00002"), vec![pod]);
    assert_eq!(served(&out), Some(vec![("hello-00002".into(), 100)]));
    assert!(reachability(&out).contains(&("hello-00001".into(), true)));
    // At zero pods it stays ready: the traffic stays.
    let out = r.ready(&key("hello-00002"), Vec::new());
    assert_eq!(served(&out), None, "no new route");
    assert!(r.is_ready(&key("hello-00002")));

    // A third that never becomes ready leaves the traffic on the second; a split that
    // names a revision beside the latest resolves both.
    r.add_revision(spec("hello-00003", 0)).expect("added");
    let all = ["hello-00001", "hello-00002", "hello-00003"];
    let out = r
        .set_service(service(
            &all,
            vec![target(Some("hello-00001"), 20), target(None, 80)],
        ))
        .expect("set");
    assert_eq!(
        served(&out),
        Some(vec![("hello-00001".into(), 20), ("hello-00002".into(), 80)])
    );
    assert!(reachability(&out).contains(&("hello-00003".into(), false)));
}

/// hello-00001 and hello-00002 added, and their Service sending all traffic to the latest.
fn two_revisions_on_latest(r: &mut Reconciler) -> Vec<Action> {
    r.add_revision(spec("hello-00001", 0)).expect("added");
    r.add_revision(spec("hello-00002", 0)).expect("added");
    r.set_service(service(
        &["hello-00001", "hello-00002"],
        vec![target(None, 100)],
    ))
    .expect("set")
}

#[test]
fn a_revision_ready_before_a_restart_keeps_its_traffic_and_one_made_at_zero_is_ready() {
    let mut r = Reconciler::new();
    // A restarted control plane learns from the status that 00001 was ready, before it
    // plans the revisions; 00002 (never ready) does not take the traffic.
    assert!(r.was_ready(key("hello-00001")).is_empty());
    let out = two_revisions_on_latest(&mut r);
    assert_eq!(served(&out), Some(vec![("hello-00001".into(), 100)]));
    // Learnt after the revision: the traffic moves.
    let out = r.was_ready(key("hello-00002"));
    assert_eq!(served(&out), Some(vec![("hello-00002".into(), 100)]));

    // A revision made to start at zero pods is ready at once, as in Knative.
    let mut at_zero = spec("hello-00003", 0);
    at_zero.initial_scale = 0;
    r.add_revision(at_zero).expect("added");
    assert!(r.is_ready(&key("hello-00003")));
}

#[test]
fn with_no_revision_ready_the_latest_goes_to_the_newest_that_still_exists() {
    let mut r = Reconciler::new();
    let out = two_revisions_on_latest(&mut r);
    assert_eq!(served(&out), Some(vec![("hello-00002".into(), 100)]));
    let out = r.remove_revision(&key("hello-00002"));
    assert_eq!(
        served(&out),
        Some(vec![("hello-00001".into(), 100)]),
        "never a route to a removed revision"
    );
}
