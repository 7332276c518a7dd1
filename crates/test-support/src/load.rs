//! A closed-loop load generator bounded in count and in time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::client::{self, HttpClient};

#[derive(Debug, Default)]
pub struct LoadReport {
    /// Responses by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that got no response, with the first few errors.
    pub errors: u64,
    pub sample_errors: Vec<String>,
    pub elapsed: Duration,
}

impl LoadReport {
    pub fn count(&self, status: u16) -> u64 {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors
    }
}

/// `concurrency` workers send `GET url` on keep-alive connections until `total` requests
/// were sent (if given) or `max_time` passed, whichever comes first.
pub async fn run(
    url: &str,
    concurrency: usize,
    total: Option<u64>,
    max_time: Duration,
) -> LoadReport {
    run_with(client::http1(), url, concurrency, total, max_time).await
}

pub async fn run_with(
    client: HttpClient,
    url: &str,
    concurrency: usize,
    total: Option<u64>,
    max_time: Duration,
) -> LoadReport {
    run_with_headers(client, url, &[], concurrency, total, max_time).await
}

/// [`run_with`], each request carrying `headers`.
pub async fn run_with_headers(
    client: HttpClient,
    url: &str,
    headers: &[(&str, &str)],
    concurrency: usize,
    total: Option<u64>,
    max_time: Duration,
) -> LoadReport {
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let headers = Arc::new(headers);
    let start = Instant::now();
    let deadline = start + max_time;
    let tickets = Arc::new(AtomicU64::new(0));
    let report = Arc::new(Mutex::new(LoadReport::default()));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, tickets, report, url, headers) = (
                client.clone(),
                Arc::clone(&tickets),
                Arc::clone(&report),
                url.to_owned(),
                Arc::clone(&headers),
            );
            tokio::spawn(async move {
                loop {
                    let n = tickets.fetch_add(1, Ordering::Relaxed);
                    if total.is_some_and(|t| n >= t) || Instant::now() >= deadline {
                        return;
                    }
                    let mut req = Request::get(url.as_str());
                    for (k, v) in headers.iter() {
                        req = req.header(k, v);
                    }
                    let req = req.body(Full::<Bytes>::default()).expect("request");
                    let left = deadline.saturating_duration_since(Instant::now())
                        + Duration::from_secs(30);
                    let result = tokio::time::timeout(left, client::send(&client, req)).await;
                    let mut r = report.lock();
                    match result {
                        Ok(Ok(reply)) => *r.statuses.entry(reply.status.as_u16()).or_default() += 1,
                        Ok(Err(e)) => {
                            r.errors += 1;
                            if r.sample_errors.len() < 5 {
                                r.sample_errors.push(e);
                            }
                        }
                        Err(_) => {
                            r.errors += 1;
                            if r.sample_errors.len() < 5 {
                                r.sample_errors.push("no response in time".into());
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("load worker");
    }
    let mut report = std::mem::take(&mut *report.lock());
    report.elapsed = start.elapsed();
    report
}
