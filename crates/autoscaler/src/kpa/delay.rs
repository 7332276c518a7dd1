//! The scale-down delay's memory: the largest desired count recorded in the last
//! `ceil(delay / 2 s)` two-second slots (Knative's `max.TimeWindow`, indexed by seconds / 2).

use std::time::Duration;

/// Granularity of the delay window: the decider's tick.
const SLOT: u64 = 2;

#[derive(Clone, Debug)]
pub struct MaxWindow {
    /// (slot index, largest value recorded in it); index `u64::MAX` marks an unused slot.
    slots: Vec<(u64, i32)>,
}

// === impl MaxWindow ===

impl MaxWindow {
    pub fn new(delay: Duration) -> Self {
        let secs = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
        let n = secs.div_ceil(SLOT).max(1);
        Self {
            slots: vec![(u64::MAX, 0); usize::try_from(n).unwrap_or(1)],
        }
    }

    /// Records `value` at `now` and returns the largest value of the window ending there.
    pub fn record(&mut self, now: Duration, value: i32) -> i32 {
        let index = now.as_secs() / SLOT;
        let n = self.slots.len() as u64;
        // The modulus is below the slot count, which is a usize.
        let slot = &mut self.slots[(index % n) as usize];
        if slot.0 == index {
            slot.1 = slot.1.max(value);
        } else {
            *slot = (index, value);
        }
        self.slots
            .iter()
            .filter(|(i, _)| *i != u64::MAX && *i <= index && index - *i < n)
            .map(|(_, v)| *v)
            .max()
            .unwrap_or(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_largest_value_for_the_delay() {
        let mut w = MaxWindow::new(Duration::from_secs(10)); // 5 slots of 2 s
        assert_eq!(w.record(Duration::from_secs(0), 4), 4);
        assert_eq!(w.record(Duration::from_secs(2), 1), 4);
        assert_eq!(
            w.record(Duration::from_secs(9), 0),
            4,
            "slot 4: slot 0 still inside"
        );
        assert_eq!(
            w.record(Duration::from_secs(10), 0),
            1,
            "slot 5: slot 0 left, slot 1 holds 1"
        );
        assert_eq!(w.record(Duration::from_secs(14), 0), 0);
    }

    #[test]
    fn within_one_slot_the_larger_value_wins() {
        let mut w = MaxWindow::new(Duration::from_secs(4));
        assert_eq!(w.record(Duration::from_millis(100), 3), 3);
        assert_eq!(w.record(Duration::from_millis(1_900), 7), 7);
        assert_eq!(w.record(Duration::from_millis(1_950), 2), 7);
    }
}
