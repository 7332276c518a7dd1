//! How the double presents what it stores, as the API server does: `meta.k8s.io/v1`
//! Tables for `kubectl get` (a CRD's printer columns; Pods' and Deployments' own; Name
//! and Age for the rest), core/v1 Events as a view of the events.k8s.io/v1 ones, and
//! field selectors.

use serde_json::{Value, json};

use super::Kind;

/// The core/v1 form of an events.k8s.io/v1 Event (the API server's conversion).
pub(super) fn core_event(e: &Value) -> Value {
    let mut out = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": e["metadata"],
        "involvedObject": e["regarding"],
        "reason": e["reason"],
        "message": e["note"],
        "type": e["type"],
        "action": e["action"],
        "related": e["related"],
        "eventTime": e["eventTime"],
        "reportingComponent": e["reportingController"],
        "reportingInstance": e["reportingInstance"],
        "source": e["deprecatedSource"],
        "firstTimestamp": e["deprecatedFirstTimestamp"],
        "lastTimestamp": e["deprecatedLastTimestamp"],
        "count": e["deprecatedCount"],
    });
    if !e["series"].is_null() {
        out["series"] = json!({
            "count": e["series"]["count"],
            "lastObservedTime": e["series"]["lastObservedTime"],
        });
    }
    if let Some(o) = out.as_object_mut() {
        o.retain(|_, v| !v.is_null());
    }
    out
}

/// Whether `obj` satisfies a field selector (`a.b=v`, `a.b==v`, `a.b!=v`, comma-joined).
pub(super) fn matches_fields(obj: &Value, selector: &str) -> bool {
    selector
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .all(|term| {
            let (path, want, equal) = match term.split_once("!=") {
                Some((p, v)) => (p, v, false),
                None => match term.split_once("==").or_else(|| term.split_once('=')) {
                    Some((p, v)) => (p, v, true),
                    None => return false,
                },
            };
            let mut v = obj;
            for key in path.trim().split('.') {
                v = &v[key];
            }
            let have = match v {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (have == want.trim()) == equal
        })
}

/// Whether the request asks for a Table (`Accept: application/json;as=Table;…`).
pub(super) fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

/// A Table of `objects`; `columns`: a CRD's printer columns, if it has any;
/// `include`: the `includeObject` parameter (`None`, `Metadata`, the default, or
/// `Object`).
pub(super) fn table(
    kind: &Kind,
    columns: Option<&Vec<Value>>,
    objects: &[Value],
    include: &str,
    now: i64,
    resource_version: Option<String>,
) -> Value {
    let defs = definitions(kind, columns);
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let object = match include {
                "None" => Value::Null,
                "Object" => o.clone(),
                _ => json!({
                    "kind": "PartialObjectMetadata",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": o["metadata"],
                }),
            };
            json!({"cells": cells(kind, columns, o, now), "object": object})
        })
        .collect();
    let mut meta = json!({});
    if let Some(rv) = resource_version {
        meta["resourceVersion"] = json!(rv);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": defs,
        "rows": rows,
    })
}

fn column(name: &str, type_: &str, format: &str, priority: i64) -> Value {
    json!({"name": name, "type": type_, "format": format, "description": "", "priority": priority})
}

fn definitions(kind: &Kind, columns: Option<&Vec<Value>>) -> Vec<Value> {
    let mut defs = vec![column("Name", "string", "name", 0)];
    match (kind.kind, columns) {
        (_, Some(cols)) if !cols.is_empty() => {
            for c in cols {
                defs.push(column(
                    c["name"].as_str().unwrap_or_default(),
                    c["type"].as_str().unwrap_or("string"),
                    c["format"].as_str().unwrap_or_default(),
                    c["priority"].as_i64().unwrap_or(0),
                ));
            }
        }
        ("Pod", _) if kind.group.is_empty() => {
            defs.push(column("Ready", "string", "", 0));
            defs.push(column("Status", "string", "", 0));
            defs.push(column("Restarts", "string", "", 0));
            defs.push(column("Age", "string", "", 0));
            defs.push(column("IP", "string", "", 1));
        }
        ("Deployment", _) => {
            defs.push(column("Ready", "string", "", 0));
            defs.push(column("Up-to-date", "string", "", 0));
            defs.push(column("Available", "string", "", 0));
            defs.push(column("Age", "string", "", 0));
        }
        _ => defs.push(column("Age", "string", "", 0)),
    }
    defs
}

fn cells(kind: &Kind, columns: Option<&Vec<Value>>, o: &Value, now: i64) -> Vec<Value> {
    let name = o["metadata"]["name"].clone();
    let created = json!(age(o["metadata"]["creationTimestamp"].as_str(), now));
    let int = |v: &Value| v.as_i64().unwrap_or(0);
    match (kind.kind, columns) {
        (_, Some(cols)) if !cols.is_empty() => {
            let mut out = vec![name];
            for c in cols {
                let path = c["jsonPath"].as_str().unwrap_or_default();
                let v = json_path(o, path).cloned().unwrap_or(Value::Null);
                out.push(match (c["type"].as_str(), &v) {
                    (Some("date"), Value::String(t)) => json!(age(Some(t), now)),
                    (_, Value::Null) => json!("<none>"),
                    _ => v,
                });
            }
            out
        }
        ("Pod", _) if kind.group.is_empty() => {
            let statuses = o["status"]["containerStatuses"].as_array();
            let total = o["spec"]["containers"].as_array().map_or(0, Vec::len);
            let ready = statuses.map_or(0, |s| {
                s.iter()
                    .filter(|c| c["ready"].as_bool() == Some(true))
                    .count()
            });
            let restarts: i64 =
                statuses.map_or(0, |s| s.iter().map(|c| int(&c["restartCount"])).sum());
            // The first waiting or terminated reason, as kubectl's printer shows it.
            let reason = statuses
                .into_iter()
                .flatten()
                .find_map(|c| {
                    c["state"]["waiting"]["reason"]
                        .as_str()
                        .or_else(|| c["state"]["terminated"]["reason"].as_str())
                })
                .or_else(|| o["status"]["phase"].as_str())
                .unwrap_or("Pending");
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(reason),
                json!(restarts.to_string()),
                created,
                o["status"]["podIP"].clone(),
            ]
        }
        ("Deployment", _) => vec![
            name,
            json!(format!(
                "{}/{}",
                int(&o["status"]["readyReplicas"]),
                int(&o["spec"]["replicas"])
            )),
            json!(int(&o["status"]["updatedReplicas"])),
            json!(int(&o["status"]["availableReplicas"])),
            created,
        ],
        _ => vec![name, created],
    }
}

/// The value at a CRD column's JSONPath: `.a.b`, `['a\.b/c']` (a key with escaped
/// dots), `[N]`, and the one filter Knative's columns use, `[?(@.key=="value")]` (either
/// quote), taking the first match.
pub(super) fn json_path<'a>(o: &'a Value, path: &str) -> Option<&'a Value> {
    let mut v = o;
    let mut rest = path.trim().trim_start_matches('{').trim_end_matches('}');
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            v = v.get(&r[..end])?;
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("[?(@.") {
            let close = r.find(")]")?;
            let (key, want) = r[..close].split_once("==")?;
            let want = want.trim().trim_matches(['"', '\'']);
            v = v
                .as_array()?
                .iter()
                .find(|e| e[key.trim()].as_str() == Some(want))?;
            rest = &r[close + 2..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let close = r.find("']")?;
            v = v.get(r[..close].replace("\\.", ".").as_str())?;
            rest = &r[close + 2..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let close = r.find(']')?;
            v = v.get(r[..close].parse::<usize>().ok()?)?;
            rest = &r[close + 1..];
        } else {
            return None;
        }
    }
    Some(v)
}

/// Seconds since the Unix epoch of an RFC 3339 UTC time (`2026-01-02T03:04:05Z`).
pub(super) fn epoch_seconds(t: &str) -> Option<i64> {
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.trim_end_matches('Z');
    let time = time.split(['.', '+']).next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

/// An age as kubectl prints one (`45s`, `3m20s`, `5h`, `2d`).
fn age(created: Option<&str>, now: i64) -> String {
    let Some(then) = created.and_then(epoch_seconds) else {
        return "<unknown>".to_owned();
    };
    let s = (now - then).max(0);
    match s {
        0..120 => format!("{s}s"),
        120..600 => format!("{}m{}s", s / 60, s % 60),
        600..10_800 => format!("{}m", s / 60),
        10_800..172_800 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_path_reads_knative_columns() {
        let o = json!({"status": {"url": "http://x", "conditions": [
            {"type": "ConfigurationsReady", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "RevisionFailed"},
        ]}, "spec": {"c": [1, 2]}});
        assert_eq!(json_path(&o, ".status.url"), Some(&json!("http://x")));
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type=='Ready')].status"),
            Some(&json!("False"))
        );
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].reason"),
            Some(&json!("RevisionFailed"))
        );
        assert_eq!(json_path(&o, ".spec.c[1]"), Some(&json!(2)));
        let labelled =
            json!({"metadata": {"labels": {"serving.knative.dev/configuration": "hello"}}});
        assert_eq!(
            json_path(
                &labelled,
                ".metadata.labels['serving\\.knative\\.dev/configuration']"
            ),
            Some(&json!("hello"))
        );
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type=='Active')].status"),
            None
        );
        assert_eq!(json_path(&o, ".status.nope"), None);
    }

    #[test]
    fn ages_and_times_as_kubectl_prints_them() {
        let t = epoch_seconds("2026-12-07T01:02:03Z").expect("a time");
        assert_eq!(epoch_seconds("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(epoch_seconds("2026-12-07T01:02:03.123456Z"), Some(t));
        assert_eq!(age(Some("2026-12-07T01:02:03Z"), t + 45), "45s");
        assert_eq!(age(Some("2026-12-07T01:02:03Z"), t + 200), "3m20s");
        assert_eq!(age(Some("2026-12-07T01:02:03Z"), t + 3600 * 5), "5h");
        assert_eq!(age(Some("2026-12-07T01:02:03Z"), t + 86_400 * 3), "3d");
        assert_eq!(age(None, t), "<unknown>");
    }

    #[test]
    fn field_selectors_as_kubectl_describe_sends_them() {
        let e = json!({"metadata": {"name": "e1"}, "involvedObject": {"kind": "Service", "name": "hello", "uid": "u1"}});
        assert!(matches_fields(
            &e,
            "involvedObject.name=hello,involvedObject.kind=Service"
        ));
        assert!(matches_fields(&e, "metadata.name==e1"));
        assert!(!matches_fields(&e, "involvedObject.uid=u2"));
        assert!(matches_fields(&e, "involvedObject.uid!=u2"));
        assert!(matches_fields(&e, ""));
        assert!(!matches_fields(&e, "nonsense"));
    }

    #[test]
    fn a_core_event_is_the_events_api_one_renamed() {
        let e = json!({"metadata": {"name": "e"}, "regarding": {"kind": "Revision", "name": "r"},
                       "note": "Revision becomes ready", "reason": "Ready", "type": "Normal",
                       "reportingController": "sluice-control", "eventTime": "2026-12-07T00:00:00.000000Z"});
        let c = core_event(&e);
        assert_eq!(c["involvedObject"]["name"], "r");
        assert_eq!(c["message"], "Revision becomes ready");
        assert_eq!(c["reportingComponent"], "sluice-control");
        assert_eq!(c["apiVersion"], "v1");
        assert!(c.get("series").is_none() && c.get("count").is_none());
    }
}
