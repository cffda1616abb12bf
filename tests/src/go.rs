//! Go for the tests: the installed releases (from `cargo xtask test`), the ways a Go service
//! ships (build modes), and building the test apps under tests/apps with them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
};

use crate::workspace_root;

/// An installed Go release (from OBS_GO_TOOLCHAINS, set by `cargo xtask test`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Toolchain {
    /// "1.19", "1.27", ...
    pub minor: String,
    pub go: PathBuf,
}

impl Toolchain {
    /// The minor release number: 19 for Go 1.19.
    pub fn minor_number(&self) -> u32 {
        self.minor
            .strip_prefix("1.")
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("Go release {:?} is not 1.N", self.minor))
    }
    /// Go 1.22+ ServeMux patterns (`GET /items/{id}`).
    pub fn has_patterns(&self) -> bool {
        self.minor_number() >= 22
    }
}

/// Every Go release the tests may use, oldest first.
pub fn toolchains() -> Vec<Toolchain> {
    let list = std::env::var("OBS_GO_TOOLCHAINS").unwrap_or_else(|_| {
        panic!("OBS_GO_TOOLCHAINS is not set: run the integration tests through `cargo xtask test`")
    });
    let mut toolchains: Vec<Toolchain> = list
        .split(',')
        .filter(|e| !e.is_empty())
        .map(|entry| {
            let (minor, go) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("OBS_GO_TOOLCHAINS entry {entry:?} is not MINOR=PATH"));
            Toolchain {
                minor: minor.to_owned(),
                go: go.into(),
            }
        })
        .collect();
    toolchains.sort_by_key(Toolchain::minor_number);
    toolchains
}

pub fn toolchain(minor: &str) -> Toolchain {
    toolchains()
        .into_iter()
        .find(|t| t.minor == minor)
        .unwrap_or_else(|| panic!("no Go {minor} in OBS_GO_TOOLCHAINS"))
}

/// The Go releases the tests pin by role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoVersion {
    /// Debian's Go 1.19: no ServeMux patterns.
    Old,
    /// Go 1.23: ServeMux patterns, bucket maps.
    Go123,
    /// The newest supported Go: ServeMux patterns, swiss-table maps.
    New,
}

impl GoVersion {
    pub fn toolchain(self) -> Toolchain {
        match self {
            GoVersion::Old => toolchain("1.19"),
            GoVersion::Go123 => toolchain("1.23"),
            GoVersion::New => toolchains().pop().expect("no Go toolchain"),
        }
    }
    pub fn has_patterns(self) -> bool {
        self != GoVersion::Old
    }
}

/// How a test binary is built: the ways Go services ship.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildMode {
    /// `go build`: symbol table and DWARF.
    Default,
    /// `-ldflags=-s -w`: no symbol table, no DWARF.
    Stripped,
    /// `-buildmode=pie`, stripped (as distributions ship them).
    Pie,
    /// cgo with the external (gcc) linker, stripped: `.text` starts with C code.
    CgoExternal,
    /// cgo, PIE, external linker, stripped: before Go 1.26 the function table has no section
    /// of its own (merged into `.data.rel.ro`).
    PieExternal,
}

impl BuildMode {
    pub const ALL: [BuildMode; 5] = [
        BuildMode::Default,
        BuildMode::Stripped,
        BuildMode::Pie,
        BuildMode::CgoExternal,
        BuildMode::PieExternal,
    ];

    /// `go build` arguments and environment for this mode; `keep_symbols` leaves out the
    /// stripping (`-s -w`) of the modes that ship stripped.
    fn flags(self, keep_symbols: bool) -> (Vec<String>, &'static [(&'static str, &'static str)]) {
        let pie = matches!(self, BuildMode::Pie | BuildMode::PieExternal);
        let external = matches!(self, BuildMode::CgoExternal | BuildMode::PieExternal);
        let strip = self != BuildMode::Default && !keep_symbols;
        let mut args = Vec::new();
        if pie {
            args.push("-buildmode=pie".to_owned());
        }
        let ldflags: Vec<&str> = [(strip, "-s -w"), (external, "-linkmode=external")]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, flag)| *flag)
            .collect();
        if !ldflags.is_empty() {
            args.push(format!("-ldflags={}", ldflags.join(" ")));
        }
        let env: &'static [(&str, &str)] = if external {
            &[("CGO_ENABLED", "1")]
        } else {
            &[]
        };
        (args, env)
    }

    pub fn name(self) -> &'static str {
        match self {
            BuildMode::Default => "default",
            BuildMode::Stripped => "stripped",
            BuildMode::Pie => "pie",
            BuildMode::CgoExternal => "cgo-external",
            BuildMode::PieExternal => "pie-external",
        }
    }
}

static BUILD_LOCK: Mutex<()> = Mutex::new(());

/// Builds tests/apps/<app> with the given Go in the given mode (GOPATH mode, no network).
/// Outputs are reused while newer than the app's sources and the toolchain.
pub fn go_build(app: &str, toolchain: &Toolchain, mode: BuildMode) -> PathBuf {
    build(app, toolchain, mode, false)
}

/// Builds tests/apps/<app> as `go_build` does but keeps the symbol table and DWARF that the
/// mode strips: the same code and data layout, with the truth to check analyses of it against.
pub fn go_build_with_symbols(app: &str, toolchain: &Toolchain, mode: BuildMode) -> PathBuf {
    build(app, toolchain, mode, true)
}

fn build(app: &str, toolchain: &Toolchain, mode: BuildMode, keep_symbols: bool) -> PathBuf {
    let _guard = BUILD_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let suffix = if keep_symbols && mode != BuildMode::Default {
        "-symbols"
    } else {
        ""
    };
    let out = workspace_root().join("target/test-apps").join(format!(
        "{app}-go{}-{}{suffix}",
        toolchain.minor,
        mode.name()
    ));
    let src = workspace_root().join("tests/apps").join(app);
    if is_fresh(&out, &[&src, &toolchain.go]) {
        return out;
    }
    let (args, env) = mode.flags(keep_symbols);
    // Apps with a go.mod build in module mode (their dependencies are local replacements).
    let modules = src.join("go.mod").exists();
    let status = Command::new(&toolchain.go)
        .current_dir(&src)
        .arg("build")
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(".")
        .env("GO111MODULE", if modules { "on" } else { "off" })
        .env("GOFLAGS", if modules { "-mod=mod" } else { "" })
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .envs(env.iter().copied())
        .status()
        .expect("run go build");
    assert!(
        status.success(),
        "building {app} with Go {} ({}) failed",
        toolchain.minor,
        mode.name()
    );
    out
}

/// Whether `out` exists and is newer than every file in `inputs` (directories: their files,
/// one level down).
fn is_fresh(out: &Path, inputs: &[&Path]) -> bool {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let Some(built) = modified(out) else {
        return false;
    };
    inputs.iter().all(|input| {
        let files: Vec<PathBuf> = match std::fs::read_dir(input) {
            Ok(dir) => dir.flatten().map(|e| e.path()).collect(),
            Err(_) => vec![input.to_path_buf()],
        };
        files
            .iter()
            .all(|f| modified(f).is_some_and(|m| m <= built))
    })
}

/// Builds tests/apps/<app> with one of the pinned Go releases, default build mode.
pub fn go_app(app: &str, version: GoVersion) -> PathBuf {
    go_build(app, &version.toolchain(), BuildMode::Default)
}
