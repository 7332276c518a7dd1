//! The autoscaler server over real loopback gRPC: many queue-proxy streams and an
//! activator feeding one revision, pokes, watchers, and clients that vanish mid-stream.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_autoscaler::config::AutoscalerConfig;
use sluice_autoscaler::kpa::{PodCounts, Reporter, RevisionAutoscaler, StatSample};
use sluice_autoscaler::revision::RevisionScaling;
use sluice_autoscaler::scaler::{RecordingScaler, RevisionKey, Scaler};
use sluice_autoscaler::server::{Args, Server};
use sluice_autoscaler::service::Autoscaler;
use sluice_proto::Stat;
use sluice_proto::v1::decision_service_client::DecisionServiceClient;
use sluice_proto::v1::stats_service_client::StatsServiceClient;
use sluice_proto::v1::{Decision, Source, StatReport, WatchDecisionsRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const NS: &str = "default";

struct Running {
    autoscaler: Autoscaler,
    grpc: String,
    metrics: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

async fn start(scaler: Arc<dyn Scaler>) -> Running {
    let args = Args {
        listen: "127.0.0.1:0".parse().expect("valid"),
        metrics_listen: "127.0.0.1:0".parse().expect("valid"),
        config: None,
        control: None,
        no_auto_register: true,
        activator_probe: None,
    };
    let server = Server::bind(&args, Some(scaler)).await.expect("binds");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    Running {
        autoscaler: server.autoscaler().clone(),
        grpc: format!("http://{}", server.grpc_addr()),
        metrics: server.metrics_addr(),
        stop: Some(stop),
        task: tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await;
        }),
    }
}

fn stat_report(revision: &str, source: Source, pod: &str, c: f64, proxied: f64) -> StatReport {
    StatReport {
        namespace: NS.into(),
        revision: revision.into(),
        source: source.into(),
        stat: Some(Stat {
            pod_name: pod.into(),
            average_concurrent_requests: c,
            average_proxied_concurrent_requests: proxied,
            request_count: c,
            proxied_request_count: proxied,
            ..Stat::default()
        }),
        poke: false,
    }
}

/// One reporter's open stream: reports sent through `tx`.
struct ReportStream {
    tx: mpsc::Sender<StatReport>,
    call: tokio::task::JoinHandle<Result<u64, tonic::Status>>,
}

async fn open_stream(grpc: &str) -> ReportStream {
    let mut client = StatsServiceClient::connect(grpc.to_owned())
        .await
        .expect("connects");
    let (tx, rx) = mpsc::channel(64);
    let call = tokio::spawn(async move {
        client
            .report(ReceiverStream::new(rx))
            .await
            .map(|r| r.into_inner().accepted)
    });
    ReportStream { tx, call }
}

async fn watch(grpc: &str) -> Streaming<Decision> {
    DecisionServiceClient::connect(grpc.to_owned())
        .await
        .expect("connects")
        .watch(WatchDecisionsRequest::default())
        .await
        .expect("watch starts")
        .into_inner()
}

async fn next_decision(stream: &mut Streaming<Decision>, within: Duration) -> Decision {
    tokio::time::timeout(within, stream.message())
        .await
        .expect("a decision in time")
        .expect("stream ok")
        .expect("stream open")
}

/// Sleeps until the autoscaler's clock is next `ms` into a second, never `ms` of the
/// second it is in: a burst sent within a millisecond of the last alignment would
/// otherwise go out at once, into the last burst's bucket. Registering at 0.05 s and
/// sending bursts at 0.5 s puts each burst in a per-second bucket of its own, away from
/// the ticks.
async fn align(autoscaler: &Autoscaler, ms: u32) {
    let into = autoscaler.now().subsec_millis();
    let wait = match (1000 + ms - into) % 1000 {
        0 => 1000,
        wait => wait,
    };
    tokio::time::sleep(Duration::from_millis(u64::from(wait))).await;
}

/// The next decision that satisfies `pred`, each within `within`.
async fn decision_where(
    stream: &mut Streaming<Decision>,
    within: Duration,
    pred: impl Fn(&Decision) -> bool,
) -> Decision {
    loop {
        let d = next_decision(stream, within).await;
        if pred(&d) {
            return d;
        }
    }
}

/// Polls `/metrics` until a line reads `sample` (5 s at most).
async fn wait_for_metric(addr: std::net::SocketAddr, sample: &str, what: &str) {
    let poll = async {
        while !metrics_text(addr).await.lines().any(|l| l == sample) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .unwrap_or_else(|_| panic!("{what}: no `{sample}` within 5 s"));
}

async fn metrics_text(addr: std::net::SocketAddr) -> String {
    let reply = sluice_test_support::client::get(&format!("http://{addr}/metrics")).await;
    assert_eq!(reply.status, 200);
    reply.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_queue_proxies_and_an_activator_give_the_decisions_the_kpa_predicts() {
    let scaler = Arc::new(RecordingScaler::new());
    let running = start(scaler.clone()).await;
    let rev = RevisionKey::new(NS, "hello-00001");
    let annotations: BTreeMap<String, String> =
        [("autoscaling.knative.dev/target".to_owned(), "10".to_owned())].into();
    // One pod when the revision is created (no panic at start), then 10.
    scaler.set_pods(&rev, 1, 1);
    align(&running.autoscaler, 50).await;
    running
        .autoscaler
        .upsert_revision(&rev, annotations.clone(), 0)
        .expect("valid");
    scaler.set_pods(&rev, 10, 10);
    let mut watcher = watch(&running.grpc).await;
    let first = next_decision(&mut watcher, Duration::from_secs(1)).await;
    assert_eq!(
        (first.revision.as_str(), first.desired_scale),
        ("hello-00001", -1),
        "the state first"
    );

    // Ten queue-proxies on their own streams, each 5 in flight of which 1 came through
    // the activator, and the activator on its own stream with 10: a revision total of
    // 10 × (5 − 1) + 10 = 50 each second.
    let mut pods = Vec::new();
    for _ in 0..10 {
        pods.push(open_stream(&running.grpc).await);
    }
    let activator = open_stream(&running.grpc).await;
    let seconds = 3;
    for _ in 0..seconds {
        align(&running.autoscaler, 500).await;
        for (i, pod) in pods.iter().enumerate() {
            let r = stat_report(
                "hello-00001",
                Source::QueueProxy,
                &format!("pod-{i}"),
                5.0,
                1.0,
            );
            pod.tx.send(r).await.expect("stream open");
        }
        let r = stat_report("hello-00001", Source::Activator, "", 10.0, 0.0);
        activator.tx.send(r).await.expect("stream open");
    }

    // What the KPA says for the same per-second totals.
    let cfg = AutoscalerConfig::default();
    let scaling = RevisionScaling::resolve(&cfg, &annotations, 0).expect("valid");
    let mut kpa = RevisionAutoscaler::new(&cfg, scaling, Some(1), Duration::ZERO);
    for s in 0..seconds {
        let total = StatSample {
            average_concurrency: 50.0,
            request_count: 50.0,
            ..StatSample::default()
        };
        kpa.record(Duration::from_secs(s), Reporter::Activator, total, false);
    }
    let predicted = kpa.tick(
        Duration::from_secs(seconds),
        PodCounts {
            ready: 10,
            replicas: 10,
        },
        true,
    );
    assert_eq!((predicted.desired, predicted.panic_mode), (8, false));

    let d = decision_where(&mut watcher, Duration::from_secs(5), |d| {
        d.decider_desired >= 0
    })
    .await;
    assert_eq!(
        (d.decider_desired, d.desired_scale, d.panic, d.ready_pods),
        (predicted.desired, predicted.scale, predicted.panic_mode, 10),
        "{d:?}"
    );
    assert_eq!(d.stable_value, 50.0, "{d:?}");
    assert_eq!(scaler.calls(), [(rev, 8)]);

    // Every stream ends cleanly with its count.
    for pod in pods {
        drop(pod.tx);
        assert_eq!(pod.call.await.expect("joined").expect("ok"), seconds);
    }
    drop(activator.tx);
    assert_eq!(activator.call.await.expect("joined").expect("ok"), seconds);
    let text = metrics_text(running.metrics).await;
    assert!(
        text.contains("sluice_autoscaler_stats_total{source=\"queue-proxy\"} 30"),
        "{text}"
    );
    assert!(
        text.contains("sluice_autoscaler_stats_total{source=\"activator\"} 3"),
        "{text}"
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poke_at_zero_is_decided_within_100ms() {
    let scaler = Arc::new(RecordingScaler::new());
    let running = start(scaler.clone()).await;
    let rev = RevisionKey::new(NS, "zero-00001");
    running
        .autoscaler
        .upsert_revision(&rev, BTreeMap::new(), 0)
        .expect("valid");
    let activator = open_stream(&running.grpc).await;
    let mut watcher = watch(&running.grpc).await;
    // Idle: the first tick decides 0.
    activator
        .tx
        .send(stat_report("zero-00001", Source::Activator, "", 0.0, 0.0))
        .await
        .expect("open");
    decision_where(&mut watcher, Duration::from_secs(5), |d| {
        d.decider_desired == 0
    })
    .await;
    // Wait out most of a tick period so that the next tick is not what answers.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut poke = stat_report("zero-00001", Source::Activator, "", 1.0, 0.0);
    poke.poke = true;
    let sent = tokio::time::Instant::now();
    activator.tx.send(poke).await.expect("open");
    let d = decision_where(&mut watcher, Duration::from_secs(1), |d| {
        d.decider_desired == 1
    })
    .await;
    let took = sent.elapsed();
    assert!(took < Duration::from_millis(100), "decided after {took:?}");
    assert_eq!(d.desired_scale, 1);
    assert_eq!(scaler.calls(), [(rev, 1)]);
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_vanish_mid_stream_break_nothing() {
    let scaler = Arc::new(RecordingScaler::new());
    let running = start(scaler.clone()).await;
    let rev = RevisionKey::new(NS, "flaky-00001");
    running
        .autoscaler
        .upsert_revision(&rev, BTreeMap::new(), 0)
        .expect("valid");

    // A reporter that sends two stats and dies with its connection (no end of stream).
    let dying = open_stream(&running.grpc).await;
    for pod in ["a", "b"] {
        dying
            .tx
            .send(stat_report(
                "flaky-00001",
                Source::QueueProxy,
                pod,
                3.0,
                0.0,
            ))
            .await
            .expect("open");
    }
    wait_for_metric(
        running.metrics,
        "sluice_autoscaler_stats_total{source=\"queue-proxy\"} 2",
        "both stats recorded",
    )
    .await;
    dying.call.abort();
    drop(dying.tx);

    // A watcher that goes away, and one that stays.
    let gone = watch(&running.grpc).await;
    let mut stays = watch(&running.grpc).await;
    next_decision(&mut stays, Duration::from_secs(1)).await;
    drop(gone);
    wait_for_metric(
        running.metrics,
        "sluice_autoscaler_decision_watchers 1",
        "the dropped watcher's task ended",
    )
    .await;

    // The server carries on: a new stream is accepted and counted, and the surviving
    // watcher is told of a revision registered after the other one left.
    let fresh = open_stream(&running.grpc).await;
    fresh
        .tx
        .send(stat_report(
            "flaky-00001",
            Source::QueueProxy,
            "c",
            3.0,
            0.0,
        ))
        .await
        .expect("open");
    drop(fresh.tx);
    assert_eq!(fresh.call.await.expect("joined").expect("ok"), 1);
    let later = RevisionKey::new(NS, "later-00001");
    running
        .autoscaler
        .upsert_revision(&later, BTreeMap::new(), 0)
        .expect("valid");
    let d = decision_where(&mut stays, Duration::from_secs(5), |d| {
        d.revision == later.name
    })
    .await;
    assert_eq!(
        d.desired_scale, -1,
        "no data for it: activating, scale unknown"
    );
    // And the dead stream's stats were decided on: ⌈(3 + 3 + 3) / 70⌉ = 1.
    let flaky = running.autoscaler.decisions(None);
    assert_eq!(
        (flaky[0].revision.as_str(), flaky[0].decider_desired),
        ("flaky-00001", 1)
    );
    stop(running).await;
}

async fn stop(mut running: Running) {
    if let Some(stop) = running.stop.take() {
        let _ = stop.send(());
    }
    tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("the server stops, open watch streams included")
        .expect("joined");
}
