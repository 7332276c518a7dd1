//! `sluice run`, `sluice apply` and `sluice status`.
//!
//! `sluice run` writes where its admin port is to `run.json` in the state directory
//! (`$SLUICE_STATE_DIR`, else `$XDG_RUNTIME_DIR/sluice`, else `/tmp/sluice-$UID`), so
//! `apply` and `status` find it without flags on the same machine.

use std::io::{IsTerminal, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::display;
use super::distributed::{Distributed, Files};
use super::images::ImageMap;
use super::manifest::{self, Manifests};
use super::platform::{Addresses, Options, Platform, Status};
use super::problem::{Problem, lines};

/// Bad manifests, flags or input.
const EXIT_BAD_INPUT: u8 = 2;
/// No running platform to talk to.
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Knative Service manifests: files or folders (repeatable).
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// The gateway's address.
    #[arg(long, env = "SLUICE_GATEWAY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Hosts are `{service}.{namespace}.{domain}`.
    #[arg(long, env = "SLUICE_DOMAIN", default_value = "example.com")]
    pub domain: String,
    /// The admin port `sluice apply` and `sluice status` use (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub admin_listen: SocketAddr,
    /// Where `run.json` is written (and, with `--distributed`, what the control plane
    /// keeps).
    #[arg(long, env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// Run each part in its own process (`sluice control`, `sluice autoscaler`, `sluice
    /// activator`, `sluice gateway`), connected over loopback as on a cluster, each
    /// restarted if it dies; the pods stay with this process and survive a restart of the
    /// control plane.
    #[arg(long)]
    pub distributed: bool,
    #[command(flatten)]
    pub pods: PodArgs,
}

/// How pods run: the flags `sluice run` and `sluice control` share.
#[derive(Debug, clap::Args)]
pub struct PodArgs {
    /// More images to run locally (YAML `images: {IMAGE: [COMMAND, ARG…]}`).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// How long a new pod may take to become ready before it is reported and replaced.
    #[arg(long, default_value = "60s")]
    pub pod_ready_timeout: String,
    /// After SIGTERM, how long a queue-proxy keeps serving with no new request.
    #[arg(long, default_value = "1s")]
    pub drain_quiet_period: String,
    /// The bounds on client connections, for every pod's queue-proxy (and, in `sluice
    /// run`, the gateway and the activator).
    #[command(flatten)]
    pub limits: sluice_core::serve::LimitArgs,
}

/// [`PodArgs`], checked.
#[derive(Debug)]
pub struct Pods {
    pub images: ImageMap,
    pub ready_timeout: Duration,
    pub drain_quiet_period: Duration,
    pub limits: sluice_core::serve::Limits,
    /// The `sluice` binary that pods run.
    pub exe: PathBuf,
}

impl PodArgs {
    /// Checks every flag; each bad one is added to `bad`.
    pub fn check(&self, bad: &mut Vec<String>) -> Pods {
        let mut duration = |flag: &str, v: &str| {
            sluice_core::duration::positive(v).unwrap_or_else(|| {
                bad.push(format!(
                    "--{flag}={v:?}: expected a duration such as 500ms or 60s"
                ));
                Duration::ZERO
            })
        };
        let ready_timeout = duration("pod-ready-timeout", &self.pod_ready_timeout);
        let drain_quiet_period = duration("drain-quiet-period", &self.drain_quiet_period);
        let limits = self.limits.limits(bad);
        let images = match &self.images {
            Some(p) => ImageMap::load(p).unwrap_or_else(|e| {
                bad.push(e);
                ImageMap::default()
            }),
            None => ImageMap::default(),
        };
        let exe = std::env::current_exe().unwrap_or_else(|e| {
            bad.push(format!("cannot find the sluice binary for pods: {e}"));
            PathBuf::new()
        });
        Pods {
            images,
            ready_timeout,
            drain_quiet_period,
            limits,
            exe,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Manifests: files or folders (repeatable).
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON (the format is in the README; fields are only ever added).
    #[arg(long)]
    pub json: bool,
    /// Keep watching: one line, with its time, each time a revision's pods, mode, panic
    /// state or decision reason changes (until interrupted).
    #[arg(long, short = 'w', conflicts_with = "json")]
    pub watch: bool,
    #[command(flatten)]
    pub target: Target,
}

/// Which platform to talk to.
#[derive(Debug, clap::Args)]
pub struct Target {
    /// The platform's admin address (default: the one `sluice run` recorded).
    #[arg(long, env = "SLUICE_ADMIN")]
    pub admin: Option<SocketAddr>,
    /// Where `sluice run` wrote `run.json`.
    #[arg(long, env = "SLUICE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
}

/// What `sluice run` records for the other commands.
#[derive(Debug, Serialize, Deserialize)]
struct RunFile {
    pid: u32,
    admin: SocketAddr,
    gateway: SocketAddr,
    /// The gateway's Prometheus metrics (absent in files of older versions).
    #[serde(default)]
    gateway_metrics: Option<SocketAddr>,
    /// The control plane's gRPC feeds (absent in files of older versions).
    #[serde(default)]
    control: Option<SocketAddr>,
}

// === sluice run ===

pub fn run(args: RunArgs) -> ExitCode {
    sluice_core::telemetry::init("warn");
    let mut bad = Vec::new();
    let pods = args.pods.check(&mut bad);
    let manifests = Manifests::read(&args.files).unwrap_or_else(|e| {
        bad.extend(lines(&e));
        Manifests::default()
    });
    // What `--distributed` sends to its control plane: the files as they are.
    let text = if args.distributed && bad.is_empty() {
        read_texts(&args.files).unwrap_or_else(|e| {
            bad.extend(lines(&e));
            String::new()
        })
    } else {
        String::new()
    };
    if !bad.is_empty() {
        eprintln!("sluice run: {}", bad.join("\n"));
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let state_dir = state_dir(args.state_dir.as_ref());
    if let Some(other) = running_platform(&state_dir) {
        eprintln!(
            "sluice run: a platform is already running (pid {}, gateway {}, admin {}); stop it, \
             or give this one another --state-dir",
            other.pid, other.gateway, other.admin
        );
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    sluice_core::serve::limits::raise_fd_limit();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice run: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.spawn(sluice_core::memory::give_back_after_bursts());
    runtime.block_on(async move {
        let opts = Options {
            exe: pods.exe,
            gateway_listen: args.listen,
            admin_listen: args.admin_listen,
            domain: args.domain,
            images: pods.images,
            ready_timeout: pods.ready_timeout,
            drain_quiet_period: pods.drain_quiet_period,
            limits: pods.limits,
        };
        let started = if args.distributed {
            start_distributed(opts, &state_dir, &manifests, args.pods.images.clone())
                .await
                .map(Running::Distributed)
        } else {
            Platform::start(opts).await.map(Running::InProcess)
        };
        let platform = match started {
            Ok(p) => p,
            Err(e) => {
                eprintln!("sluice run: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addrs = platform.addresses();
        let run_file = state_dir.join("run.json");
        let record = RunFile {
            pid: std::process::id(),
            admin: addrs.admin,
            gateway: addrs.gateway,
            gateway_metrics: Some(addrs.gateway_metrics),
            control: Some(addrs.control),
        };
        if let Err(e) = std::fs::create_dir_all(&state_dir).and_then(|()| {
            std::fs::write(
                &run_file,
                serde_json::to_vec(&record).expect("a record serializes"),
            )
        }) {
            eprintln!(
                "sluice run: cannot write {} ({e}); `sluice status` will need --admin {}",
                run_file.display(),
                addrs.admin
            );
        }
        println!(
            "sluice: gateway on http://{}  (admin {}; `sluice status`, `sluice apply -f FILE`; Ctrl-C stops)",
            addrs.gateway, addrs.admin
        );
        if manifests.services.is_empty() {
            println!(
                "sluice: no service runs yet (no -f with a Service was given); add one with \
                 `sluice apply -f FILE` (e.g. examples/helloworld-go.yaml) or restart with \
                 `sluice run -f FILE`"
            );
        }
        let code = match platform.apply(&manifests, text).await {
            Ok(summary) => {
                for line in summary {
                    println!("{line}");
                }
                None
            }
            Err(errors) => {
                eprintln!("sluice run: refused:\n  {}", errors.join("\n  "));
                Some(ExitCode::from(EXIT_BAD_INPUT))
            }
        };
        if code.is_none() {
            let signal = show_until_signal(&platform).await;
            println!("sluice: {signal}: draining pods and stopping");
        }
        platform.shutdown().await;
        let _ = std::fs::remove_file(&run_file);
        code.unwrap_or(ExitCode::SUCCESS)
    })
}

/// The platform `sluice run` started: in this process, or each part in its own.
enum Running {
    InProcess(Platform),
    Distributed(Distributed),
}

impl Running {
    fn addresses(&self) -> Addresses {
        match self {
            Self::InProcess(p) => p.addresses(),
            Self::Distributed(d) => d.addresses(),
        }
    }

    async fn status(&self) -> Result<Status, String> {
        match self {
            Self::InProcess(p) => Ok(p.status()),
            Self::Distributed(d) => d.status().await,
        }
    }

    /// Applies the manifests (`text`, as read, for a control plane in another process).
    async fn apply(&self, m: &Manifests, text: String) -> Result<Vec<String>, Vec<String>> {
        match self {
            Self::InProcess(p) => p.apply(m).await.map_err(|e| lines(&e)),
            Self::Distributed(_) if text.trim().is_empty() => Ok(Vec::new()),
            Self::Distributed(d) => {
                let lines = |t: &str| -> Vec<String> {
                    t.lines()
                        .map(str::trim)
                        .filter(|l| !l.is_empty() && !l.starts_with("refused;"))
                        .map(str::to_owned)
                        .collect()
                };
                match d.apply_text(text).await {
                    Ok((200, t)) => Ok(lines(&t)),
                    Ok((_, t)) => Err(lines(&t)),
                    Err(e) => Err(vec![e]),
                }
            }
        }
    }

    async fn shutdown(&self) {
        match self {
            Self::InProcess(p) => p.shutdown().await,
            Self::Distributed(d) => d.shutdown().await,
        }
    }
}

/// `sluice run --distributed`: the `config-autoscaler` among the manifests is also the
/// autoscaler's start-up config (later ones reach it through the control plane's config
/// feed). What a control plane
/// of an earlier run kept is forgotten: its applies outlive a restart of the control
/// plane, not of the platform (as in-process).
async fn start_distributed(
    opts: Options,
    state_dir: &std::path::Path,
    manifests: &Manifests,
    images: Option<PathBuf>,
) -> Result<Distributed, String> {
    let kept = state_dir.join("control");
    match std::fs::remove_dir_all(&kept) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot clear {}: {e}", kept.display())),
    }
    let config = match &manifests.config_autoscaler {
        Some(data) => {
            let path = state_dir.join("config-autoscaler.yaml");
            let doc = serde_json::json!({
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "config-autoscaler", "namespace": "knative-serving"},
                "data": data,
            });
            let text = serde_norway::to_string(&doc).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(state_dir)
                .and_then(|()| std::fs::write(&path, text))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Some(path)
        }
        None => None,
    };
    Distributed::start(
        opts,
        Files {
            state_dir: state_dir.to_owned(),
            config,
            images,
        },
    )
    .await
}

/// Shows the status live until SIGINT or SIGTERM: redrawn in place on a terminal, one
/// line per change otherwise.
async fn show_until_signal(platform: &Running) -> &'static str {
    let tty = std::io::stdout().is_terminal();
    let mut changes = display::Changes::default();
    let mut drawn_lines = 0usize;
    let signal = sluice_core::shutdown::signal();
    tokio::pin!(signal);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            s = &mut signal => return s,
            _ = tick.tick() => {}
        }
        let status = match platform.status().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sluice: {e}");
                continue;
            }
        };
        let mut out = std::io::stdout().lock();
        if tty {
            let text = display::table(&status);
            if drawn_lines > 0 {
                // Up to where the last table started, and clear from there down.
                let _ = write!(out, "\x1b[{drawn_lines}A\x1b[J");
            }
            let _ = write!(out, "{text}");
            drawn_lines = text.lines().count();
        } else {
            for line in changes.lines(&status) {
                let _ = writeln!(out, "{line}");
            }
        }
        let _ = out.flush();
    }
}

// === sluice apply / sluice status ===

pub fn apply(args: ApplyArgs) -> ExitCode {
    let body = match read_texts(&args.files) {
        Ok(body) => body,
        Err(errors) => {
            eprintln!(
                "sluice apply: refused; nothing was changed:\n  {}",
                lines(&errors).join("\n  ")
            );
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let admin = match admin_address(&args.target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice apply: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    match request(admin, "POST", "/apply", body.as_bytes()) {
        Ok((200, text)) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Ok((_, text)) => {
            eprint!("sluice apply: {text}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
        Err(e) => {
            eprintln!("sluice apply: cannot reach the platform at {admin}: {e}");
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

pub fn status(args: StatusArgs) -> ExitCode {
    let admin = match admin_address(&args.target) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice status: {e}");
            return ExitCode::from(EXIT_UNAVAILABLE);
        }
    };
    if args.watch {
        return watch(admin);
    }
    let text = match status_text(admin) {
        Ok(text) => text,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        // A closed pipe (`| head`) is not an error worth a message.
        let _ = writeln!(out, "{}", text.trim_end());
        return ExitCode::SUCCESS;
    }
    match parse_status(&text) {
        Ok(s) => {
            let _ = write!(out, "{}", display::table(&s));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// The platform's `/status` as it answered; a failure is said on stderr, with the exit
/// code it means.
fn status_text(admin: SocketAddr) -> Result<String, ExitCode> {
    match request(admin, "GET", "/status", b"") {
        Ok((200, text)) => Ok(text),
        Ok((code, text)) => {
            eprintln!("sluice status: the platform answered {code}: {text}");
            Err(ExitCode::FAILURE)
        }
        Err(e) => {
            eprintln!("sluice status: cannot reach the platform at {admin}: {e}");
            Err(ExitCode::from(EXIT_UNAVAILABLE))
        }
    }
}

fn parse_status(text: &str) -> Result<Status, ExitCode> {
    serde_json::from_str::<Status>(text).map_err(|e| {
        eprintln!("sluice status: unexpected answer from the platform: {e}");
        ExitCode::FAILURE
    })
}

/// `sluice status --watch`: the status every second, printed as the lines of what changed,
/// each with its time (RFC 3339, UTC).
fn watch(admin: SocketAddr) -> ExitCode {
    let mut changes = display::Changes::default();
    loop {
        let status = match status_text(admin).and_then(|text| parse_status(&text)) {
            Ok(s) => s,
            Err(code) => return code,
        };
        let now = format!("{:.0}", k8s_openapi::jiff::Timestamp::now());
        let mut out = std::io::stdout().lock();
        for line in changes.lines(&status) {
            if writeln!(out, "{now} {line}").is_err() {
                // The reader is gone (`| head`).
                return ExitCode::SUCCESS;
            }
        }
        let _ = out.flush();
        drop(out);
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The manifests in `paths` (files or folders) as one YAML text, each file parsed too so
/// that errors name the files; every error at once.
fn read_texts(paths: &[PathBuf]) -> Result<String, Vec<Problem>> {
    let mut body = String::new();
    let mut errors = Vec::new();
    for path in paths {
        let files = match manifest::yaml_files(path) {
            Ok(files) => files,
            Err(e) => {
                errors.push(Problem::new(path.display().to_string(), e));
                continue;
            }
        };
        for f in files {
            match manifest::read_manifest(&f) {
                Ok(text) => {
                    if let Err(e) = Manifests::parse(&f.display().to_string(), &text) {
                        errors.extend(e);
                    }
                    body.push_str(&text);
                    body.push_str("\n---\n");
                }
                Err(e) => errors.push(e),
            }
        }
    }
    if errors.is_empty() && body.len() as u64 > manifest::MAX_MANIFEST_BYTES {
        errors.push(Problem::new(
            "",
            format!(
                "{} bytes of manifests in all; one apply may send at most {} (3 MiB)",
                body.len(),
                manifest::MAX_MANIFEST_BYTES
            ),
        ));
    }
    if errors.is_empty() {
        Ok(body)
    } else {
        Err(errors)
    }
}

fn admin_address(target: &Target) -> Result<SocketAddr, String> {
    if let Some(a) = target.admin {
        return Ok(a);
    }
    let dir = state_dir(target.state_dir.as_ref());
    running_platform(&dir).map(|r| r.admin).ok_or_else(|| {
        format!(
            "no running platform found (no live {}); start one with `sluice run -f FILE`, \
             or give --admin ADDRESS",
            dir.join("run.json").display()
        )
    })
}

/// The platform recorded in `dir`, if its admin port answers.
fn running_platform(dir: &std::path::Path) -> Option<RunFile> {
    let text = std::fs::read(dir.join("run.json")).ok()?;
    let record: RunFile = serde_json::from_slice(&text).ok()?;
    matches!(request(record.admin, "GET", "/healthz", b""), Ok((200, _))).then_some(record)
}

/// `$SLUICE_STATE_DIR`, else `$XDG_RUNTIME_DIR/sluice`, else `/tmp/sluice-$UID`.
pub fn state_dir(given: Option<&PathBuf>) -> PathBuf {
    if let Some(d) = given {
        return d.clone();
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("sluice");
    }
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(0, |m| m.uid());
    std::env::temp_dir().join(format!("sluice-{uid}"))
}

/// One HTTP/1.1 exchange with the admin port: status code and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n\
         Content-Type: application/yaml\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP response"))?;
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    Ok((code, body.to_owned()))
}
