//! The documented examples (`examples/simulate/`) give the documented outcomes, and bad
//! scenarios are refused naming the field.

use super::*;

macro_rules! example {
    ($name:literal) => {
        Scenario::from_yaml(include_str!(concat!(
            "../../../../examples/simulate/",
            $name,
            ".yaml"
        )))
        .expect(concat!($name, " is valid"))
        .run()
    };
}

fn at(run: &Run, t: u64) -> &Tick {
    run.ticks
        .iter()
        .find(|k| k.t == t)
        .unwrap_or_else(|| panic!("no tick at {t}"))
}

fn peak_ready(run: &Run, from: u64, to: u64) -> u32 {
    run.ticks
        .iter()
        .filter(|k| (from..to).contains(&k.t))
        .map(|k| k.ready)
        .max()
        .unwrap_or(0)
}

#[test]
fn target_10_with_50_concurrent_is_8_pods_then_zero() {
    let run = example!("autoscale-target-10");
    assert_eq!(run.summary.peak_pods, 8);
    assert_eq!(peak_ready(&run, 30, 120), 8);
    assert!(
        at(&run, 2).panic_mode,
        "one pod facing 8 pods' worth: panic"
    );
    assert_eq!(at(&run, 300).ready, 0, "scaled to zero once idle");
}

#[test]
fn full_utilization_is_the_documented_5_pods() {
    assert_eq!(
        example!("autoscale-target-10-utilization-100")
            .summary
            .peak_pods,
        5
    );
}

#[test]
fn container_concurrency_10_with_100_concurrent_is_15_pods() {
    let run = example!("container-concurrency-10");
    assert_eq!(run.summary.peak_pods, 15);
    assert_eq!(at(&run, 120).desired, 15);
}

#[test]
fn min_1_max_3_caps_at_3_and_keeps_1() {
    let run = example!("min-1-max-3");
    assert!(
        run.ticks.iter().all(|k| k.ready <= 3 && k.scale <= 3),
        "never above max-scale"
    );
    assert_eq!(peak_ready(&run, 10, 60), 3);
    assert!(
        at(&run, 58).desired > 3,
        "the decider wanted more; max-scale held it"
    );
    assert_eq!(
        (at(&run, 300).scale, at(&run, 300).ready),
        (1, 1),
        "min-scale keeps one when idle"
    );
}

#[test]
fn a_burst_panics_and_panic_ends_a_stable_window_after_the_last_over_tick() {
    let run = example!("panic-burst");
    assert!(!at(&run, 90).panic_mode, "steady state");
    assert_eq!(at(&run, 90).ready, 2);
    assert!(at(&run, 102).panic_mode, "the burst");
    let last_over = run
        .ticks
        .iter()
        .filter(|k| {
            (100..200).contains(&k.t) && f64::from(k.ready.max(1)) * 2.0 <= (k.panic / 7.0).ceil()
        })
        .map(|k| k.t)
        .max()
        .expect("over-threshold ticks during the burst");
    let exit = run
        .ticks
        .iter()
        .find(|k| k.t > 100 && !k.panic_mode)
        .expect("panic ends")
        .t;
    assert!(
        exit > last_over + 60 && exit <= last_over + 62,
        "left panic at {exit}, last over at {last_over}"
    );
    assert_eq!(peak_ready(&run, 100, exit), 15, "scaled up at once");
    assert!(
        run.ticks
            .iter()
            .filter(|k| (106..exit).contains(&k.t))
            .all(|k| k.scale == 15),
        "never down in panic"
    );
    assert_eq!(at(&run, 400).ready, 2, "back to the steady 2");
}

#[test]
fn scale_to_zero_after_the_window_drains_and_the_grace_period() {
    let run = example!("scale-to-zero");
    let zero_decided = run
        .ticks
        .iter()
        .find(|k| k.t >= 60 && k.desired == 0)
        .expect("decides 0")
        .t;
    assert_eq!(
        zero_decided, 120,
        "a stable window after the traffic stopped"
    );
    assert_eq!(at(&run, 118).mode, "serve");
    assert_eq!(at(&run, 120).mode, "proxy", "the activator takes over");
    assert_eq!(
        at(&run, 150).ready,
        1,
        "the pod is kept through the 30 s grace period"
    );
    assert_eq!(at(&run, 152).ready, 0);
}

#[test]
fn scripted_ready_counts_do_not_follow_decisions() {
    let yaml = "ready: [{at: 0s, pods: 3}, {at: 10s, pods: 1}]\ntraffic: [{from: 0s, to: 20s, concurrency: 70}]\nduration: 20s\n";
    let run = Scenario::from_yaml(yaml).expect("valid").run();
    assert_eq!(at(&run, 8).ready, 3);
    assert_eq!(at(&run, 12).ready, 1);
    assert!(
        at(&run, 2).panic_mode,
        "created with 3 ready pods: starts in panic"
    );
}

#[test]
fn an_hour_of_ticks_and_json_lines() {
    let yaml = "traffic: [{from: 0s, to: 1h, rps: 300}]\nrevision: {annotations: {autoscaling.knative.dev/metric: rps}}\nduration: 1h\n";
    let run = Scenario::from_yaml(yaml).expect("valid").run();
    assert_eq!(run.ticks.len(), 1800);
    assert_eq!(
        run.ticks.last().expect("ticks").desired,
        3,
        "300 rps at 140 per pod"
    );
    let line = serde_json::to_string(&run.ticks[0]).expect("json");
    assert!(
        line.starts_with("{\"t\":2,\"stable\":300.0,\"panic\":300.0,\"desired\":"),
        "{line}"
    );
    assert!(svg(&run).starts_with("<svg"), "the plot renders");
}

fn refusal(yaml: &str) -> String {
    Scenario::from_yaml(yaml).expect_err("refused").to_string()
}

#[test]
fn bad_scenarios_name_the_field() {
    let base = "traffic: [{from: 0s, to: 10s, concurrency: 1}]\nduration: 10s\n";
    assert!(
        refusal(&format!("{base}config: {{stable-window: 1s}}\n"))
            .contains("stable-window: \"1s\"")
    );
    assert!(
        refusal(&format!(
            "{base}revision: {{annotations: {{autoscaling.knative.dev/metric: cpu}}}}\n"
        ))
        .contains("needs an HPA")
    );
    assert!(
        refusal("traffic: [{from: 0s, to: 1O0s, concurrency: 1}]\nduration: 10s\n")
            .starts_with("traffic[0].to: \"1O0s\"")
    );
    assert!(
        refusal("traffic: [{from: 5s, to: 1s, concurrency: 1}]\nduration: 10s\n")
            .starts_with("traffic[0].to: must be after from")
    );
    assert!(
        refusal(
            "traffic: [{from: 0s, to: 5s, rps: 1}, {from: 4s, to: 8s, rps: 1}]\nduration: 10s\n"
        )
        .starts_with("traffic[1].from: overlaps")
    );
    assert!(
        refusal("traffic: [{from: 0s, to: 5s}]\nduration: 10s\n")
            .starts_with("traffic[0]: needs concurrency or rps")
    );
    assert!(refusal("traffic: []\nduration: 0s\n").starts_with("duration: must be at least 1s"));
    assert!(
        refusal(&format!(
            "{base}ready: [{{at: 5s, pods: 1}}, {{at: 2s, pods: 2}}]\n"
        ))
        .starts_with("ready[1].at")
    );
    assert!(refusal(&format!("{base}trafic: []\n")).contains("unknown field `trafic`"));
}

#[test]
fn every_tick_carries_the_reason_the_kpa_gave() {
    let run = example!("panic-burst");
    let burst = at(&run, 102);
    assert!(burst.panic_mode);
    assert_eq!(burst.reason.kind, "panic", "{:?}", burst.reason);
    assert!(
        burst
            .reason
            .message
            .starts_with("panic: panic-window average"),
        "{:?}",
        burst.reason
    );
    let line = serde_json::to_string(burst).expect("json");
    assert!(
        line.contains(r#""reason":{"kind":"panic","message":"panic: "#),
        "{line}"
    );
    let steady = at(&run, 400);
    assert_eq!(steady.reason.kind, "stable", "{:?}", steady.reason);
}

/// The README's chart (`docs/simulate-panic-burst.svg`) is what `sluice simulate --plot`
/// draws now for `examples/simulate/panic-burst.yaml`: `make chart` (or this test with
/// `SLUICE_BLESS=1`) writes it again.
#[test]
fn the_readme_chart_is_drawn_from_the_panic_burst_example() {
    let run = example!("panic-burst");
    let chart = svg(&run);
    // A chart a person can read: axes with their units, a legend, panic shaded.
    for text in [
        "time (s)",
        "concurrency (or rps)",
        "\npods\n",
        "stable window average",
        "panic window average",
        "panic mode",
        "decider&apos;s count (dashed)",
        "scale asked for (after bounds)",
        "ready pods",
        "\n400\n",
    ] {
        assert!(chart.contains(text), "no `{text}` in the chart");
    }
    let spans = panic_spans(&run);
    assert_eq!(
        spans.len(),
        2,
        "the start-up panic and the burst's: {spans:?}"
    );
    assert!(spans[1].0 <= 102 && spans[1].1 >= 110, "{spans:?}");
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../docs/simulate-panic-burst.svg");
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &chart).expect("write the chart");
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == chart,
        "{} is not what `sluice simulate --plot` draws now: run `make chart`",
        path.display()
    );
}
