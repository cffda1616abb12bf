//! What a binary is: ELF symbols and segments, Go's function table (for stripped binaries),
//! struct layouts (DWARF, else the offsets table), Go build info, and what disassembling
//! functions finds: probe sites, and the runtime's global variables in stripped binaries.
//! Pure file analysis: no process, no kernel.
//!
//! Analysis results are cached per binary (device, inode) by the caller.

pub mod buildinfo;
pub mod disasm;
pub mod dwarf;
pub mod elf;
pub mod go_binary;
pub mod go_runtime;
pub mod offsets;
pub mod pclntab;
pub mod runtime_globals;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum SymbolsError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("not an ELF binary this agent understands: {0}")]
    BadElf(ElfProblem),
    #[error("corrupt Go build info: {0}")]
    BadBuildInfo(#[from] buildinfo::BuildInfoError),
    #[error("not a Go program")]
    NotGo,
    #[error("a Go program without net/http's server (no {0}): nothing to watch")]
    NotHttpServer(&'static str),
    #[error("cannot read Go's function table: {0}")]
    Pclntab(#[from] pclntab::PclntabError),
    #[error("corrupt DWARF: {0}")]
    BadDwarf(gimli::Error),
    #[error("the struct layouts lack {strukt}.{member}")]
    MissingField { strukt: String, member: String },
    #[error("{go_version} without DWARF: no struct offsets for it: {reason}")]
    NoStructOffsets {
        go_version: String,
        reason: offsets::TableMiss,
    },
    #[error("no probe site in {function}: {reason}")]
    NoProbeSite {
        function: &'static str,
        reason: NoSite,
    },
}

/// Why a file is not an ELF binary the agent reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ElfProblem {
    #[error("{0}")]
    Unparsable(object::read::Error),
    #[error("not ELF")]
    NotElf,
    #[error("architecture {0:?} (only x86_64 is supported)")]
    Architecture(object::Architecture),
}

/// Why a function has no place for a probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoSite {
    #[error("its address is outside the file's segments")]
    OutsideSegments,
    #[error("no file offset")]
    NoFileOffset,
}

/// Equal when they say the same: I/O errors by path and kind (`io::Error` has no equality of
/// its own). Lets the errors that hold one (a binary's runtime state, its goroutine tracking)
/// be compared.
impl PartialEq for SymbolsError {
    fn eq(&self, other: &Self) -> bool {
        use SymbolsError::*;
        match (self, other) {
            (Io { path, source }, Io { path: p, source: s }) => {
                path == p && source.kind() == s.kind()
            }
            (BadElf(a), BadElf(b)) => a == b,
            (BadBuildInfo(a), BadBuildInfo(b)) => a == b,
            (BadDwarf(a), BadDwarf(b)) => a == b,
            (
                MissingField { strukt, member },
                MissingField {
                    strukt: s,
                    member: m,
                },
            ) => strukt == s && member == m,
            (NotGo, NotGo) => true,
            (NotHttpServer(a), NotHttpServer(b)) => a == b,
            (Pclntab(a), Pclntab(b)) => a == b,
            (
                NoStructOffsets { go_version, reason },
                NoStructOffsets {
                    go_version: v,
                    reason: r,
                },
            ) => go_version == v && reason == r,
            (
                NoProbeSite { function, reason },
                NoProbeSite {
                    function: f,
                    reason: r,
                },
            ) => function == f && reason == r,
            (
                Io { .. }
                | BadElf(_)
                | BadBuildInfo(_)
                | NotGo
                | NotHttpServer(_)
                | Pclntab(_)
                | BadDwarf(_)
                | MissingField { .. }
                | NoStructOffsets { .. }
                | NoProbeSite { .. },
                _,
            ) => false,
        }
    }
}

impl Eq for SymbolsError {}
