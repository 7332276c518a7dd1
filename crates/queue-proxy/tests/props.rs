//! Property tests of the queue-proxy's environment (Knative's variables as the revision
//! reconciler sets them): no value may panic, and every refusal names its variable.

use clap::Parser;
use proptest::prelude::*;
use sluice_queue_proxy::{Args, Config};

const VARS: &[(&str, &str)] = &[
    ("--queue-serving-port", "QUEUE_SERVING_PORT"),
    ("--user-port", "USER_PORT"),
    ("--container-concurrency", "CONTAINER_CONCURRENCY"),
    ("--revision-timeout-seconds", "REVISION_TIMEOUT_SECONDS"),
    (
        "--revision-response-start-timeout-seconds",
        "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
    ),
    (
        "--revision-idle-timeout-seconds",
        "REVISION_IDLE_TIMEOUT_SECONDS",
    ),
    ("--serving-readiness-probe", "SERVING_READINESS_PROBE"),
    (
        "--enable-multi-container-probes",
        "ENABLE_MULTI_CONTAINER_PROBES",
    ),
    ("--admin-port", "SLUICE_ADMIN_PORT"),
    ("--bind-address", "SLUICE_BIND_ADDRESS"),
    ("--autoscaler-address", "SLUICE_AUTOSCALER_ADDRESS"),
    ("--drain-quiet-period", "SLUICE_DRAIN_QUIET_PERIOD"),
    ("--idle-timeout", "SLUICE_IDLE_TIMEOUT"),
    ("--max-connections", "SLUICE_MAX_CONNECTIONS"),
];

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "-?[0-9]{1,7}",
        "[0-9]{1,4}(ms|s|m)",
        "(true|false|)",
        "\\{\"httpGet\":\\{\"port\":[0-9]{1,5}\\}\\}",
        "[^\\x00-\\x1f-]\\PC{0,20}",
    ]
}

proptest! {
    #[test]
    fn env_values_never_panic_and_refusals_name_their_variables(
        picked in prop::collection::btree_map(0..VARS.len(), value(), 1..5)
    ) {
        let mut argv = vec![
            "queue-proxy".to_owned(),
            "--serving-namespace=default".to_owned(),
            "--serving-configuration=c".to_owned(),
            "--serving-revision=r".to_owned(),
            "--serving-pod=p".to_owned(),
            "--serving-pod-ip=127.0.0.1".to_owned(),
        ];
        for (&i, v) in &picked {
            argv.push(format!("{}={v}", VARS[i].0));
        }
        let Ok(args) = Args::try_parse_from(&argv) else {
            return Ok(());
        };
        if let Err(e) = Config::try_from(args) {
            for problem in &e.0 {
                prop_assert!(
                    VARS.iter().any(|(_, var)| problem.contains(var)
                        || problem.contains(&format!("--{}", var.to_lowercase().replace('_', "-").trim_start_matches("sluice-")))),
                    "{problem} names no variable"
                );
            }
        }
    }
}
