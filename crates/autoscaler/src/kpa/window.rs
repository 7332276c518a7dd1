//! Knative's `TimedFloat64Buckets`: one bucket per second, values in the same second
//! summed (a scrape total and activator stats add up to the revision's total), gaps in the
//! middle counted as zeros. The linear `WindowAverage` leaves trailing seconds without data
//! out of the divisor; the weighted-exponential one weighs recent seconds more.

use std::time::Duration;

/// A ring of per-second sums over a window of whole seconds.
#[derive(Clone, Debug)]
pub struct Window {
    buckets: Vec<f64>,
    /// Seconds (since the epoch) of the first and last write; `None` before any write.
    writes: Option<(u64, u64)>,
    /// The smoothing coefficient of the weighted-exponential average; `None`: linear.
    alpha: Option<f64>,
}

// === impl Window ===

impl Window {
    /// A window of `ceil(window / 1 s)` buckets (at least one).
    pub fn new(window: Duration) -> Self {
        let secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
        Self {
            buckets: vec![0.0; usize::try_from(secs.max(1)).unwrap_or(1)],
            writes: None,
            alpha: None,
        }
    }

    /// A window whose average weights recent seconds exponentially more (Knative's
    /// `weighted-exponential` aggregation): α = max(1 − 0.0001^(1/buckets), 0.2).
    pub fn weighted(window: Duration) -> Self {
        let mut w = Self::new(window);
        let alpha = 1.0 - 0.0001_f64.powf(1.0 / w.len() as f64);
        w.alpha = Some(alpha.max(0.2));
        w
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn slot(&self, sec: u64) -> usize {
        // The modulus is below the bucket count, which is a usize.
        (sec % self.len()) as usize
    }

    /// Adds `value` to the second `now` falls in.
    pub fn record(&mut self, now: Duration, value: f64) {
        let t = now.as_secs();
        let n = self.len();
        let Some((first, last)) = self.writes else {
            self.buckets.fill(0.0);
            let slot = self.slot(t);
            self.buckets[slot] = value;
            self.writes = Some((t, t));
            return;
        };
        if t + n <= last {
            return; // older than anything the window still holds
        }
        let (mut first, mut last) = (first, last);
        if t >= last + n {
            self.buckets.fill(0.0);
            first = t;
            last = t;
        } else if t > last {
            // The seconds in between had no data: zeros, not what the ring held a window ago.
            for sec in last + 1..=t {
                let slot = self.slot(sec);
                self.buckets[slot] = 0.0;
            }
            last = t;
        }
        first = first.min(t);
        let slot = self.slot(t);
        self.buckets[slot] += value;
        self.writes = Some((first, last));
    }

    /// Whether the last write is more than a window before `now` (Knative's `IsEmpty`).
    pub fn is_empty(&self, now: Duration) -> bool {
        self.writes
            .is_none_or(|(_, last)| now.as_secs().saturating_sub(last) > self.len())
    }

    /// The window's average at `now`: linear or weighted-exponential, as made.
    pub fn average(&self, now: Duration) -> f64 {
        match self.alpha {
            None => self.linear_average(now.as_secs()),
            Some(alpha) => self.weighted_average(now.as_secs(), alpha),
        }
    }

    /// Newest second first with weight α, each older one (1 − α) times the one after it;
    /// seconds since the last write count as zeros, so they shift the weights down.
    fn weighted_average(&self, now: u64, alpha: f64) -> f64 {
        let Some((first, last)) = self.writes else {
            return 0.0;
        };
        let n = self.len();
        let gap = now.saturating_sub(last);
        if gap >= n {
            return 0.0;
        }
        let seconds = (last - first + 1).min(n - gap);
        let mut weight = alpha * (1.0 - alpha).powf(gap as f64);
        let mut sum = 0.0;
        for back in 0..seconds {
            sum += self.buckets[self.slot(last - back)] * weight;
            weight *= 1.0 - alpha;
        }
        sum
    }

    /// The mean of the per-second sums over the window ending at `now`, rounded to six
    /// decimal places.
    fn linear_average(&self, now: u64) -> f64 {
        let Some((first, last)) = self.writes else {
            return 0.0;
        };
        let n = self.len();
        let total: f64 = self.buckets.iter().sum();
        let seen = last - first + 1;
        let avg = if now <= last {
            total / seen.min(n) as f64
        } else if now - last < n {
            let since = now - last;
            // Positions last+1..=now still hold data from more than a window ago.
            let stale: f64 = (last + 1..=now)
                .map(|sec| self.buckets[self.slot(sec)])
                .sum();
            (total - stale) / seen.min(n - since) as f64
        } else {
            0.0
        };
        (avg * 1e6).round() / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn one_to_five() -> Window {
        let mut w = Window::new(secs(5));
        for (i, v) in [1.0, 2.0, 3.0, 4.0, 5.0].into_iter().enumerate() {
            w.record(secs(i as u64), v);
        }
        w
    }

    #[test]
    fn w1_divisor_counts_only_seconds_since_the_first_write() {
        let mut w = Window::new(secs(5));
        w.record(secs(0), 1.0);
        assert_eq!(w.average(secs(0)), 1.0);
    }

    #[test]
    fn w2_w3_full_window() {
        let w = one_to_five();
        assert_eq!(w.average(secs(4)), 3.0);
        assert_eq!(w.average(secs(3)), 3.0, "before the last write");
    }

    #[test]
    fn w4_trailing_seconds_leave_the_divisor() {
        assert_eq!(one_to_five().average(secs(6)), 4.0, "(15 - 1 - 2) / 3");
    }

    #[test]
    fn w12_weighted_exponential() {
        let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let alpha = |window: u64| Window::weighted(secs(window)).alpha.expect("weighted");
        assert!((alpha(6) - 0.78456).abs() < 1e-5, "{}", alpha(6));
        assert_eq!(alpha(60), 0.2, "the minimum");
        let a = alpha(5);
        assert!(close(a, 1.0 - 0.0001_f64.powf(0.2)));
        let mut w = Window::weighted(secs(5));
        w.record(secs(0), 2.0);
        assert!(close(w.average(secs(0)), 2.0 * a), "{}", w.average(secs(0)));
        assert!(close(w.average(secs(1)), 2.0 * a * (1.0 - a)));
        // Newer seconds weigh more: 1 then 5 reads above 1 then 5's linear mean of 3.
        w.record(secs(1), 1.0);
        w.record(secs(2), 5.0);
        let expected = 5.0 * a + 1.0 * a * (1.0 - a) + 2.0 * a * (1.0 - a).powi(2);
        assert!(close(w.average(secs(2)), expected));
        assert_eq!(w.average(secs(7)), 0.0, "a window after the last write");
    }

    #[test]
    fn w5_nothing_for_a_window_is_zero() {
        let w = one_to_five();
        assert_eq!(w.average(secs(10)), 0.0);
        assert!(w.is_empty(secs(10)));
        assert!(!w.is_empty(secs(9)), "empty only past a whole window");
    }

    #[test]
    fn w8_same_second_values_sum() {
        let mut w = Window::new(secs(5));
        w.record(Duration::from_millis(1_100), 1.0);
        w.record(Duration::from_millis(1_900), 10.0);
        assert_eq!(w.average(secs(1)), 11.0);
    }

    #[test]
    fn gaps_in_the_middle_count_as_zeros() {
        let mut w = Window::new(secs(5));
        w.record(secs(0), 6.0);
        w.record(secs(2), 3.0);
        assert_eq!(w.average(secs(2)), 3.0, "(6 + 0 + 3) / 3");
    }

    #[test]
    fn a_write_a_window_later_starts_over() {
        let mut w = one_to_five();
        w.record(secs(20), 7.0);
        assert_eq!(w.average(secs(20)), 7.0);
    }

    #[test]
    fn writes_older_than_the_window_are_ignored_and_recent_past_ones_count() {
        let mut w = Window::new(secs(5));
        w.record(secs(10), 4.0);
        w.record(secs(4), 100.0); // a window before the last write
        assert_eq!(w.average(secs(10)), 4.0);
        w.record(secs(9), 2.0); // into the past, within the window: first write moves back
        assert_eq!(w.average(secs(10)), 3.0, "(2 + 4) / 2");
    }

    #[test]
    fn averages_round_to_six_places_and_empty_is_zero() {
        let mut w = Window::new(secs(3));
        assert_eq!(w.average(secs(0)), 0.0);
        assert!(w.is_empty(secs(0)));
        w.record(secs(0), 1.0);
        w.record(secs(1), 0.0);
        w.record(secs(2), 0.0);
        assert_eq!(w.average(secs(2)), 0.333333);
    }

    #[test]
    fn fractional_windows_round_up_to_whole_buckets() {
        let w = Window::new(Duration::from_millis(6_500));
        assert_eq!(w.len(), 7);
        assert_eq!(Window::new(Duration::ZERO).len(), 1);
    }
}
