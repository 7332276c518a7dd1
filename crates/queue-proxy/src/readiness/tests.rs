use super::*;

#[test]
fn parses_the_reconcilers_encodings() {
    let tcp = parse(
        r#"{"tcpSocket":{"port":8080,"host":"127.0.0.1"},"successThreshold":1}"#,
        false,
    )
    .expect("tcp");
    assert_eq!(
        tcp[0].action,
        ProbeAction::Tcp("127.0.0.1:8080".parse().expect("addr"))
    );
    assert_eq!(
        tcp[0].period,
        Duration::ZERO,
        "aggressive when period unset"
    );

    let http = parse(
        r#"{"httpGet":{"path":"healthz","port":"8081","host":"","scheme":"HTTP",
            "httpHeaders":[{"name":"X-Probe","value":"1"}]},"periodSeconds":5,"timeoutSeconds":0,"successThreshold":2}"#,
        false,
    )
    .expect("http");
    assert_eq!(
        http[0],
        ProbeSpec {
            action: ProbeAction::Http {
                addr: "127.0.0.1:8081".parse().expect("addr"),
                path: "/healthz".into(),
                headers: vec![("X-Probe".into(), "1".into())],
            },
            period: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            success_threshold: 2,
        }
    );

    let multi = parse(
        r#"[{"tcpSocket":{"port":1}},{"grpc":{"port":2,"service":"s"}}]"#,
        true,
    )
    .expect("multi");
    assert_eq!(multi.len(), 2);
    assert_eq!(
        multi[1].action,
        ProbeAction::Grpc {
            addr: "127.0.0.1:2".parse().expect("addr"),
            service: "s".into()
        }
    );
}

#[test]
fn refuses_what_the_queue_proxy_cannot_run() {
    for (json, why) in [
        (r#"{"exec":{"command":["true"]}}"#, "exec"),
        (r#"{"tcpSocket":{"port":"http"}}"#, "named port"),
        (r#"{"httpGet":{"port":1,"scheme":"HTTPS"}}"#, "HTTPS"),
        (r#"{"periodSeconds":1}"#, "needs tcpSocket"),
        (
            r#"{"tcpSocket":{"port":1},"httpGet":{"port":1}}"#,
            "only one",
        ),
        (
            r#"{"tcpSocket":{"port":1,"host":"app.local"}}"#,
            "IP address",
        ),
    ] {
        let err = parse(json, false).expect_err(json).to_string();
        assert!(err.contains(why), "{json}: {err}");
    }
    assert!(
        parse("[]", false).is_err(),
        "an array needs multi-container probing"
    );
}

#[tokio::test]
async fn no_probes_is_always_ready() {
    assert!(Prober::new(Vec::new()).probe().await);
}

fn tcp(addr: SocketAddr, period: u64, threshold: u32) -> ProbeSpec {
    ProbeSpec {
        action: ProbeAction::Tcp(addr),
        period: Duration::from_secs(period),
        timeout: Duration::from_secs(1),
        success_threshold: threshold,
    }
}

async fn free_addr() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test]
async fn aggressive_mode_waits_for_the_app_to_come_up() {
    let addr = free_addr().await;
    let prober = Prober::new(vec![tcp(addr, 0, 1)]);
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let l = tokio::net::TcpListener::bind(addr).await.expect("rebind");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(l);
    });
    let start = Instant::now();
    assert!(prober.probe().await, "ready once the port opens");
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "probed before the port opened: {waited:?}"
    );
    late.abort();
}

#[test]
fn aggressive_pauses_start_at_a_millisecond_and_settle_at_knatives_interval() {
    let pauses: Vec<u128> = std::iter::successors(Some(FIRST_PAUSE), |p| Some(next_pause(*p)))
        .take(9)
        .map(|p| p.as_millis())
        .collect();
    assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 50, 50, 50]);
}

#[tokio::test]
async fn normal_mode_needs_consecutive_successes_across_calls() {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let prober = Prober::new(vec![tcp(addr, 1, 2)]);
    assert!(!prober.probe().await, "one success of two");
    assert!(prober.probe().await, "second consecutive success");
    drop(l);
    assert!(!prober.probe().await, "a failure resets the count");
}

#[tokio::test]
async fn http_probe_passes_on_2xx_3xx_only() {
    let app = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = app.local_addr().expect("addr");
    tokio::spawn(sluice_sample_app_stub(app));
    let probe = |path: &str| ProbeSpec {
        action: ProbeAction::Http {
            addr,
            path: path.into(),
            headers: vec![],
        },
        period: Duration::from_secs(1),
        timeout: Duration::from_secs(1),
        success_threshold: 1,
    };
    assert!(Prober::new(vec![probe("/status/204")]).probe().await);
    assert!(Prober::new(vec![probe("/status/302")]).probe().await);
    assert!(!Prober::new(vec![probe("/status/500")]).probe().await);
    assert!(
        !Prober::new(vec![probe("/status/200"), probe("/status/404")])
            .probe()
            .await,
        "all must pass"
    );
}

/// Answers `/status/N` with N, and checks the probe's User-Agent, over real HTTP/1.1.
async fn sluice_sample_app_stub(listener: tokio::net::TcpListener) {
    use hyper::service::service_fn;
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                let ua_ok = req
                    .headers()
                    .get(http::header::USER_AGENT)
                    .is_some_and(|v| v == PROBE_USER_AGENT);
                let code: u16 = req
                    .uri()
                    .path()
                    .trim_start_matches("/status/")
                    .parse()
                    .unwrap_or(400);
                let code = if ua_ok { code } else { 400 };
                let mut rsp = http::Response::new(Empty::<Bytes>::new());
                *rsp.status_mut() =
                    http::StatusCode::from_u16(code).unwrap_or(http::StatusCode::BAD_REQUEST);
                Ok::<_, std::convert::Infallible>(rsp)
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
