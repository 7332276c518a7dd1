use std::collections::{BTreeMap, HashSet};

use sluice_proto::v1::RevisionEndpoints;
use tokio_stream::StreamExt;

use super::*;

fn rev(ns: &str, name: &str, addresses: &[&str]) -> RevisionEndpoints {
    RevisionEndpoints {
        namespace: ns.into(),
        revision: name.into(),
        addresses: addresses.iter().map(|a| (*a).to_owned()).collect(),
        ..RevisionEndpoints::default()
    }
}

fn gone(ns: &str, name: &str) -> RevisionEndpoints {
    RevisionEndpoints {
        removed: true,
        ..rev(ns, name, &[])
    }
}

#[derive(Default)]
struct Copy {
    items: BTreeMap<ItemKey, RevisionEndpoints>,
    synced: usize,
}

impl Follower<RevisionEndpoints> for Copy {
    fn apply(&mut self, item: &RevisionEndpoints) {
        if item.removed {
            self.items.remove(&item.key());
        } else {
            self.items.insert(item.key(), item.clone());
        }
    }

    fn retain(&mut self, listed: &HashSet<ItemKey>) {
        self.items.retain(|k, _| listed.contains(k));
    }

    fn synced(&mut self) {
        self.synced += 1;
    }
}

#[test]
fn publish_sends_only_changes() {
    let feed = Feed::new();
    let (_, mut rx) = feed.subscribe("");
    assert!(feed.publish(rev("a", "r1", &["127.0.0.1:1"])));
    assert!(
        !feed.publish(rev("a", "r1", &["127.0.0.1:1"])),
        "the same item again"
    );
    assert!(feed.publish(rev("a", "r1", &["127.0.0.1:2"])));
    assert!(
        !feed.publish(gone("a", "unknown")),
        "removal of an unknown key"
    );
    assert!(feed.publish(gone("a", "r1")));
    let sent: Vec<_> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert_eq!(
        sent,
        vec![
            rev("a", "r1", &["127.0.0.1:1"]),
            rev("a", "r1", &["127.0.0.1:2"]),
            gone("a", "r1")
        ]
    );
    assert!(feed.subscribe("").0.is_empty());
}

#[tokio::test]
async fn a_watch_gets_the_state_the_marker_then_changes_of_its_namespace() {
    let feed = Feed::new();
    feed.publish(rev("a", "r1", &[]));
    feed.publish(rev("b", "r2", &[]));
    let mut events = Box::pin(feed.events("a".into()));
    assert_eq!(events.next().await, Some(Event::Item(rev("a", "r1", &[]))));
    assert_eq!(events.next().await, Some(Event::Synced));
    feed.publish(rev("b", "r3", &[]));
    feed.publish(rev("a", "r4", &[]));
    assert_eq!(events.next().await, Some(Event::Item(rev("a", "r4", &[]))));
}

#[tokio::test]
async fn a_watcher_that_lags_gets_the_whole_state_again() {
    let feed = Feed::new();
    feed.publish(rev("a", "keep", &[]));
    feed.publish(rev("a", "doomed", &[]));
    let mut events = Box::pin(feed.events(String::new()));
    for _ in 0..3 {
        events.next().await;
    }
    // Far more changes than the buffer holds, while the watcher reads nothing; the
    // removal among them must not be lost.
    feed.publish(gone("a", "doomed"));
    for i in 0..(CHANGES_BUFFER + WATCHER_BUFFER + 10) {
        feed.publish(rev("a", "churn", &[&format!("127.0.0.1:{}", i + 1)]));
    }
    let mut seen = Vec::new();
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), events.next())
            .await
            .expect("the watch keeps sending")
            .expect("the watch does not end");
        match event {
            Event::Item(item) => seen.push(item),
            Event::Synced => break,
        }
    }
    assert!(
        seen.len() < CHANGES_BUFFER,
        "the watcher lagged and was not sent every change ({} items)",
        seen.len()
    );
    // The whole state, in key order, ends just before the marker: the removal is in it
    // (no `doomed`), and so is the last change.
    let last = format!("127.0.0.1:{}", CHANGES_BUFFER + WATCHER_BUFFER + 10);
    assert_eq!(
        seen[seen.len() - 2..],
        [rev("a", "churn", &[&last]), rev("a", "keep", &[])]
    );
}

#[tokio::test]
async fn follow_local_copies_and_forgets() {
    let feed = Feed::new();
    feed.publish(rev("a", "r1", &[]));
    let follower = tokio::spawn({
        let feed = feed.clone();
        async move {
            let mut copy = Copy::default();
            copy.items
                .insert(gone("x", "stale").key(), rev("x", "stale", &[]));
            let task = follow_local(&feed, &mut copy);
            let _ = tokio::time::timeout(Duration::from_millis(200), task).await;
            copy
        }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    feed.publish(rev("a", "r2", &["127.0.0.1:9"]));
    let copy = follower.await.expect("the follower ran");
    let names: Vec<_> = copy.items.keys().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["r1", "r2"], "the stale item was forgotten");
    assert_eq!(copy.synced, 1);
}

#[test]
fn routes_convert_both_ways() {
    let s = Route::Service(v1::ServiceRoute {
        namespace: "a".into(),
        name: "s".into(),
        ..v1::ServiceRoute::default()
    });
    let r = Route::Revision(v1::RevisionRoute {
        namespace: "a".into(),
        revision: "s-00001".into(),
        ..v1::RevisionRoute::default()
    });
    for e in [Event::Item(s), Event::Item(r), Event::Synced] {
        let wire = v1::RoutesEvent::from(e.clone());
        assert_eq!(Event::<Route>::from(wire), e);
    }
    assert_ne!(
        Route::Service(v1::ServiceRoute {
            namespace: "a".into(),
            name: "x".into(),
            ..Default::default()
        })
        .key(),
        Route::Revision(v1::RevisionRoute {
            namespace: "a".into(),
            revision: "x".into(),
            ..Default::default()
        })
        .key(),
        "a service and a revision of the same name are two items"
    );
}
