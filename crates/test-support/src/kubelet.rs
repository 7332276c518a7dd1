//! A fake kubelet (with the Deployment and EndpointSlice controllers' share of the work),
//! for the cluster mode's end-to-end tests against [`crate::kube_api::KubeApi`]: it turns
//! each Deployment's replicas into local pods (the app and the queue-proxy as processes),
//! probes them as the kubelet does, and publishes what Kubernetes would: the Deployment's
//! status and the EndpointSlices of every Service that selects pods.
//!
//! A pod has its own loopback address (`127.X.Y.Z`), so the queue-proxy serves on
//! Knative's fixed ports (8012, 8022, 9090, 9091) as in a pod. Where it differs from a
//! cluster:
//! - pods share one network namespace: the queue-proxy binds the pod's address
//!   (`SLUICE_BIND_ADDRESS`), and the app's port is moved to a free one on 127.0.0.1
//!   (`PORT`, `USER_PORT` and the readiness probe's port are rewritten to it);
//! - images are not pulled: each runs a local command ([`KubeletConfig::images`]); an
//!   image with none is reported as a failed pull (`ErrImagePull`, then
//!   `ImagePullBackOff`), as a registry without it would be;
//! - Pod objects are written with their container states (running, waiting with
//!   Kubernetes' reasons, the last termination with its exit code and, under
//!   `FallbackToLogsOnError`, the last lines of its log), owned by their Deployment
//!   (there are no ReplicaSets); a pod that starts terminating is deleted from the API
//!   at once (no `deletionTimestamp` while it drains);
//! - a Deployment's status has the Deployment controller's `Available` and `Progressing`
//!   conditions: `ProgressDeadlineExceeded` once `progressDeadlineSeconds` pass with no
//!   progress (a new spec, another pod ready), and `ReplicaFailure` (`FailedCreate`,
//!   with the API server's quota message) while a `ResourceQuota`'s `hard.pods` in the
//!   namespace leaves no room for a pod it wants (the one quota enforced here);
//! - a container that exits is started again after Kubernetes' crash back-off (10 s,
//!   doubling to 5 minutes; `CrashLoopBackOff` meanwhile), the pod kept;
//! - no resources, scheduling, or init containers.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, ResourceQuota, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// What the pods run.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    /// An image (as its name starts) → the command that runs it here.
    pub images: Vec<(String, Vec<String>)>,
    /// Env added to every queue-proxy (e.g. a short drain for tests).
    pub queue_proxy_env: Vec<(String, String)>,
    /// Time between reconciles and probes.
    pub period: Duration,
    /// Where each container's stderr goes (`{pod}-{container}.log`); `None`: nowhere.
    pub log_dir: Option<std::path::PathBuf>,
}

/// A running fake kubelet.
pub struct Kubelet {
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
    /// The watches feeding its caches.
    watching: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Kubelet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubelet").finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// By Deployment (namespace, name).
    pods: BTreeMap<(String, String), Vec<Pod>>,
    next_ip: u32,
    /// What was last published, to write only changes.
    slices: HashMap<(String, String), Value>,
    statuses: HashMap<(String, String), Value>,
    /// Pod objects as last written, by (namespace, pod name).
    pod_objects: HashMap<(String, String), Value>,
    /// Each Deployment's rollout: the generation seen, the most pods ready since, and
    /// when it last made progress (for `Progressing` and its deadline).
    progress: HashMap<(String, String), (Option<i64>, usize, tokio::time::Instant)>,
    /// Pods started in all, for tests.
    started: u64,
    /// The Deployments a pod could not be made for, with the API server's refusal (as
    /// the ReplicaSet controller reports it).
    failed_create: HashMap<(String, String), String>,
}

struct Pod {
    name: String,
    namespace: String,
    /// Its Deployment's name and uid (the Pod object's owner).
    owner: (String, Option<String>),
    ip: Ipv4Addr,
    /// The app's port here (pods share the host's network).
    user_port: u16,
    labels: BTreeMap<String, String>,
    app: Ctr,
    queue: Ctr,
    ready: bool,
    /// Draining: out of rotation, its processes stopping.
    terminating: bool,
    grace: Duration,
    /// When a terminating pod's processes are killed if still running.
    kill_at: Option<tokio::time::Instant>,
}

/// One container: its process while it runs, and what the kubelet says of it.
struct Ctr {
    spec: Container,
    /// Env the kubelet adds here (the pod's address for the queue-proxy).
    extra: Vec<(String, String)>,
    child: Option<Child>,
    restarts: u32,
    /// Its last exit: code and termination message.
    last_exit: Option<(i32, String)>,
    /// Why it is not running now: reason and message.
    waiting: Option<(String, String)>,
    /// When a container that exited is started again.
    restart_at: Option<tokio::time::Instant>,
}

/// Kubernetes' crash back-off: 10 s after the first exit, doubling, at most 5 minutes.
fn crash_backoff(restarts: u32) -> Duration {
    let doublings = restarts.saturating_sub(1).min(5);
    (Duration::from_secs(10) * 2u32.pow(doublings)).min(Duration::from_secs(300))
}

impl Ctr {
    fn new(spec: &Container, extra: Vec<(String, String)>) -> Self {
        Self {
            spec: spec.clone(),
            extra,
            child: None,
            restarts: 0,
            last_exit: None,
            waiting: None,
            restart_at: None,
        }
    }

    /// Starts the process if it is not running and its back-off has passed.
    fn run(&mut self, pod: &str, ip: Ipv4Addr, user_port: u16, config: &KubeletConfig) {
        let now = tokio::time::Instant::now();
        if self.child.is_some() || self.restart_at.is_some_and(|at| at > now) {
            return;
        }
        let image = self.spec.image.clone().unwrap_or_default();
        let Some(argv) = entrypoint(&self.spec, config) else {
            self.waiting = Some(if self.waiting.is_none() {
                (
                    "ErrImagePull".to_owned(),
                    format!("failed to pull image {image:?}: not found"),
                )
            } else {
                (
                    "ImagePullBackOff".to_owned(),
                    format!("Back-off pulling image {image:?}"),
                )
            });
            return;
        };
        match spawn(&self.spec, &argv, pod, ip, user_port, config, &self.extra) {
            Ok(child) => {
                self.child = Some(child);
                self.waiting = None;
                self.restart_at = None;
            }
            // As a runtime that cannot start the command: exit 128, `StartError`.
            Err(e) => self.exited(pod, 128, e),
        }
    }

    /// Notes an exit of its process, if it ended.
    fn reap(&mut self, pod: &str, config: &KubeletConfig) {
        let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) else {
            return;
        };
        use std::os::unix::process::ExitStatusExt;
        let code = status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        self.child = None;
        let fallback =
            self.spec.termination_message_policy.as_deref() == Some("FallbackToLogsOnError");
        let message = match (&config.log_dir, fallback && code != 0) {
            (Some(dir), true) => log_tail(&dir.join(format!("{pod}-{}.log", self.spec.name))),
            _ => String::new(),
        };
        self.exited(pod, code, message);
    }

    fn exited(&mut self, pod: &str, code: i32, message: String) {
        self.restarts += 1;
        self.last_exit = Some((code, message));
        let delay = crash_backoff(self.restarts);
        self.restart_at = Some(tokio::time::Instant::now() + delay);
        self.waiting = Some((
            "CrashLoopBackOff".to_owned(),
            format!(
                "back-off {}s restarting failed container={} pod={pod}",
                delay.as_secs(),
                self.spec.name
            ),
        ));
    }

    fn ended(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|c| matches!(c.try_wait(), Ok(Some(_))))
    }

    fn kill(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.start_kill();
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Its `containerStatuses[]` entry.
    fn status(&self, ready: bool) -> Value {
        let state = match (&self.child, &self.waiting) {
            (Some(_), _) => json!({"running": {}}),
            (None, Some((reason, message))) => {
                json!({"waiting": {"reason": reason, "message": message}})
            }
            (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
        };
        let last = match &self.last_exit {
            Some((code, message)) => json!({"terminated": {
                "exitCode": code,
                "reason": if *code == 0 { "Completed" } else { "Error" },
                "message": message,
            }}),
            None => json!({}),
        };
        json!({
            "name": self.spec.name,
            "image": self.spec.image,
            "imageID": "",
            "ready": ready && self.child.is_some(),
            "started": self.child.is_some(),
            "restartCount": self.restarts,
            "state": state,
            "lastState": last,
        })
    }
}

/// The last of a log as Kubernetes keeps it for a termination message: at most 80 lines
/// and 2,048 bytes.
fn log_tail(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(80).collect();
    let tail = lines.into_iter().rev().collect::<Vec<_>>().join("\n");
    tail[tail.ceil_char_boundary(tail.len().saturating_sub(2048))..].to_owned()
}

/// Every `K` in the cluster, kept by a watch on a task of its own (pushed to `watching`,
/// aborted at shutdown). The watch backs off after an error as kube-runtime's controllers do: without it, a stream
/// whose API server has gone answers at once, again and again, and its task never yields,
/// which held a runtime's shutdown up for as long as it spun.
fn cached<K>(
    client: &Client,
    watching: &mut Vec<tokio::task::JoinHandle<()>>,
) -> reflector::Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let stream = reflector(
        writer,
        watcher(Api::<K>::all(client.clone()), watcher::Config::default()).default_backoff(),
    );
    watching.push(tokio::spawn(async move {
        let mut s = std::pin::pin!(stream);
        while s.next().await.is_some() {}
    }));
    store
}

impl Kubelet {
    /// Starts following Deployments, Services and ResourceQuotas through `client`.
    pub async fn start(client: Client, config: KubeletConfig) -> Self {
        let state = Arc::new(Mutex::new(State {
            next_ip: first_ip(),
            ..State::default()
        }));
        let mut watching = Vec::new();
        let deployments = cached::<Deployment>(&client, &mut watching);
        let services = cached::<Service>(&client, &mut watching);
        let quotas = cached::<ResourceQuota>(&client, &mut watching);
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let _ = deployments.wait_until_ready().await;
            let _ = services.wait_until_ready().await;
            let _ = quotas.wait_until_ready().await;
            loop {
                let ds: Vec<Arc<Deployment>> = deployments.state();
                let ss: Vec<Arc<Service>> = services.state();
                reconcile(&shared, &ds, &quotas.state(), &config).await;
                probe(&shared).await;
                publish(&client, &shared, &ds, &ss).await;
                tokio::time::sleep(config.period).await;
            }
        });
        Self {
            state,
            task,
            watching,
        }
    }

    /// Pods whose processes have not all ended yet, terminating ones included.
    pub fn alive(&self) -> usize {
        self.state.lock().pods.values().flatten().count()
    }

    /// Pods started since the kubelet started.
    pub fn started(&self) -> u64 {
        self.state.lock().started
    }

    /// Stops following and kills every pod.
    pub async fn shutdown(self) {
        for task in self.watching.iter().chain([&self.task]) {
            task.abort();
        }
        for task in self.watching.into_iter().chain([self.task]) {
            let _ = task.await;
        }
        let pods: Vec<Pod> = std::mem::take(&mut self.state.lock().pods)
            .into_values()
            .flatten()
            .collect();
        for p in pods {
            for mut child in [p.queue.child, p.app.child].into_iter().flatten() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
    }
}

/// A loopback /16 of its own for this kubelet's pods, so that kubelets of tests run in
/// parallel rarely meet (and [`free_ip`] steps over an address in use when they do).
fn first_ip() -> u32 {
    let seed = std::process::id()
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
    let second = 16 + seed % 224;
    let third = (seed / 224) % 256;
    u32::from_be_bytes([127, second as u8, third as u8, 2])
}

/// The next address whose queue-proxy ports are free.
fn free_ip(state: &mut State) -> Ipv4Addr {
    loop {
        let ip = Ipv4Addr::from(state.next_ip);
        state.next_ip += 1;
        if ip.octets()[3] == 0 || ip.octets()[3] == 255 {
            continue;
        }
        let free = [8012, 8022, 9090, 9091]
            .iter()
            .all(|port| std::net::TcpListener::bind((ip, *port)).is_ok());
        if free {
            return ip;
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// The first `ResourceQuota` in `namespace` whose `hard.pods` `used` pods fill: its name
/// and limit.
fn full_quota(
    quotas: &[Arc<ResourceQuota>],
    namespace: &str,
    used: usize,
) -> Option<(String, usize)> {
    quotas.iter().find_map(|q| {
        if q.namespace().as_deref() != Some(namespace) {
            return None;
        }
        let hard = q.spec.as_ref()?.hard.as_ref()?.get("pods")?;
        let limit: usize = hard.0.parse().ok()?;
        (used >= limit).then(|| (q.name_any(), limit))
    })
}

/// Starts and stops pods so that each Deployment has its replicas; ends the pods of
/// Deployments that are gone, and replaces pods whose processes exited.
async fn reconcile(
    state: &Mutex<State>,
    deployments: &[Arc<Deployment>],
    quotas: &[Arc<ResourceQuota>],
    config: &KubeletConfig,
) {
    let mut stopping = Vec::new();
    {
        let mut st = state.lock();
        let wanted: HashMap<(String, String), &Deployment> = deployments
            .iter()
            .map(|d| ((d.namespace().unwrap_or_default(), d.name_any()), &**d))
            .collect();
        let keys: Vec<(String, String)> = st.pods.keys().cloned().collect();
        for key in keys {
            let pods = st.pods.get_mut(&key).expect("listed");
            // Containers that exited are started again after their back-off.
            for p in pods.iter_mut().filter(|p| !p.terminating) {
                for c in [&mut p.app, &mut p.queue] {
                    c.reap(&p.name, config);
                    c.run(&p.name, p.ip, p.user_port, config);
                }
            }
            let keep = wanted
                .get(&key)
                .and_then(|d| d.spec.as_ref()?.replicas)
                .map_or(0, |r| usize::try_from(r).unwrap_or(0));
            let live: Vec<usize> = (0..pods.len()).filter(|i| !pods[*i].terminating).collect();
            // Newest first, as a ReplicaSet scales down (not-ready ones before them).
            let mut order = live.clone();
            order.sort_by_key(|i| (pods[*i].ready, std::cmp::Reverse(*i)));
            for i in order.into_iter().take(live.len().saturating_sub(keep)) {
                let p = &mut pods[i];
                p.terminating = true;
                p.ready = false;
                p.kill_at = Some(tokio::time::Instant::now() + p.grace);
                stopping.push((p.ip, p.grace, p.app.pid(), p.queue.pid()));
            }
            // What the grace period did not end is killed.
            for p in pods.iter_mut() {
                if p.kill_at
                    .is_some_and(|at| at <= tokio::time::Instant::now())
                {
                    p.app.kill();
                    p.queue.kill();
                }
            }
        }
        st.failed_create.retain(|k, _| wanted.contains_key(k));
        for (key, d) in &wanted {
            let Some(spec) = d.spec.as_ref() else {
                continue;
            };
            let replicas = usize::try_from(spec.replicas.unwrap_or(1)).unwrap_or(0);
            let live = st
                .pods
                .get(key)
                .map_or(0, |p| p.iter().filter(|p| !p.terminating).count());
            st.failed_create.remove(key);
            for _ in live..replicas {
                let used = st
                    .pods
                    .iter()
                    .filter(|((ns, _), _)| *ns == key.0)
                    .flat_map(|(_, pods)| pods)
                    .filter(|p| !p.terminating)
                    .count();
                if let Some((quota, limit)) = full_quota(quotas, &key.0, used) {
                    // The API server's refusal, as the ReplicaSet controller reports it.
                    let refused = format!(
                        "pods \"{}-fake-{:05x}\" is forbidden: exceeded quota: {quota}, requested: pods=1, used: pods={used}, limited: pods={limit}",
                        key.1,
                        st.started + 1
                    );
                    st.failed_create.insert(key.clone(), refused);
                    break;
                }
                let ip = free_ip(&mut st);
                st.started += 1;
                let name = format!(
                    "{}-{:05x}",
                    key.1.trim_end_matches("-deployment"),
                    st.started
                );
                match start_pod(d, &name, ip, config) {
                    Ok(pod) => st.pods.entry(key.clone()).or_default().push(pod),
                    Err(e) => eprintln!("fake kubelet: pod {name} of {}/{}: {e}", key.0, key.1),
                }
            }
        }
    }
    for (ip, grace, app, queue) in stopping {
        tokio::spawn(stop_pod(ip, grace, app, queue));
    }
    // Pods whose processes have both ended are removed.
    let mut st = state.lock();
    for pods in st.pods.values_mut() {
        pods.retain_mut(|p| !(p.terminating && p.app.ended() && p.queue.ended()));
    }
    st.pods.retain(|_, pods| !pods.is_empty());
}

/// As the kubelet ends a pod: the queue-proxy gets SIGTERM while the app's preStop hook
/// (`/wait-for-drain`) waits for it to drain; then the app gets SIGTERM. What is left at
/// the grace period's end is killed by [`reconcile`].
async fn stop_pod(ip: Ipv4Addr, grace: Duration, app: Option<u32>, queue: Option<u32>) {
    terminate(queue);
    let req = http::Request::get(format!("http://{ip}:8022/wait-for-drain"))
        .body(http_body_util::Full::default())
        .expect("request");
    let _ = tokio::time::timeout(grace, crate::client::send(&crate::client::http1(), req)).await;
    terminate(app);
}

fn terminate(pid: Option<u32>) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
}

fn start_pod(
    d: &Deployment,
    name: &str,
    ip: Ipv4Addr,
    config: &KubeletConfig,
) -> Result<Pod, String> {
    let template = &d.spec.as_ref().ok_or("no spec")?.template;
    let pod_spec = template.spec.as_ref().ok_or("no pod spec")?;
    let labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let [app, queue] = pod_spec.containers.as_slice() else {
        return Err(format!(
            "{} containers; the fake kubelet runs an app and its queue-proxy",
            pod_spec.containers.len()
        ));
    };
    let user_port = free_port();
    let mut app = Ctr::new(
        app,
        vec![("SAMPLE_APP_BIND".to_owned(), "127.0.0.1".to_owned())],
    );
    let mut extra = vec![("SLUICE_BIND_ADDRESS".to_owned(), ip.to_string())];
    extra.extend(config.queue_proxy_env.iter().cloned());
    let mut queue = Ctr::new(queue, extra);
    for c in [&mut app, &mut queue] {
        c.run(name, ip, user_port, config);
    }
    Ok(Pod {
        name: name.to_owned(),
        namespace: d.namespace().unwrap_or_default(),
        owner: (d.name_any(), d.metadata.uid.clone()),
        ip,
        user_port,
        labels,
        app,
        queue,
        ready: false,
        terminating: false,
        grace: Duration::from_secs(
            u64::try_from(pod_spec.termination_grace_period_seconds.unwrap_or(30)).unwrap_or(30),
        ),
        kill_at: None,
    })
}

/// A container's environment as the kubelet gives it: its `env`, with the downward API's
/// `metadata.name`, `status.podIP` and `status.hostIP` resolved for pod `pod` at `ip`
/// (other `valueFrom` sources are left out), and the app's port moved to `user_port`,
/// since every pod here shares the host's network.
pub fn container_env(
    c: &Container,
    pod: &str,
    ip: Ipv4Addr,
    user_port: u16,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod.to_owned(),
                Some("status.podIP") => ip.to_string(),
                Some("status.hostIP") => "127.0.0.1".to_owned(),
                _ => continue,
            },
            (None, None) => String::new(),
        };
        let value = match e.name.as_str() {
            "PORT" | "USER_PORT" => user_port.to_string(),
            "SERVING_READINESS_PROBE" => move_probe_port(&value, user_port),
            _ => value,
        };
        env.push((e.name.clone(), value));
    }
    env
}

/// What runs for the container: its image's local command, which its `command` replaces
/// as in Kubernetes; `None` if the image has none here (it cannot be "pulled").
fn entrypoint(c: &Container, config: &KubeletConfig) -> Option<Vec<String>> {
    let image = c.image.as_deref().unwrap_or_default();
    let local = config
        .images
        .iter()
        .find(|(prefix, _)| image.starts_with(prefix.as_str()))
        .map(|(_, argv)| argv.clone())?;
    match c.command.as_deref() {
        Some(command) if !command.is_empty() => Some(command.to_vec()),
        _ => Some(local),
    }
}

/// One container as a process: `entrypoint` and its args, its env with the downward API
/// resolved, and the app's port moved to `user_port`.
fn spawn(
    c: &Container,
    entrypoint: &[String],
    pod: &str,
    ip: Ipv4Addr,
    user_port: u16,
    config: &KubeletConfig,
    extra: &[(String, String)],
) -> Result<Child, String> {
    let mut cmd = Command::new(&entrypoint[0]);
    cmd.args(&entrypoint[1..]).args(c.args.iter().flatten());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd.envs(container_env(c, pod, ip, user_port));
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let stderr = config
        .log_dir
        .as_ref()
        .and_then(|dir| std::fs::File::create(dir.join(format!("{pod}-{}.log", c.name))).ok())
        .map_or_else(Stdio::null, Stdio::from);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true);
    cmd.spawn().map_err(|e| format!("{}: {e}", entrypoint[0]))
}

/// The queue-proxy's probe of the app, aimed at the app's moved port.
fn move_probe_port(probe: &str, user_port: u16) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(probe) else {
        return probe.to_owned();
    };
    for action in ["httpGet", "tcpSocket", "grpc"] {
        if let Some(a) = v.get_mut(action).and_then(Value::as_object_mut) {
            a.insert("port".into(), user_port.into());
        }
    }
    v.to_string()
}

/// Probes every pod as the kubelet does the queue-proxy's readiness probe:
/// `GET :8012/` with `K-Network-Probe: queue`.
async fn probe(state: &Mutex<State>) {
    let targets: Vec<((String, String), String, Ipv4Addr)> = state
        .lock()
        .pods
        .iter()
        .flat_map(|(k, pods)| {
            pods.iter()
                .filter(|p| !p.terminating)
                .map(move |p| (k.clone(), p.name.clone(), p.ip))
        })
        .collect();
    let probes = targets.into_iter().map(|(key, name, ip)| async move {
        let url = format!("http://{ip}:8012/");
        let ok = tokio::time::timeout(Duration::from_secs(1), async {
            let mut req = http::Request::get(&url);
            req = req
                .header("K-Network-Probe", "queue")
                .header("User-Agent", "kube-probe/1.33");
            crate::client::send(
                &crate::client::http1(),
                req.body(http_body_util::Full::default()).expect("request"),
            )
            .await
        })
        .await
        .is_ok_and(|r| r.is_ok_and(|r| r.status == 200));
        (key, name, ok)
    });
    let results = futures_util::future::join_all(probes).await;
    let mut st = state.lock();
    for (key, name, ok) in results {
        if let Some(p) = st
            .pods
            .get_mut(&key)
            .and_then(|pods| pods.iter_mut().find(|p| p.name == name))
            && !p.terminating
        {
            p.ready = ok;
        }
    }
}

/// The Pod object of a pod that is not terminating.
fn pod_object(p: &Pod) -> Value {
    let running = p.app.child.is_some() || p.queue.child.is_some();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": p.name,
            "namespace": p.namespace,
            "labels": p.labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "Deployment", "name": p.owner.0,
                "uid": p.owner.1.clone().unwrap_or_default(),
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "spec": {"nodeName": "fake-node", "containers": [p.app.spec, p.queue.spec]},
        "status": {
            "phase": if running { "Running" } else { "Pending" },
            "podIP": p.ip.to_string(),
            "hostIP": "127.0.0.1",
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": if p.ready { "True" } else { "False" }},
            ],
            "containerStatuses": [p.app.status(p.ready), p.queue.status(p.ready)],
        },
    })
}

enum PodWrite {
    Create(Value),
    Status(Value),
    Delete,
}

/// Writes the Pod objects that changed: pods started are created, their states patched,
/// and those terminating or gone deleted.
async fn publish_pods(client: &Client, state: &Mutex<State>) {
    let mut writes = Vec::new();
    {
        let st = state.lock();
        let mut live = std::collections::HashSet::new();
        for p in st.pods.values().flatten().filter(|p| !p.terminating) {
            let key = (p.namespace.clone(), p.name.clone());
            let obj = pod_object(p);
            match st.pod_objects.get(&key) {
                None => writes.push((key.clone(), PodWrite::Create(obj))),
                Some(old) if *old != obj => writes.push((key.clone(), PodWrite::Status(obj))),
                Some(_) => {}
            }
            live.insert(key);
        }
        for key in st.pod_objects.keys().filter(|k| !live.contains(*k)) {
            writes.push((key.clone(), PodWrite::Delete));
        }
    }
    for ((ns, name), write) in writes {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
        let done = match &write {
            PodWrite::Create(obj) => match serde_json::from_value(json!({
                "metadata": obj["metadata"],
                "spec": obj["spec"],
            })) {
                Ok(pod) => api.create(&PostParams::default(), &pod).await.is_ok(),
                Err(e) => {
                    eprintln!("fake kubelet: Pod {ns}/{name}: {e}");
                    false
                }
            },
            PodWrite::Status(obj) => api
                .patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": obj["status"]})),
                )
                .await
                .is_ok(),
            PodWrite::Delete => match api.delete(&name, &Default::default()).await {
                Ok(_) => true,
                Err(kube::Error::Api(s)) => s.code == 404,
                Err(_) => false,
            },
        };
        if done {
            let mut st = state.lock();
            match write {
                // An API server sets a new pod's status itself: the kubelet's state is
                // patched in at the next round, as a kubelet reports it.
                PodWrite::Create(mut obj) => {
                    obj["status"] = Value::Null;
                    st.pod_objects.insert((ns, name), obj);
                }
                PodWrite::Status(obj) => {
                    st.pod_objects.insert((ns, name), obj);
                }
                PodWrite::Delete => {
                    st.pod_objects.remove(&(ns, name));
                }
            }
        }
    }
}

/// Writes what changed: each Deployment's status, each selecting Service's EndpointSlice.
/// The Deployment controller's `Available` and `Progressing` conditions for a rollout
/// with `ready` of `wanted` pods (there are no ReplicaSets here: the one it would name is
/// `{deployment}-fake`); `stalled`: no progress within `progressDeadlineSeconds`.
fn progress_conditions(
    deployment: &str,
    ready: usize,
    wanted: usize,
    stalled: bool,
    failed_create: Option<&str>,
) -> Value {
    let rs = format!("{deployment}-fake");
    let available = if ready >= wanted {
        json!({"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
               "message": "Deployment has minimum availability."})
    } else {
        json!({"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable",
               "message": "Deployment does not have minimum availability."})
    };
    let progressing = if ready >= wanted {
        json!({"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
               "message": format!("ReplicaSet {rs:?} has successfully progressed.")})
    } else if stalled {
        json!({"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
               "message": format!("ReplicaSet {rs:?} has timed out progressing.")})
    } else {
        json!({"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated",
               "message": format!("ReplicaSet {rs:?} is progressing.")})
    };
    match failed_create {
        // The ReplicaSet's condition, which the Deployment controller copies.
        Some(message) => json!([available, progressing, {
            "type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
            "message": message,
        }]),
        None => json!([available, progressing]),
    }
}

async fn publish(
    client: &Client,
    state: &Mutex<State>,
    deployments: &[Arc<Deployment>],
    services: &[Arc<Service>],
) {
    publish_pods(client, state).await;
    let mut writes: Vec<(String, String, Value, bool)> = Vec::new();
    {
        let mut st = state.lock();
        let now = tokio::time::Instant::now();
        let mut seen = std::collections::HashSet::new();
        for d in deployments {
            let key = (d.namespace().unwrap_or_default(), d.name_any());
            let pods = st.pods.get(&key).map(Vec::as_slice).unwrap_or_default();
            let live = pods.iter().filter(|p| !p.terminating).count();
            let ready = pods.iter().filter(|p| p.ready).count();
            let spec = d.spec.as_ref();
            let wanted = spec
                .and_then(|s| s.replicas)
                .map_or(1, |r| usize::try_from(r).unwrap_or(0));
            let deadline = spec
                .and_then(|s| s.progress_deadline_seconds)
                .map_or(600, |s| u64::try_from(s).unwrap_or(0));
            let generation = d.metadata.generation;
            let progress = st
                .progress
                .entry(key.clone())
                .or_insert((generation, 0, now));
            // A new spec (a template, a scale) or another pod ready is progress.
            if progress.0 != generation || ready > progress.1 {
                *progress = (generation, ready, now);
            }
            let stalled = now.duration_since(progress.2) > Duration::from_secs(deadline);
            let failed = st.failed_create.get(&key).cloned();
            let conditions = progress_conditions(&key.1, ready, wanted, stalled, failed.as_deref());
            seen.insert(key.clone());
            let status = json!({
                "observedGeneration": generation,
                "replicas": live,
                "updatedReplicas": live,
                "readyReplicas": ready,
                "availableReplicas": ready,
                "conditions": conditions,
            });
            if st.statuses.get(&key) != Some(&status) {
                writes.push((key.0, key.1, status, true));
            }
        }
        st.progress.retain(|k, _| seen.contains(k));
        for s in services {
            let Some(selector) = s.spec.as_ref().and_then(|sp| sp.selector.clone()) else {
                continue;
            };
            let ns = s.namespace().unwrap_or_default();
            let endpoints: Vec<Value> = st
                .pods
                .iter()
                .filter(|((pns, _), _)| *pns == ns)
                .flat_map(|(_, pods)| pods)
                .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                .map(|p| {
                    json!({
                        "addresses": [p.ip.to_string()],
                        "conditions": {"ready": p.ready, "serving": p.ready, "terminating": p.terminating},
                        "targetRef": {"kind": "Pod", "name": p.name, "namespace": ns},
                    })
                })
                .collect();
            let mut labels = s.labels().clone();
            labels.insert("kubernetes.io/service-name".into(), s.name_any());
            labels.insert(
                "endpointslice.kubernetes.io/managed-by".into(),
                "fake-kubelet.sluice".into(),
            );
            let ports: Vec<Value> = s
                .spec
                .as_ref()
                .and_then(|sp| sp.ports.clone())
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    let target = match &p.target_port {
                        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(i)) => {
                            *i
                        }
                        _ => p.port,
                    };
                    json!({"name": p.name, "port": target, "protocol": "TCP"})
                })
                .collect();
            let slice = json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {
                    "name": format!("{}-fake", s.name_any()),
                    "namespace": ns,
                    "labels": labels,
                    "ownerReferences": [{
                        "apiVersion": "v1", "kind": "Service", "name": s.name_any(),
                        "uid": s.metadata.uid, "controller": true, "blockOwnerDeletion": true,
                    }],
                },
                "addressType": "IPv4",
                "ports": ports,
                "endpoints": endpoints,
            });
            let key = (ns.clone(), s.name_any());
            if st.slices.get(&key) != Some(&slice) {
                writes.push((key.0, key.1, slice, false));
            }
        }
    }
    for (ns, name, body, is_status) in writes {
        let ok = if is_status {
            let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": body.clone()})),
            )
            .await
            .is_ok()
        } else {
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
            let slice: EndpointSlice = match serde_json::from_value(body.clone()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("fake kubelet: slice of {ns}/{name}: {e}");
                    continue;
                }
            };
            let slice_name = format!("{name}-fake");
            match api.create(&PostParams::default(), &slice).await {
                Ok(_) => true,
                Err(kube::Error::Api(s)) if s.code == 409 => api
                    .patch(&slice_name, &PatchParams::default(), &Patch::Merge(&body))
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        };
        if ok {
            let mut st = state.lock();
            let map = if is_status {
                &mut st.statuses
            } else {
                &mut st.slices
            };
            map.insert((ns, name), body);
        }
    }
}
