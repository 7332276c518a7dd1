//! Cold starts as the control plane sees them: from the moment it asks a revision at zero
//! ready pods for pods (a scale from zero, or a new revision's first) until its first pod
//! is ready. A plain struct fed `now`, for every backend alike.

use std::collections::HashMap;
use std::time::Duration;

use sluice_core::RevisionKey;
use tokio::time::Instant;

#[derive(Debug, Default)]
pub struct ColdStarts {
    /// Since when each revision waits for its first ready pod.
    pending: HashMap<RevisionKey, Instant>,
    /// Each revision's last cold start, once its pod was ready.
    last: HashMap<RevisionKey, Duration>,
}

// === impl ColdStarts ===

impl ColdStarts {
    /// The revision was asked for `replicas` while `ready` pods are ready. A wait already
    /// under way keeps its start; asking for zero ends it.
    pub fn asked(&mut self, key: &RevisionKey, replicas: u32, ready: usize, now: Instant) {
        if replicas == 0 {
            self.pending.remove(key);
        } else if ready == 0 {
            self.pending.entry(key.clone()).or_insert(now);
        }
    }

    /// The revision has `ready` pods now: a wait under way ends with the first.
    pub fn ready(&mut self, key: &RevisionKey, ready: usize, now: Instant) {
        if ready > 0
            && let Some(since) = self.pending.remove(key)
        {
            self.last
                .insert(key.clone(), now.saturating_duration_since(since));
        }
    }

    /// The revision's last cold start.
    pub fn last(&self, key: &RevisionKey) -> Option<Duration> {
        self.last.get(key).copied()
    }

    pub fn forget(&mut self, key: &RevisionKey) {
        self.pending.remove(key);
        self.last.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> RevisionKey {
        RevisionKey::new("default", "hello-00001")
    }

    #[test]
    fn from_the_ask_at_zero_to_the_first_ready_pod() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = ColdStarts::default();
        c.asked(&key(), 1, 0, t0);
        // Asked again (a larger scale) while waiting: the wait keeps its start.
        c.asked(&key(), 3, 0, t0 + s);
        c.ready(&key(), 0, t0 + 2 * s);
        assert_eq!(c.last(&key()), None);
        c.ready(&key(), 1, t0 + 3 * s);
        assert_eq!(c.last(&key()), Some(3 * s));
        // More pods later are no cold start.
        c.asked(&key(), 5, 1, t0 + 4 * s);
        c.ready(&key(), 5, t0 + 9 * s);
        assert_eq!(c.last(&key()), Some(3 * s));
    }

    #[test]
    fn asking_for_zero_ends_a_wait_and_the_next_start_is_measured_anew() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut c = ColdStarts::default();
        c.asked(&key(), 1, 0, t0);
        c.asked(&key(), 0, 0, t0 + s);
        c.ready(&key(), 1, t0 + 2 * s);
        assert_eq!(c.last(&key()), None, "no wait was under way");
        c.asked(&key(), 1, 0, t0 + 10 * s);
        c.ready(&key(), 1, t0 + 12 * s);
        assert_eq!(c.last(&key()), Some(2 * s));
        c.forget(&key());
        assert_eq!(c.last(&key()), None);
    }
}
