//! Real queue-proxies in front of real sample apps, pushing their stats to the real
//! autoscaler over gRPC: the autoscaler decides on the load the apps actually carried.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_autoscaler::scaler::{RecordingScaler, RevisionKey};
use sluice_autoscaler::server::{Args, Server};
use sluice_test_support::{load, start_pod};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_proxies_report_to_the_autoscaler_which_scales_on_their_load() {
    let scaler = Arc::new(RecordingScaler::new());
    let args = Args {
        listen: "127.0.0.1:0".parse().expect("valid"),
        metrics_listen: "127.0.0.1:0".parse().expect("valid"),
        config: None,
        control: None,
        no_auto_register: true,
        activator_probe: None,
    };
    let server = Server::bind(&args, Some(scaler.clone()))
        .await
        .expect("binds");
    let autoscaler = server.autoscaler().clone();
    let grpc = server.grpc_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let rev = RevisionKey::new("default", "hello-00001");
    let annotations: BTreeMap<String, String> =
        [("autoscaling.knative.dev/target".to_owned(), "10".to_owned())].into();
    scaler.set_pods(&rev, 1, 1);
    autoscaler
        .upsert_revision(&rev, annotations, 0)
        .expect("valid");
    scaler.set_pods(&rev, 3, 3);

    let mut pods = Vec::new();
    for i in 0..3 {
        pods.push(
            start_pod(
                0,
                &[
                    format!("--serving-pod=hello-00001-pod-{i}"),
                    format!("--autoscaler-address=http://{grpc}"),
                ],
            )
            .await,
        );
    }
    // 10 requests of 200 ms in flight at each pod for 5 s: about 30 at once in all.
    let urls: Vec<String> = pods.iter().map(|(_, qp)| qp.url("/?sleep=200")).collect();
    let loads = urls
        .iter()
        .map(|url| load::run(url, 10, None, Duration::from_secs(5)));
    for report in futures_util::future::join_all(loads).await {
        assert_eq!(report.count(200), report.total(), "{report:?}");
    }

    let d = autoscaler
        .decisions(None)
        .into_iter()
        .next()
        .expect("the revision");
    // Target 10 × 70 % = 7 per pod. The stable average includes the first seconds' ramp.
    assert!(
        (20.0..=31.0).contains(&d.stable_value),
        "stable concurrency {d:?}"
    );
    let expected = (d.stable_value / 7.0).ceil() as i32;
    assert_eq!(d.decider_desired, expected, "{d:?}");
    assert!((3..=5).contains(&d.decider_desired), "{d:?}");
    assert_eq!((d.ready_pods, d.panic), (3, false), "{d:?}");
    assert!(
        scaler.calls().contains(&(rev, d.decider_desired as u32)),
        "{:?}",
        scaler.calls()
    );
    let text = String::from_utf8(autoscaler.metrics().text()).expect("utf-8");
    let reported: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("sluice_autoscaler_stats_total{source=\"queue-proxy\"} "))
        .expect("the counter")
        .parse()
        .expect("a number");
    assert!(reported >= 12.0, "3 pods × about 5 reports: {reported}");

    let _ = stop.send(());
    serving.await.expect("stopped");
}
