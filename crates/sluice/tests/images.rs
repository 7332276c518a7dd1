//! Sluice's container images (`make images`) in a real container engine: podman, with the
//! host's network as a pod's shared loopback. The queue-proxy image runs exactly as the
//! control plane injects it into a revision's Deployment (its env, the app's port, the
//! pod IP), in front of the sample-app image; it reports to the autoscaler under a
//! Kubernetes Service name, resolved inside the scratch image through a real DNS server
//! (dnsmasq) with a pod's search domains.
//!
//! Needs `make images` (target/images/*.tar, or `SLUICE_IMAGES_DIR`), podman, and
//! dnsmasq, as root (dnsmasq binds port 53, which is the only port resolv.conf can name).
//! A plain `cargo nextest run` skips it; `make test` runs it (`--run-ignored all`), and
//! .ci/run installs what it needs.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use prost::Message;
use serde_json::{Value, json};
use sluice_control::{PodSpec, RevisionSpec};
use sluice_kube::resources::{self, Injection, Owner};
use sluice_proto::autoscaler::Stat;
use sluice_test_support::client;
use sluice_test_support::kube_api::KubeApi;
use sluice_test_support::kubelet::container_env;
use sluice_test_support::stats_sink::StatsSink;
use tokio::process::{Child, Command};
use tokio::time::Instant;

mod common;

use common::example;

const REVISION: &str = "helloworld-go-00001";
const POD: &str = "helloworld-go-00001-deployment-5c7d9b8f6-x2x9p";
/// The user the images run as (docker/Dockerfile).
const IMAGE_USER: &str = "65532:65532";

fn images_dir() -> PathBuf {
    std::env::var_os("SLUICE_IMAGES_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/images"),
        PathBuf::from,
    )
}

/// podman, with runc where it is installed: crun (podman's default) refuses a hybrid
/// cgroup hierarchy such as these VMs', and runc runs it.
fn podman() -> Command {
    let mut cmd = Command::new("podman");
    let runtime = std::env::var("SLUICE_PODMAN_RUNTIME").unwrap_or_else(|_| {
        let runc = std::process::Command::new("runc")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if runc { "runc" } else { "" }.to_owned()
    });
    if !runtime.is_empty() {
        cmd.args(["--runtime", &runtime]);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// Runs podman with `args` and returns its stdout; panics with its stderr on failure.
async fn podman_ok(args: &[&str]) -> String {
    let out = podman()
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("podman {args:?}: {e} (is podman installed?)"));
    assert!(
        out.status.success(),
        "podman {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Loads an image archive and returns the image's reference.
async fn load(name: &str) -> String {
    let archive = images_dir().join(format!("{name}.tar"));
    assert!(
        archive.exists(),
        "{} is missing: run `make images` first",
        archive.display()
    );
    let out = podman_ok(&["load", "--quiet", "--input", &archive.to_string_lossy()]).await;
    out.lines()
        .find_map(|l| l.strip_prefix("Loaded image: "))
        .or_else(|| {
            out.lines()
                .find_map(|l| l.strip_prefix("Loaded image(s): "))
        })
        .unwrap_or_else(|| panic!("podman load printed no image name: {out}"))
        .trim()
        .to_owned()
}

async fn inspect(reference: &str) -> Value {
    let out = podman_ok(&["image", "inspect", reference]).await;
    let all: Value = serde_json::from_str(&out).expect("podman image inspect prints JSON");
    all[0].clone()
}

/// A container that is removed when the test ends, however it ends.
struct Running(String);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = std::process::Command::new("podman")
            .args(["rm", "--force", "--time", "0", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What Kubernetes' restricted profile (and deploy/sluice.yaml) asks of every container:
/// read-only root filesystem, no capabilities, no privilege escalation.
const RESTRICTED: [&str; 5] = [
    "--read-only",
    "--cap-drop",
    "all",
    "--security-opt",
    "no-new-privileges",
];

/// What a container wrote (podman gives its stdout and stderr on its own).
async fn logs(container: &Running) -> String {
    let out = podman()
        .args(["logs", &container.0])
        .output()
        .await
        .expect("podman logs");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Open-file and process limits for every container: podman's defaults are above what
/// sandboxes like these VMs may set, and the runtime then fails to start the container.
const LIMITS: [&str; 4] = [
    "--ulimit",
    "nofile=4096:4096",
    "--ulimit",
    "nproc=4096:4096",
];

/// Starts one container of the pod, on the host's network, with the env the kubelet
/// would give it.
async fn run(name: &str, c: &Container, env: &[(String, String)], extra: &[&str]) -> Running {
    let container = format!("sluice-images-{name}-{}", std::process::id());
    let image = c.image.as_deref().expect("the container has an image");
    let mut args: Vec<String> = ["run", "--detach", "--name", &container, "--network", "host"]
        .map(str::to_owned)
        .to_vec();
    args.extend(LIMITS.map(str::to_owned));
    args.extend(RESTRICTED.map(str::to_owned));
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    for (k, v) in env {
        args.push("--env".to_owned());
        args.push(format!("{k}={v}"));
    }
    args.push(image.to_owned());
    args.extend(c.args.iter().flatten().cloned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    podman_ok(&args).await;
    Running(container)
}

/// A cluster's DNS on loopback: dnsmasq on `127.0.53.x:53`, answering `name` with
/// `answer`, and NXDOMAIN for any other name in `cluster.local` (as CoreDNS does, so a
/// resolver walks on through its search domains); nothing upstream.
struct Dns {
    ip: Ipv4Addr,
    log: PathBuf,
    _server: Child,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

impl Dns {
    /// The queries it answered.
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Dns {
    async fn start(name: &str, answer: Ipv4Addr) -> Self {
        let ip = (1..=254u8)
            .map(|i| Ipv4Addr::new(127, 0, 53, i))
            .find(|ip| std::net::UdpSocket::bind((*ip, 53)).is_ok())
            .expect("a free 127.0.53.x:53 (binding port 53 needs root)");
        let log =
            std::env::temp_dir().join(format!("sluice-images-dns-{}.log", std::process::id()));
        let _server = Command::new("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                "--port=53",
                "--log-queries",
                "--local=/cluster.local/",
                "--pid-file=",
            ])
            .arg(format!("--log-facility={}", log.display()))
            .arg(format!("--listen-address={ip}"))
            .arg(format!("--address=/{name}/{answer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("dnsmasq (Debian: apt-get install dnsmasq-base)");
        // Ready once it answers on its port.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::UdpSocket::bind((ip, 53)).is_ok() {
            assert!(Instant::now() < deadline, "dnsmasq did not bind {ip}:53");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self { ip, log, _server }
    }
}

/// A loopback address whose queue-proxy ports are free: the pod's IP.
fn pod_ip() -> Ipv4Addr {
    let start = u32::from_be_bytes([127, 60, 0, 2]) + std::process::id() % 0x3_0000;
    (start..start + 4096)
        .map(Ipv4Addr::from)
        .filter(|ip| !matches!(ip.octets()[3], 0 | 255))
        .find(|ip| {
            [8012, 8022, 9090, 9091]
                .iter()
                .all(|port| std::net::TcpListener::bind((*ip, *port)).is_ok())
        })
        .expect("a free loopback address")
}

/// Waits until the queue-proxy at `ip` answers the kubelet's probe (`K-Network-Probe:
/// queue`, which probes the app), at most 30 s.
async fn wait_ready(ip: Ipv4Addr, queue_proxy: &Running) {
    let url = format!("http://{}/", SocketAddr::from((ip, resources::QUEUE_PORT)));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = http::Request::get(&url)
            .header("K-Network-Probe", "queue")
            .body(http_body_util::Full::default())
            .expect("a request");
        let reply = tokio::time::timeout(
            Duration::from_secs(2),
            client::send(&client::http1(), probe),
        )
        .await;
        if matches!(&reply, Ok(Ok(r)) if r.status == 200) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the queue-proxy container was not ready within 30 s: {}",
            logs(queue_proxy).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A request for `host` through the queue-proxy at `ip`.
async fn request(ip: Ipv4Addr, host: &str) -> client::Reply {
    let url = format!("http://{}/", SocketAddr::from((ip, resources::QUEUE_PORT)));
    client::get_with(&url, &[("Host", host)]).await
}

/// SIGTERM, as the kubelet sends it to the container's PID 1: the queue-proxy drains and
/// exits 0 (a process that ignored it would be killed after 30 s, exit 137).
async fn assert_stops_cleanly(queue_proxy: &Running) {
    podman_ok(&["stop", "--time", "30", &queue_proxy.0]).await;
    let code = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &queue_proxy.0]).await;
    assert_eq!(code.trim(), "0", "{}", logs(queue_proxy).await);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn helloworld(app_image: &str) -> RevisionSpec {
    let container = json!({
        "image": app_image,
        "env": [{"name": "TARGET", "value": "Sluice"}],
    });
    RevisionSpec {
        pod: PodSpec {
            namespace: "default".to_owned(),
            service: "helloworld-go".to_owned(),
            revision: REVISION.to_owned(),
            argv: Vec::new(),
            env: Vec::new(),
            container_concurrency: 0,
            timeout_seconds: 300,
            response_start_timeout_seconds: None,
            idle_timeout_seconds: None,
            readiness_probe: None,
            container: Some(container),
        },
        initial_scale: 1,
        report: false,
        annotations: BTreeMap::new(),
        template: None,
    }
}

/// The user a running container's main process has, as the host sees it.
async fn process_uid(container: &str) -> String {
    let pid = podman_ok(&["inspect", "--format", "{{.State.Pid}}", container]).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim()))
        .expect("the container's process");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next())
        .expect("a Uid line")
        .to_owned()
}

#[tokio::test]
#[ignore = "needs `make images`, podman and dnsmasq as root; `make test` runs it"]
async fn queue_proxy_image_fronts_the_app_image_and_reports_by_service_name() {
    let sluice = load("sluice").await;
    let queue_image = load("sluice-queue-proxy").await;
    let app_image = load("sluice-sample-app").await;

    // FROM scratch: the binary is the one layer, shared by all three images; a numeric
    // non-root user; each image's entrypoint is its component.
    let images = [
        (&sluice, vec!["/sluice"]),
        (&queue_image, vec!["/sluice", "queue-proxy"]),
        (&app_image, vec!["/sluice", "sample-app"]),
    ];
    let mut layers = Vec::new();
    for (reference, entrypoint) in &images {
        let image = inspect(reference).await;
        assert_eq!(image["Config"]["User"], IMAGE_USER, "{reference}");
        assert_eq!(
            image["Config"]["Entrypoint"],
            json!(entrypoint),
            "{reference}"
        );
        let image_layers = image["RootFS"]["Layers"].clone();
        assert_eq!(
            image_layers.as_array().map(Vec::len),
            Some(1),
            "{reference}"
        );
        layers.push(image_layers);
    }
    assert!(layers.windows(2).all(|w| w[0] == w[1]), "{layers:?}");
    let mut args = vec!["run", "--rm", "--network", "host"];
    args.extend(LIMITS);
    args.extend([sluice.as_str(), "--version"]);
    let version = podman_ok(&args).await;
    assert!(version.starts_with("sluice "), "{version}");

    // The autoscaler, known to the pod only by its Service name, and the cluster's DNS.
    let autoscaler = StatsSink::start().await;
    let autoscaler_port = autoscaler
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the sink's port");
    let dns = Dns::start(
        "autoscaler.sluice-system.svc.cluster.local",
        Ipv4Addr::LOCALHOST,
    )
    .await;

    // The revision's Deployment, as the control plane writes it.
    let inject = Injection {
        queue_proxy_image: queue_image.clone(),
        // A short name, as a pod in `default` would write it: found through the search
        // domains (`svc.cluster.local`), as in any Kubernetes pod.
        autoscaler: format!("http://autoscaler.sluice-system:{autoscaler_port}"),
        ..Injection::default()
    };
    let owner = Owner {
        name: "helloworld-go".to_owned(),
        uid: "6d1f2c7e-0000-4000-8000-000000000001".to_owned(),
    };
    let deployment =
        resources::deployment(&helloworld(&app_image), &owner, &inject).expect("the Deployment");
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("a pod template");
    let [user, queue] = pod.containers.as_slice() else {
        panic!(
            "{} containers, not the app and its queue-proxy",
            pod.containers.len()
        );
    };
    assert_eq!(queue.image.as_deref(), Some(queue_image.as_str()));
    assert_eq!(user.image.as_deref(), Some(app_image.as_str()));

    let ip = pod_ip();
    let user_port = free_port();
    let mut app_env = container_env(user, POD, ip, user_port);
    app_env.push(("SAMPLE_APP_BIND".to_owned(), "127.0.0.1".to_owned()));
    let app = run("app", user, &app_env, &[]).await;

    let mut queue_env = container_env(queue, POD, ip, user_port);
    queue_env.push(("SLUICE_BIND_ADDRESS".to_owned(), ip.to_string()));
    queue_env.push(("SLUICE_DRAIN_QUIET_PERIOD".to_owned(), "1s".to_owned()));
    let dns_ip = dns.ip.to_string();
    let resolv = [
        "--dns",
        &dns_ip,
        "--dns-search",
        "default.svc.cluster.local",
        "--dns-search",
        "svc.cluster.local",
        "--dns-search",
        "cluster.local",
        "--dns-option",
        "ndots:5",
    ];
    let queue_proxy = run("queue-proxy", queue, &queue_env, &resolv).await;

    wait_ready(ip, &queue_proxy).await;

    // A request answered by the app image through the queue-proxy image.
    let reply = request(ip, "helloworld-go.default.example.com").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "Hello Sluice!\n");

    // Its stats reached the autoscaler under its Service name: resolved inside the image.
    let report = autoscaler
        .wait_for(Duration::from_secs(15), |r| {
            r.revision == REVISION && r.stat.as_ref().is_some_and(|s| s.pod_name == POD)
        })
        .await;
    assert!(
        report.is_some(),
        "no stats from the queue-proxy container in 15 s: {}\nDNS queries:\n{}",
        logs(&queue_proxy).await,
        dns.log()
    );

    // Through the pod's search domains: `default.svc.cluster.local` first (NXDOMAIN),
    // then `svc.cluster.local`.
    let queries = dns.log();
    for name in [
        "autoscaler.sluice-system.default.svc.cluster.local",
        "autoscaler.sluice-system.svc.cluster.local",
    ] {
        assert!(queries.contains(&format!("query[A] {name} ")), "{queries}");
    }

    // Both run as the image's user, not root.
    assert_eq!(process_uid(&queue_proxy.0).await, "65532");
    assert_eq!(process_uid(&app.0).await, "65532");

    assert_stops_cleanly(&queue_proxy).await;
    drop(dns);
}

/// Knative's env for its queue container (`queue-sidecar-image`), as its revision
/// reconciler writes it: what Sluice's queue-proxy image must run on unchanged when a
/// cluster keeps Knative Serving (docker/kubernetes/config-deployment.yaml).
fn knative_queue_env(pod: &str, ip: Ipv4Addr, user_port: u16) -> Vec<(String, String)> {
    let probe = format!(
        r#"{{"tcpSocket":{{"port":{user_port},"host":"127.0.0.1"}},"successThreshold":1}}"#
    );
    let logging = r#"{"level":"info","development":false,"outputPaths":["stdout"],"errorOutputPaths":["stderr"],"encoding":"json"}"#;
    [
        ("SERVING_NAMESPACE", "default"),
        ("SERVING_SERVICE", "hello"),
        ("SERVING_CONFIGURATION", "hello"),
        ("SERVING_REVISION", "hello-00001"),
        ("QUEUE_SERVING_PORT", "8012"),
        ("QUEUE_SERVING_TLS_PORT", "8112"),
        ("CONTAINER_CONCURRENCY", "0"),
        ("REVISION_TIMEOUT_SECONDS", "300"),
        ("REVISION_RESPONSE_START_TIMEOUT_SECONDS", "0"),
        ("REVISION_IDLE_TIMEOUT_SECONDS", "0"),
        ("SERVING_POD", pod),
        ("SERVING_POD_IP", &ip.to_string()),
        ("SERVING_LOGGING_CONFIG", logging),
        ("SERVING_LOGGING_LEVEL", ""),
        ("USER_PORT", &user_port.to_string()),
        ("SYSTEM_NAMESPACE", "knative-serving"),
        ("METRICS_DOMAIN", "knative.dev/internal/serving"),
        ("SERVING_READINESS_PROBE", &probe),
        ("ENABLE_PROFILING", "false"),
        ("SERVING_ENABLE_PROBE_REQUEST_LOG", "false"),
        ("METRICS_COLLECTOR_ADDRESS", ""),
        ("HOST_IP", "127.0.0.1"),
        ("ENABLE_HTTP2_AUTO_DETECTION", "false"),
        ("ENABLE_HTTP_FULL_DUPLEX", "false"),
        ("ROOT_CA", ""),
        ("ENABLE_MULTI_CONTAINER_PROBES", "false"),
        ("OBSERVABILITY_CONFIG", "{}"),
    ]
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .to_vec()
}

#[tokio::test]
#[ignore = "needs `make images` and podman as root; `make test` runs it"]
async fn queue_proxy_image_is_a_drop_in_for_knatives_queue_sidecar_image() {
    let queue_image = load("sluice-queue-proxy").await;
    let app_image = load("sluice-sample-app").await;
    let pod = "hello-00001-deployment-6f8b7c9d4-k2j4q";
    let ip = pod_ip();
    let user_port = free_port();

    let app = Container {
        image: Some(app_image),
        ..Container::default()
    };
    let app_env = [
        ("PORT", user_port.to_string()),
        ("SAMPLE_APP_BIND", "127.0.0.1".to_owned()),
    ]
    .map(|(k, v)| (k.to_owned(), v))
    .to_vec();
    let _app = run("knative-app", &app, &app_env, &[]).await;

    let queue = Container {
        image: Some(queue_image),
        ..Container::default()
    };
    // Knative's env, nothing of Sluice's but the bind address: the pods here share the
    // host's network, where Knative's 0.0.0.0 would collide with other tests' pods.
    let mut queue_env = knative_queue_env(pod, ip, user_port);
    queue_env.push(("SLUICE_BIND_ADDRESS".to_owned(), ip.to_string()));
    let queue_proxy = run("knative-queue-proxy", &queue, &queue_env, &[]).await;
    wait_ready(ip, &queue_proxy).await;

    let reply = request(ip, "hello.default.example.com").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "Hello World!\n");

    // What Knative's autoscaler scrapes from :9090: the last report period's protobuf
    // `Stat`, naming the pod; the one that saw the request counts it.
    let metrics_url = format!(
        "http://{}/metrics",
        SocketAddr::from((ip, resources::AUTOSCALING_METRICS_PORT))
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = client::get(&metrics_url).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let stat = Stat::decode(reply.body).expect("a protobuf Stat on :9090");
        assert_eq!(stat.pod_name, pod);
        if stat.request_count > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no period with the request on :9090 in 10 s: {stat:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Not stopped here: with Knative's env the drain waits Knative's 30 s quiet period
    // (the SIGTERM path is the test above's).
}

#[tokio::test]
#[ignore = "needs `make images` and podman as root; `make test` runs it"]
async fn sluice_image_reconciles_a_knative_service_through_the_api() {
    let sluice = load("sluice").await;
    let api = KubeApi::start().await;
    let ksvcs = "/apis/serving.knative.dev/v1/namespaces/default/services";
    let ksvc: Value = serde_norway::from_str(&example("helloworld-go.yaml")).expect("yaml");
    assert_eq!(api.create_object(ksvcs, ksvc), 201);

    // The control plane as deploy/sluice.yaml runs it, from the image: its Kubernetes
    // client (list, watch, create, status patch) in a static binary with no CA bundle,
    // no /etc and a read-only root filesystem.
    let control = Container {
        image: Some(sluice),
        args: Some(
            [
                "control".to_owned(),
                "--kubernetes".to_owned(),
                format!("--kube-api={}", api.url()),
                format!("--listen=127.0.0.1:{}", free_port()),
                format!("--admin-listen=127.0.0.1:{}", free_port()),
                format!("--autoscaler-address=http://127.0.0.1:{}", free_port()),
                "--queue-proxy-image=localhost/sluice-queue-proxy:0.1.0".to_owned(),
            ]
            .to_vec(),
        ),
        ..Container::default()
    };
    let control = run("control", &control, &[], &[]).await;

    let deployment = "/apis/apps/v1/namespaces/default/deployments/helloworld-go-00001-deployment";
    let deadline = Instant::now() + Duration::from_secs(30);
    let (d, status) = loop {
        let d = api.get(deployment);
        let status = api
            .get(&format!("{ksvcs}/helloworld-go"))
            .map(|k| k["status"].clone())
            .unwrap_or_default();
        if let Some(d) = d
            && status["observedGeneration"] == 1
        {
            break (d, status);
        }
        assert!(
            Instant::now() < deadline,
            "no Deployment and status from the control plane's image in 30 s: {}",
            logs(&control).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let containers = &d["spec"]["template"]["spec"]["containers"];
    assert_eq!(
        containers[0]["image"],
        "gcr.io/knative-samples/helloworld-go"
    );
    assert_eq!(containers[1]["image"], "localhost/sluice-queue-proxy:0.1.0");
    assert_eq!(status["latestCreatedRevisionName"], "helloworld-go-00001");
    assert_eq!(status["url"], "http://helloworld-go.default.example.com");
}
