//! Builds the eBPF object (bpfel, build-std) and the agent that embeds it.

use std::{path::PathBuf, process::Command};

use anyhow::{Context, Result};

use crate::{
    setup::setup,
    tools::{is_root, run, workspace_root},
};

pub fn build() -> Result<PathBuf> {
    let tc = setup()?;
    let root = workspace_root();
    let path = std::env::join_paths(std::iter::once(tc.linker_bin.clone()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))?;
    let mut ebpf = Command::new("cargo");
    ebpf.current_dir(&root)
        .arg(format!("+{}", tc.name))
        .args(["build", "--package", "obs-ebpf", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .env("PATH", &path)
        // Keep the host build's flags (e.g. coverage) out of the kernel object.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    if tc.bootstrap {
        ebpf.env("RUSTC_BOOTSTRAP", "1");
    }
    run(&mut ebpf).context("building the eBPF object")?;
    let object = root.join("target/bpfel-unknown-none/release/obs-ebpf");

    run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "--package", "obs-agent"])
        .env("OBS_EBPF_OBJECT", &object))
    .context("building obs-agent")?;
    Ok(root.join("target/release/obs-agent"))
}

/// Environment for cargo commands that rebuild the agent, so they embed the same object.
pub fn ebpf_object_env() -> (&'static str, PathBuf) {
    (
        "OBS_EBPF_OBJECT",
        workspace_root().join("target/bpfel-unknown-none/release/obs-ebpf"),
    )
}

pub fn run_as_root(agent: &PathBuf, args: &[String]) -> Result<()> {
    let mut cmd = if is_root() {
        Command::new(agent)
    } else {
        let mut c = Command::new("sudo");
        c.arg(agent);
        c
    };
    cmd.args(args);
    run(&mut cmd)
}
