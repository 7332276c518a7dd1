//! The local backend: a pod supervisor. A pod is two processes on free loopback ports,
//! the app (with `PORT` and Knative's `K_*` env) and `sluice queue-proxy` in front of it
//! (Knative's env). It counts as ready once its queue-proxy answers
//! `K-Network-Probe: queue` with 200, which it does once the app passes its readiness
//! probe.
//!
//! Each revision has a manager task that moves its pods toward the replicas the control
//! plane sets (the autoscaler's decisions); what to start and stop, and when to try again
//! after a failure, is decided by a plain struct (`local::pods`). Scale-down takes a pod out of rotation first,
//! then SIGTERMs the queue-proxy (which drains) and the app once the queue-proxy has
//! exited. A pod whose app or queue-proxy exits on its own is replaced, with a growing
//! back-off if it keeps failing.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use parking_lot::Mutex;
use sluice_core::RevisionKey;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::backend::Backend;
pub use crate::backend::PodStatus;
use crate::spec::{PodSpec, RevisionSpec, SAMPLE_APP};

mod pods;

use pods::PodSet;

/// Output lines kept per pod, shown when it fails.
const TAIL_LINES: usize = 20;
/// A starting pod's queue-proxy is probed every `PROBE_FAST` for its first `PROBE_FAST_FOR`
/// (a refused loopback connect costs microseconds, and a cold request waits on this
/// probe), then every `PROBE_EVERY`.
const PROBE_FAST: Duration = Duration::from_millis(1);
const PROBE_FAST_FOR: Duration = Duration::from_millis(250);
const PROBE_EVERY: Duration = Duration::from_millis(25);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const APP_STOP_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// The `sluice` binary: pods run `sluice queue-proxy` and `sluice sample-app`.
    pub exe: PathBuf,
    /// How long a new pod may take to become ready before it is reported and replaced.
    pub ready_timeout: Duration,
    /// The queue-proxies' drain quiet period.
    pub drain_quiet_period: Duration,
    /// The queue-proxies' bounds on client connections.
    pub limits: sluice_core::serve::Limits,
}

/// Cheap to clone, every clone the same supervisor.
#[derive(Clone, Debug)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: SupervisorConfig,
    /// The autoscaler's gRPC address, for the queue-proxies' stats (known once it is bound).
    autoscaler: Mutex<String>,
    revisions: Mutex<HashMap<RevisionKey, Arc<RevPods>>>,
    /// Deleted revisions whose pods may still be draining, for `shutdown` to wait on.
    deleted: Mutex<Vec<Arc<RevPods>>>,
    /// A revision's ready pods changed.
    changed: mpsc::UnboundedSender<RevisionKey>,
    next_pod: AtomicU64,
}

/// One revision's pods.
#[derive(Debug)]
struct RevPods {
    key: RevisionKey,
    spec: PodSpec,
    desired: watch::Sender<u32>,
    ready: Mutex<Vec<SocketAddr>>,
    /// Why the last pod failed, for `sluice status`.
    last_error: Mutex<Option<String>>,
    /// Every pod now, by id, for `sluice status --json`.
    pods: Mutex<BTreeMap<u64, PodStatus>>,
    stop: watch::Sender<bool>,
    done: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// A pod as its manager sees it: whether it is ready, and how to tell it to stop.
struct PodHandle {
    ready: Arc<std::sync::atomic::AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
}

/// The last lines a process wrote.
#[derive(Clone, Debug, Default)]
struct Tail(Arc<Mutex<VecDeque<String>>>);

// === impl Supervisor ===

impl Supervisor {
    /// A supervisor; ready-set changes are sent on `changed`.
    pub fn new(config: SupervisorConfig, changed: mpsc::UnboundedSender<RevisionKey>) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                autoscaler: Mutex::new(String::new()),
                revisions: Mutex::new(HashMap::new()),
                deleted: Mutex::new(Vec::new()),
                changed,
                next_pod: AtomicU64::new(1),
            }),
        }
    }

    /// Where pods send their stats.
    pub fn set_autoscaler(&self, address: String) {
        *self.inner.autoscaler.lock() = address;
    }

    /// Starts managing a revision with `initial` pods (Knative creates a revision's
    /// Deployment at its initial scale; the autoscaler takes over from there).
    fn add_revision(&self, spec: PodSpec, initial: u32) {
        let key = RevisionKey::new(&spec.namespace, &spec.revision);
        if self.inner.revisions.lock().contains_key(&key) {
            return;
        }
        let rev = Arc::new(RevPods {
            key: key.clone(),
            spec,
            desired: watch::Sender::new(initial),
            ready: Mutex::new(Vec::new()),
            last_error: Mutex::new(None),
            pods: Mutex::new(BTreeMap::new()),
            stop: watch::Sender::new(false),
            done: Mutex::new(None),
        });
        let span = tracing::info_span!("revision", revision = %key);
        let task = tokio::spawn(manage(Arc::clone(&self.inner), Arc::clone(&rev)).instrument(span));
        *rev.done.lock() = Some(task);
        self.inner.revisions.lock().insert(key, rev);
    }

    /// The ready pods' queue-proxy addresses.
    pub fn ready(&self, key: &RevisionKey) -> Vec<SocketAddr> {
        self.inner
            .revisions
            .lock()
            .get(key)
            .map(|r| r.ready.lock().clone())
            .unwrap_or_default()
    }

    /// The revision's pods now, oldest first.
    pub fn pods(&self, key: &RevisionKey) -> Vec<PodStatus> {
        self.inner
            .revisions
            .lock()
            .get(key)
            .map(|r| r.pods.lock().values().cloned().collect())
            .unwrap_or_default()
    }

    /// Why the revision's last pod failed, if one did since the last ready pod.
    pub fn last_error(&self, key: &RevisionKey) -> Option<String> {
        let rev = self.inner.revisions.lock().get(key).cloned()?;
        rev.last_error.lock().clone()
    }

    /// The revisions it runs, with the replicas set on each.
    pub fn revisions(&self) -> Vec<(RevisionKey, u32)> {
        self.inner
            .revisions
            .lock()
            .iter()
            .map(|(k, r)| (k.clone(), *r.desired.borrow()))
            .collect()
    }

    /// Drains and stops every pod of every revision, the deleted ones' included.
    pub async fn shutdown(&self) {
        let mut revisions: Vec<Arc<RevPods>> = self
            .inner
            .revisions
            .lock()
            .drain()
            .map(|(_, r)| r)
            .collect();
        revisions.append(&mut self.inner.deleted.lock());
        for rev in &revisions {
            rev.stop.send_replace(true);
        }
        for rev in revisions {
            let task = rev.done.lock().take();
            if let Some(task) = task {
                let _ = task.await;
            }
        }
    }
}

impl Backend for Supervisor {
    fn create(&self, spec: &RevisionSpec) {
        self.add_revision(spec.pod.clone(), spec.initial_scale);
    }

    fn delete(&self, revision: &RevisionKey) {
        // Its manager drains and stops the pods, and reports the ready set emptied.
        if let Some(rev) = self.inner.revisions.lock().remove(revision) {
            rev.stop.send_replace(true);
            let mut deleted = self.inner.deleted.lock();
            deleted.retain(|r| r.done.lock().as_ref().is_some_and(|t| !t.is_finished()));
            deleted.push(rev);
        }
    }

    fn scale(&self, revision: &RevisionKey, replicas: u32) {
        if let Some(rev) = self.inner.revisions.lock().get(revision) {
            rev.desired
                .send_if_modified(|d| std::mem::replace(d, replicas) != replicas);
        }
    }

    fn ready(&self, revision: &RevisionKey) -> Vec<SocketAddr> {
        Supervisor::ready(self, revision)
    }

    fn pods(&self, revision: &RevisionKey) -> Vec<PodStatus> {
        Supervisor::pods(self, revision)
    }

    fn last_error(&self, revision: &RevisionKey) -> Option<String> {
        Supervisor::last_error(self, revision)
    }
}

// === the manager ===

/// Moves a revision's pods toward the desired count until told to stop: the glue around
/// [`PodSet`], which decides; this starts, signals and waits.
async fn manage(inner: Arc<Inner>, rev: Arc<RevPods>) {
    let mut desired = rev.desired.subscribe();
    let mut stop = rev.stop.subscribe();
    let (ended_tx, mut ended_rx) = mpsc::unbounded_channel::<(u64, Result<(), String>)>();
    let mut set = PodSet::default();
    let mut pods: HashMap<u64, PodHandle> = HashMap::new();
    loop {
        let shutting_down = *stop.borrow();
        let want = if shutting_down {
            0
        } else {
            *desired.borrow_and_update() as usize
        };
        let plan = set.plan(want, Instant::now(), |id| {
            pods.get(&id)
                .is_some_and(|p| p.ready.load(Ordering::Relaxed))
        });
        for _ in 0..plan.start {
            let id = inner.next_pod.fetch_add(1, Ordering::Relaxed);
            let (stop_tx, stop_rx) = oneshot::channel();
            let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ended = ended_tx.clone();
            let task_inner = Arc::clone(&inner);
            let task_rev = Arc::clone(&rev);
            let task_ready = Arc::clone(&ready);
            tokio::spawn(
                async move {
                    let result = run_pod(&task_inner, &task_rev, id, stop_rx, &task_ready).await;
                    let _ = ended.send((id, result));
                }
                .instrument(tracing::debug_span!("pod", id)),
            );
            pods.insert(
                id,
                PodHandle {
                    ready,
                    stop: Some(stop_tx),
                },
            );
            set.started(id);
        }
        for id in plan.stop {
            if let Some(tx) = pods.get_mut(&id).and_then(|p| p.stop.take()) {
                let _ = tx.send(());
            }
        }
        if shutting_down && set.is_empty() {
            return;
        }
        let retry_at = set.retry_at(want);
        let backoff = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = desired.changed() => {
                if changed.is_err() { rev.stop.send_replace(true); }
            }
            _ = stop.changed() => {}
            Some((id, result)) = ended_rx.recv() => {
                pods.remove(&id);
                set.ended(id, &result, Instant::now());
                if let Err(why) = result {
                    tracing::warn!(revision = %rev.key, "{why}");
                    *rev.last_error.lock() = Some(why);
                }
            }
            () = backoff => {}
        }
    }
}

// === one pod ===

/// Runs one pod until it is told to stop (`Ok`) or fails (`Err`, with why).
async fn run_pod(
    inner: &Inner,
    rev: &RevPods,
    id: u64,
    mut stop: oneshot::Receiver<()>,
    ready_flag: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    let spec = &rev.spec;
    let pod_name = format!("{}-deployment-{id:05}", spec.revision);
    let (user_port, queue_port) = match (free_port(), free_port()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return Err(format!("pod {pod_name}: no free port: {e}")),
    };
    tracing::debug!(pod = %pod_name, "starting");
    let app_tail = Tail::default();
    let qp_tail = Tail::default();
    let mut app = spawn_app(inner, spec, user_port, &app_tail)
        .map_err(|e| format!("pod {pod_name}: cannot start the app {:?}: {e}", spec.argv))?;
    let mut qp = match spawn_queue_proxy(inner, spec, &pod_name, user_port, queue_port, &qp_tail) {
        Ok(qp) => qp,
        Err(e) => {
            stop_process(&mut app, APP_STOP_GRACE).await;
            return Err(format!("pod {pod_name}: cannot start its queue-proxy: {e}"));
        }
    };
    let qp_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, queue_port));
    let set_state = |state: &str| {
        rev.pods.lock().insert(
            id,
            PodStatus {
                name: pod_name.clone(),
                address: qp_addr,
                state: state.to_owned(),
            },
        );
    };
    set_state("starting");
    let failed = |what: String, tails: &[(&str, &Tail)]| {
        let mut msg = format!("pod {pod_name}: {what}");
        for (name, tail) in tails {
            let lines = tail.lines();
            if !lines.is_empty() {
                msg.push_str(&format!(
                    "\n  last output of the {name}:\n    {}",
                    lines.join("\n    ")
                ));
            }
        }
        msg
    };
    let tails = [("app", &app_tail), ("queue-proxy", &qp_tail)];

    // Starting: until the queue-proxy says the app is ready.
    let started = Instant::now();
    let deadline = started + inner.config.ready_timeout;
    let outcome: Result<bool, String> = loop {
        tokio::select! {
            status = app.wait() => break Err(format!("the app exited before it was ready ({})", describe(status))),
            status = qp.wait() => break Err(format!("the queue-proxy exited before the pod was ready ({})", describe(status))),
            _ = &mut stop => break Ok(false),
            () = tokio::time::sleep_until(deadline) => break Err(format!(
                "not ready after {:?}; it is stopped and will be replaced", inner.config.ready_timeout
            )),
            ready = probe(qp_addr) => if ready { break Ok(true); }
        }
        let fast = started.elapsed() < PROBE_FAST_FOR;
        tokio::time::sleep(if fast { PROBE_FAST } else { PROBE_EVERY }).await;
    };
    let result = match outcome {
        Ok(false) => Ok(()),
        Err(what) => {
            // Let the last lines it wrote arrive.
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(failed(what, &tails))
        }
        Ok(true) => {
            ready_flag.store(true, Ordering::Relaxed);
            set_state("ready");
            *rev.last_error.lock() = None;
            rev.ready.lock().push(qp_addr);
            let _ = inner.changed.send(rev.key.clone());
            tracing::debug!(pod = %pod_name, addr = %qp_addr, "ready");
            let running = tokio::select! {
                status = app.wait() => Err(format!("the app exited ({})", describe(status))),
                status = qp.wait() => Err(format!("the queue-proxy exited ({})", describe(status))),
                _ = &mut stop => Ok(()),
            };
            // Out of rotation before anything is stopped.
            rev.ready.lock().retain(|a| *a != qp_addr);
            let _ = inner.changed.send(rev.key.clone());
            running.map_err(|what| failed(what, &tails))
        }
    };
    set_state("stopping");
    // The queue-proxy drains first; the app stops once it has gone.
    let qp_grace = Duration::from_secs(u64::from(spec.timeout_seconds))
        + inner.config.drain_quiet_period
        + Duration::from_secs(5);
    stop_process(&mut qp, qp_grace).await;
    stop_process(&mut app, APP_STOP_GRACE).await;
    rev.pods.lock().remove(&id);
    tracing::debug!(pod = %pod_name, "stopped");
    result
}

fn spawn_app(inner: &Inner, spec: &PodSpec, port: u16, tail: &Tail) -> std::io::Result<Child> {
    let mut cmd = if spec.argv.first().map(String::as_str) == Some(SAMPLE_APP) {
        let mut c = Command::new(&inner.config.exe);
        c.arg(SAMPLE_APP).env("SAMPLE_APP_BIND", "127.0.0.1");
        c.args(&spec.argv[1..]);
        c
    } else {
        let mut c = Command::new(&spec.argv[0]);
        c.args(&spec.argv[1..]);
        c
    };
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", port.to_string())
        .env("K_SERVICE", &spec.service)
        .env("K_CONFIGURATION", &spec.service)
        .env("K_REVISION", &spec.revision);
    spawn(cmd, tail)
}

fn spawn_queue_proxy(
    inner: &Inner,
    spec: &PodSpec,
    pod: &str,
    user_port: u16,
    queue_port: u16,
    tail: &Tail,
) -> std::io::Result<Child> {
    let probe = spec.queue_readiness_probe(user_port);
    let optional = |v: Option<u32>| v.map(|s| s.to_string()).unwrap_or_default();
    let mut cmd = Command::new(&inner.config.exe);
    cmd.arg("queue-proxy")
        .env("SERVING_NAMESPACE", &spec.namespace)
        .env("SERVING_SERVICE", &spec.service)
        .env("SERVING_CONFIGURATION", &spec.service)
        .env("SERVING_REVISION", &spec.revision)
        .env("SERVING_POD", pod)
        .env("SERVING_POD_IP", "127.0.0.1")
        .env("QUEUE_SERVING_PORT", queue_port.to_string())
        .env("USER_PORT", user_port.to_string())
        .env(
            "CONTAINER_CONCURRENCY",
            spec.container_concurrency.to_string(),
        )
        .env("REVISION_TIMEOUT_SECONDS", spec.timeout_seconds.to_string())
        .env(
            "REVISION_RESPONSE_START_TIMEOUT_SECONDS",
            optional(spec.response_start_timeout_seconds),
        )
        .env(
            "REVISION_IDLE_TIMEOUT_SECONDS",
            optional(spec.idle_timeout_seconds),
        )
        .env("SERVING_READINESS_PROBE", probe.to_string())
        .envs(inner.config.limits.to_env())
        .env("SLUICE_BIND_ADDRESS", "127.0.0.1")
        .env("SLUICE_ADMIN_PORT", "0")
        .env("SLUICE_METRICS_PORT", "0")
        .env("SLUICE_USER_METRICS_PORT", "0")
        .env(
            "SLUICE_AUTOSCALER_ADDRESS",
            inner.autoscaler.lock().as_str(),
        )
        .env(
            "SLUICE_DRAIN_QUIET_PERIOD",
            format!("{}ms", inner.config.drain_quiet_period.as_millis()),
        )
        // Its lines only reach the pod's tail (shown when the pod fails): info says what it
        // serves and what it probed, and costs nothing per request.
        .env("RUST_LOG", "info");
    spawn(cmd, tail)
}

fn spawn(mut cmd: Command, tail: &Tail) -> std::io::Result<Child> {
    // Sockets passed to this process are its own, not its pods'.
    for var in sluice_core::serve::passed::VARS {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        // Its own process group: a Ctrl-C at the terminal reaches `sluice run` alone,
        // which then drains the pods in order.
        .process_group(0);
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn()?;
    if let Some(out) = child.stdout.take() {
        tokio::spawn(tail.clone().collect(out).in_current_span());
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(tail.clone().collect(err).in_current_span());
    }
    Ok(child)
}

/// The child gets SIGTERM when this process dies, even by SIGKILL, so that no pod (or, for
/// `sluice run --distributed`, no component) outlives the platform (`kill_on_drop` covers
/// only the exits that run destructors).
///
/// Linux sends it when the thread that forked the child exits: children are spawned from
/// the runtime's worker threads, which live as long as the platform.
pub fn die_with_parent(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    let hook = move || {
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
        // The parent died before the line above: nothing would signal this child.
        if nix::unistd::getppid() == parent {
            Ok(())
        } else {
            Err(std::io::Error::from(nix::errno::Errno::ESRCH))
        }
    };
    #[allow(unsafe_code)]
    // SAFETY: the hook runs in the forked child before exec. It calls only prctl(2),
    // getppid(2) and builds an io::Error from an errno, all async-signal-safe: it neither
    // allocates nor takes a lock another thread may have held at the fork.
    unsafe {
        cmd.pre_exec(hook);
    }
}

/// SIGTERM, then SIGKILL after `grace`.
async fn stop_process(child: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        tracing::warn!(pid = child.id(), ?grace, "did not stop in time; killing it");
        let _ = child.kill().await;
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(s) => s.to_string(),
        Err(e) => format!("cannot wait for it: {e}"),
    }
}

/// Whether the queue-proxy at `addr` says its pod is ready (the activator's probe).
pub async fn probe(addr: SocketAddr) -> bool {
    sluice_core::probe::queue_proxy_ready(addr, PROBE_TIMEOUT).await
}

/// A port free now on 127.0.0.1 (the OS picks it; the pod binds it a moment later).
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(l.local_addr()?.port())
}

// === impl Tail ===

impl Tail {
    async fn collect(self, out: impl tokio::io::AsyncRead + Unpin) {
        let mut lines = BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            tracing::trace!("{line}");
            let mut t = self.0.lock();
            if t.len() == TAIL_LINES {
                t.pop_front();
            }
            t.push_back(line);
        }
    }

    fn lines(&self) -> Vec<String> {
        self.0.lock().iter().cloned().collect()
    }
}
