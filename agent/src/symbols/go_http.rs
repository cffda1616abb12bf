//! What the Go net/http server probes need from one binary: where to attach (file offsets of
//! emulated probe sites) and where the fields they read live (DWARF offsets). No offset is
//! hard-coded for any Go version.

use std::path::Path;

use object::Object;
use obs_common::go_http::{GoHttpOffsets, NO_OFFSET};

use super::{
    buildinfo::{self, BuildInfo},
    disasm::{self, ProbeSite, SiteKind},
    dwarf::{self, offset_of},
    elf::ElfFile,
    SymbolsError,
};

pub const SERVE_HTTP: &str = "net/http.serverHandler.ServeHTTP";
pub const FINISH_REQUEST: &str = "net/http.(*response).finishRequest";
/// The itab that makes a `*response` a `ResponseWriter` (Go ≤1.19 and ≥1.20 spellings).
const RESPONSE_ITABS: [&str; 2] = [
    "go:itab.*net/http.response,net/http.ResponseWriter",
    "go.itab.*net/http.response,net/http.ResponseWriter",
];

const RESPONSE: &str = "net/http.response";
const REQUEST: &str = "net/http.Request";
const URL: &str = "net/url.URL";
const PATTERN: &str = "net/http.pattern";

/// Where one probe goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub function: &'static str,
    /// Link-time virtual address of the probed instruction.
    pub address: u64,
    /// File offset of the probed instruction (what the uprobe API takes).
    pub file_offset: u64,
    pub site: ProbeSite,
}

#[derive(Clone, Debug)]
pub struct GoHttpBinary {
    pub build: BuildInfo,
    pub serve_http: ProbePoint,
    pub finish_request: ProbePoint,
    pub offsets: GoHttpOffsets,
    /// Link-time address of the `*response` ResponseWriter itab; only usable as-is for
    /// position-dependent executables.
    pub response_itab: Option<u64>,
}

impl GoHttpBinary {
    pub fn probe_points(&self) -> [ProbePoint; 2] {
        [self.serve_http, self.finish_request]
    }
}

/// Whether the file is a Go program (has Go build info).
pub fn is_go(elf: &ElfFile) -> bool {
    elf.has_section(".go.buildinfo")
}

pub fn analyze_path(path: &Path) -> Result<GoHttpBinary, SymbolsError> {
    analyze(&ElfFile::open(path)?)
}

pub fn analyze(elf: &ElfFile) -> Result<GoHttpBinary, SymbolsError> {
    let build = elf
        .section(".go.buildinfo")
        .ok_or(SymbolsError::NotGo)
        .and_then(|s| {
            buildinfo::parse(&s).map_err(|e| SymbolsError::BadElf(format!("Go build info: {e}")))
        })?;

    let mut wanted = vec![SERVE_HTTP, FINISH_REQUEST];
    wanted.extend(RESPONSE_ITABS);
    let functions = elf.functions(&wanted)?;
    if functions.is_empty() && !elf.has_symbols() {
        return Err(SymbolsError::NoDebugInfo {
            go_version: build.go_version,
        });
    }
    let probe_point = |name: &'static str| -> Result<ProbePoint, SymbolsError> {
        let sym = functions
            .get(name)
            .ok_or(SymbolsError::NotHttpServer(name))?;
        let no_site = |reason: &str| SymbolsError::NoProbeSite {
            function: name,
            reason: reason.to_owned(),
        };
        let code = elf
            .bytes_at(sym.address, sym.size.clamp(1, 64))
            .ok_or_else(|| no_site("its address is outside the file's segments"))?;
        let site = disasm::find_stack_check_jump(code, sym.address).unwrap_or(ProbeSite {
            offset: 0,
            kind: SiteKind::Entry,
        });
        let file_offset = elf
            .file_offset(sym.address + site.offset)
            .ok_or_else(|| no_site("no file offset"))?;
        Ok(ProbePoint {
            function: name,
            address: sym.address + site.offset,
            file_offset,
            site,
        })
    };
    let serve_http = probe_point(SERVE_HTTP)?;
    let finish_request = probe_point(FINISH_REQUEST)?;

    let layouts =
        dwarf::struct_layouts(elf, &[RESPONSE, REQUEST, URL, PATTERN])?.ok_or_else(|| {
            SymbolsError::NoDebugInfo {
                go_version: build.go_version.clone(),
            }
        })?;
    let off = |s, m| offset_of(&layouts, s, m).map(|v| v as u32);
    let optional = |s, m| off(s, m).unwrap_or(NO_OFFSET);
    let offsets = GoHttpOffsets {
        response_req: off(RESPONSE, "req")?,
        response_status: off(RESPONSE, "status")?,
        response_wrote_header: off(RESPONSE, "wroteHeader")?,
        request_method: off(REQUEST, "Method")?,
        request_url: off(REQUEST, "URL")?,
        url_path: off(URL, "Path")?,
        request_pattern: optional(REQUEST, "Pattern"),
        request_pat: optional(REQUEST, "pat"),
        pattern_str: optional(PATTERN, "str"),
        _reserved: 0,
    };
    let position_dependent = elf
        .object()
        .map(|o| o.kind() == object::ObjectKind::Executable)
        .unwrap_or(false);
    let response_itab = RESPONSE_ITABS
        .iter()
        .find_map(|n| functions.get(*n))
        .map(|s| s.address)
        .filter(|_| position_dependent);
    Ok(GoHttpBinary {
        build,
        serve_http,
        finish_request,
        offsets,
        response_itab,
    })
}
