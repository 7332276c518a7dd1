//! Memory handed back after a burst. glibc's allocator keeps what a burst of connections
//! freed (per-thread arenas, fragmented heaps), so a proxy that held 10,000 connections
//! for a minute would keep their memory for good. A task watches the process's open
//! connections and, once they have fallen to half of their peak, asks glibc to return
//! its free pages (`malloc_trim`), at most once a period.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How often the connection count is looked at.
const PERIOD: Duration = Duration::from_secs(5);
/// Bursts smaller than this are not worth a trim.
const MIN_PEAK: usize = 256;

/// Connections open in this process now, and the most since the last trim.
static OPEN: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// One open connection, counted until dropped.
#[derive(Debug)]
pub struct Open(());

impl Open {
    pub fn count() -> Self {
        let now = OPEN.fetch_add(1, Ordering::Relaxed) + 1;
        PEAK.fetch_max(now, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        OPEN.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether a burst has ended: the peak was large and the count has halved since.
fn burst_over(open: usize, peak: usize) -> bool {
    peak >= MIN_PEAK && open <= peak / 2
}

/// Runs for the life of the process (spawn it on the runtime).
pub async fn give_back_after_bursts() {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Once more a period after a burst: what its last requests held is freed by then.
    let mut again = false;
    loop {
        tick.tick().await;
        let open = OPEN.load(Ordering::Relaxed);
        let over = burst_over(open, PEAK.load(Ordering::Relaxed));
        if over {
            PEAK.store(open, Ordering::Relaxed);
        }
        if over || std::mem::take(&mut again) {
            again = over;
            // Walking every arena takes milliseconds with a large heap: not on a worker.
            let _ = tokio::task::spawn_blocking(trim).await;
        }
    }
}

fn trim() {
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointer and locks each arena itself; it is safe to
    // call from any thread at any time.
    let released = unsafe { libc::malloc_trim(0) };
    tracing::debug!(released = released != 0, "free heap pages handed back");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_over_once_its_connections_halved() {
        assert!(!burst_over(0, 10), "too small to bother");
        assert!(!burst_over(600, 1000), "still busy");
        assert!(burst_over(500, 1000));
        assert!(burst_over(0, MIN_PEAK));
    }
}
