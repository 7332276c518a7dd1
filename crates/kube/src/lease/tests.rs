use std::time::Duration;

use tokio::time::Instant;

use http::Method;

use super::*;
use crate::api_server::ApiServer;

const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases";
const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-control";

fn config(identity: &str) -> LeaseConfig {
    LeaseConfig::new("sluice-system", "sluice-control", identity)
}

fn wall(s: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + s).expect("time")
}

fn lease(holder: &str, renewed: i64, transitions: i32, rv: &str) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("sluice-control".to_owned()),
            namespace: Some("sluice-system".to_owned()),
            resource_version: Some(rv.to_owned()),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(MicroTime(wall(0))),
            renew_time: Some(MicroTime(wall(renewed))),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }),
    }
}

fn holder(step: &Step) -> (&str, i32, Option<&str>) {
    let l = match step {
        Step::Create(l) | Step::Replace(l) => l,
        Step::Follow { .. } => panic!("expected a write, got {step:?}"),
    };
    let spec = l.spec.as_ref().expect("spec");
    (
        spec.holder_identity.as_deref().unwrap_or_default(),
        spec.lease_transitions.unwrap_or_default(),
        l.metadata.resource_version.as_deref(),
    )
}

#[test]
fn a_missing_lease_is_created_by_the_candidate() {
    let mut e = Elector::new(config("a"));
    let step = e.step(None, Instant::now(), wall(1));
    assert!(matches!(step, Step::Create(_)));
    assert_eq!(holder(&step), ("a", 0, None));
}

#[test]
fn another_holder_is_followed_until_it_stops_renewing_for_a_whole_duration() {
    let mut e = Elector::new(config("b"));
    let t0 = Instant::now();
    // a holds it; its clock is far from ours, which does not matter.
    let held = lease("a", -3600, 2, "7");
    assert_eq!(
        e.step(Some(&held), t0, wall(1)),
        Step::Follow { holder: "a".into() }
    );
    assert_eq!(
        e.step(Some(&held), t0 + Duration::from_secs(14), wall(15)),
        Step::Follow { holder: "a".into() }
    );
    // a renews: the 15 s count again from when b saw it.
    let renewed = lease("a", -3590, 2, "8");
    let t1 = t0 + Duration::from_secs(14);
    assert_eq!(
        e.step(Some(&renewed), t1, wall(15)),
        Step::Follow { holder: "a".into() }
    );
    assert_eq!(
        e.step(Some(&renewed), t1 + Duration::from_secs(14), wall(29)),
        Step::Follow { holder: "a".into() }
    );
    // 15 s with no renewal: b takes it, with the resourceVersion it read.
    let step = e.step(Some(&renewed), t1 + Duration::from_secs(15), wall(30));
    assert!(matches!(step, Step::Replace(_)));
    assert_eq!(holder(&step), ("b", 3, Some("8")));
}

#[test]
fn the_holder_renews_keeping_its_acquire_time() {
    let mut e = Elector::new(config("a"));
    let step = e.step(Some(&lease("a", 0, 4, "9")), Instant::now(), wall(2));
    assert_eq!(holder(&step), ("a", 4, Some("9")));
    let Step::Replace(l) = step else {
        unreachable!()
    };
    let spec = l.spec.expect("spec");
    assert_eq!(spec.acquire_time, Some(MicroTime(wall(0))));
    assert_eq!(spec.renew_time, Some(MicroTime(wall(2))));
}

#[tokio::test]
async fn acquire_renew_and_lose_on_409() {
    let (client, mut api) = ApiServer::new();
    let leases: Api<Lease> = Api::namespaced(client, "sluice-system");
    let mut e = Elector::new(config("a"));

    // Acquire: nothing there, so create.
    let round = tokio::spawn(async move {
        let r = try_acquire_or_renew(&leases, &mut e).await;
        (r.map_err(|e| e.to_string()), leases, e)
    });
    api.expect(Method::GET, LEASE).await.fail(404, "NotFound");
    let call = api.expect(Method::POST, LEASES).await;
    assert!(call.query.contains("fieldManager=sluice"), "{}", call.query);
    assert_eq!(call.body["spec"]["holderIdentity"], "a");
    assert_eq!(call.body["spec"]["leaseDurationSeconds"], 15);
    call.echo(201);
    let (r, leases, mut e) = round.await.expect("round");
    assert_eq!(r, Ok(true));

    // Renew: a replace carrying the resourceVersion read.
    let round = tokio::spawn(async move {
        let r = try_acquire_or_renew(&leases, &mut e).await;
        (r.map_err(|e| e.to_string()), leases, e)
    });
    let mine = serde_json::to_value(lease("a", 0, 0, "41")).expect("json");
    api.expect(Method::GET, LEASE).await.respond(200, &mine);
    let call = api.expect(Method::PUT, LEASE).await;
    assert_eq!(call.body["metadata"]["resourceVersion"], "41");
    assert_eq!(call.body["spec"]["holderIdentity"], "a");
    call.echo(200);
    let (r, leases, mut e) = round.await.expect("round");
    assert_eq!(r, Ok(true));

    // Lost: someone wrote since the read (409 on the stale resourceVersion).
    let round = tokio::spawn(async move {
        let r = try_acquire_or_renew(&leases, &mut e).await;
        r.map_err(|e| e.to_string())
    });
    let mine = serde_json::to_value(lease("a", 2, 0, "42")).expect("json");
    api.expect(Method::GET, LEASE).await.respond(200, &mine);
    api.expect(Method::PUT, LEASE).await.fail(409, "Conflict");
    assert_eq!(round.await.expect("round"), Ok(false));
}

#[tokio::test(start_paused = true)]
async fn a_leader_that_finds_the_lease_taken_stops_leading_at_once() {
    let (client, mut api) = ApiServer::new();
    let (tx, mut leading) = watch::channel(false);
    tokio::spawn(run(client, config("a"), tx));
    api.expect(Method::GET, LEASE).await.fail(404, "NotFound");
    api.expect(Method::POST, LEASES).await.echo(201);
    leading.changed().await.expect("changed");
    assert!(*leading.borrow());
    // An API server error within the renew deadline: still leading.
    api.expect(Method::GET, LEASE)
        .await
        .fail(500, "InternalError");
    api.expect(Method::GET, LEASE).await.respond(
        200,
        &serde_json::to_value(lease("a", 0, 0, "5")).expect("json"),
    );
    api.expect(Method::PUT, LEASE).await.fail(409, "Conflict");
    leading.changed().await.expect("changed");
    assert!(!*leading.borrow());
}

#[test]
fn the_holder_hands_the_lease_back_and_a_standby_takes_it_at_its_next_try() {
    let held = lease("a", 10, 4, "7");
    let released = Elector::new(config("a"))
        .release(&held, wall(12))
        .expect("a holds it");
    let spec = released.spec.as_ref().expect("spec");
    assert_eq!(spec.holder_identity, None);
    assert_eq!(spec.lease_duration_seconds, Some(1));
    assert_eq!(spec.renew_time, Some(MicroTime(wall(12))));
    assert_eq!(spec.lease_transitions, Some(4));
    assert_eq!(released.metadata.resource_version.as_deref(), Some("7"));

    // A standby that saw `a` renew just now takes it at once, not 15 s later.
    let mut b = Elector::new(config("b"));
    let now = Instant::now();
    assert!(matches!(
        b.step(Some(&held), now, wall(10)),
        Step::Follow { .. }
    ));
    let step = b.step(Some(&released), now + Duration::from_secs(1), wall(13));
    assert_eq!(holder(&step), ("b", 5, Some("7")));
}

#[test]
fn a_lease_another_holds_is_not_released() {
    assert_eq!(
        Elector::new(config("a")).release(&lease("b", 10, 4, "7"), wall(12)),
        None
    );
}

#[tokio::test]
async fn release_writes_the_lease_back_with_the_version_read_and_leaves_a_taken_one() {
    let (client, mut api) = ApiServer::new();
    let leases: Api<Lease> = Api::namespaced(client, "sluice-system");
    let round = tokio::spawn(async move {
        let r = release(&leases, &config("a")).await;
        (r.map_err(|e| e.to_string()), leases)
    });
    let mine = serde_json::to_value(lease("a", 0, 2, "41")).expect("json");
    api.expect(Method::GET, LEASE).await.respond(200, &mine);
    let call = api.expect(Method::PUT, LEASE).await;
    assert_eq!(call.body["metadata"]["resourceVersion"], "41");
    assert_eq!(call.body["spec"].get("holderIdentity"), None);
    assert_eq!(call.body["spec"]["leaseDurationSeconds"], 1);
    assert_eq!(call.body["spec"]["leaseTransitions"], 2);
    call.echo(200);
    let (r, leases) = round.await.expect("round");
    assert_eq!(r, Ok(true));

    // Taken by another since: nothing is written.
    let round = tokio::spawn(async move {
        release(&leases, &config("a"))
            .await
            .map_err(|e| e.to_string())
    });
    let theirs = serde_json::to_value(lease("b", 0, 3, "42")).expect("json");
    api.expect(Method::GET, LEASE).await.respond(200, &theirs);
    assert_eq!(round.await.expect("round"), Ok(false));
}
