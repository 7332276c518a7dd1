//! Go's `time.ParseDuration`, which Knative's ConfigMaps, annotations and manifests use: a
//! sign, then one or more decimal numbers each with a unit (`ns`, `us`/`µs`, `ms`, `s`,
//! `m`, `h`), as in `1h1s`, `61984ms`, `1m9s82ms`, `-1m23s`; `0` alone is allowed.

use std::time::Duration;

/// A parsed Go duration: negative ones are kept so that validation can name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoDuration {
    pub negative: bool,
    pub magnitude: Duration,
}

/// A Go duration above zero (a timeout, a period), or `None`.
pub fn positive(s: &str) -> Option<Duration> {
    parse(s)
        .filter(|d| !d.negative && !d.magnitude.is_zero())
        .map(|d| d.magnitude)
}

pub fn parse(s: &str) -> Option<GoDuration> {
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(GoDuration {
            negative,
            magnitude: Duration::ZERO,
        });
    }
    if rest.is_empty() {
        return None;
    }
    let mut nanos: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_end);
        if num.is_empty() || num == "." {
            return None;
        }
        let value: f64 = num.parse().ok()?;
        let unit_end = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        nanos += value * scale;
        rest = tail;
    }
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return None;
    }
    Some(GoDuration {
        negative: negative && nanos > 0.0,
        magnitude: Duration::from_nanos(nanos.round() as u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Duration {
        let d = parse(s).unwrap_or_else(|| panic!("{s} parses"));
        assert!(!d.negative, "{s}");
        d.magnitude
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(ok("60s"), Duration::from_secs(60));
        assert_eq!(ok("5m"), Duration::from_secs(300));
        assert_eq!(ok("1h1s"), Duration::from_secs(3601));
        assert_eq!(ok("61984ms"), Duration::from_millis(61_984));
        assert_eq!(ok("1m9s82ms"), Duration::from_millis(69_082));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok("250us"), Duration::from_micros(250));
        let neg = parse("-1m23s").expect("parses");
        assert!(neg.negative);
        assert_eq!(neg.magnitude, Duration::from_secs(83));
    }

    #[test]
    fn refuses_what_go_refuses() {
        for bad in ["", "60", "s", "1x", "1.s5", "--1s", "1 s", "one second"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
