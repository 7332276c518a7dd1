//! Knative's forwarded-shim cases (`forwarded_shim_test.go`) and the hop-by-hop rules.

use super::*;

fn shim(pairs: &[(&str, &str)]) -> Option<String> {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    forwarded_shim(&mut h);
    h.get(kh::FORWARDED)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

#[test]
fn forwarded_from_x_forwarded_headers() {
    assert_eq!(shim(&[]), None);
    assert_eq!(
        shim(&[("x-forwarded-for", "n1")]).as_deref(),
        Some("for=n1")
    );
    assert_eq!(
        shim(&[("x-forwarded-for", "n1, n2")]).as_deref(),
        Some("for=n1, for=n2")
    );
    assert_eq!(
        shim(&[
            ("x-forwarded-for", "n1,n2"),
            ("x-forwarded-host", "h"),
            ("x-forwarded-proto", "p")
        ])
        .as_deref(),
        Some("for=n1;host=h;proto=p, for=n2")
    );
    assert_eq!(
        shim(&[("x-forwarded-for", "2001:db8::1")]).as_deref(),
        Some("for=\"[2001:db8::1]\"")
    );
    assert_eq!(
        shim(&[("x-forwarded-host", "h")]).as_deref(),
        Some("host=h")
    );
    assert_eq!(
        shim(&[("x-forwarded-proto", "p")]).as_deref(),
        Some("proto=p")
    );
    assert_eq!(
        shim(&[("x-forwarded-host", "h"), ("x-forwarded-proto", "p")]).as_deref(),
        Some("host=h;proto=p")
    );
    assert_eq!(
        shim(&[("forwarded", "for=keep"), ("x-forwarded-for", "n1")]).as_deref(),
        Some("for=keep"),
        "an existing Forwarded is left alone"
    );
}

#[test]
fn hop_by_hop_headers_go_but_te_trailers_stays() {
    let mut h = HeaderMap::new();
    h.insert(
        CONNECTION,
        HeaderValue::from_static("keep-alive, x-private"),
    );
    h.insert("x-private", HeaderValue::from_static("secret"));
    h.insert(KEEP_ALIVE, HeaderValue::from_static("timeout=5"));
    h.insert(TE, HeaderValue::from_static("gzip, trailers"));
    h.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    h.insert("x-end-to-end", HeaderValue::from_static("kept"));
    remove_hop_by_hop(&mut h);
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[TE], "trailers");
    assert_eq!(h["x-end-to-end"], "kept");
}

fn prepare(req: &mut Request<()>, peer: &HeaderValue, default_host: &HeaderValue, upgrade: bool) {
    let found = Found::scan(req.headers());
    if found.needs_forwarded_shim() {
        forwarded_shim(req.headers_mut());
    }
    prepare_request(req, found, peer, default_host, upgrade);
}

fn upgrade_requested(req: &Request<()>) -> bool {
    is_upgrade(req, Found::scan(req.headers()))
}

fn rewrite(req: &mut Request<()>) {
    let mut found = Found::scan(req.headers());
    rewrite_original_host(req, &mut found);
    assert!(found.has(Found::HOST) && !found.has(Found::ORIGINAL_HOST));
}

fn request(version: Version, uri: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::get(uri).version(version);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request")
}

#[test]
fn http1_request_for_the_app() {
    let mut req = request(
        Version::HTTP_11,
        "/path?q=1",
        &[
            ("host", "hello.default.example.com"),
            ("knative-serving-revision", "hello-00001"),
            ("knative-serving-namespace", "default"),
            ("knative-serving-tag", "kept"),
            ("x-forwarded-for", "1.2.3.4"),
            ("connection", "close"),
        ],
    );
    let peer = HeaderValue::from_static("10.0.0.9");
    let default_host = HeaderValue::from_static("127.0.0.1:8080");
    prepare(&mut req, &peer, &default_host, false);
    let h = req.headers();
    assert_eq!(req.uri(), "/path?q=1");
    assert_eq!(
        h[HOST], "hello.default.example.com",
        "the app sees the original Host"
    );
    assert!(!h.contains_key(kh::REVISION) && !h.contains_key(kh::NAMESPACE));
    assert_eq!(
        h[kh::ROUTE_TAG],
        "kept",
        "route tag headers are not removed"
    );
    assert_eq!(h[kh::X_FORWARDED_FOR], "1.2.3.4, 10.0.0.9");
    assert_eq!(
        h[kh::FORWARDED],
        "for=1.2.3.4",
        "built before this hop is appended"
    );
    assert!(!h.contains_key(CONNECTION));
}

#[test]
fn absolute_form_and_missing_host() {
    let mut req = request(Version::HTTP_11, "http://example.org/x", &[]);
    let peer = HeaderValue::from_static("127.0.0.1");
    prepare(
        &mut req,
        &peer,
        &HeaderValue::from_static("127.0.0.1:8080"),
        false,
    );
    assert_eq!(req.uri(), "/x");
    assert_eq!(req.headers()[HOST], "example.org");

    let mut req = request(Version::HTTP_10, "/y", &[]);
    prepare(
        &mut req,
        &peer,
        &HeaderValue::from_static("127.0.0.1:8080"),
        false,
    );
    assert_eq!(req.headers()[HOST], "127.0.0.1:8080");
}

#[test]
fn upgrade_headers_survive_on_upgrade_requests() {
    let mut req = request(
        Version::HTTP_11,
        "/ws",
        &[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("host", "h"),
        ],
    );
    assert!(upgrade_requested(&req));
    prepare(
        &mut req,
        &HeaderValue::from_static("127.0.0.1"),
        &HeaderValue::from_static("h"),
        true,
    );
    assert_eq!(req.headers()[CONNECTION], "Upgrade");
    assert_eq!(req.headers()[UPGRADE], "websocket");
    assert!(
        !upgrade_requested(&request(Version::HTTP_11, "/", &[("upgrade", "websocket")])),
        "needs Connection: upgrade"
    );
}

#[test]
fn original_host_rewrite() {
    let mut req = request(
        Version::HTTP_11,
        "/",
        &[
            ("host", "nimporte.pas"),
            ("k-original-host", "a-better-host.com"),
        ],
    );
    rewrite(&mut req);
    assert_eq!(req.headers()[HOST], "a-better-host.com");
    assert!(!req.headers().contains_key(kh::ORIGINAL_HOST));

    let mut req = request(
        Version::HTTP_2,
        "http://nimporte.pas/p",
        &[("k-original-host", "a-better-host.com")],
    );
    rewrite(&mut req);
    assert_eq!(
        req.uri(),
        "http://a-better-host.com/p",
        "HTTP/2 carries the host in :authority"
    );
}

#[test]
fn scan_sees_only_what_the_rules_care_about() {
    let req = request(
        Version::HTTP_11,
        "/",
        &[
            ("host", "h"),
            ("user-agent", "hey"),
            ("accept-encoding", "gzip"),
        ],
    );
    assert_eq!(Found::scan(req.headers()), Found(Found::HOST));
    let req = request(
        Version::HTTP_11,
        "/",
        &[
            ("te", "trailers"),
            ("x-forwarded-proto", "https"),
            ("knative-serving-namespace", "n"),
        ],
    );
    let found = Found::scan(req.headers());
    assert!(
        found.has(Found::HOP_BY_HOP)
            && found.has(Found::X_FORWARDED)
            && found.has(Found::KNATIVE_ROUTING)
    );
    assert!(!found.has(Found::X_FORWARDED_FOR) && !found.has(Found::HOST));
}

#[test]
fn peer_is_the_whole_forwarded_for_when_none_came() {
    let mut req = request(Version::HTTP_11, "/", &[("host", "h")]);
    prepare(
        &mut req,
        &HeaderValue::from_static("10.1.2.3"),
        &HeaderValue::from_static("h"),
        false,
    );
    assert_eq!(req.headers()[kh::X_FORWARDED_FOR], "10.1.2.3");
    assert!(
        !req.headers().contains_key(kh::FORWARDED),
        "nothing to build Forwarded from"
    );
}

#[test]
fn activator_moves_the_host_into_k_original_host_and_addresses_the_pod() {
    let pod = Authority::from_static("127.0.0.1:9001");
    let pod_host = HeaderValue::from_static("127.0.0.1:9001");
    let peer = HeaderValue::from_static("10.0.0.9");

    let mut req = request(
        Version::HTTP_11,
        "/x",
        &[("host", "hello.default.example.com")],
    );
    let mut found = Found::scan(req.headers());
    rewrite_host_in(&mut req, &mut found, &pod);
    prepare_request(&mut req, found, &peer, &pod_host, false);
    assert_eq!(req.headers()[HOST], "127.0.0.1:9001");
    assert_eq!(
        req.headers()[kh::ORIGINAL_HOST],
        "hello.default.example.com"
    );

    // An earlier hop's K-Original-Host wins.
    let mut req = request(
        Version::HTTP_11,
        "/x",
        &[("host", "inner"), ("k-original-host", "outer.example.com")],
    );
    let mut found = Found::scan(req.headers());
    rewrite_host_in(&mut req, &mut found, &pod);
    prepare_request(&mut req, found, &peer, &pod_host, false);
    assert_eq!(req.headers()[kh::ORIGINAL_HOST], "outer.example.com");
    assert_eq!(req.headers()[HOST], "127.0.0.1:9001");

    // HTTP/2: the authority is in the URI.
    let mut req = request(Version::HTTP_2, "http://hello.default.example.com/x", &[]);
    let mut found = Found::scan(req.headers());
    rewrite_host_in(&mut req, &mut found, &pod);
    prepare_request(&mut req, found, &peer, &pod_host, false);
    assert_eq!(req.uri(), "http://127.0.0.1:9001/x");
    assert_eq!(
        req.headers()[kh::ORIGINAL_HOST],
        "hello.default.example.com"
    );
    assert!(!req.headers().contains_key(HOST));
}

#[test]
fn host_rules_of_rfc_9112() {
    let req = |version, uri: &str, hosts: &[&str]| {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).expect("request")
    };
    let h11 = Version::HTTP_11;
    assert!(check_host(&req(h11, "/", &["a"])).is_ok());
    assert!(
        check_host(&req(h11, "/", &["a", "a"])).is_ok(),
        "repeated, same value"
    );
    assert!(
        check_host(&req(h11, "/", &[])).is_err(),
        "HTTP/1.1 without Host"
    );
    assert!(
        check_host(&req(h11, "/", &["a", "b"])).is_err(),
        "two different Hosts"
    );
    assert!(
        check_host(&req(h11, "http://a/", &["b", "c"])).is_ok(),
        "absolute form: the authority wins"
    );
    assert!(
        check_host(&req(Version::HTTP_10, "/", &[])).is_ok(),
        "optional in 1.0"
    );
    assert!(check_host(&req(Version::HTTP_2, "http://a/", &[])).is_ok());
}

#[test]
fn an_absolute_form_authority_wins_over_host_on_the_way_out() {
    let mut req = Request::builder()
        .uri("http://wins.example/p?q")
        .header(HOST, "loses.example")
        .body(())
        .expect("request");
    let found = Found::scan(req.headers());
    let peer = HeaderValue::from_static("10.0.0.1");
    let default = HeaderValue::from_static("127.0.0.1:8080");
    prepare_request(&mut req, found, &peer, &default, false);
    assert_eq!(req.headers()[HOST], "wins.example");
    assert_eq!(req.uri(), "/p?q");
}
