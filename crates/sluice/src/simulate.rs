//! `sluice simulate`: a traffic scenario replayed through the autoscaler's own config
//! parsing, windows, decider and scale-to-zero logic on a virtual clock.
//!
//! Each whole second `s`, in order: pods whose ready time has come start counting; the
//! traffic value for `s` is recorded as one stat (the revision total); when `s` is a
//! positive multiple of `tick`, the autoscaler decides and the decision is applied.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use plotters::coord::types::{RangedCoordf64, RangedCoordu64};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use sluice_autoscaler::config::AutoscalerConfig;
use sluice_autoscaler::kpa::{Mode, PodCounts, Reporter, RevisionAutoscaler, StatSample};
use sluice_autoscaler::revision::{Class, RevisionScaling};
use sluice_core::duration;

use crate::run::platform::DecisionReason;

/// A validated scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    config: AutoscalerConfig,
    scaling: RevisionScaling,
    initial_pods: u32,
    startup: u64,
    ready: Option<Vec<(u64, u32)>>,
    traffic: Vec<Step>,
    duration: u64,
    tick: u64,
}

#[derive(Clone, Copy, Debug)]
struct Step {
    from: u64,
    to: u64,
    concurrency: f64,
    rps: f64,
}

/// What was wrong with a scenario, naming the field.
#[derive(Debug, PartialEq, Eq)]
pub struct ScenarioError {
    pub field: String,
    pub message: String,
}

/// One decision, as printed (JSON Lines).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tick {
    pub t: u64,
    pub stable: f64,
    pub panic: f64,
    /// The decider's count, before bounds and scale-to-zero rules.
    pub desired: i32,
    /// After bounds and scale-to-zero rules.
    pub scale: i32,
    /// The ready pods the decider used.
    pub ready: u32,
    /// Panic mode after the tick.
    pub panic_mode: bool,
    pub ebc: i32,
    pub mode: &'static str,
    /// The rule that set `scale`, as the autoscaler publishes it.
    pub reason: DecisionReason,
}

/// A whole run.
#[derive(Clone, Debug)]
pub struct Run {
    pub ticks: Vec<Tick>,
    pub summary: Summary,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub peak_pods: u32,
    pub pod_seconds: u64,
    pub panic_seconds: u64,
}

// Raw input: durations as Go strings, ConfigMap and annotation values as scalars.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    #[serde(default)]
    config: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    revision: RawRevision,
    #[serde(default)]
    pods: RawPods,
    ready: Option<Vec<RawReady>>,
    traffic: Vec<RawStep>,
    duration: String,
    tick: Option<String>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawRevision {
    #[serde(default)]
    annotations: BTreeMap<String, serde_norway::Value>,
    #[serde(default)]
    container_concurrency: u32,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPods {
    initial: Option<u32>,
    startup: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReady {
    at: String,
    pods: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    from: String,
    to: String,
    concurrency: Option<f64>,
    rps: Option<f64>,
}

// === impl ScenarioError ===

impl ScenarioError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ScenarioError {}

// === impl Summary ===

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "peak pods {}, pod-seconds {}, seconds in panic {}",
            self.peak_pods, self.pod_seconds, self.panic_seconds
        )
    }
}

// === impl Scenario ===

impl Scenario {
    pub fn from_yaml(text: &str) -> Result<Self, ScenarioError> {
        let raw: RawScenario =
            serde_norway::from_str(text).map_err(|e| ScenarioError::new("", e.to_string()))?;
        let config = AutoscalerConfig::from_data(&strings("config", raw.config)?)
            .map_err(|e| ScenarioError::new("config", e.to_string()))?;
        let annotations = strings("revision.annotations", raw.revision.annotations)?;
        let scaling =
            RevisionScaling::resolve(&config, &annotations, raw.revision.container_concurrency)
                .map_err(|e| ScenarioError::new("revision", e.to_string()))?;
        let duration = secs("duration", &raw.duration)?;
        let tick = secs("tick", raw.tick.as_deref().unwrap_or("2s"))?;
        if duration == 0 || tick == 0 {
            let field = if duration == 0 { "duration" } else { "tick" };
            return Err(ScenarioError::new(field, "must be at least 1s"));
        }
        let startup = raw
            .pods
            .startup
            .as_deref()
            .map_or(Ok(0), |s| secs("pods.startup", s))?;
        let ready = raw
            .ready
            .map(|entries| {
                let mut out: Vec<(u64, u32)> = Vec::with_capacity(entries.len());
                for (i, e) in entries.iter().enumerate() {
                    let at = secs(&format!("ready[{i}].at"), &e.at)?;
                    if out.last().is_some_and(|&(prev, _)| prev >= at) {
                        return Err(ScenarioError::new(
                            format!("ready[{i}].at"),
                            "entries must be in increasing time order",
                        ));
                    }
                    out.push((at, e.pods));
                }
                Ok(out)
            })
            .transpose()?;
        let mut traffic: Vec<Step> = Vec::with_capacity(raw.traffic.len());
        for (i, s) in raw.traffic.iter().enumerate() {
            let field = |f: &str| format!("traffic[{i}].{f}");
            let (from, to) = (secs(&field("from"), &s.from)?, secs(&field("to"), &s.to)?);
            if to <= from {
                return Err(ScenarioError::new(field("to"), "must be after from"));
            }
            if s.concurrency.is_none() && s.rps.is_none() {
                return Err(ScenarioError::new(
                    format!("traffic[{i}]"),
                    "needs concurrency or rps",
                ));
            }
            for (name, v) in [("concurrency", s.concurrency), ("rps", s.rps)] {
                if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                    return Err(ScenarioError::new(
                        field(name),
                        "must be a number of at least 0",
                    ));
                }
            }
            if traffic.iter().any(|o| from < o.to && o.from < to) {
                return Err(ScenarioError::new(
                    field("from"),
                    "overlaps an earlier traffic step",
                ));
            }
            traffic.push(Step {
                from,
                to,
                concurrency: s.concurrency.unwrap_or(0.0),
                rps: s.rps.unwrap_or(0.0),
            });
        }
        Ok(Self {
            initial_pods: raw.pods.initial.unwrap_or(scaling.initial_scale),
            config,
            scaling,
            startup,
            ready,
            traffic,
            duration,
            tick,
        })
    }

    /// Runs the scenario from 0 to `duration` seconds, inclusive.
    pub fn run(&self) -> Run {
        let reporter = match self.scaling.class {
            Class::Kpa => Reporter::QueueProxy,
            Class::Mpa => Reporter::Gateway,
        };
        let mut pods = Pods::new(self.initial_pods);
        let ready_at = |sec: u64, pods: &Pods| match &self.ready {
            Some(script) => script
                .iter()
                .rev()
                .find(|(at, _)| *at <= sec)
                .map_or(self.initial_pods, |&(_, n)| n),
            None => pods.ready,
        };
        let mut kpa = RevisionAutoscaler::new(
            &self.config,
            self.scaling.clone(),
            Some(ready_at(0, &pods)),
            Duration::ZERO,
        );
        let mut run = Run {
            ticks: Vec::new(),
            summary: Summary::default(),
        };
        for sec in 0..=self.duration {
            let now = Duration::from_secs(sec);
            pods.promote(sec);
            let (concurrency, rps) = self.traffic_at(sec);
            let sample = StatSample {
                average_concurrency: concurrency,
                request_count: rps,
                ..StatSample::default()
            };
            kpa.record(now, reporter, sample, false);
            let ready = ready_at(sec, &pods);
            if sec > 0 && sec % self.tick == 0 {
                let replicas = if self.ready.is_some() {
                    ready
                } else {
                    pods.total()
                };
                // Every second carries a stat here, so the windows always have data.
                let d = kpa.tick(now, PodCounts { ready, replicas }, true);
                if let (Some(n), None) = (d.apply, &self.ready) {
                    pods.scale_to(n, sec + self.startup);
                }
                run.ticks.push(Tick {
                    t: sec,
                    stable: d.stable,
                    panic: d.panic,
                    desired: d.desired,
                    scale: d.scale,
                    ready,
                    panic_mode: d.panic_mode,
                    ebc: d.excess_burst_capacity,
                    mode: match d.mode {
                        Mode::Serve => "serve",
                        Mode::Proxy | Mode::Unspecified => "proxy",
                    },
                    reason: DecisionReason {
                        kind: d.reason.kind().as_str().to_owned(),
                        message: d.reason.to_string(),
                    },
                });
            }
            run.summary.peak_pods = run.summary.peak_pods.max(ready);
            run.summary.pod_seconds += u64::from(ready);
            run.summary.panic_seconds += u64::from(kpa.last().is_some_and(|d| d.panic_mode));
        }
        run
    }

    fn traffic_at(&self, sec: u64) -> (f64, f64) {
        self.traffic
            .iter()
            .find(|s| s.from <= sec && sec < s.to)
            .map_or((0.0, 0.0), |s| (s.concurrency, s.rps))
    }
}

/// Pods that follow the decisions: ready ones, and ones starting with their ready time.
#[derive(Debug)]
struct Pods {
    ready: u32,
    starting: Vec<u64>,
}

impl Pods {
    fn new(ready: u32) -> Self {
        Self {
            ready,
            starting: Vec::new(),
        }
    }

    fn total(&self) -> u32 {
        self.ready + u32::try_from(self.starting.len()).unwrap_or(u32::MAX)
    }

    fn promote(&mut self, sec: u64) {
        let before = self.starting.len();
        self.starting.retain(|&at| at > sec);
        self.ready += u32::try_from(before - self.starting.len()).unwrap_or(0);
    }

    /// Asked-for pods are ready at `ready_at` (counted from the second after, when that is
    /// now); a scale-down removes pods still starting first, at once.
    fn scale_to(&mut self, n: u32, ready_at: u64) {
        let total = self.total();
        if n > total {
            self.starting
                .extend(std::iter::repeat_n(ready_at, (n - total) as usize));
            return;
        }
        let mut remove = total - n;
        while remove > 0 && self.starting.pop().is_some() {
            remove -= 1;
        }
        self.ready -= remove.min(self.ready);
    }
}

fn secs(field: &str, s: &str) -> Result<u64, ScenarioError> {
    match duration::parse(s.trim()) {
        Some(d) if !d.negative && d.magnitude.subsec_nanos() == 0 => Ok(d.magnitude.as_secs()),
        _ => Err(ScenarioError::new(
            field,
            format!("{s:?} is not a duration in whole seconds (such as 30s or 5m)"),
        )),
    }
}

/// ConfigMap and annotation values are strings; plain YAML numbers and booleans are
/// taken as written.
fn strings(
    field: &str,
    map: BTreeMap<String, serde_norway::Value>,
) -> Result<BTreeMap<String, String>, ScenarioError> {
    map.into_iter()
        .map(|(k, v)| {
            let s = match v {
                serde_norway::Value::String(s) => s,
                serde_norway::Value::Number(n) => n.to_string(),
                serde_norway::Value::Bool(b) => b.to_string(),
                _ => {
                    return Err(ScenarioError::new(
                        format!("{field}.{k}"),
                        "must be a string, number or boolean",
                    ));
                }
            };
            Ok((k, s))
        })
        .collect()
}

/// The run as a chart (SVG, drawn with plotters): the window averages above and the pods
/// below, on one time axis in seconds, panic periods shaded in both. The decider's count
/// is dashed, the scale asked for a wide pale band and the ready pods a thin dark line on
/// top, so all three read apart where they coincide.
pub fn svg(run: &Run) -> String {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 600)).into_drawing_area();
        // Drawing into a String cannot fail short of a bug in the backend.
        if let Err(e) = draw(&root, run) {
            tracing::warn!("the chart is incomplete: {e}");
        }
        let _ = root.present();
    }
    out
}

const STABLE: RGBColor = RGBColor(31, 119, 180);
const PANIC: RGBColor = RGBColor(255, 127, 14);
const PANIC_SHADE: RGBColor = RGBColor(255, 205, 205);
const DESIRED: RGBColor = RGBColor(110, 110, 110);
const SCALE: RGBColor = RGBColor(44, 160, 44);
const READY: RGBColor = RGBColor(214, 39, 40);

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw(root: &Area<'_>, run: &Run) -> Result<(), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(290);
    let t_max = run.ticks.last().map_or(1, |t| t.t.max(1));
    let c_max = run
        .ticks
        .iter()
        .map(|t| t.stable.max(t.panic))
        .fold(1.0, f64::max)
        * 1.1;
    let p_max = run
        .ticks
        .iter()
        .map(|t| {
            t.desired
                .max(t.scale)
                .max(0)
                .max(i32::try_from(t.ready).unwrap_or(i32::MAX))
        })
        .max()
        .unwrap_or(0)
        + 1;
    let spans = panic_spans(run);
    let points = |value: fn(&Tick) -> f64| run.ticks.iter().map(move |t| (t.t, value(t)));

    let mut c = panel(
        &top,
        "Window averages (revision total)",
        "concurrency (or rps)",
        t_max,
        c_max,
        false,
        &spans,
    )?;
    let stable = STABLE.stroke_width(2);
    c.draw_series(LineSeries::new(points(|t| t.stable), stable))?
        .label("stable window average")
        .legend(legend_line(stable));
    let panic = PANIC.stroke_width(1);
    c.draw_series(LineSeries::new(points(|t| t.panic), panic))?
        .label("panic window average")
        .legend(legend_line(panic));
    legend(&mut c)?;

    let mut p = panel(
        &bottom,
        "Pods",
        "pods",
        t_max,
        f64::from(p_max),
        true,
        &spans,
    )?;
    let scale = SCALE.mix(0.45).stroke_width(7);
    p.draw_series(LineSeries::new(
        points(|t| f64::from(t.scale.max(0))),
        scale,
    ))?
    .label("scale asked for (after bounds)")
    .legend(legend_line(scale));
    let desired = DESIRED.stroke_width(2);
    p.draw_series(DashedLineSeries::new(
        points(|t| f64::from(t.desired.max(0))),
        6,
        4,
        desired,
    ))?
    .label("decider's count (dashed)")
    .legend(legend_line(desired));
    let ready = READY.stroke_width(1);
    p.draw_series(LineSeries::new(points(|t| f64::from(t.ready)), ready))?
        .label("ready pods")
        .legend(legend_line(ready));
    legend(&mut p)?;
    Ok(())
}

/// One panel: its caption, the time axis in seconds, `y_desc` from 0 to `y_max` (whole
/// numbers only when `whole`), and the panic spans shaded full height.
fn panel<'a, 'b>(
    area: &'a Area<'b>,
    caption: &str,
    y_desc: &str,
    t_max: u64,
    y_max: f64,
    whole: bool,
    spans: &[(u64, u64)],
) -> Result<Chart<'a, 'b>, Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(42)
        .y_label_area_size(48)
        .build_cartesian_2d(0u64..t_max, 0.0..y_max)?;
    let whole_numbers = |v: &f64| format!("{v:.0}");
    let mut mesh = chart.configure_mesh();
    mesh.x_desc("time (s)")
        .y_desc(y_desc)
        .axis_desc_style(("sans-serif", 15))
        .label_style(("sans-serif", 13))
        .light_line_style(WHITE.mix(0.0));
    if whole {
        mesh.y_label_formatter(&whole_numbers);
    }
    mesh.draw()?;
    shade(&mut chart, spans, y_max)?;
    Ok(chart)
}

/// A legend entry drawn as a short line in the series' style.
fn legend_line(style: ShapeStyle) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new([(x, y), (x + 16, y)], style)
}

/// The panel's legend, top right.
fn legend<'a, 'b: 'a>(chart: &mut Chart<'a, 'b>) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .draw()?;
    Ok(())
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordu64, RangedCoordf64>>;

/// Shades the panic spans, full height.
fn shade(
    chart: &mut Chart<'_, '_>,
    spans: &[(u64, u64)],
    y_max: f64,
) -> Result<(), Box<dyn std::error::Error>> {
    chart
        .draw_series(
            spans
                .iter()
                .map(|&(a, b)| Rectangle::new([(a, 0.0), (b, y_max)], PANIC_SHADE.filled())),
        )?
        .label("panic mode")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], PANIC_SHADE.filled()));
    Ok(())
}

/// The time spans in panic mode: from the tick before the first in panic to the last.
fn panic_spans(run: &Run) -> Vec<(u64, u64)> {
    let mut spans: Vec<(u64, u64)> = Vec::new();
    let mut prev = 0;
    let mut open = false;
    for t in &run.ticks {
        if t.panic_mode {
            match spans.last_mut() {
                Some(last) if open => last.1 = t.t,
                _ => spans.push((prev, t.t)),
            }
        }
        open = t.panic_mode;
        prev = t.t;
    }
    spans
}

#[cfg(test)]
mod tests;
