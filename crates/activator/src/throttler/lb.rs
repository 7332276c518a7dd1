//! Knative's load-balancing policies (`lb_policy.go`, §2.5): which pod gets the next
//! request among the trackers assigned to this activator, sorted by destination.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{PodPermit, PodTracker};

#[derive(Debug)]
pub(crate) enum Policy {
    /// CC 1–3: the first pod with a free slot, in order. Small pods fill up one by one,
    /// which keeps the others free for the next burst.
    FirstAvailable,
    /// CC ≥ 4: the next pod with a free slot after the last one chosen.
    RoundRobin { next: AtomicUsize },
    /// CC 0: the less loaded of two pods chosen at random (no capacity to check).
    RandomChoice2,
}

// === impl Policy ===

impl Policy {
    pub(crate) fn for_container_concurrency(cc: u32) -> Self {
        match cc {
            0 => Self::RandomChoice2,
            1..=3 => Self::FirstAvailable,
            _ => Self::RoundRobin {
                next: AtomicUsize::new(0),
            },
        }
    }

    /// A slot on one of `trackers`, or `None` when every one is full.
    pub(crate) fn pick(&self, trackers: &[Arc<PodTracker>]) -> Option<PodPermit> {
        match self {
            Self::FirstAvailable => trackers.iter().find_map(PodTracker::reserve),
            Self::RoundRobin { next } => {
                let len = trackers.len();
                // The list may have shrunk since the last pick.
                let start = match next.load(Ordering::Relaxed) {
                    i if i >= len => 0,
                    i => i,
                };
                (0..len).find_map(|i| {
                    let p = (start + i) % len;
                    let permit = trackers[p].reserve()?;
                    // A race between two picks only skews the rotation, never capacity.
                    next.store(p + 1, Ordering::Relaxed);
                    Some(permit)
                })
            }
            Self::RandomChoice2 => random_choice_2(trackers),
        }
    }
}

fn random_choice_2(trackers: &[Arc<PodTracker>]) -> Option<PodPermit> {
    let chosen = match trackers.len() {
        0 => return None,
        1 => &trackers[0],
        len => {
            let (a, b) = if len == 2 {
                (0, 1)
            } else {
                let a = random_below(len);
                // A second index distinct from the first.
                let b = (a + 1 + random_below(len - 1)) % len;
                (a, b)
            };
            let (wa, wb) = (trackers[a].in_flight(), trackers[b].in_flight());
            let first = match wa.cmp(&wb) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => random_below(2) == 0, // HEAD: a coin flip
            };
            &trackers[if first { a } else { b }]
        }
    };
    Some(chosen.take())
}

/// A uniform-enough number below `n` from a per-thread xorshift: choosing between pods
/// needs no cryptographic randomness and no lock.
fn random_below(n: usize) -> usize {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        ((x >> 32) as usize * n) >> 32
    })
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded per process and per thread from the OS.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(0x9e37_79b9_7f4a_7c15);
    h.finish() | 1
}
