//! `cargo xtask test`: installs what the tests need, builds the agent, checks the Go offsets
//! table, runs every test (unit tests and the privileged integration tests in tests/) with the
//! tools' paths in the environment.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    build::{build, ebpf_object_env},
    dashboard_tools,
    go::{self, toolchains_env, Toolchain},
    go_offsets, manifest_tools,
    tools::{apt_install, pip_install_cached, run, workspace_root},
};

/// rotel (a Rust OTLP collector, from PyPI) at this exact version: the OTLP tests export to it.
const ROTEL_VERSION: &str = "0.0.1a15";

#[derive(clap::Args)]
pub struct TestArgs {
    /// Which data path the agent under test uses (its `--data-path`, through the
    /// OBS_DATA_PATH variable): `both` runs the integration tests once with each, the socket
    /// tracepoints first.
    #[arg(long, value_enum, default_value = "both")]
    data_path: TestDataPath,
    /// Passed to `cargo test` after `--` (e.g. a test name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TestDataPath {
    Both,
    Sockets,
    Syscalls,
}

pub struct TestTools {
    /// Every supported Go release, oldest first.
    pub toolchains: Vec<Toolchain>,
    /// yamllint and kubernetes-validate (`bin/`) and helm-python-sdk (`helm_python`), with this
    /// folder as their PYTHONPATH.
    pub manifest_tools: PathBuf,
    /// rotel's `rotel-agent` executable.
    pub rotel: PathBuf,
    /// grafana-foundation-sdk, for PYTHONPATH.
    pub dashboard_tools: PathBuf,
}

impl TestTools {
    pub fn go(&self, minor: &str) -> Result<&Path> {
        self.toolchains
            .iter()
            .find(|t| t.minor == minor)
            .map(|t| t.go.as_path())
            .with_context(|| {
                format!(
                    "no Go {minor} toolchain (known: {})",
                    toolchains_env(&self.toolchains)
                )
            })
    }
}

/// Installs every supported Go release, Prometheus + promtool, wrk, curl, nginx (Debian's
/// nginx-light), node and a JDK (servers in other languages; python3 is the system's), objcopy (to
/// strip test binaries), gcc (cgo builds), setpriv and unshare (to run the agent without root or with
/// only the deployment's capabilities), bpftool, the manifest and chart checkers (yamllint,
/// kubernetes-validate, helm-python-sdk), the rotel OTLP collector and grafana-foundation-sdk
/// (dashboards).
pub fn install_test_tools() -> Result<TestTools> {
    apt_install(
        &[
            "prometheus",
            "wrk",
            "curl",
            "python3-pip",
            "binutils",
            "gcc",
            "libc6-dev",
            "util-linux",
            "bpftool",
            "nginx-light",
            "nodejs",
            "python3",
            "default-jdk-headless",
        ],
        &[
            "prometheus",
            "promtool",
            "wrk",
            "curl",
            "objcopy",
            "gcc",
            "setpriv",
            "unshare",
            "bpftool",
            "nginx",
            "node",
            "python3",
            "java",
        ],
    )?;
    Ok(TestTools {
        toolchains: go::install_all()?,
        manifest_tools: manifest_tools::install()?,
        rotel: install_rotel()?,
        dashboard_tools: dashboard_tools::install()?,
    })
}

/// PyPI's rotel into the cache (once): the wheel carries the collector as one executable.
pub fn install_rotel() -> Result<PathBuf> {
    let dir = pip_install_cached(
        &format!("rotel-{ROTEL_VERSION}"),
        &[&format!("rotel=={ROTEL_VERSION}")],
        "rotel/rotel-agent",
        false,
    )?;
    Ok(dir.join("rotel/rotel-agent"))
}

pub fn test(args: TestArgs) -> Result<()> {
    let tools = install_test_tools()?;
    let agent = build()?;
    // A stale offsets table fails here, before the long tests.
    go_offsets::check(&agent, &tools.toolchains).context("the Go offsets table is stale")?;
    let (obj_var, obj) = ebpf_object_env();
    // The fuzz targets live outside the workspace (they need libFuzzer to run); type-check
    // them here so they cannot fall behind the code they fuzz.
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .args([
            "check",
            "--quiet",
            "--manifest-path",
            "fuzz/Cargo.toml",
            "--bins",
        ])
        .env(obj_var, &obj))
    .context("the fuzz targets do not build")?;
    remove_stale_test_dirs();
    let paths: &[&str] = match args.data_path {
        TestDataPath::Both => &["sockets", "syscalls"],
        TestDataPath::Sockets => &["sockets"],
        TestDataPath::Syscalls => &["syscalls"],
    };
    let mut failed = Vec::new();
    for (i, path) in paths.iter().enumerate() {
        eprintln!("== tests with the agent on the {path} data path (OBS_DATA_PATH={path})");
        let mut cmd = Command::new("cargo");
        cmd.current_dir(workspace_root())
            .args(["test", "--release", "--no-fail-fast"]);
        // Unit tests do not depend on the data path: once.
        if i == 0 {
            cmd.arg("--workspace");
        } else {
            cmd.args(["-p", "obs-integration-tests"]);
        }
        cmd.env(obj_var, &obj)
            .env("OBS_DATA_PATH", path)
            .env("OBS_AGENT_BIN", &agent)
            .env("OBS_GO_TOOLCHAINS", toolchains_env(&tools.toolchains))
            .env("OBS_GO_OLD", tools.go("1.19")?)
            .env("OBS_GO_123", tools.go("1.23")?)
            .env("OBS_MANIFEST_TOOLS", &tools.manifest_tools)
            .env("OBS_ROTEL", &tools.rotel)
            .env("OBS_DASHBOARD_TOOLS", &tools.dashboard_tools)
            .env(
                "OBS_GO_NEW",
                &tools.toolchains.last().context("no Go toolchain")?.go,
            );
        cmd.arg("--").args(&args.rest);
        if let Err(e) = run(&mut cmd) {
            eprintln!("== tests failed on the {path} data path: {e:#}");
            failed.push(*path);
        }
    }
    if !failed.is_empty() {
        bail!("tests failed on the {} data path", failed.join(" and the "));
    }
    Ok(())
}

/// Removes what test processes that no longer run left in the temporary directory (a test
/// process killed before its exit handler ran): `obs-tests/<pid>-<start>`, and the
/// `obs-tests-<pid>-<n>` directories of earlier versions of the harness.
fn remove_stale_test_dirs() {
    let tmp = std::env::temp_dir();
    let alive = |name: &str, sep: char| {
        name.split(sep)
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
    };
    if let Ok(dirs) = std::fs::read_dir(tmp.join("obs-tests")) {
        for dir in dirs.flatten() {
            if !alive(&dir.file_name().to_string_lossy(), '-') {
                let _ = std::fs::remove_dir_all(dir.path());
            }
        }
    }
    if let Ok(dirs) = std::fs::read_dir(&tmp) {
        for dir in dirs.flatten() {
            let name = dir.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("obs-tests-") {
                if !alive(rest, '-') {
                    let _ = std::fs::remove_dir_all(dir.path());
                }
            }
        }
    }
}
