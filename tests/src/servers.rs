//! The test apps as servers: the Go ones (`tests/apps/go*`) and those in Python, Node and Java
//! (`tests/apps/pyserver`, `tests/apps/nodeserver`, `tests/apps/javaserver`), each on a
//! loopback port it chose and reported itself, each counting what it served.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{go_app, tempdir, wait_for, workspace_root, GoVersion, Proc};

/// A Go test server listening on a loopback port of its own choosing.
pub struct GoServer {
    pub proc: Proc,
    pub port: u16,
}

impl GoServer {
    pub fn start(app: &str, version: GoVersion, env: &[(&str, &str)]) -> Self {
        Self::start_bin(&go_app(app, version), env)
    }

    /// Starts tests/apps/<app> built with `version`, as service `service`.
    pub fn named(app: &str, version: GoVersion, service: &str) -> Self {
        Self::start(app, version, &[("OTEL_SERVICE_NAME", service)])
    }

    /// Starts a built test app (see `go_build`).
    pub fn start_bin(bin: &Path, env: &[(&str, &str)]) -> Self {
        Self::start_with_args(bin, &[], env)
    }

    /// Starts a built test app with extra arguments.
    pub fn start_with_args(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_configured(bin, args, env, |_| {})
    }

    /// Starts a built test app with extra arguments, its command as `configure` leaves it
    /// (e.g. to start it in a cgroup of its own).
    pub fn start_configured(
        bin: &Path,
        args: &[&str],
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Self {
        let (proc, port) = start_reporting_port(&bin.display().to_string(), |port_file| {
            let mut cmd = Command::new(bin);
            cmd.args(["-addr", "127.0.0.1:0", "-port-file"])
                .arg(port_file)
                .args(args)
                .envs(env.iter().copied());
            configure(&mut cmd);
            cmd
        });
        Self { proc, port }
    }

    /// A link of a chain of tests/apps/gochain services (`bin`), named `service`: with a
    /// `downstream`, each GET /work first calls that service as `args` say (`-calls`,
    /// `-nested`, `-background`); without, it is the chain's leaf.
    pub fn chain_link(
        bin: &Path,
        service: &str,
        downstream: Option<&GoServer>,
        args: &[&str],
    ) -> Self {
        let downstream_url = downstream.map(|d| d.url(""));
        let mut all: Vec<&str> = Vec::new();
        if let Some(url) = &downstream_url {
            all.extend(["-downstream", url]);
        }
        all.extend(args);
        Self::start_with_args(bin, &all, &[("OTEL_SERVICE_NAME", service)])
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The server's own count of what it served: "METHOD ROUTE STATUS" -> n.
    pub fn served(&self) -> HashMap<String, u64> {
        served_at(&self.url("/_stats"))
    }
}

/// Starts the test app `command` makes, given the file to report its port in (stdout
/// discarded), and waits for that port.
fn start_reporting_port(what: &str, command: impl FnOnce(&Path) -> Command) -> (Proc, u16) {
    let port_file = tempdir().join("port");
    let child = command(&port_file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let proc = Proc { child };
    (proc, reported_port(&port_file, what))
}

/// The port a test app wrote to `port_file` once listening (written whole: renamed into
/// place), waited for (20 s at most).
pub fn reported_port(port_file: &Path, app: &str) -> u16 {
    wait_for(Duration::from_secs(20), || {
        std::fs::read_to_string(port_file).ok()?.trim().parse().ok()
    })
    .unwrap_or_else(|| panic!("{app} did not report its port"))
}

/// A test app's own counts, from its `/_stats` (JSON "METHOD ROUTE STATUS" -> n).
fn served_at(stats_url: &str) -> HashMap<String, u64> {
    let body = ureq::get(stats_url)
        .call()
        .expect("GET /_stats")
        .into_string()
        .unwrap();
    serde_json::from_str(&body).expect("stats JSON")
}

/// A test app in Python, Node or Java that reports its port in a file and counts what it serves.
pub struct ScriptServer {
    pub proc: Proc,
    pub port: u16,
}

/// The system's Python 3 (Debian's), not a user's shim.
pub fn python3() -> PathBuf {
    let system = Path::new("/usr/bin/python3");
    if system.exists() {
        system.to_owned()
    } else {
        "python3".into()
    }
}

impl ScriptServer {
    /// `tests/apps/pyserver/server.py` (`extra`: e.g. `--http10`), as service `service`.
    pub fn python(service: &str, extra: &[&str]) -> Self {
        let mut cmd = Command::new(python3());
        cmd.arg(workspace_root().join("tests/apps/pyserver/server.py"))
            .args(extra);
        Self::start(cmd, service)
    }

    /// `tests/apps/nodeserver/server.js`, as service `service`.
    pub fn node(service: &str) -> Self {
        let mut cmd = Command::new("node");
        cmd.arg(workspace_root().join("tests/apps/nodeserver/server.js"));
        Self::start(cmd, service)
    }

    /// `tests/apps/javaserver/Server.java` (the JDK's `com.sun.net.httpserver`, run by the
    /// single-file source launcher), as service `service`.
    pub fn java(service: &str) -> Self {
        let mut cmd = Command::new("java");
        cmd.arg(workspace_root().join("tests/apps/javaserver/Server.java"));
        Self::start(cmd, service)
    }

    fn start(mut cmd: Command, service: &str) -> Self {
        let (proc, port) = start_reporting_port(&format!("{cmd:?}"), |port_file| {
            cmd.arg("--port-file")
                .arg(port_file)
                .env("OTEL_SERVICE_NAME", service);
            cmd
        });
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
