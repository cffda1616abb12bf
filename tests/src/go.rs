//! Go for the tests: the installed releases (from `cargo xtask test`), the ways a Go service
//! ships (build modes), and building the test apps under tests/apps with them.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
    sync::{Condvar, Mutex},
};

use crate::{tempdir, workspace_root};

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

    /// `go build` arguments and `CGO_ENABLED` (`None`: Go's default) for this mode;
    /// `keep_symbols` leaves out the stripping (`-s -w`) of the modes that ship stripped,
    /// `pure_go` turns cgo off in the modes that do not link C (so that no C code of
    /// runtime/cgo comes into the binary: `.text` starts with Go's).
    fn flags(self, keep_symbols: bool, pure_go: bool) -> (Vec<String>, Option<&'static str>) {
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
        let cgo = match (external, pure_go) {
            (true, _) => Some("1"),
            (false, true) => Some("0"),
            (false, false) => None,
        };
        (args, cgo)
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

/// The outputs this test process is building: a build waits while another thread builds the
/// same output (then finds it fresh); builds of different outputs run side by side, one per
/// test running (the pclntab tests make 64 builds from a cold cache).
static BUILDING: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
static BUILT: Condvar = Condvar::new();

/// This thread's claim on building one output, given up when dropped.
struct Claim(PathBuf);

impl Claim {
    fn new(out: &Path) -> Self {
        let mut building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        while building.contains(out) {
            building = BUILT.wait(building).unwrap_or_else(|e| e.into_inner());
        }
        building.insert(out.to_owned());
        Self(out.to_owned())
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        let mut building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
        building.remove(&self.0);
        BUILT.notify_all();
    }
}

/// Builds tests/apps/<app> with the given Go in the given mode (GOPATH mode, no network).
/// Outputs are reused while newer than the app's sources and the toolchain.
pub fn go_build(app: &str, toolchain: &Toolchain, mode: BuildMode) -> PathBuf {
    build(app, toolchain, mode, false, false)
}

/// Builds tests/apps/<app> as `go_build` does but keeps the symbol table and DWARF that the
/// mode strips: the same code and data layout, with the truth to check analyses of it against.
pub fn go_build_with_symbols(app: &str, toolchain: &Toolchain, mode: BuildMode) -> PathBuf {
    build(app, toolchain, mode, true, false)
}

/// Builds tests/apps/<app> as `go_build` (`keep_symbols`: `go_build_with_symbols`) does, but
/// with cgo off in the modes that do not link C (`CGO_ENABLED=0`; Go's default is on when a C
/// compiler is installed, and net/http then brings runtime/cgo's C code in).
pub fn go_build_pure(
    app: &str,
    toolchain: &Toolchain,
    mode: BuildMode,
    keep_symbols: bool,
) -> PathBuf {
    build(app, toolchain, mode, keep_symbols, true)
}

fn build(
    app: &str,
    toolchain: &Toolchain,
    mode: BuildMode,
    keep_symbols: bool,
    pure_go: bool,
) -> PathBuf {
    let (args, cgo) = mode.flags(keep_symbols, pure_go);
    let symbols = if keep_symbols && mode != BuildMode::Default {
        "-symbols"
    } else {
        ""
    };
    let no_cgo = if cgo == Some("0") { "-nocgo" } else { "" };
    let out = workspace_root().join("target/test-apps").join(format!(
        "{app}-go{}-{}{symbols}{no_cgo}",
        toolchain.minor,
        mode.name()
    ));
    let _claim = Claim::new(&out);
    let src = workspace_root().join("tests/apps").join(app);
    if is_fresh(&out, &[&src, &toolchain.go]) {
        return out;
    }
    // Apps with a go.mod build in module mode (their dependencies are local replacements).
    let modules = src.join("go.mod").exists();
    let mut go = Command::new(&toolchain.go);
    go.current_dir(&src)
        .arg("build")
        .args(args)
        .arg("-o")
        .arg(&out)
        .arg(".")
        .env("GO111MODULE", if modules { "on" } else { "off" })
        .env("GOFLAGS", if modules { "-mod=mod" } else { "" })
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off");
    if let Some(cgo) = cgo {
        go.env("CGO_ENABLED", cgo);
    }
    let status = go.status().expect("run go build");
    assert!(
        status.success(),
        "building {app} with Go {} ({}{symbols}{no_cgo}) failed",
        toolchain.minor,
        mode.name()
    );
    out
}

/// A copy of `bin` named `name`, in a new temporary directory, passed through `objcopy` with
/// `flag` (`--strip-all`: no symbols; `--strip-debug`: no DWARF).
pub fn objcopy(bin: &Path, flag: &str, name: &str) -> PathBuf {
    let out = tempdir().join(name);
    let status = Command::new("objcopy")
        .arg(flag)
        .arg(bin)
        .arg(&out)
        .status()
        .expect("objcopy (binutils)");
    assert!(status.success(), "objcopy {flag} {}", bin.display());
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
