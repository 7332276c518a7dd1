//! Runs `hey` (Debian package `hey`) as the seed scenarios do, and parses its summary.

use std::collections::BTreeMap;
use std::process::Command;

#[derive(Debug)]
pub struct HeyReport {
    /// Responses by status code ("Status code distribution").
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response ("Error distribution").
    pub errors: u64,
    pub requests_per_sec: f64,
    pub output: String,
}

/// Runs `hey ARGS URL` to completion. Panics if hey is not installed: the README's
/// setup (`.ci/run`) installs it.
pub fn run(args: &[&str], url: &str) -> HeyReport {
    let out = Command::new("hey")
        .args(args)
        .arg(url)
        .output()
        .unwrap_or_else(|e| panic!("cannot run hey ({e}); install it: apt-get install -y hey"));
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hey failed: {}\n{output}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&output)
}

pub fn parse(output: &str) -> HeyReport {
    let mut statuses = BTreeMap::new();
    let mut errors = 0;
    let mut requests_per_sec = 0.0;
    let mut section = "";
    for line in output.lines() {
        let t = line.trim();
        if t.starts_with("Status code distribution") {
            section = "status";
        } else if t.starts_with("Error distribution") {
            section = "error";
        } else if let Some(v) = t.strip_prefix("Requests/sec:") {
            requests_per_sec = v.trim().parse().unwrap_or(0.0);
        } else if let Some(rest) = t.strip_prefix('[') {
            let Some((n, tail)) = rest.split_once(']') else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match section {
                "status" => {
                    let count = tail
                        .split_whitespace()
                        .next()
                        .and_then(|c| c.parse().ok())
                        .unwrap_or(0);
                    statuses.insert(u16::try_from(n).unwrap_or(0), count);
                }
                "error" => errors += n,
                _ => {}
            }
        }
    }
    HeyReport {
        statuses,
        errors,
        requests_per_sec,
        output: output.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_status_and_error_distributions() {
        let out = "Summary:\n  Requests/sec:\t1234.5\n\nStatus code distribution:\n  [200]\t99990 responses\n  [503]\t10 responses\n\nError distribution:\n  [3]\tGet \"http://127.0.0.1:1/\": EOF\n";
        let r = super::parse(out);
        assert_eq!(r.statuses.get(&200), Some(&99990));
        assert_eq!(r.statuses.get(&503), Some(&10));
        assert_eq!(r.errors, 3);
        assert!((r.requests_per_sec - 1234.5).abs() < 1e-9);
    }
}
