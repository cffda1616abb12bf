//! Embeds the eBPF object built by `cargo xtask build` (passed in OBS_EBPF_OBJECT).
//! Without it, writes an empty stub so `cargo check`, clippy and unit tests work without the
//! kernel-side toolchain; such an agent refuses to start and says how to build it properly.
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=OBS_EBPF_OBJECT");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR is set by cargo"));
    let dest = out.join("obs-ebpf.o");
    match env::var_os("OBS_EBPF_OBJECT") {
        Some(path) => {
            let path = PathBuf::from(path);
            println!("cargo:rerun-if-changed={}", path.display());
            fs::copy(&path, &dest).unwrap_or_else(|e| {
                panic!("OBS_EBPF_OBJECT={}: cannot copy it: {e}", path.display())
            });
        }
        None => {
            println!(
                "cargo:warning=OBS_EBPF_OBJECT is not set: building obs-agent without its eBPF \
                 programs (use `cargo xtask build` for a working agent)"
            );
            fs::write(&dest, b"").expect("write eBPF stub");
        }
    }
}
