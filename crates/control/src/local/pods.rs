//! One revision's pod bookkeeping as a plain struct: fed the desired count, each pod's
//! end and the time, it says how many pods to start and which to stop, and when to try
//! again after failures. The supervisor's manager task is the glue around it (spawning,
//! signalling, waiting); this part is tested deterministically, like the KPA.

use std::time::Duration;

use tokio::time::Instant;

/// The first pause after a pod failed; it doubles with each failure in a row.
pub(crate) const BACKOFF_MIN: Duration = Duration::from_millis(500);
pub(crate) const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// What to do now to move toward the desired count.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// New pods to start.
    pub(crate) start: usize,
    /// Pods to stop (they drain), by id.
    pub(crate) stop: Vec<u64>,
}

/// One revision's pods: those running (not told to stop), and how many are stopping.
#[derive(Debug, Default)]
pub(crate) struct PodSet {
    /// Ids, oldest first.
    running: Vec<u64>,
    /// Told to stop, not yet gone.
    stopping: usize,
    /// Failures in a row.
    failures: u32,
    /// No pod is started before this, after a failure.
    retry_at: Option<Instant>,
}

impl PodSet {
    /// Toward `want` pods at `now`: starts what is missing (none while backing off after
    /// a failure), and stops the surplus, pods not ready yet first, then the newest.
    pub(crate) fn plan(&mut self, want: usize, now: Instant, ready: impl Fn(u64) -> bool) -> Plan {
        if self.retry_at.is_some_and(|at| now >= at) {
            self.retry_at = None;
        }
        let mut plan = Plan::default();
        if self.running.len() < want && self.retry_at.is_none() {
            plan.start = want - self.running.len();
        }
        if self.running.len() > want {
            let mut order = self.running.clone();
            order.sort_by_key(|&id| (ready(id), std::cmp::Reverse(id)));
            plan.stop = order[..self.running.len() - want].to_vec();
            self.running.retain(|id| !plan.stop.contains(id));
            self.stopping += plan.stop.len();
        }
        plan
    }

    /// A pod the plan asked for was started.
    pub(crate) fn started(&mut self, id: u64) {
        self.running.push(id);
    }

    /// A pod is gone: stopped as told (`Ok`), or failed. A failure starts (or lengthens)
    /// the back-off; a pod that ends well resets it.
    pub(crate) fn ended(&mut self, id: u64, result: &Result<(), String>, now: Instant) {
        if let Some(i) = self.running.iter().position(|&p| p == id) {
            self.running.remove(i);
        } else {
            self.stopping = self.stopping.saturating_sub(1);
        }
        match result {
            Ok(()) => self.failures = 0,
            Err(_) => {
                self.failures += 1;
                let wait = BACKOFF_MIN
                    .saturating_mul(1 << self.failures.min(6))
                    .min(BACKOFF_MAX);
                self.retry_at = Some(now + wait);
            }
        }
    }

    /// When to plan again to start pods still missing, while backing off.
    pub(crate) fn retry_at(&self, want: usize) -> Option<Instant> {
        self.retry_at.filter(|_| self.running.len() < want)
    }

    /// No pod runs or is stopping.
    pub(crate) fn is_empty(&self) -> bool {
        self.running.is_empty() && self.stopping == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(set: &mut PodSet, plan: &Plan, next: &mut u64) {
        for _ in 0..plan.start {
            *next += 1;
            set.started(*next);
        }
    }

    #[test]
    fn missing_pods_are_started_and_the_surplus_stopped_unready_first_then_newest() {
        let now = Instant::now();
        let mut set = PodSet::default();
        let mut next = 0;
        let plan = set.plan(4, now, |_| true);
        assert_eq!(
            plan,
            Plan {
                start: 4,
                stop: vec![]
            }
        );
        start(&mut set, &plan, &mut next);
        assert_eq!(set.plan(4, now, |_| true), Plan::default(), "nothing more");

        // Pod 2 is not ready yet: it goes first, then the newest ready one (4).
        let plan = set.plan(2, now, |id| id != 2);
        assert_eq!(plan.start, 0);
        assert_eq!(plan.stop, [2, 4]);
        assert_eq!(
            set.plan(2, now, |_| true),
            Plan::default(),
            "stopping ones not counted"
        );
        assert!(!set.is_empty());
        for id in [2, 4] {
            set.ended(id, &Ok(()), now);
        }
        let plan = set.plan(0, now, |_| true);
        assert_eq!(plan.stop, [3, 1]);
        for id in [1, 3] {
            set.ended(id, &Ok(()), now);
        }
        assert!(set.is_empty());
    }

    #[test]
    fn failures_back_off_doubling_to_30s_and_a_good_end_resets_it() {
        let t0 = Instant::now();
        let mut set = PodSet::default();
        let mut next = 0;
        let mut now = t0;
        let mut waits = Vec::new();
        for _ in 0..8 {
            let plan = set.plan(1, now, |_| false);
            assert_eq!(plan.start, 1, "started once the pause is over");
            start(&mut set, &plan, &mut next);
            set.ended(next, &Err("exited".into()), now);
            let at = set.retry_at(1).expect("a pause");
            assert_eq!(
                set.plan(1, now, |_| false).start,
                0,
                "nothing during the pause"
            );
            waits.push(at - now);
            now = at;
        }
        let ms: Vec<u128> = waits.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, [1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);

        let plan = set.plan(1, now, |_| false);
        start(&mut set, &plan, &mut next);
        assert_eq!(set.retry_at(1), None, "not short of pods");
        set.ended(next, &Ok(()), now);
        let plan = set.plan(1, now, |_| false);
        start(&mut set, &plan, &mut next);
        set.ended(next, &Err("exited".into()), now);
        assert_eq!(set.retry_at(1), Some(now + Duration::from_secs(1)), "reset");
    }

    #[test]
    fn a_pod_told_to_stop_that_fails_on_the_way_out_is_counted_once() {
        let now = Instant::now();
        let mut set = PodSet::default();
        let mut next = 0;
        let plan = set.plan(1, now, |_| true);
        start(&mut set, &plan, &mut next);
        assert_eq!(set.plan(0, now, |_| true).stop, [1]);
        set.ended(1, &Err("killed after its grace".into()), now);
        assert!(set.is_empty());
        assert_eq!(set.retry_at(0), None, "none wanted");
    }
}
