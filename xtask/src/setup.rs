//! Makes the kernel-side build possible: a toolchain that can build `core` for BPF (nightly
//! if installed, else stable with RUSTC_BOOTSTRAP=1), its rust-src, and bpf-linker built
//! against that toolchain's own LLVM (prebuilt bpf-linker downloads are unreachable here).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::tools::{cache_dir, output, run};

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The toolchain used for the eBPF crate.
pub struct BpfToolchain {
    /// rustup toolchain name, e.g. "nightly" or "stable".
    pub name: String,
    /// Whether RUSTC_BOOTSTRAP=1 is needed (stable building with -Z build-std).
    pub bootstrap: bool,
    /// Directory holding bpf-linker.
    pub linker_bin: PathBuf,
}

pub fn setup() -> Result<BpfToolchain> {
    if Command::new("rustup").arg("--version").output().is_err() {
        bail!("rustup is missing: the eBPF build needs rustup to add rust-src (https://rustup.rs)");
    }
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    let (name, bootstrap) = if toolchains.lines().any(|l| l.starts_with("nightly")) {
        ("nightly".to_owned(), false)
    } else {
        ("stable".to_owned(), true)
    };
    let sysroot = PathBuf::from(output(
        Command::new("rustc")
            .arg(format!("+{name}"))
            .args(["--print", "sysroot"]),
    )?);

    if !sysroot.join("lib/rustlib/src/rust/library/core").exists() {
        eprintln!("xtask: adding rust-src to the {name} toolchain");
        run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", &name]))
            .context("adding rust-src (needed to build `core` for BPF)")?;
    }

    let linker_bin = ensure_bpf_linker(&name, &sysroot)?;
    Ok(BpfToolchain {
        name,
        bootstrap,
        linker_bin,
    })
}

/// Installs bpf-linker linked against `sysroot`'s libLLVM, into a per-toolchain cache folder.
fn ensure_bpf_linker(toolchain: &str, sysroot: &Path) -> Result<PathBuf> {
    let libllvm = find_libllvm(sysroot)?;
    let llvm_name = libllvm
        .file_name()
        .and_then(|n| n.to_str())
        .context("libLLVM file name")?
        .to_owned();
    let llvm_major = llvm_name
        .strip_prefix("libLLVM.so.")
        .and_then(|v| v.split('.').next())
        .context("cannot tell LLVM's major version from {llvm_name}")?
        .to_owned();
    let root = cache_dir().join(format!("bpf-linker-{BPF_LINKER_VERSION}-{llvm_name}"));
    let bin = root.join("bin");
    if Command::new(bin.join("bpf-linker"))
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(bin);
    }

    // bpf-linker links libLLVM dynamically; its RUNPATH points at this folder, which must
    // keep existing beside it.
    let prefix = root.join("llvm");
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib)?;
    for link in [lib.join("libLLVM.so"), lib.join(&llvm_name)] {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&libllvm, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    eprintln!(
        "xtask: building bpf-linker {BPF_LINKER_VERSION} against {llvm_name} (about a minute)"
    );
    run(Command::new("cargo")
        .arg(format!("+{toolchain}"))
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args([
            "--no-default-features",
            "--features",
            &format!("llvm-{llvm_major}"),
        ])
        .arg("--root")
        .arg(&root)
        .env("LLVM_PREFIX", &prefix))
    .context("building bpf-linker (needs crates.io and a C++ toolchain)")?;
    Ok(bin)
}

fn find_libllvm(sysroot: &Path) -> Result<PathBuf> {
    let lib = sysroot.join("lib");
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
            return Ok(path);
        }
    }
    bail!(
        "the toolchain at {} has no libLLVM.so.*-rust-*: bpf-linker cannot be built against it",
        sysroot.display()
    )
}
