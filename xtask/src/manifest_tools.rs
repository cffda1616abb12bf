//! The PyPI tools that check deploy/'s manifests offline: yamllint, and kubernetes-validate
//! (it carries the Kubernetes API schemas of every release it knows, so no cluster is needed).
//! Installed once per pinned version into the tool cache with `pip install --target`.

use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::tools::pip_install_cached;

/// Pinned so a new release of a tool or of its schemas cannot change a test's verdict.
const PACKAGES: &[&str] = &["kubernetes-validate==1.37.0", "yamllint==1.38.0"];
/// The programs `PACKAGES` install into `bin/`.
const PROGRAMS: &[&str] = &["kubernetes-validate", "yamllint"];

/// Installs the tools (idempotent; instant when done) and returns their `--target` folder:
/// programs in `bin/`, run with the folder itself as PYTHONPATH.
pub fn install() -> Result<PathBuf> {
    let name = format!("manifest-tools-{}", PACKAGES.join("-").replace("==", "-"));
    let dir = pip_install_cached(&name, PACKAGES, &format!("bin/{}", PROGRAMS[0]), true)?;
    if let Some(missing) = PROGRAMS.iter().find(|p| !dir.join("bin").join(p).exists()) {
        bail!(
            "pip did not install {missing} into {}",
            dir.join("bin").display()
        );
    }
    Ok(dir)
}
