//! `obs-agent inspect BINARY`: what the agent makes of a binary, without root and without
//! loading eBPF: Go version and module, whether it is a net/http server, the probe sites, the
//! struct layouts it would read memory with, and where the Go runtime's globals are, with
//! their sources. The `--json` form is what `cargo xtask go-offsets` reads its
//! `dwarf_layouts` from.

use std::{collections::BTreeMap, fmt, path::Path};

use serde::{Serialize, Serializer};

use crate::{
    probes::{self, table::Probe},
    symbols::{
        disasm::SiteKind,
        dwarf::Layouts,
        elf::ElfFile,
        go_binary::{self, GoroutineTrackingError},
        go_runtime::RuntimeStateError,
        offsets::{self, GoRelease, LayoutSource},
        runtime_globals::{GlobalsSource, RuntimeGlobals},
        SymbolsError,
    },
};

/// Struct -> member -> offset, sorted (stable output).
pub type SortedLayouts = BTreeMap<String, BTreeMap<String, u64>>;

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub binary: String,
    /// From the Go build info, e.g. `go1.22.12`.
    pub go_version: Option<String>,
    /// major.minor, e.g. `1.22`.
    pub go_release: Option<String>,
    pub main_module: Option<String>,
    pub main_module_version: Option<String>,
    /// The main package's import path.
    pub main_package: Option<String>,
    /// Build settings from the build info (`-buildmode`, `CGO_ENABLED`, `-ldflags`, ...).
    pub build_settings: Vec<(String, String)>,
    /// Linked modules and their versions (after `replace` directives).
    pub dependencies: Vec<(String, String)>,
    /// Whether the binary has an ELF symbol table; without one, functions come from Go's
    /// function table (`.gopclntab`).
    pub symbol_table: bool,
    /// `None` when the analysis stopped before it could tell.
    pub http_server: Option<bool>,
    pub probe_sites: Vec<SiteReport>,
    /// Where the layouts in `layouts` come from; `None` when the agent needs none (no Go 1.22+
    /// ServeMux) or has none.
    pub layout_source: Option<SourceReport>,
    /// The layouts the agent would read this binary's memory with.
    pub layouts: Option<SortedLayouts>,
    /// The wanted structs' wanted members as the binary's DWARF has them (`None` without
    /// DWARF), whatever the agent would use.
    pub dwarf_layouts: Option<SortedLayouts>,
    /// Why the agent would not watch processes running this binary.
    pub refusal: Option<String>,
    /// Whether calls can be linked to their requests by goroutine, or why not.
    #[serde(serialize_with = "outcome_as_text")]
    pub goroutine_tracking: Option<Result<(), GoroutineTrackingError>>,
    /// Whether the Go runtime's own counts (goroutines, GC) can be read, or why not.
    #[serde(serialize_with = "outcome_as_text")]
    pub runtime_state: Option<Result<(), RuntimeStateError>>,
    /// Where the runtime keeps them, when they can be read.
    pub runtime_globals: Option<GlobalsReport>,
    /// Struct -> members the agent reads (`go_binary::WANTED_FIELDS`), what `dwarf_layouts`
    /// and the offsets table cover.
    pub wanted_fields: BTreeMap<&'static str, &'static [&'static str]>,
    /// The data path the agent would see this program's socket reads and writes with, on
    /// this machine's kernel: `sockets` or `syscalls`.
    pub data_path: &'static str,
    /// Why not the socket data path, when not.
    pub data_path_why: Option<String>,
}

/// Success, or why not as its message: `{"Ok": null}` or `{"Err": "..."}`, as serde writes a
/// `Result<(), String>` (what `--json` has always printed).
fn outcome_as_text<E: fmt::Display, S: Serializer>(
    outcome: &Option<Result<(), E>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    outcome
        .as_ref()
        .map(|r| r.as_ref().map(|_| ()).map_err(ToString::to_string))
        .serialize(serializer)
}

#[derive(Clone, Debug, Serialize)]
pub struct SiteReport {
    /// The program attached there (the probe table's row, `obs-agent probes`).
    pub program: &'static str,
    /// What it serves (`routes`, `goroutines`, `call_parents`, `panics`).
    pub feature: &'static str,
    pub function: &'static str,
    pub address: u64,
    pub file_offset: u64,
    /// Offset of the probed instruction in the function.
    pub offset: u64,
    /// `stack_check_jump` (emulated by the kernel) or `entry` (single-stepped).
    pub kind: &'static str,
}

/// The runtime's global variables (link-time addresses) and where they were found.
#[derive(Clone, Debug, Serialize)]
pub struct GlobalsReport {
    /// `symbol_table`, or `code` (solved from the runtime functions that use them).
    pub source: &'static str,
    pub allglen: u64,
    pub allp: u64,
    pub sched: u64,
    pub memstats: u64,
    pub gc_controller: u64,
}

impl GlobalsReport {
    fn new(globals: &RuntimeGlobals, source: GlobalsSource) -> Self {
        Self {
            source: match source {
                GlobalsSource::SymbolTable => "symbol_table",
                GlobalsSource::Code => "code",
            },
            allglen: globals.allglen,
            allp: globals.allp,
            sched: globals.sched,
            memstats: globals.memstats,
            gc_controller: globals.gc_controller,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceReport {
    Dwarf,
    Table {
        release: String,
        toolchain: String,
        assumed: bool,
    },
}

impl From<&LayoutSource> for SourceReport {
    fn from(source: &LayoutSource) -> Self {
        match source {
            LayoutSource::Dwarf => SourceReport::Dwarf,
            LayoutSource::Table {
                release,
                toolchain,
                assumed,
            } => SourceReport::Table {
                release: release.to_string(),
                toolchain: toolchain.clone(),
                assumed: *assumed,
            },
        }
    }
}

/// Analyses the binary at `path` as the agent would before watching a process running it.
/// Fails only when the file cannot be read as an ELF binary.
pub fn inspect(path: &Path) -> Result<Report, SymbolsError> {
    let elf = ElfFile::open(path)?;
    let here = probes::data_path_here();
    let mut report = Report {
        binary: path.display().to_string(),
        go_version: None,
        go_release: None,
        main_module: None,
        main_module_version: None,
        main_package: None,
        build_settings: Vec::new(),
        dependencies: Vec::new(),
        symbol_table: elf.has_symbols(),
        http_server: None,
        probe_sites: Vec::new(),
        layout_source: None,
        layouts: None,
        dwarf_layouts: offsets::dwarf_layouts(&elf)?.map(|l| sorted(&l)),
        refusal: None,
        data_path: here.0.as_str(),
        data_path_why: here.1,
        goroutine_tracking: None,
        runtime_state: None,
        runtime_globals: None,
        wanted_fields: go_binary::WANTED_FIELDS.iter().copied().collect(),
    };
    if let Some(info) = elf
        .section(".go.buildinfo")
        .and_then(|s| crate::symbols::buildinfo::parse(&s).ok())
    {
        report.go_release = GoRelease::from_go_version(&info.go_version).map(|r| r.to_string());
        report.go_version = Some(info.go_version);
        report.main_module = info.main_module;
        report.main_module_version = info.main_version;
        report.main_package = info.main_package;
        report.build_settings = info.settings;
        report.dependencies = info.deps.into_iter().map(|m| (m.path, m.version)).collect();
    }
    match go_binary::analyze(&elf) {
        Ok(binary) => {
            report.http_server = Some(true);
            report.goroutine_tracking =
                Some(binary.goroutines.as_ref().map(|_| ()).map_err(Clone::clone));
            report.runtime_state = Some(
                binary
                    .runtime_state
                    .as_ref()
                    .map(|_| ())
                    .map_err(Clone::clone),
            );
            report.runtime_globals = binary
                .runtime_state
                .as_ref()
                .ok()
                .map(|s| GlobalsReport::new(&s.globals, s.globals_source));
            report.probe_sites = binary
                .probe_points()
                .iter()
                .filter_map(|p| {
                    let spec = Probe::on_function(p.function)?.spec();
                    Some((spec, p))
                })
                .map(|(spec, p)| SiteReport {
                    program: spec.program,
                    feature: spec.feature.as_str(),
                    function: p.function,
                    address: p.address,
                    file_offset: p.file_offset,
                    offset: p.site.offset,
                    kind: match p.site.kind {
                        SiteKind::StackCheckJump => "stack_check_jump",
                        SiteKind::Entry => "entry",
                        SiteKind::Call => "call",
                    },
                })
                .collect();
            if let Some(source) = &binary.layout_source {
                // The same choice `analyze` made, kept whole for display.
                let (layouts, _) = offsets::layouts_for(&elf, &binary.build)?;
                report.layouts = Some(sorted(&layouts));
                report.layout_source = Some(source.into());
            }
        }
        Err(e) => {
            report.http_server = match e {
                SymbolsError::NotGo | SymbolsError::NotHttpServer(_) => Some(false),
                SymbolsError::NoStructOffsets { .. }
                | SymbolsError::BadDwarf(_)
                | SymbolsError::NoProbeSite { .. } => Some(true),
                _ => None,
            };
            // Other languages are watched through their socket syscalls alone.
            if !matches!(e, SymbolsError::NotGo) {
                report.refusal = Some(e.to_string());
            }
        }
    }
    Ok(report)
}

fn sorted(layouts: &Layouts) -> SortedLayouts {
    layouts
        .iter()
        .map(|(s, members)| {
            let members = members.iter().map(|(m, o)| (m.clone(), *o)).collect();
            (s.clone(), members)
        })
        .collect()
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or = |v: &Option<String>, none: &str| v.clone().unwrap_or_else(|| none.to_owned());
        writeln!(f, "binary:          {}", self.binary)?;
        let release = self
            .go_release
            .as_ref()
            .map(|r| format!(" (release {r})"))
            .unwrap_or_default();
        writeln!(
            f,
            "Go:              {}{release}",
            or(&self.go_version, "none (not a Go program)")
        )?;
        if self.go_version.is_some() {
            let version = self
                .main_module_version
                .as_ref()
                .map(|v| format!(" {v}"))
                .unwrap_or_default();
            writeln!(
                f,
                "main module:     {}{version}",
                or(&self.main_module, "none (GOPATH or non-module build)")
            )?;
            writeln!(f, "main package:    {}", or(&self.main_package, "unknown"))?;
            let settings: Vec<String> = self
                .build_settings
                .iter()
                .filter(|(k, _)| matches!(k.as_str(), "-buildmode" | "CGO_ENABLED" | "-ldflags"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            writeln!(f, "build:           {}", settings.join(" "))?;
            writeln!(f, "dependencies:    {}", self.dependencies.len())?;
            for (module, version) in &self.dependencies {
                writeln!(f, "  {module} {version}")?;
            }
            writeln!(
                f,
                "functions from:  {}",
                if self.symbol_table {
                    "the ELF symbol table"
                } else {
                    "Go's function table (.gopclntab; no symbol table)"
                }
            )?;
        }
        let server = match self.http_server {
            Some(true) => "yes",
            Some(false) => "no",
            None => "unknown",
        };
        writeln!(f, "net/http server: {server}")?;
        if self.probe_sites.is_empty() {
            writeln!(f, "probe sites:     none")?;
        }
        for site in &self.probe_sites {
            writeln!(
                f,
                "probe site:      {} ({}): {}+{:#x} (address {:#x}, file offset {:#x}): {}",
                site.program,
                site.feature,
                site.function,
                site.offset,
                site.address,
                site.file_offset,
                match site.kind {
                    "stack_check_jump" => "stack-check jump, emulated by the kernel",
                    "call" => "call instruction, emulated by the kernel",
                    _ => "function entry, single-stepped (slow)",
                }
            )?;
        }
        let source = match &self.layout_source {
            None if self.refusal.is_some() || self.go_version.is_none() => "none".to_owned(),
            None => "none needed (no Go 1.22+ ServeMux routing tree to read)".to_owned(),
            Some(SourceReport::Dwarf) => "DWARF".to_owned(),
            Some(SourceReport::Table {
                release,
                toolchain,
                assumed,
            }) => format!(
                "offsets table, Go {release} (generated from {toolchain}){}",
                if *assumed {
                    "; assumed for a newer release: the table's two newest releases agree"
                } else {
                    ""
                }
            ),
        };
        writeln!(f, "struct offsets:  {source}")?;
        for (strukt, members) in self.layouts.iter().flatten() {
            for (member, offset) in members {
                writeln!(f, "  {:<60} {offset:>4}", format!("{strukt}.{member}"))?;
            }
        }
        let dwarf = match &self.dwarf_layouts {
            Some(l) => format!("yes ({} of the wanted structs)", l.len()),
            None => "no".to_owned(),
        };
        writeln!(f, "DWARF:           {dwarf}")?;
        match &self.goroutine_tracking {
            Some(Ok(())) => writeln!(f, "goroutines:      followed (calls linked to requests)")?,
            Some(Err(why)) => writeln!(f, "goroutines:      not followed: {why}")?,
            None => {}
        }
        match &self.runtime_state {
            Some(Ok(())) => writeln!(
                f,
                "Go runtime:      its own counts are read (goroutines, GC)"
            )?,
            Some(Err(why)) => writeln!(f, "Go runtime:      its own counts are not read: {why}")?,
            None => {}
        }
        if let Some(g) = &self.runtime_globals {
            let source = match g.source {
                "symbol_table" => "the ELF symbol table",
                _ => "the code of the runtime functions using them (no symbol table)",
            };
            writeln!(f, "runtime globals: from {source}")?;
            for (name, address) in [
                ("runtime.allglen", g.allglen),
                ("runtime.allp", g.allp),
                ("runtime.sched", g.sched),
                ("runtime.memstats", g.memstats),
                ("runtime.gcController", g.gc_controller),
            ] {
                writeln!(f, "  {name:<60} {address:#x}")?;
            }
        }
        match &self.refusal {
            Some(why) => writeln!(f, "would watch it:  no: {why}")?,
            None if self.go_version.is_none() => writeln!(
                f,
                "would watch it:  yes, through its socket reads and writes (HTTP/1.x; not Go: \
                 no routes from memory)"
            )?,
            None => writeln!(f, "would watch it:  yes")?,
        }
        match &self.data_path_why {
            None => writeln!(
                f,
                "data path:       {} (this kernel's socket tracepoints: only socket reads and \
                 writes pay)",
                self.data_path
            ),
            Some(why) => writeln!(f, "data path:       {} ({why})", self.data_path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn other_languages_would_be_watched_through_their_sockets() {
        // This test program: an ELF binary, not Go.
        let report = inspect(Path::new("/proc/self/exe")).unwrap();
        assert_eq!(report.go_version, None);
        assert_eq!(report.refusal, None);
        let text = report.to_string();
        assert!(
            text.contains("would watch it:  yes, through its socket reads and writes"),
            "{text}"
        );
        // Linux 6.3+ (with BTF) has the socket tracepoints.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut numbers = release.split(|c: char| !c.is_ascii_digit());
        let mut next = || numbers.next().and_then(|n| n.parse::<u32>().ok()).unwrap();
        let expected = if (next(), next()) >= (6, 3) {
            "sockets"
        } else {
            "syscalls"
        };
        assert!(
            text.contains(&format!("data path:       {expected}")),
            "{text}"
        );
    }

    #[test]
    fn outcomes_are_written_as_a_result_of_text() {
        let mut report = inspect(Path::new("/proc/self/exe")).unwrap();
        let state = RuntimeStateError::UnknownPauseScheme { buckets: 3 };
        let goroutines = GoroutineTrackingError::NoRunqputCall;
        let as_text = |outcome: Option<Result<(), String>>| serde_json::to_value(outcome).unwrap();
        for (runtime_state, goroutine_tracking, state_text, goroutines_text) in [
            (None, None, None, None),
            (Some(Ok(())), Some(Ok(())), Some(Ok(())), Some(Ok(()))),
            (
                Some(Err(state.clone())),
                Some(Err(goroutines.clone())),
                Some(Err(state.to_string())),
                Some(Err(goroutines.to_string())),
            ),
        ] {
            report.runtime_state = runtime_state;
            report.goroutine_tracking = goroutine_tracking;
            let json = serde_json::to_value(&report).unwrap();
            assert_eq!(json["runtime_state"], as_text(state_text));
            assert_eq!(json["goroutine_tracking"], as_text(goroutines_text));
        }
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(
            json["runtime_state"],
            serde_json::json!({"Err": "a GC pause histogram of 3 buckets (unknown scheme)"})
        );
        assert_eq!(
            json["goroutine_tracking"],
            serde_json::json!({"Err": "no call to runtime.runqput in runtime.newproc.func1"})
        );
    }
}
