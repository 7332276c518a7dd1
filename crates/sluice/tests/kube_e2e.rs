//! Sluice on Kubernetes, end to end on one machine: the real `sluice` binaries (control
//! plane with `--kubernetes`, autoscaler, activator, gateway) against the loopback API
//! server double, with the fake kubelet turning each Deployment's replicas into local pods
//! (app + queue-proxy processes on their own loopback addresses). Users' Knative Service
//! YAML is created in the API, as `kubectl apply` would.
//!
//! `make kube-e2e` runs these. Their fidelity limits are the double's and the kubelet's
//! (see `sluice_test_support::kube_api` and `::kubelet`, and the README).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_test_support::client;
use sluice_test_support::kube_api::KubeApi;
use sluice_test_support::kubelet::{Kubelet, KubeletConfig};
use tokio::process::{Child, Command};
use tokio::time::Instant;

mod common;

use common::{
    assert_all_200, assert_hey_all_200, background_load, example, rolled_back, seed_load,
};

const KSVCS: &str = "/apis/serving.knative.dev/v1/namespaces/default/services";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/default/deployments";

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

fn exe() -> String {
    env!("CARGO_BIN_EXE_sluice").to_owned()
}

/// The platform on a fake cluster.
struct Cluster {
    api: Arc<KubeApi>,
    kubelet: Option<Kubelet>,
    gateway: SocketAddr,
    control: SocketAddr,
    autoscaler: SocketAddr,
    /// Each component kept running (restarted 0.5 s after it exits, as Kubernetes'
    /// `restartPolicy: Always`).
    processes: Vec<(String, tokio::task::JoinHandle<()>)>,
    logs: PathBuf,
}

impl Cluster {
    /// The API server with `config-autoscaler` (a 6 s window and grace) in
    /// `knative-serving`, the kubelet, and the four components.
    async fn start(test: &str) -> Self {
        let api = KubeApi::start().await;
        let logs = std::env::temp_dir().join(format!("sluice-kube-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&logs);
        std::fs::create_dir_all(logs.join("pods")).expect("log dir");
        let config = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "config-autoscaler", "namespace": "knative-serving"},
            "data": {"stable-window": "6s", "scale-to-zero-grace-period": "6s"}
        });
        assert_eq!(
            api.create_object("/api/v1/namespaces/knative-serving/configmaps", config),
            201
        );
        let kube_client =
            kube::Client::try_from(kube::Config::new(api.url().parse().expect("url")))
                .expect("client");
        let sample = vec![exe(), "sample-app".to_owned()];
        let kubelet = Kubelet::start(
            kube_client,
            KubeletConfig {
                images: vec![
                    ("gcr.io/knative-samples/".into(), sample.clone()),
                    ("ghcr.io/knative/".into(), sample),
                    (
                        "sluice-queue-proxy".into(),
                        vec![exe(), "queue-proxy".to_owned()],
                    ),
                ],
                queue_proxy_env: vec![("SLUICE_DRAIN_QUIET_PERIOD".into(), "500ms".into())],
                period: Duration::from_millis(100),
                log_dir: Some(logs.join("pods")),
            },
        )
        .await;
        let (control, autoscaler, gateway, activator) =
            (free_addr(), free_addr(), free_addr(), free_addr());
        let mut c = Self {
            api,
            kubelet: Some(kubelet),
            gateway,
            control,
            autoscaler,
            processes: Vec::new(),
            logs,
        };
        let url = |a: SocketAddr| format!("http://{a}");
        c.spawn(
            "autoscaler",
            &[
                "autoscaler",
                &format!("--listen={autoscaler}"),
                &format!("--metrics-listen={}", free_addr()),
                &format!("--control={}", url(control)),
            ],
        );
        c.spawn_control("control-1", control);
        c.spawn(
            "activator",
            &[
                "activator",
                &format!("--listen={activator}"),
                &format!("--metrics-listen={}", free_addr()),
                &format!("--autoscaler-address={}", url(autoscaler)),
                &format!("--control={}", url(control)),
                "--drain-quiet-period=500ms",
            ],
        );
        c.spawn(
            "gateway",
            &[
                "gateway",
                &format!("--listen={gateway}"),
                &format!("--metrics-listen={}", free_addr()),
                "--domain=example.com",
                &format!("--activator={activator}"),
                &format!("--autoscaler-address={}", url(autoscaler)),
                &format!("--control={}", url(control)),
            ],
        );
        c
    }

    /// A control plane replica: `--kubernetes` against the double, electing a leader on
    /// a 3 s Lease.
    fn spawn_control(&mut self, name: &str, listen: SocketAddr) {
        let args = [
            "control".to_owned(),
            "--kubernetes".to_owned(),
            format!("--kube-api={}", self.api.url()),
            format!("--listen={listen}"),
            format!("--admin-listen={}", free_addr()),
            format!("--autoscaler-address=http://{}", self.autoscaler),
            "--domain=example.com".to_owned(),
            "--leader-elect".to_owned(),
            format!("--pod-name={name}"),
            "--lease-duration=3".to_owned(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.spawn(name, &args);
    }

    fn spawn(&mut self, name: &str, args: &[&str]) {
        let log_path = self.logs.join(format!("{name}.log"));
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let name_ = name.to_owned();
        let keeper = tokio::spawn(async move {
            loop {
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&log_path)
                    .expect("log");
                let mut child: Child = Command::new(exe())
                    .args(&args)
                    .env("RUST_LOG", "info")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .kill_on_drop(true)
                    .spawn()
                    .unwrap_or_else(|e| panic!("{name_}: {e}"));
                let _ = child.wait().await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        self.processes.push((name.to_owned(), keeper));
    }

    /// Stops keeping `name` running and kills it (its node is gone).
    async fn remove(&mut self, name: &str) {
        if let Some(i) = self.processes.iter().position(|(n, _)| n == name) {
            let (_, keeper) = self.processes.remove(i);
            keeper.abort();
            let _ = keeper.await;
        }
    }

    /// The last lines of every component's log, for a failure's message.
    fn logs(&self) -> String {
        let mut out = String::new();
        for (name, _) in &self.processes {
            let text =
                std::fs::read_to_string(self.logs.join(format!("{name}.log"))).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out.push_str(&format!("--- {name}\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Creates every Service of a manifest in the API (as `kubectl create`); a Service
    /// there already is replaced (as `kubectl apply`).
    fn apply(&self, yaml: &str) {
        for doc in yaml.split("\n---") {
            let v: Value = serde_norway::from_str(doc).expect("yaml");
            if v.is_null() {
                continue;
            }
            let name = v["metadata"]["name"].as_str().expect("name").to_owned();
            let code = self.api.apply_object(KSVCS, v);
            assert!(code == 200 || code == 201, "apply {name}: {code}");
        }
    }

    fn ksvc(&self, name: &str) -> Value {
        self.api
            .get(&format!("{KSVCS}/{name}"))
            .unwrap_or(Value::Null)
    }

    fn deployment(&self, name: &str) -> Value {
        self.api
            .get(&format!("{DEPLOYMENTS}/{name}"))
            .unwrap_or(Value::Null)
    }

    /// Waits up to `limit` for `done`, on what `read` gives.
    async fn until(
        &self,
        what: &str,
        limit: Duration,
        mut done: impl FnMut() -> Option<String>,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(v) = done() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not after {limit:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&self, service: &str, generation: i64) -> Value {
        let mut last = Value::Null;
        self.until(
            &format!("service {service} Ready at generation {generation}"),
            Duration::from_secs(60),
            || {
                last = self.ksvc(service);
                let status = &last["status"];
                let ready = status["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                (ready && status["observedGeneration"] == generation).then(String::new)
            },
        )
        .await;
        last
    }

    /// `GET /` for `host` through the gateway; no answer in 20 s fails the test, with
    /// every component's last lines.
    async fn get(&self, host: &str) -> client::Reply {
        let url = format!("http://{}/", self.gateway);
        let headers = [("host", host)];
        match tokio::time::timeout(Duration::from_secs(20), client::get_with(&url, &headers)).await
        {
            Ok(reply) => reply,
            Err(_) => panic!("{host}: no answer in 20 s\n{}", self.logs()),
        }
    }

    async fn shutdown(mut self) {
        if let Some(k) = self.kubelet.take() {
            k.shutdown().await;
        }
        // A keeper's child is killed when the keeper is dropped.
        for (_, keeper) in self.processes.drain(..) {
            keeper.abort();
            let _ = keeper.await;
        }
        self.api.stop().await;
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.logs);
        }
    }
}

/// Runs a test on a runtime of its own whose end does not wait for leftover tasks: after
/// a passing test, the drop of `#[tokio::test]`'s runtime was seen to hang (1 test in
/// about 6, after other tests had run; the cause was not found).
fn run(test: impl Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(test);
    rt.shutdown_timeout(Duration::from_secs(5));
}

fn replicas(d: &Value) -> i64 {
    d["spec"]["replicas"].as_i64().unwrap_or(-1)
}

#[test]
fn kube_e2e_a_service_becomes_a_deployment_with_the_sidecar_and_is_ready_at_its_url() {
    run(async {
        let c = Cluster::start("hello").await;
        c.apply(&example("helloworld-go.yaml"));

        // The revision's Deployment, owned by the Service, with the queue-proxy injected.
        let ksvc_uid = c.ksvc("helloworld-go")["metadata"]["uid"].clone();
        c.until("the deployment", Duration::from_secs(20), || {
            (!c.deployment("helloworld-go-00001-deployment").is_null()).then(String::new)
        })
        .await;
        let d = c.deployment("helloworld-go-00001-deployment");
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], ksvc_uid);
        assert_eq!(
            d["metadata"]["labels"]["serving.knative.dev/revision"],
            "helloworld-go-00001"
        );
        let containers = &d["spec"]["template"]["spec"]["containers"];
        assert_eq!(
            containers[0]["image"],
            "gcr.io/knative-samples/helloworld-go"
        );
        assert_eq!(containers[1]["name"], "queue-proxy");
        assert_eq!(containers[1]["image"], "sluice-queue-proxy:latest");
        assert!(
            c.api
                .get("/api/v1/namespaces/default/services/helloworld-go-00001-private")
                .is_some(),
            "the private service"
        );

        // Ready, with Knative's URL and status, and served through the gateway.
        let ksvc = c.ready("helloworld-go", 1).await;
        let status = &ksvc["status"];
        assert_eq!(status["url"], "http://helloworld-go.default.example.com");
        assert_eq!(
            status["address"]["url"],
            "http://helloworld-go.default.svc.cluster.local"
        );
        assert_eq!(status["latestCreatedRevisionName"], "helloworld-go-00001");
        assert_eq!(status["latestReadyRevisionName"], "helloworld-go-00001");
        assert_eq!(status["traffic"][0]["percent"], 100);
        let reply = c.get("helloworld-go.default.example.com").await;
        assert_eq!(
            (reply.status.as_u16(), reply.text()),
            (200, "Hello Knative!\n".to_owned())
        );

        // A spec Sluice refuses: Ready=False naming the field; the running revision serves on.
        let bad = example("helloworld-go.yaml")
            .replace("containerConcurrency: 5", "containerConcurrency: 5000");
        c.apply(&bad);
        let mut message = String::new();
        c.until("the refusal in the status", Duration::from_secs(20), || {
            let s = c.ksvc("helloworld-go");
            let ready = s["status"]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["type"] == "Ready")
                .cloned()
                .unwrap_or_default();
            message = ready["message"].as_str().unwrap_or_default().to_owned();
            (ready["status"] == "False" && s["status"]["observedGeneration"] == 2).then(String::new)
        })
        .await;
        assert!(
            message.contains("spec.template.spec.containerConcurrency"),
            "{message}"
        );
        assert!(c.deployment("helloworld-go-00002-deployment").is_null());
        let reply = c.get("helloworld-go.default.example.com").await;
        assert_eq!(reply.status, 200);

        // Deleted: its Deployment and Service go with it, and the route.
        assert_eq!(c.api.delete_object(&format!("{KSVCS}/helloworld-go")), 200);
        c.until("the deployment gone", Duration::from_secs(20), || {
            (c.deployment("helloworld-go-00001-deployment").is_null()).then(String::new)
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let gone = c.get("helloworld-go.default.example.com").await;
            if gone.status == 404 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still routed: {} {}",
                gone.status,
                gone.text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        c.shutdown().await;
    });
}

#[test]
fn kube_e2e_target_10_at_50_concurrent_scales_the_deployment_then_to_zero_and_back() {
    run(async {
        let c = Cluster::start("scale").await;
        c.apply(&example("autoscale-go.yaml"));
        c.ready("autoscale-go", 1).await;
        let name = "autoscale-go-00001-deployment";

        let load = seed_load(c.gateway);
        tokio::pin!(load);
        let mut most = 0;
        let report = loop {
            tokio::select! {
                report = &mut load => break report.expect("hey ran"),
                () = tokio::time::sleep(Duration::from_millis(200)) => {
                    most = most.max(replicas(&c.deployment(name)));
                }
            }
        };
        println!("the deployment's replicas peaked at {most}");
        assert_hey_all_200(&report);
        // ⌈50 / (10 × 0.7)⌉ = 8; the distributed window's phase can read 7 reports of 6.
        assert!(
            (7..=9).contains(&most),
            "the deployment's replicas peaked at {most}\n{}",
            c.logs()
        );
        let ready = c.deployment(name)["status"]["readyReplicas"]
            .as_i64()
            .unwrap_or(0);
        assert!(ready >= 7, "ready replicas {ready}");

        // Idle: to zero (6 s window and grace), pods and all.
        c.until("scaled to zero", Duration::from_secs(60), || {
            (replicas(&c.deployment(name)) == 0
                && c.kubelet.as_ref().is_some_and(|k| k.alive() == 0))
            .then(String::new)
        })
        .await;
        // The Service stays Ready at zero, as in Knative.
        c.ready("autoscale-go", 1).await;

        // A request at zero waits in the activator for a pod, and is answered.
        let started = c.kubelet.as_ref().map_or(0, Kubelet::started);
        let reply = c.get("autoscale-go.default.example.com").await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(
            c.kubelet.as_ref().map_or(0, Kubelet::started) > started,
            "a pod was started for it"
        );
        c.shutdown().await;
    });
}

#[test]
fn kube_e2e_a_50_50_split_alternates_and_a_rollback_under_load_fails_nothing() {
    run(async {
        let c = Cluster::start("split").await;
        // As on Kubernetes, the split's second document is applied once the first has made
        // its revision (applied together, the API keeps only the second, which names a
        // revision that was never made).
        let split = example("traffic-split.yaml");
        let (blue_doc, green_doc) = split.split_once("\n---").expect("two documents");
        c.apply(blue_doc);
        c.ready("hello", 1).await;
        c.apply(green_doc);
        c.ready("hello", 2).await;
        let mut answers = Vec::new();
        for _ in 0..20 {
            let r = c.get("hello.default.example.com").await;
            assert_eq!(r.status, 200);
            answers.push(r.text());
        }
        let blue = answers.iter().filter(|a| a.contains("blue")).count();
        let green = answers.iter().filter(|a| a.contains("green")).count();
        assert_eq!((blue, green), (10, 10), "{answers:?}");
        assert!(
            answers.windows(2).all(|w| w[0] != w[1]),
            "alternates: {answers:?}"
        );

        let load = background_load(
            c.gateway,
            "hello.default.example.com",
            Duration::from_secs(4),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.apply(&rolled_back(green_doc));
        let report = load.await.expect("load");
        assert_all_200(&report);
        for _ in 0..6 {
            let r = c.get("hello.default.example.com").await;
            assert!(r.text().contains("blue"), "{}", r.text());
        }
        c.shutdown().await;
    });
}

#[test]
fn kube_e2e_the_api_server_stopped_under_load_fails_no_request() {
    run(async {
        let c = Cluster::start("apistop").await;
        c.apply(&example("helloworld-go.yaml"));
        c.ready("helloworld-go", 1).await;
        let load = background_load(
            c.gateway,
            "helloworld-go.default.example.com",
            Duration::from_secs(6),
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.api.stop().await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        c.api.resume().await;
        let report = load.await.expect("load");
        assert_all_200(&report);
        assert!(report.total() > 100, "{report:?}");
        // Back: a change made now is reconciled.
        let v2 = example("helloworld-go.yaml").replace("value: \"Knative\"", "value: \"again\"");
        c.apply(&v2);
        c.ready("helloworld-go", 2).await;
        c.shutdown().await;
    });
}

#[test]
fn kube_e2e_a_killed_leader_is_replaced_by_the_standby_and_scaling_goes_on() {
    run(async {
        let mut c = Cluster::start("leader").await;
        c.apply(&example("helloworld-go.yaml"));
        c.ready("helloworld-go", 1).await;
        // A standby on another port: it waits for the Lease and binds nothing meanwhile.
        let standby = free_addr();
        c.spawn_control("control-2", standby);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let lease = c
            .api
            .get("/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-control");
        assert_eq!(
            lease.as_ref().map(|l| l["spec"]["holderIdentity"].clone()),
            Some(json!("control-1"))
        );
        assert!(
            std::net::TcpStream::connect(standby).is_err(),
            "the standby serves nothing"
        );

        // The leader is killed and not restarted (its node is gone): within the 3 s Lease
        // the standby leads.
        c.remove("control-1").await;
        c.until("the standby leads", Duration::from_secs(15), || {
            let lease = c.api.get(
                "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-control",
            )?;
            (lease["spec"]["holderIdentity"] == "control-2"
                && std::net::TcpStream::connect(standby).is_ok())
            .then(String::new)
        })
        .await;
        // It reconciles: a new revision is made, and its status written.
        let v2 = example("helloworld-go.yaml").replace("value: \"Knative\"", "value: \"v2\"");
        c.apply(&v2);
        c.until(
            "the new revision's deployment",
            Duration::from_secs(20),
            || (!c.deployment("helloworld-go-00002-deployment").is_null()).then(String::new),
        )
        .await;
        c.until("its status", Duration::from_secs(30), || {
            let s = c.ksvc("helloworld-go");
            (s["status"]["latestCreatedRevisionName"] == "helloworld-go-00002").then(String::new)
        })
        .await;
        c.shutdown().await;
    });
}

#[test]
fn kube_e2e_a_standby_autoscaler_binds_nothing_until_the_lease_is_free() {
    run(async {
        let mut c = Cluster::start("autoscaler-lease").await;
        // Another autoscaler holds the Lease, renewed just now, and then never again.
        let held = json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "sluice-autoscaler", "namespace": "sluice-system"},
            "spec": {"holderIdentity": "autoscaler-1", "leaseDurationSeconds": 3,
                     "renewTime": "2026-01-01T00:00:00.000000Z"}
        });
        let leases = "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases";
        assert_eq!(c.api.create_object(leases, held), 201);
        let standby = free_addr();
        let args = [
            "autoscaler".to_owned(),
            format!("--listen={standby}"),
            format!("--metrics-listen={}", free_addr()),
            format!("--control=http://{}", c.control),
            "--leader-elect".to_owned(),
            format!("--kube-api={}", c.api.url()),
            "--pod-name=autoscaler-2".to_owned(),
            "--lease-duration=3".to_owned(),
        ];
        let started = Instant::now();
        c.spawn(
            "autoscaler-2",
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            std::net::TcpStream::connect(standby).is_err(),
            "a standby serves nothing"
        );
        // The holder's record has not changed for the Lease's 3 s: the standby takes it.
        c.until(
            "the standby autoscaler leads and serves",
            Duration::from_secs(15),
            || {
                let lease = c.api.get(&format!("{leases}/sluice-autoscaler"))?;
                (lease["spec"]["holderIdentity"] == "autoscaler-2"
                    && std::net::TcpStream::connect(standby).is_ok())
                .then(String::new)
            },
        )
        .await;
        assert!(
            started.elapsed() >= Duration::from_secs(3),
            "not before the Lease expired"
        );
        c.shutdown().await;
    });
}
