//! Property tests of the parsers that take outside input: Go durations (ConfigMaps,
//! annotations, flags). No input may panic; what Go accepts, we read exactly.

use std::time::Duration;

use proptest::prelude::*;
use sluice_core::duration::parse;

proptest! {
    #[test]
    fn any_text_parses_or_is_refused_without_panicking(s in "\\PC{0,24}") {
        let _ = parse(&s);
    }

    #[test]
    fn duration_like_text_never_panics(s in "[-+]?([0-9.]{0,6}(ns|us|µs|ms|s|m|h|x)?){0,4}") {
        let _ = parse(&s);
    }

    #[test]
    fn composed_durations_read_back_exactly(
        h in 0u64..100, m in 0u64..60, s in 0u64..60, ms in 0u64..1000, negative: bool,
    ) {
        let text = format!("{}{h}h{m}m{s}s{ms}ms", if negative { "-" } else { "" });
        let d = parse(&text).expect("a Go duration");
        let want = Duration::from_millis(((h * 60 + m) * 60 + s) * 1000 + ms);
        prop_assert_eq!(d.magnitude, want);
        prop_assert_eq!(d.negative, negative);
    }
}
