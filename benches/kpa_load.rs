//! The KPA's work alone at the load: 10,000 revisions × 10 pods, each pod
//! reporting one stat a second, a decision per revision every 2 s; windows, decider and
//! reconcile (the `RevisionAutoscaler` the service runs) driven in-process on a virtual
//! clock, no network. Prints the CPU it takes per second of real time (the fraction of a
//! core needed to keep up) and the peak resident memory.
//!
//! `cargo bench -p sluice-benches --bench kpa_load`

#![allow(missing_docs, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_autoscaler::config::AutoscalerConfig;
use sluice_autoscaler::kpa::{PodCounts, Reporter, RevisionAutoscaler, StatSample};
use sluice_autoscaler::revision::RevisionScaling;

const REVISIONS: usize = 10_000;
const PODS: usize = 10;
const SECONDS: u64 = 120;

/// utime + stime of this process, in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    ticks / 100.0
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn main() {
    let cfg = AutoscalerConfig::default();
    let mut ann = BTreeMap::new();
    ann.insert("autoscaling.knative.dev/target".to_owned(), "10".to_owned());
    let scaling = RevisionScaling::resolve(&cfg, &ann, 0).unwrap();
    let rss_before = status_kib("VmRSS:");
    let mut revisions: Vec<RevisionAutoscaler> = (0..REVISIONS)
        .map(|_| RevisionAutoscaler::new(&cfg, scaling.clone(), Some(PODS as u32), Duration::ZERO))
        .collect();
    let pods = PodCounts {
        ready: PODS as u32,
        replicas: PODS as u32,
    };
    let cpu0 = cpu_seconds();
    let mut decisions = 0u64;
    let mut checksum = 0i64;
    for sec in 0..SECONDS {
        let now = Duration::from_secs(sec);
        for (i, kpa) in revisions.iter_mut().enumerate() {
            for pod in 0..PODS {
                let load = ((i + pod) % 7) as f64 + (sec % 5) as f64 * 0.5;
                kpa.record(
                    now,
                    Reporter::QueueProxy,
                    StatSample {
                        average_concurrency: load,
                        request_count: load * 10.0,
                        ..StatSample::default()
                    },
                    false,
                );
            }
            if sec > 0 && sec % 2 == 0 {
                checksum += i64::from(kpa.tick(now, pods, true).scale);
                decisions += 1;
            }
        }
    }
    let cpu = cpu_seconds() - cpu0;
    println!(
        "kpa_load: {REVISIONS} revisions x {PODS} pods, {SECONDS} s of stats ({} records, {decisions} decisions)",
        REVISIONS as u64 * PODS as u64 * SECONDS
    );
    println!(
        "  CPU {cpu:.3} s for {SECONDS} s of load: {:.4} of a core to keep up",
        cpu / SECONDS as f64
    );
    println!(
        "  memory: peak RSS {:.1} MiB (the 10,000 revisions alone: {:.1} MiB)",
        status_kib("VmHWM:") as f64 / 1024.0,
        status_kib("VmRSS:").saturating_sub(rss_before) as f64 / 1024.0
    );
    println!("  (checksum {checksum})");
}
