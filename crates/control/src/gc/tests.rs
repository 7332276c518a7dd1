use super::*;

const H: u64 = 3600;

fn t0() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
}

fn at(secs: u64) -> SystemTime {
    t0() + Duration::from_secs(secs)
}

/// Revision `n` created at hour `n`, last active at hour `n + 1` (or never, if `active`
/// is given as the index of the one traffic names).
fn revisions(count: u64, active: &[u64]) -> Vec<Candidate> {
    (1..=count)
        .map(|n| Candidate {
            name: format!("hello-{n:05}"),
            created: at(n * H),
            last_active: at(n * H + H),
            active: active.contains(&n),
        })
        .collect()
}

fn names(c: &[Collected]) -> Vec<&str> {
    c.iter().map(|c| c.name.as_str()).collect()
}

fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn knatives_defaults_and_its_examples_parse() {
    assert_eq!(
        GcConfig::from_data(&BTreeMap::new()),
        Ok(GcConfig::default())
    );
    let immediate = GcConfig::from_data(&data(&[
        ("retain-since-create-time", "disabled"),
        ("retain-since-last-active-time", "disabled"),
        ("min-non-active-revisions", "0"),
        ("max-non-active-revisions", "0"),
        ("_example", "# ignored"),
    ]))
    .expect("Knative's immediate_gc");
    assert_eq!(
        immediate,
        GcConfig {
            retain_since_create_time: None,
            retain_since_last_active_time: None,
            min_non_active_revisions: 0,
            max_non_active_revisions: Some(0),
        }
    );
    let off = GcConfig::from_data(&data(&[
        ("retain-since-create-time", "disabled"),
        ("retain-since-last-active-time", "disabled"),
        ("max-non-active-revisions", "disabled"),
    ]))
    .expect("Knative's disable-all");
    assert!(off.disabled());
    assert_eq!(
        GcConfig::from_data(&data(&[("retain-since-create-time", "1h30m")]))
            .map(|c| c.retain_since_create_time),
        Ok(Some(Duration::from_secs(5400)))
    );
}

#[test]
fn bad_values_are_refused_naming_the_key() {
    for (pairs, error) in [
        (
            vec![("retain-since-create-time", "two days")],
            "retain-since-create-time: \"two days\" is not a duration such as 48h, nor disabled",
        ),
        (
            vec![("retain-since-last-active-time", "-1h")],
            "retain-since-last-active-time: \"-1h\" is negative (give a duration, or disabled)",
        ),
        (
            vec![("min-non-active-revisions", "-1")],
            "min-non-active-revisions: \"-1\" is not a whole number of revisions, 0 or more",
        ),
        (
            vec![
                ("min-non-active-revisions", "20"),
                ("max-non-active-revisions", "10"),
            ],
            "max-non-active-revisions (10) must be at least min-non-active-revisions (20)",
        ),
        (
            vec![("max-non-active-revision", "10")],
            "max-non-active-revision: not a config-gc key (Knative's are \
             retain-since-create-time, retain-since-last-active-time, \
             min-non-active-revisions, max-non-active-revisions)",
        ),
    ] {
        assert_eq!(GcConfig::from_data(&data(&pairs)), Err(error.to_owned()));
    }
}

#[test]
fn immediate_collection_takes_every_non_active_revision_and_nothing_active() {
    let config = GcConfig {
        retain_since_create_time: None,
        retain_since_last_active_time: None,
        min_non_active_revisions: 0,
        max_non_active_revisions: Some(0),
    };
    // 5 is the latest ready, 2 is pinned by a tag.
    let revs = revisions(5, &[2, 5]);
    let out = collect(&config, &revs, at(100 * H));
    assert_eq!(names(&out), ["hello-00004", "hello-00003", "hello-00001"]);
    assert_eq!(
        out[0].why,
        "more than 0 non-active revisions: the least recently active goes"
    );
}

#[test]
fn the_defaults_keep_twenty_stale_ones_and_everything_young() {
    let config = GcConfig::default();
    // 30 revisions an hour apart, 1 is traffic's; now is hour 80: 1..=30 created ≥ 50 h
    // ago and last active ≥ 49 h ago, all stale but the active one.
    let revs = revisions(30, &[30]);
    let out = collect(&config, &revs, at(80 * H));
    // 29 non-active, all stale: the 20 most recently active kept, 9 collected.
    assert_eq!(
        names(&out),
        (1..=9)
            .rev()
            .map(|n| format!("hello-{n:05}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        out[0].why,
        "stale: created 71h ago, last active 70h ago, and 20 stale ones are kept"
    );
    // At hour 40 the newest were created within 48 h: none is stale, and 29 ≤ 1000.
    assert!(collect(&config, &revs, at(40 * H)).is_empty());
    // Twenty or fewer revisions: nothing, whatever their age.
    assert!(collect(&config, &revisions(20, &[]), at(1000 * H)).is_empty());
}

#[test]
fn either_retention_keeps_a_revision_and_the_boundary_is_stale() {
    let config = GcConfig {
        retain_since_create_time: Some(Duration::from_secs(10 * H)),
        retain_since_last_active_time: Some(Duration::from_secs(5 * H)),
        min_non_active_revisions: 0,
        max_non_active_revisions: None,
    };
    let one = |created: u64, last_active: u64| {
        vec![
            Candidate {
                name: "old".to_owned(),
                created: at(created),
                last_active: at(last_active),
                active: false,
            },
            Candidate {
                name: "serving".to_owned(),
                created: at(0),
                last_active: at(0),
                active: true,
            },
        ]
    };
    let now = at(100 * H);
    // Created 9 h ago: kept. Active 4 h ago: kept.
    assert!(collect(&config, &one(91 * H, 91 * H), now).is_empty());
    assert!(collect(&config, &one(0, 96 * H), now).is_empty());
    // Exactly 10 h and 5 h: stale (Knative keeps only what is younger).
    assert_eq!(names(&collect(&config, &one(90 * H, 95 * H), now)), ["old"]);
    // Create time disabled: only the last activity counts.
    let active_only = GcConfig {
        retain_since_create_time: None,
        ..config.clone()
    };
    assert_eq!(
        names(&collect(&active_only, &one(99 * H, 94 * H), now)),
        ["old"]
    );
}

#[test]
fn the_maximum_collects_the_least_recently_active_even_when_young() {
    let config = GcConfig {
        max_non_active_revisions: Some(3),
        ..GcConfig {
            min_non_active_revisions: 0,
            ..GcConfig::default()
        }
    };
    // All created within the hour: none stale; 6 non-active, 3 kept.
    let revs = revisions(7, &[7]);
    let out = collect(&config, &revs, at(8 * H));
    assert_eq!(names(&out), ["hello-00003", "hello-00002", "hello-00001"]);
}

#[test]
fn no_gc_is_true_in_any_case_and_nothing_else() {
    let marked = |v: &str| {
        marked_no_gc(&BTreeMap::from([(
            NO_GC_ANNOTATION.to_owned(),
            v.to_owned(),
        )]))
    };
    assert!(marked("true") && marked("TRUE") && marked("True"));
    assert!(!marked("false") && !marked("yes") && !marked(""));
    assert!(!marked_no_gc(&BTreeMap::new()));
}
