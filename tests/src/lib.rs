//! Harness for obs-agent's end-to-end tests: builds and starts the Go test apps, starts the
//! real agent binary, scrapes and parses its metrics, and drives HTTP load with known counts.
//! Tests run as root (CI does); the tool paths come from `cargo xtask test`. Each fixture has
//! a module of its own; the ones nearly every test uses are re-exported here.

pub mod agent;
pub mod go;
pub mod grafana;
pub mod kubernetes;
pub mod load;
pub mod manifests;
pub mod metrics;
pub mod nginx;
pub mod otlp;
pub mod prometheus;
pub mod rotel;
pub mod servers;
pub mod traces;

use std::{
    io::Read,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Child,
    thread::sleep,
    time::{Duration, Instant},
};

pub use agent::Agent;
pub use go::{
    go_app, go_build, go_build_pure, go_build_with_symbols, objcopy, toolchain, toolchains,
    BuildMode, GoVersion, Toolchain,
};
pub use metrics::{scrape, Samples};
pub use servers::GoServer;

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

/// Whether this kernel has the socket data path's tracepoints (`sock_recv_length`,
/// `sock_send_length`: Linux 6.3+).
pub fn kernel_has_socket_path() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().unwrap_or(0));
    (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0)) >= (6, 3)
}

/// The data path the agents of this run use: OBS_DATA_PATH (`cargo xtask test` runs the
/// suite once with each), else what `--data-path auto` takes on this kernel.
pub fn data_path_under_test() -> String {
    match std::env::var("OBS_DATA_PATH") {
        Ok(path) if path != "auto" => path,
        _ if kernel_has_socket_path() => "sockets".to_owned(),
        _ => "syscalls".to_owned(),
    }
}

/// How many machine-wide programs an agent of this run attaches: on the socket path the two
/// socket tracepoints, `tcp_destroy_sock` and `inet_sock_set_state`; on the syscall path
/// `sys_exit`, `sys_enter_close` and `inet_sock_set_state`.
pub fn shared_probes_under_test() -> f64 {
    if data_path_under_test() == "sockets" {
        4.0
    } else {
        3.0
    }
}

pub fn agent_bin() -> PathBuf {
    env_path("OBS_AGENT_BIN")
}

/// rotel's `rotel-agent`, a real OTLP collector (PyPI `rotel`, installed by xtask).
pub fn rotel_bin() -> PathBuf {
    env_path("OBS_ROTEL")
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
