use super::*;

const REQUIRED: &[(&str, &str)] = &[
    ("--serving-namespace", "default"),
    ("--serving-configuration", "hello"),
    ("--serving-revision", "hello-00001"),
    ("--serving-pod", "hello-00001-deployment-abc"),
    ("--serving-pod-ip", "10.0.0.7"),
    ("--queue-serving-port", "8012"),
    ("--user-port", "8080"),
    ("--container-concurrency", "10"),
    ("--revision-timeout-seconds", "300"),
];

fn parse(overrides: &[(&str, &str)], drop: &[&str]) -> Result<Config, ConfigError> {
    let mut argv = vec!["queue-proxy".to_owned()];
    for (flag, value) in REQUIRED.iter().chain(overrides) {
        if drop.contains(flag)
            || (overrides.iter().any(|(f, _)| f == flag) && REQUIRED.contains(&(flag, value)))
        {
            continue;
        }
        argv.push(format!("{flag}={value}"));
    }
    Config::try_from(Args::try_parse_from(argv).expect("flags parse"))
}

#[test]
fn knative_defaults_parse() {
    let c = parse(&[], &[]).expect("valid");
    assert_eq!(c.identity.revision, "hello-00001");
    assert_eq!(c.identity.service, "", "SERVING_SERVICE is optional");
    assert_eq!(c.serving_addr.port(), 8012);
    assert_eq!(
        (
            c.admin_addr.port(),
            c.metrics_addr.port(),
            c.user_metrics_addr.port()
        ),
        (8022, 9090, 9091)
    );
    assert_eq!(c.user_port, 8080);
    assert_eq!(c.container_concurrency, 10);
    assert_eq!(
        c.timeouts,
        Timeouts {
            total: Duration::from_secs(300),
            response_start: None,
            idle: None
        }
    );
    assert!(c.readiness_probes.is_empty());
    assert!(c.autoscaler.is_none());
    assert_eq!(c.drain_quiet_period, Duration::from_secs(30));
}

#[test]
fn every_missing_required_variable_is_named_once() {
    let all: Vec<&str> = REQUIRED.iter().map(|(f, _)| *f).collect();
    let err = parse(&[], &all).expect_err("nothing set");
    for var in [
        "SERVING_NAMESPACE",
        "SERVING_CONFIGURATION",
        "SERVING_REVISION",
        "SERVING_POD:",
        "SERVING_POD_IP",
        "QUEUE_SERVING_PORT",
        "USER_PORT",
        "CONTAINER_CONCURRENCY",
        "REVISION_TIMEOUT_SECONDS",
    ] {
        assert_eq!(
            err.0.iter().filter(|p| p.starts_with(var)).count(),
            1,
            "{var} named once in {err}"
        );
    }
    assert_eq!(err.0.len(), 9, "{err}");
}

#[test]
fn every_bad_value_is_reported_together() {
    let err = parse(
        &[
            ("--user-port", "0"),
            ("--queue-serving-port", "70000"),
            ("--container-concurrency", "-1"),
            ("--revision-timeout-seconds", "abc"),
            ("--revision-idle-timeout-seconds", "1.5"),
            ("--serving-readiness-probe", "{not json"),
            ("--enable-multi-container-probes", "maybe"),
            ("--autoscaler-address", "ftp://x"),
            ("--drain-quiet-period", "soon"),
            ("--bind-address", "localhost"),
        ],
        &[],
    )
    .expect_err("bad values");
    let text = err.to_string();
    for var in [
        "USER_PORT",
        "QUEUE_SERVING_PORT",
        "CONTAINER_CONCURRENCY",
        "REVISION_TIMEOUT_SECONDS",
        "REVISION_IDLE_TIMEOUT_SECONDS",
        "SERVING_READINESS_PROBE",
        "ENABLE_MULTI_CONTAINER_PROBES",
        "SLUICE_AUTOSCALER_ADDRESS",
        "SLUICE_DRAIN_QUIET_PERIOD",
        "SLUICE_BIND_ADDRESS",
    ] {
        assert!(text.contains(var), "{var} missing from:\n{text}");
    }
    assert_eq!(err.0.len(), 10, "{text}");
    assert!(
        text.starts_with("invalid queue-proxy configuration (10 problems):"),
        "{text}"
    );
    assert!(text.contains("\"-1\""), "the bad value is quoted: {text}");
}

#[test]
fn required_values_may_be_empty_but_zero_timeout_may_not() {
    let c = parse(
        &[("--serving-pod-ip", ""), ("--serving-namespace", "")],
        &[],
    )
    .expect("empty is allowed");
    assert_eq!(c.identity.pod_ip, "");
    let err = parse(&[("--revision-timeout-seconds", "0")], &[]).expect_err("zero timeout");
    assert_eq!(err.0.len(), 1, "{err}");
    assert!(err.0[0].starts_with("REVISION_TIMEOUT_SECONDS"), "{err}");
}

#[test]
fn optional_timeouts_zero_means_off() {
    let c = parse(
        &[
            ("--revision-response-start-timeout-seconds", "0"),
            ("--revision-idle-timeout-seconds", "7"),
        ],
        &[],
    )
    .expect("valid");
    assert_eq!(c.timeouts.response_start, None);
    assert_eq!(c.timeouts.idle, Some(Duration::from_secs(7)));
}

#[test]
fn sluice_variables() {
    let c = parse(
        &[
            ("--autoscaler-address", "127.0.0.1:8080"),
            ("--drain-quiet-period", "250ms"),
            ("--bind-address", "127.0.0.1"),
            ("--queue-serving-port", "0"),
            ("--container-concurrency", "0"),
            (
                "--serving-readiness-probe",
                r#"{"tcpSocket":{"port":8080,"host":"127.0.0.1"}}"#,
            ),
        ],
        &[],
    )
    .expect("valid");
    assert_eq!(
        c.autoscaler.map(|u| u.to_string()),
        Some("http://127.0.0.1:8080/".to_owned())
    );
    assert_eq!(c.drain_quiet_period, Duration::from_millis(250));
    assert_eq!(c.serving_addr, "127.0.0.1:0".parse().expect("addr"));
    assert_eq!(c.container_concurrency, 0);
    assert_eq!(c.readiness_probes.len(), 1);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
    assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
    assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
    assert_eq!(parse_duration("1.5m"), Some(Duration::from_secs(90)));
    assert_eq!(
        parse_duration("1m30s"),
        Some(Duration::from_secs(90)),
        "Go syntax"
    );
    assert_eq!(parse_duration("-1"), None);
    assert_eq!(parse_duration("-1s"), None);
    assert_eq!(parse_duration("3 fortnights"), None);
    assert_eq!(parse_duration(""), None);
}

#[test]
fn first_byte_deadline_is_the_earliest_timer() {
    let start = tokio::time::Instant::now();
    let secs = Duration::from_secs;
    let t = |response_start, idle| Timeouts {
        total: secs(300),
        response_start,
        idle,
    };
    assert_eq!(t(None, None).first_byte_deadline(start), start + secs(300));
    assert_eq!(
        t(Some(secs(10)), None).first_byte_deadline(start),
        start + secs(10)
    );
    assert_eq!(
        t(Some(secs(10)), Some(secs(4))).first_byte_deadline(start),
        start + secs(4)
    );
    assert_eq!(
        t(None, Some(secs(400))).first_byte_deadline(start),
        start + secs(300)
    );
}

#[test]
fn worker_threads_and_connection_limits_are_checked_with_the_rest() {
    assert_eq!(
        parse(&[], &[]).expect("valid").worker_threads,
        1,
        "a sidecar's default"
    );
    let c = parse(&[("--worker-threads", "2"), ("--idle-timeout", "5s")], &[]).expect("valid");
    assert_eq!(c.worker_threads, 2);
    assert_eq!(c.limits.idle_timeout, Duration::from_secs(5));
    let e = parse(
        &[
            ("--worker-threads", "0"),
            ("--header-read-timeout", "later"),
            ("--user-port", "x"),
        ],
        &[],
    )
    .expect_err("three bad values");
    assert_eq!(e.0.len(), 3, "every one at once: {e}");
    assert!(
        e.0.iter().any(|p| p.starts_with("SLUICE_WORKER_THREADS")),
        "{e}"
    );
    assert!(
        e.0.iter().any(|p| p.contains("--header-read-timeout")),
        "{e}"
    );
}
