//! What the autoscaler sees: Knative's protobuf `Stat` on the metrics port and the same
//! stats on the gRPC stream, measured from real requests.

use std::time::Duration;

use prost::Message;
use sluice_proto::Stat;
use sluice_proto::v1::Source;
use sluice_test_support::client::{get, get_with};
use sluice_test_support::stats_sink::StatsSink;
use sluice_test_support::{load, start_pod};

async fn scrape(qp: &sluice_test_support::QueueProxyHandle) -> Stat {
    let reply = get(&format!("http://{}/metrics", qp.metrics)).await;
    assert_eq!(reply.headers["content-type"], "application/protobuf");
    Stat::decode(reply.body).expect("a protobuf Stat")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protobuf_stat_after_a_known_load() {
    let (_app, qp) = start_pod(0, &[]).await;
    let first = scrape(&qp).await;
    assert_eq!(
        first.pod_name, "hello-00001-pod",
        "before the first tick only the pod name"
    );
    assert_eq!(
        (first.average_concurrent_requests, first.request_count),
        (0.0, 0.0)
    );

    // Steady load: 3 direct + 1 proxied clients, each always with one 100 ms request in flight.
    let direct = tokio::spawn({
        let url = qp.url("/?sleep=100");
        async move { load::run(&url, 3, None, Duration::from_millis(4300)).await }
    });
    let proxied = tokio::spawn({
        let url = qp.url("/?sleep=100");
        async move {
            let mut n = 0;
            let stop = tokio::time::Instant::now() + Duration::from_millis(4300);
            while tokio::time::Instant::now() < stop {
                assert_eq!(
                    get_with(&url, &[("k-proxy-request", "activator")])
                        .await
                        .status,
                    200
                );
                n += 1;
            }
            n
        }
    });
    // A period fully inside the load: one that began at least 0.5 s into it. Reports
    // come at a fixed phase of the wall clock's second (sluice_core::phase), so the
    // latest one after 2.2 s may be from 1.2 s in; then the next one is taken.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let mut stat = scrape(&qp).await;
    if stat.process_uptime < 1.5 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        stat = scrape(&qp).await;
    }
    direct.await.unwrap();
    proxied.await.unwrap();
    assert_eq!(stat.pod_name, "hello-00001-pod");
    assert_eq!(stat.timestamp, 0, "the queue-proxy never stamps");
    assert!((1.5..=3.3).contains(&stat.process_uptime), "{stat:?}");
    assert!(
        (3.6..=4.05).contains(&stat.average_concurrent_requests),
        "4 in flight all the time: {stat:?}"
    );
    assert!(
        (0.85..=1.02).contains(&stat.average_proxied_concurrent_requests),
        "{stat:?}"
    );
    assert!(
        (30.0..=41.0).contains(&stat.request_count),
        "about 40 requests/s: {stat:?}"
    );
    assert!(
        (7.0..=11.0).contains(&stat.proxied_request_count),
        "about 10/s: {stat:?}"
    );

    let text = get_with(
        &format!("http://{}/metrics", qp.metrics),
        &[("accept", "text/plain;version=0.0.4")],
    )
    .await;
    assert!(
        text.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        text.text()
            .contains("queue_average_concurrent_requests{destination_namespace=\"default\""),
        "{}",
        text.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_stream_delivers_the_stats_and_a_dead_autoscaler_fails_nothing() {
    let sink = StatsSink::start().await;
    let sink_addr = sink.addr;
    let (_app, qp) = start_pod(2, &[format!("--autoscaler-address={}", sink.url())]).await;
    // Knative's TestHandlerReqEvent (B8) through the whole stack.
    for i in 0..10 {
        let mut headers = vec![];
        if i < 4 {
            headers.push(("k-proxy-request", "activator"));
        }
        assert_eq!(get_with(&qp.url("/"), &headers).await.status, 200);
    }
    let total = sink
        .wait_for(Duration::from_secs(5), |r| {
            r.stat.as_ref().is_some_and(|s| s.request_count > 0.0)
        })
        .await
        .expect("a report with the requests");
    assert_eq!(total.namespace, "default");
    assert_eq!(total.revision, "hello-00001");
    assert_eq!(total.source, i32::from(Source::QueueProxy));
    assert!(!total.poke);
    // The requests may straddle a report boundary: after one more period, every request
    // is in exactly one report.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reports = sink.reports();
    let sum = |f: fn(&Stat) -> f64| {
        reports
            .iter()
            .filter_map(|r| r.stat.as_ref())
            .map(f)
            .sum::<f64>()
    };
    assert_eq!(sum(|s| s.request_count), 10.0);
    assert_eq!(sum(|s| s.proxied_request_count), 4.0);
    let scraped = scrape(&qp).await;
    let last = reports.last().and_then(|r| r.stat.clone()).unwrap();
    assert_eq!(
        scraped.pod_name, last.pod_name,
        "the stream and the scrape carry the same Stat"
    );

    // Kill the autoscaler: requests go on untouched.
    sink.kill().await;
    let report = load::run(&qp.url("/"), 8, Some(2000), Duration::from_secs(20)).await;
    assert_eq!(report.count(200), 2000, "{report:?}");
    // It comes back on the same address: the queue-proxy reconnects and reports again.
    let sink = StatsSink::start_on(sink_addr).await;
    assert_eq!(get(&qp.url("/")).await.status, 200);
    let back = sink
        .wait_for(Duration::from_secs(10), |r| {
            r.stat
                .as_ref()
                .is_some_and(|s| s.pod_name == "hello-00001-pod")
        })
        .await;
    assert!(
        back.is_some(),
        "reports resumed after the autoscaler came back"
    );
}
