//! Harness for obs-agent's end-to-end tests: builds and starts the Go test apps, starts the
//! real agent binary, scrapes and parses its metrics, and drives HTTP load with known counts.
//! Tests run as root (CI does); the tool paths come from `cargo xtask test`.

pub mod load;
pub mod metrics;
pub mod otlp;
pub mod rotel;
pub mod servers;

use std::{
    collections::HashMap,
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Mutex,
    thread::sleep,
    time::{Duration, Instant},
};

pub use metrics::{scrape, Samples};

fn env_path(var: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_else(|| {
        panic!("{var} is not set: run the integration tests through `cargo xtask test`")
    }))
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

pub fn agent_bin() -> PathBuf {
    env_path("OBS_AGENT_BIN")
}

/// rotel's `rotel-agent`, a real OTLP collector (PyPI `rotel`, installed by xtask).
pub fn rotel_bin() -> PathBuf {
    env_path("OBS_ROTEL")
}

/// An installed Go release (from OBS_GO_TOOLCHAINS, set by `cargo xtask test`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolchain {
    /// "1.19", "1.27", ...
    pub minor: String,
    pub go: PathBuf,
}

impl Toolchain {
    /// The minor release number: 19 for Go 1.19.
    pub fn minor_number(&self) -> u32 {
        self.minor
            .strip_prefix("1.")
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("Go release {:?} is not 1.N", self.minor))
    }
    /// Go 1.22+ ServeMux patterns (`GET /items/{id}`).
    pub fn has_patterns(&self) -> bool {
        self.minor_number() >= 22
    }
}

/// Every Go release the tests may use, oldest first.
pub fn toolchains() -> Vec<Toolchain> {
    let list = std::env::var("OBS_GO_TOOLCHAINS").unwrap_or_else(|_| {
        panic!("OBS_GO_TOOLCHAINS is not set: run the integration tests through `cargo xtask test`")
    });
    let mut toolchains: Vec<Toolchain> = list
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (minor, go) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("OBS_GO_TOOLCHAINS entry {entry:?} is not MINOR=PATH"));
            Toolchain {
                minor: minor.to_owned(),
                go: go.into(),
            }
        })
        .collect();
    toolchains.sort_by_key(Toolchain::minor_number);
    toolchains
}

pub fn toolchain(minor: &str) -> Toolchain {
    toolchains()
        .into_iter()
        .find(|t| t.minor == minor)
        .unwrap_or_else(|| panic!("no Go {minor} in OBS_GO_TOOLCHAINS"))
}

/// The Go releases the tests pin by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoVersion {
    /// Debian's Go 1.19: no ServeMux patterns.
    Old,
    /// Go 1.23: ServeMux patterns, bucket maps.
    Go123,
    /// The newest supported Go: ServeMux patterns, swiss-table maps.
    New,
}

impl GoVersion {
    pub fn toolchain(self) -> Toolchain {
        match self {
            GoVersion::Old => toolchain("1.19"),
            GoVersion::Go123 => toolchain("1.23"),
            GoVersion::New => toolchains().pop().expect("no Go toolchain"),
        }
    }
    pub fn has_patterns(self) -> bool {
        self != GoVersion::Old
    }
}

/// How a test binary is built: the ways Go services ship.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildMode {
    /// `go build`: symbol table and DWARF.
    Default,
    /// `-ldflags=-s -w`: no symbol table, no DWARF.
    Stripped,
    /// `-buildmode=pie`, stripped (as distributions ship them).
    Pie,
    /// cgo with the external (gcc) linker, stripped: `.text` starts with C code.
    CgoExternal,
    /// cgo, PIE, external linker, stripped: before Go 1.26 the function table has no section
    /// of its own (merged into `.data.rel.ro`).
    PieExternal,
}

impl BuildMode {
    pub const ALL: [BuildMode; 5] = [
        BuildMode::Default,
        BuildMode::Stripped,
        BuildMode::Pie,
        BuildMode::CgoExternal,
        BuildMode::PieExternal,
    ];

    /// `go build` arguments and environment for this mode; `keep_symbols` leaves out the
    /// stripping (`-s -w`) of the modes that ship stripped.
    fn flags(self, keep_symbols: bool) -> (Vec<String>, &'static [(&'static str, &'static str)]) {
        let pie = matches!(self, BuildMode::Pie | BuildMode::PieExternal);
        let external = matches!(self, BuildMode::CgoExternal | BuildMode::PieExternal);
        let strip = self != BuildMode::Default && !keep_symbols;
        let mut args = Vec::new();
        if pie {
            args.push("-buildmode=pie".to_owned());
        }
        let ldflags: Vec<&str> = [(strip, "-s -w"), (external, "-linkmode=external")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, flag)| *flag)
            .collect();
        if !ldflags.is_empty() {
            args.push(format!("-ldflags={}", ldflags.join(" ")));
        }
        let env: &'static [(&str, &str)] = if external {
            &[("CGO_ENABLED", "1")]
        } else {
            &[]
        };
        (args, env)
    }

    pub fn name(self) -> &'static str {
        match self {
            BuildMode::Default => "default",
            BuildMode::Stripped => "stripped",
            BuildMode::Pie => "pie",
            BuildMode::CgoExternal => "cgo-external",
            BuildMode::PieExternal => "pie-external",
        }
    }
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds tests/apps/<app> with the given Go in the given mode (GOPATH mode, no network).
/// Outputs are reused while newer than the app's sources and the toolchain.
pub fn go_build(app: &str, toolchain: &Toolchain, mode: BuildMode) -> PathBuf {
    build(app, toolchain, mode, false)
}

/// Builds tests/apps/<app> as `go_build` does but keeps the symbol table and DWARF that the
/// mode strips: the same code and data layout, with the truth to check analyses of it against.
pub fn go_build_with_symbols(app: &str, toolchain: &Toolchain, mode: BuildMode) -> PathBuf {
    build(app, toolchain, mode, true)
}

fn build(app: &str, toolchain: &Toolchain, mode: BuildMode, keep_symbols: bool) -> PathBuf {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let suffix = if keep_symbols && mode != BuildMode::Default {
        "-symbols"
    } else {
        ""
    };
    let out = workspace_root().join("target/test-apps").join(format!(
        "{app}-go{}-{}{suffix}",
        toolchain.minor,
        mode.name()
    ));
    let src = workspace_root().join("tests/apps").join(app);
    if is_fresh(&out, &[&src, &toolchain.go]) {
        return out;
    }
    let (args, env) = mode.flags(keep_symbols);
    // Apps with a go.mod build in module mode (their dependencies are local replacements).
    let modules = src.join("go.mod").exists();
    let status = Command::new(&toolchain.go)
        .current_dir(&src)
        .arg("build")
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(".")
        .env("GO111MODULE", if modules { "on" } else { "off" })
        .env("GOFLAGS", if modules { "-mod=mod" } else { "" })
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .envs(env.iter().copied())
        .status()
        .expect("run go build");
    assert!(
        status.success(),
        "building {app} with Go {} ({}) failed",
        toolchain.minor,
        mode.name()
    );
    out
}

/// Whether `out` exists and is newer than every file in `inputs` (directories: their files,
/// one level down).
fn is_fresh(out: &Path, inputs: &[&Path]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(out) else {
        return false;
    };
    inputs.iter().all(|input| {
        let files: Vec<PathBuf> = match std::fs::read_dir(input) {
            Ok(dir) => dir.flatten().map(|e| e.path()).collect(),
            Err(_) => vec![input.to_path_buf()],
        };
        files
            .iter()
            .all(|f| modified(f).is_some_and(|m| m <= built))
    })
}

/// Builds tests/apps/<app> with one of the pinned Go releases, default build mode.
pub fn go_app(app: &str, version: GoVersion) -> PathBuf {
    go_build(app, &version.toolchain(), BuildMode::Default)
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
    pub fn kill(&mut self, signal: i32) {
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Go test server listening on a loopback port of its own choosing.
pub struct GoServer {
    pub proc: Proc,
    pub port: u16,
}

impl GoServer {
    pub fn start(app: &str, version: GoVersion, env: &[(&str, &str)]) -> Self {
        Self::start_bin(&go_app(app, version), env)
    }

    /// Starts a built test app (see `go_build`).
    pub fn start_bin(bin: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with_args(bin, &[], env)
    }

    /// Starts a built test app with extra arguments.
    pub fn start_with_args(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let app = bin
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let dir = tempdir();
        let port_file = dir.join("port");
        let child = Command::new(bin)
            .args(["-addr", "127.0.0.1:0", "-port-file"])
            .arg(&port_file)
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let proc = Proc { child };
        let port = reported_port(&port_file, &app);
        Self { proc, port }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The server's own count of what it served: "METHOD ROUTE STATUS" -> n.
    pub fn served(&self) -> HashMap<String, u64> {
        served_at(&self.url("/_stats"))
    }
}

/// The port a test app wrote to `port_file` once listening (written whole: renamed into
/// place), waited for.
pub(crate) fn reported_port(port_file: &Path, app: &str) -> u16 {
    wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(port_file).ok()?.trim().parse().ok()
    })
    .unwrap_or_else(|| panic!("{app} did not report its port"))
}

/// A test app's own counts, from its `/_stats` (JSON "METHOD ROUTE STATUS" -> n).
pub(crate) fn served_at(stats_url: &str) -> HashMap<String, u64> {
    let body = ureq::get(stats_url)
        .call()
        .expect("GET /_stats")
        .into_string()
        .unwrap();
    serde_json::from_str(&body).expect("stats JSON")
}

/// A running obs-agent.
pub struct Agent {
    pub proc: Proc,
    pub port: u16,
    stderr_path: PathBuf,
}

/// An agent is stopped the way a service manager stops it: SIGTERM (it detaches its probes
/// and flushes its spans), SIGKILL only if it has not exited within 30 s (Kubernetes' default
/// grace period). Detaching takes the kernel ~0.1 s per uprobe on a busy machine, and a
/// SIGKILL that lands while one is being detached makes the kernel leak that uprobe (dmesg:
/// "failed to unregister, leaking uprobe"), leaving its breakpoint in the target.
impl Drop for Agent {
    fn drop(&mut self) {
        if !self.proc.is_running() {
            return;
        }
        self.proc.kill(libc::SIGTERM);
        let _ = wait_for(Duration::from_secs(30), || {
            (!self.proc.is_running()).then_some(())
        });
    }
}

impl Agent {
    /// Starts the agent with `args` (plus `--listen 127.0.0.1:0`: the kernel picks a free
    /// port, so no other test's server can take it first) and waits until /metrics answers.
    pub fn start(args: &[String]) -> Self {
        Self::wait_serving(Self::spawn(args))
    }

    /// Waits for a spawned agent to serve /metrics; panics with its log if it does not.
    fn wait_serving(mut agent: Self) -> Self {
        let port = wait_for(Duration::from_secs(20), || listening_port(&agent.log()));
        agent.port = port
            .unwrap_or_else(|| panic!("agent did not serve /metrics; its log:\n{}", agent.log()));
        let url = agent.metrics_url();
        let ok = wait_for(Duration::from_secs(20), || {
            ureq::get(&url).call().ok().map(|_| ())
        });
        if ok.is_none() {
            panic!("agent did not serve /metrics; its log:\n{}", agent.log());
        }
        agent
    }

    /// Starts the agent without waiting for it (`port` is 0 until `start` learns it).
    pub fn spawn(args: &[String]) -> Self {
        Self::spawn_in(&[], args)
    }

    /// Starts the agent as `start` does, but through `wrapper` (a command that runs the
    /// agent's command line it is given last: e.g. `unshare ... sh -c '...; exec "$@"' sh`).
    pub fn start_in(wrapper: &[&str], args: &[String]) -> Self {
        Self::wait_serving(Self::spawn_in(wrapper, args))
    }

    fn spawn_in(wrapper: &[&str], args: &[String]) -> Self {
        let stderr_path = tempdir().join("agent.log");
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(agent_bin());
                c
            }
            None => Command::new(agent_bin()),
        };
        let child = cmd
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--rescan-ms", "200"])
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start obs-agent");
        Self {
            proc: Proc { child },
            port: 0,
            stderr_path,
        }
    }

    pub fn for_pids(pids: &[u32]) -> Self {
        let args: Vec<String> = pids
            .iter()
            .flat_map(|p| ["--pid".to_owned(), p.to_string()])
            .collect();
        Self::start(&args)
    }

    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.port)
    }

    pub fn scrape(&self) -> Samples {
        scrape(&self.metrics_url())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Waits (10 s at most) for the agent to report `pid` as watched (`obs_agent_target_info`);
    /// panics with `what` and the agent's log if it does not.
    pub fn wait_watched(&self, pid: u32, what: &str) {
        let pid = pid.to_string();
        wait_for(Duration::from_secs(10), || {
            self.scrape()
                .matching("obs_agent_target_info", &[("pid", &pid)])
                .next()
                .map(|_| ())
        })
        .unwrap_or_else(|| panic!("{what} (pid {pid}) is not watched; log:\n{}", self.log()));
    }

    /// Waits for the agent to exit by itself; returns (exit code, stderr).
    pub fn wait_exit(mut self, timeout: Duration) -> (Option<i32>, String) {
        let status = wait_for(timeout, || self.proc.child.try_wait().ok().flatten());
        let status = status.unwrap_or_else(|| panic!("agent did not exit; log:\n{}", self.log()));
        (status.code(), self.log())
    }
}

/// The port in the agent's "serving metrics on http://127.0.0.1:PORT/metrics" log line.
fn listening_port(log: &str) -> Option<u16> {
    let rest = log.split("serving metrics on http://").nth(1)?;
    let addr = rest.split("/metrics").next()?;
    addr.rsplit(':').next()?.parse().ok()
}

/// Polls `f` every 50 ms until it returns Some or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        sleep(Duration::from_millis(50));
    }
}

/// A loopback port free now, for a program that must be told its port (nginx, Prometheus,
/// collectors). Taken below the kernel's ephemeral range (32768 and up here), where no server
/// binding port 0 and no client's connection can be given it before the program binds it.
pub fn free_port() -> u16 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id()) << 32
        ^ NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut next = xorshift(seed | 1);
    for _ in 0..1000 {
        let port = 20_000 + (next() % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// The directory under which this test process keeps its files:
/// `$TMPDIR/obs-tests/<pid>-<start time in ns>`, created fresh (never reused, even when a
/// later test process gets the same pid) and removed when the test process exits.
fn test_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        extern "C" fn remove_root() {
            if let Some(root) = ROOT.get() {
                let _ = std::fs::remove_dir_all(root);
            }
        }
        let parent = std::env::temp_dir().join("obs-tests");
        std::fs::create_dir_all(&parent).unwrap();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let root = parent.join(format!("{}-{started}", std::process::id()));
        // `create_dir`, not `create_dir_all`: a directory that already exists is an error, so
        // no test ever reads a file (a port file, a log) left by another run.
        std::fs::create_dir(&root).unwrap_or_else(|e| panic!("create {}: {e}", root.display()));
        unsafe { libc::atexit(remove_root) };
        root
    })
}

/// A new, empty directory for one test's files (see `test_root`).
pub fn tempdir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = test_root().join(n.to_string());
    std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Reads `len` bytes of a process's memory at `addr` (to check that no probe is left in it).
pub fn read_process_memory(pid: u32, addr: u64, len: usize) -> Vec<u8> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    f.seek(SeekFrom::Start(addr)).unwrap();
    let mut buf = vec![0; len];
    f.read_exact(&mut buf).expect("read target memory");
    buf
}

/// A small deterministic generator (xorshift64) for the mutation tests: the same inputs on
/// every run.
pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}
