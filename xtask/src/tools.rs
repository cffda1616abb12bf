//! Small helpers: running commands with clear errors, paths of the workspace and tool cache.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_owned()
}

/// Where installed tools live across clones of the project on one machine.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("obs-agent")
}

/// Runs a command, inheriting stdio; fails with the command line if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// Runs a command and returns its stdout, trimmed.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

pub fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_ok_and(|u| u == "0")
}

/// Installs Debian packages (non-interactively) unless every `check` program is present.
pub fn apt_install(packages: &[&str], checks: &[&str]) -> Result<()> {
    if checks.iter().all(|c| have(c)) {
        return Ok(());
    }
    if !is_root() {
        bail!("missing {checks:?}: install Debian packages {packages:?} (needs root)");
    }
    apt_get_install(packages)
}

/// `apt-get update` then `apt-get install -y` of the packages, non-interactively.
pub fn apt_get_install(packages: &[&str]) -> Result<()> {
    if !is_root() {
        bail!("Debian packages {packages:?} are missing: install them (needs root)");
    }
    eprintln!("xtask: installing {packages:?} with apt-get");
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(packages);
    run(&mut install)
}

/// Installs PyPI packages with `pip install --target` into `cache_dir()/<name>`, once:
/// nothing happens when `marker` (a path inside that folder) exists. The install goes to a
/// `.partial` folder renamed at the end, so an interrupted one is redone. `deps`: also
/// install the packages' dependencies. Returns the folder.
pub fn pip_install_cached(
    name: &str,
    packages: &[&str],
    marker: &str,
    deps: bool,
) -> Result<PathBuf> {
    let dir = cache_dir().join(name);
    if dir.join(marker).exists() {
        return Ok(dir);
    }
    if !have("python3") {
        bail!(
            "python3 is missing: it installs {packages:?} from PyPI (apt-get install python3-pip)"
        );
    }
    eprintln!("xtask: installing {packages:?} (PyPI)");
    let tmp = cache_dir().join(format!("{name}.partial"));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut pip = Command::new("python3");
    pip.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-input",
    ]);
    if !deps {
        pip.arg("--no-deps");
    }
    run(pip.arg("--target").arg(&tmp).args(packages))
        .with_context(|| format!("installing {packages:?} from PyPI"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    if !dir.join(marker).exists() {
        bail!("pip did not install {}", dir.join(marker).display());
    }
    Ok(dir)
}
