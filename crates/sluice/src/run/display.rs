//! How status looks: the table `sluice status` prints and `sluice run` keeps live, and
//! the one-line changes `sluice run` prints when its output is not a terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::platform::{RevisionStatus, Status};

/// The status as a table.
pub fn table(s: &Status) -> String {
    let mut out = components(s);
    if s.services.is_empty() {
        let _ = writeln!(
            out,
            "no services yet: `sluice apply -f SERVICE.yaml` adds one (gateway on {})",
            s.gateway
        );
        return out;
    }
    for svc in &s.services {
        let traffic: Vec<String> = svc
            .traffic
            .iter()
            .map(|t| match &t.tag {
                Some(tag) => format!("{} {}% (tag {tag})", t.revision, t.percent),
                None => format!("{} {}%", t.revision, t.percent),
            })
            .collect();
        let _ = writeln!(
            out,
            "{}/{}  {}  traffic: {}",
            svc.namespace,
            svc.name,
            svc.url,
            traffic.join(", ")
        );
        let width = svc
            .revisions
            .iter()
            .map(|r| r.name.len())
            .max()
            .unwrap_or(8)
            .max(8);
        let _ = writeln!(
            out,
            "  {:<width$}  {:>7}  {:>5}  {:>11}  {:>5}  MODE",
            "REVISION", "DESIRED", "READY", "CONCURRENCY", "PANIC"
        );
        for r in &svc.revisions {
            let _ = writeln!(
                out,
                "  {:<width$}  {:>7}  {:>5}  {:>11.1}  {:>5}  {}",
                r.name,
                desired(r),
                r.ready,
                r.concurrency,
                if r.panic { "yes" } else { "no" },
                r.mode
            );
            if let Some(reason) = &r.reason {
                let _ = writeln!(out, "    why: {}", reason.message);
            }
            if let Some(secs) = r.last_cold_start_seconds {
                let _ = writeln!(out, "    last cold start: {secs:.2} s");
            }
            if let Some(e) = &r.error {
                for line in e.lines() {
                    let _ = writeln!(out, "    ! {line}");
                }
            }
        }
    }
    out
}

/// `--distributed`: one line with each component's process and restarts.
fn components(s: &Status) -> String {
    if s.components.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = s
        .components
        .iter()
        .map(|c| {
            let pid = c
                .pid
                .map_or("restarting".to_owned(), |p| format!("pid {p}"));
            match (&c.last_exit, c.restarts) {
                (Some(exit), n) if n > 0 => {
                    format!("{} ({pid}; restarted {n}x, last: {exit})", c.name)
                }
                _ => format!("{} ({pid})", c.name),
            }
        })
        .collect();
    format!("components: {}\n", parts.join(", "))
}

fn desired(r: &RevisionStatus) -> String {
    if r.desired < 0 {
        "-".to_owned()
    } else {
        r.desired.to_string()
    }
}

/// Remembers what was printed, to print only what changed.
#[derive(Debug, Default)]
pub struct Changes {
    last: BTreeMap<String, String>,
}

impl Changes {
    /// One line per revision whose pods, mode, panic or reason kind changed since the
    /// last call (with the reason's sentence), and per component restarted since.
    pub fn lines(&mut self, s: &Status) -> Vec<String> {
        let mut out = Vec::new();
        for c in &s.components {
            let key = format!("component {}", c.name);
            let state = format!("restarts={}", c.restarts);
            if c.restarts > 0 && self.last.get(&key) != Some(&state) {
                out.push(format!(
                    "{key} {state} last_exit={}",
                    c.last_exit.as_deref().unwrap_or("-")
                ));
            }
            self.last.insert(key, state);
        }
        for svc in &s.services {
            for r in &svc.revisions {
                let key = format!("{}/{}", svc.namespace, r.name);
                let state = format!(
                    "desired={} ready={} mode={} panic={} reason={}",
                    desired(r),
                    r.ready,
                    r.mode,
                    if r.panic { "yes" } else { "no" },
                    r.reason.as_ref().map_or("-", |x| x.kind.as_str())
                );
                if self.last.get(&key) != Some(&state) {
                    let mut line = format!("{key} {state} concurrency={:.1}", r.concurrency);
                    if let Some(reason) = &r.reason {
                        let _ = write!(line, " why=\"{}\"", reason.message);
                    }
                    out.push(line);
                    self.last.insert(key, state);
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::run::platform::{DecisionReason, ServiceStatus, TrafficStatus};

    fn status(ready: u32) -> Status {
        Status {
            gateway: "127.0.0.1:8080".into(),
            services: vec![ServiceStatus {
                name: "hello".into(),
                namespace: "default".into(),
                url: "http://hello.default.example.com".into(),
                traffic: vec![TrafficStatus {
                    revision: "hello-00001".into(),
                    percent: 100,
                    tag: None,
                    latest: true,
                }],
                revisions: vec![RevisionStatus {
                    name: "hello-00001".into(),
                    desired: 2,
                    ready,
                    concurrency: 3.25,
                    panic: false,
                    mode: "serve".into(),
                    error: None,
                    pods: Vec::new(),
                    reason: Some(DecisionReason {
                        kind: "stable".into(),
                        message: "stable: 6s average 3.2; desired ⌈3.2/7⌉ = 1".into(),
                    }),
                    last_cold_start_seconds: Some(1.234),
                }],
            }],
            components: Vec::new(),
        }
    }

    #[test]
    fn the_table_shows_traffic_and_pods() {
        let t = table(&status(1));
        assert!(
            t.contains(
                "default/hello  http://hello.default.example.com  traffic: hello-00001 100%"
            ),
            "{t}"
        );
        assert!(
            t.contains(
                "hello-00001        2      1          3.2     no  serve\n    why: stable: 6s average 3.2; desired ⌈3.2/7⌉ = 1\n    last cold start: 1.23 s\n"
            ),
            "{t}"
        );
    }

    #[test]
    fn a_restarted_component_is_shown_with_how_it_died() {
        use crate::run::distributed::ComponentStatus;
        let mut s = status(1);
        s.components = vec![
            ComponentStatus {
                name: "gateway".into(),
                pid: Some(10),
                restarts: 0,
                last_exit: None,
            },
            ComponentStatus {
                name: "control".into(),
                pid: Some(12),
                restarts: 1,
                last_exit: Some("signal: 9 (SIGKILL)".into()),
            },
        ];
        let t = table(&s);
        assert!(
            t.starts_with(
                "components: gateway (pid 10), control (pid 12; restarted 1x, last: signal: 9 \
                 (SIGKILL))\n"
            ),
            "{t}"
        );
        let mut c = Changes::default();
        let lines = c.lines(&s);
        assert_eq!(
            lines[0],
            "component control restarts=1 last_exit=signal: 9 (SIGKILL)"
        );
        assert_eq!(lines.len(), 2, "and the revision: {lines:?}");
        assert!(c.lines(&s).is_empty(), "printed once");
    }

    #[test]
    fn only_changes_are_printed_again() {
        let mut c = Changes::default();
        assert_eq!(c.lines(&status(1)).len(), 1);
        assert!(c.lines(&status(1)).is_empty());
        assert_eq!(
            c.lines(&status(2)),
            [
                "default/hello-00001 desired=2 ready=2 mode=serve panic=no reason=stable concurrency=3.2 why=\"stable: 6s average 3.2; desired ⌈3.2/7⌉ = 1\""
            ]
        );
        // A new rule is a change, even with the same pods.
        let mut panicked = status(2);
        panicked.services[0].revisions[0].reason = Some(DecisionReason {
            kind: "panic".into(),
            message: "panic: holding 2".into(),
        });
        assert_eq!(c.lines(&panicked).len(), 1);
    }
}
