//! The probe against a real activator (and against something that is not one).

use sluice_test_support::activator::start_activator;
use sluice_test_support::start_app;
use tokio::time::Instant;

use super::*;

const PERIOD: Duration = Duration::from_millis(50);

async fn until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct NoPods;

impl Scaler for NoPods {
    fn pods(&self, _: &RevisionKey) -> Option<PodCounts> {
        None
    }
    fn scale(&self, _: &RevisionKey, _: u32) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_while_an_activator_answers_and_not_once_it_is_gone() {
    let act = start_activator(&[]).await;
    let probe = ActivatorProbe::new(&format!("http://{}", act.serving).parse().expect("uri"));
    let scaler = ProbedScaler {
        inner: Arc::new(NoPods),
        probe: Arc::clone(&probe),
    };
    assert!(!scaler.activator_ready(), "not before a probe has passed");
    let task = tokio::spawn(Arc::clone(&probe).run(PERIOD));
    until("ready", Duration::from_secs(5), || scaler.activator_ready()).await;

    act.running.stop(Duration::from_secs(5)).await;
    until(
        "not ready once the activator is gone",
        Duration::from_secs(5),
        || !scaler.activator_ready(),
    )
    .await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_the_activators_does_not_count() {
    // The sample app answers 200 to anything, with its own body.
    let app = start_app().await;
    let probe = ActivatorProbe::new(&format!("http://{}", app.addr).parse().expect("uri"));
    let task = tokio::spawn(Arc::clone(&probe).run(PERIOD));
    tokio::time::sleep(PERIOD * 10).await;
    assert!(!probe.ready());
    task.abort();
}
