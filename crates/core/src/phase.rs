//! Where in each wall-clock second the stats reports leave and the autoscaler decides.
//!
//! The autoscaler adds every report into the one-second bucket it arrives in and
//! averages the buckets of its window when it decides (Knative's timed buckets). If a
//! reporter's second and the autoscaler's tick fall at arbitrary phases, the bucket of
//! the current second is empty at every tick whenever the tick comes first, and a 6 s
//! window holds 5 reports of 6 for as long as the phases hold: 50 concurrent requests
//! read as 41.7. Knative has the same artifact (under 2 % at its default 60 s window).
//!
//! So every Sluice reporter (queue-proxy, activator, gateway) sends at [`REPORT_PHASE`]
//! into a second of the wall clock, the autoscaler's buckets start at the wall clock's
//! whole seconds, and it decides at [`DECIDE_PHASE`]: each report lands in the bucket of
//! its own second, a quarter of a second from either edge (room for clock skew between
//! machines), and is there half a second before the decision that reads it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NANOS_PER_SECOND: u64 = 1_000_000_000;

/// How far into a wall-clock second the stats reports are sent.
pub const REPORT_PHASE: Duration = Duration::from_millis(250);

/// How far into a wall-clock second the autoscaler decides.
pub const DECIDE_PHASE: Duration = Duration::from_millis(750);

/// From `now` (time since any whole second) to the next instant `phase` into a second:
/// in `[0, 1 s)`. A `phase` of a second or more is taken modulo the second.
pub fn until_phase(now: Duration, phase: Duration) -> Duration {
    let into = nanos_into_second(now);
    let phase = nanos_into_second(phase);
    let wait = if phase >= into {
        phase - into
    } else {
        NANOS_PER_SECOND - into + phase
    };
    Duration::from_nanos(wait)
}

/// From now to the next instant `phase` into a second of the wall clock.
pub fn until_wall_phase(phase: Duration) -> Duration {
    until_phase(since_unix_epoch(), phase)
}

/// How far the wall clock is into its current second: an `Instant` taken now, less this,
/// is the instant of the last whole second.
pub fn wall_into_second() -> Duration {
    Duration::from_nanos(nanos_into_second(since_unix_epoch()))
}

fn since_unix_epoch() -> Duration {
    // A clock set before 1970 is taken as 1970: the phases are then only arbitrary.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn nanos_into_second(d: Duration) -> u64 {
    u64::from(d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn waits_for_the_phase_in_this_second_or_the_next() {
        assert_eq!(until_phase(ms(12_100), REPORT_PHASE), ms(150));
        assert_eq!(until_phase(ms(12_250), REPORT_PHASE), ms(0));
        assert_eq!(until_phase(ms(12_251), REPORT_PHASE), ms(999));
        assert_eq!(until_phase(ms(12_900), REPORT_PHASE), ms(350));
        assert_eq!(until_phase(ms(0), DECIDE_PHASE), ms(750));
        assert_eq!(until_phase(ms(7_800), DECIDE_PHASE), ms(950));
    }

    #[test]
    fn a_phase_past_a_second_wraps() {
        assert_eq!(until_phase(ms(100), ms(1_250)), ms(150));
    }
}
