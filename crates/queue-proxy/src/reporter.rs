//! The stats loop: every second, close the period in `RequestStats`, keep the result as
//! Knative's protobuf `Stat` for scrapers, and push it to the autoscaler over the gRPC
//! stream. The push never touches the request path: a full or disconnected stream drops
//! reports, it does not slow requests.

use std::sync::Arc;

use sluice_core::phase::{REPORT_PHASE, until_wall_phase};
use sluice_core::push::Pusher;
use sluice_proto::Stat;
use sluice_proto::v1::{Source, StatReport};
use tokio::time::Instant;

use crate::State;
use crate::config::REPORTING_PERIOD;

/// Reports buffered for the pusher; beyond this, reports are dropped (they are stale by
/// the time a reconnect could send them).
pub(crate) const PUSH_BUFFER: usize = 4;

/// The reporting thread; dropping the handle stops it.
#[derive(Debug)]
pub(crate) struct Reporter {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reports every period on a small thread of its own. A tokio timer for a 1 s deadline
/// sits in the wheel's 64 ms level and cascades before it fires, waking an idle runtime
/// twice a second; a futex wait on an absolute deadline wakes once, and the runtime can
/// park indefinitely when there is no traffic.
pub(crate) fn spawn_reporter(state: Arc<State>, push: Option<Pusher>) -> std::io::Result<Reporter> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("sluice-stats".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            // At the reporters' phase of the wall clock's second (sluice_core::phase):
            // the first period is the part of a second up to it.
            let mut next = Instant::now() + until_wall_phase(REPORT_PHASE);
            loop {
                let wait = next.saturating_duration_since(Instant::now());
                match stopped.recv_timeout(wait) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let stat = report_once(&state, Instant::now());
                next += REPORTING_PERIOD;
                if let Some(push) = &push {
                    let report = StatReport {
                        namespace: state.identity.namespace.clone(),
                        revision: state.identity.revision.clone(),
                        source: Source::QueueProxy.into(),
                        stat: Some(stat),
                        poke: false,
                    };
                    if !push.try_send(report) {
                        tracing::trace!("stats push backlogged; report dropped");
                    }
                }
            }
        })?;
    Ok(Reporter {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Closes one period and publishes it as the latest `Stat`.
pub(crate) fn report_once(state: &State, now: Instant) -> Stat {
    let r = state.stats.lock().report(now);
    let period = REPORTING_PERIOD.as_secs_f64();
    let stat = Stat {
        pod_name: state.identity.pod.clone(),
        average_concurrent_requests: r.average_concurrency,
        average_proxied_concurrent_requests: r.average_proxied_concurrency,
        request_count: r.request_count as f64 / period,
        proxied_request_count: r.proxied_request_count as f64 / period,
        process_uptime: now.saturating_duration_since(state.started).as_secs_f64(),
        timestamp: 0,
    };
    state.latest_stat.store(Arc::new(stat.clone()));
    stat
}
