//! Function addresses from Go's own function table (the pclntab), which every Go binary keeps
//! because the runtime needs it for stack traces and garbage collection, even when the ELF
//! symbol table and DWARF are stripped (`-ldflags=-s -w`).
//!
//! Layout (Go 1.18+, see `runtime/symtab.go` and `cmd/link/internal/ld/pcln.go`): a header
//! (magic, instruction-size quantum, pointer size, function count, file count, `runtime.text`,
//! then the offsets from the header of the function-name table, the compilation-unit table, the
//! file table, the pc-value tables and the function table), each part following the previous
//! one. The function table is `nfunc + 1` pairs of u32 (entry offset from `runtime.text`,
//! offset of the function's `_func` record); the last pair holds only the end of the last
//! function. A `_func` starts with its entry offset and the offset of its name.
//!
//! Where the table is: its own section `.gopclntab` (Go's linker; external linking of
//! executables; every build mode from Go 1.26), `.data.rel.ro.gopclntab` (Go's linker, PIE,
//! up to Go 1.25), or nameless inside `.data.rel.ro` (external linking of PIE up to Go 1.25),
//! found there by its header and validated thoroughly.
//!
//! `runtime.text`, the base of the entry offsets, is not the start of `.text` when a C linker
//! put C code first (cgo, external linking). The header holds it up to Go 1.25 (in PIE the
//! loader relocates it: the relocation's addend is the link-time value); Go 1.26+ leave that
//! field zero, and it is read from the module data (`runtime.firstmoduledata`, in section
//! `.go.module`), whose first field points at the table.

mod functab;
mod header;
mod locate;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use object::{elf::PF_X, Object, ObjectSection, ObjectSegment, SegmentFlags};

use super::{elf::ElfFile, SymbolsError};
use header::{parse_header, Header};

const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO12: u32 = 0xffff_fffb;
/// Instruction-size quantum and pointer size on amd64.
const MIN_LC: u8 = 1;
const PTR_SIZE: u8 = 8;
/// Magic, two zero bytes, quantum, pointer size, then eight pointer-sized fields.
const HEADER_LEN: usize = 8 + 8 * PTR_SIZE as usize;
const FUNCTAB_ENTRY_LEN: usize = 8;
/// `_func` fields used here; `funcID` and `flag` follow `cuOffset` (Go 1.18/1.19) or
/// `startLine` (Go 1.20+).
const FUNC_NAME_OFF: usize = 4;

/// Which `_func` layout the table uses, from its magic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Magic 0xfffffff0: Go 1.18 and 1.19.
    Go118,
    /// Magic 0xfffffff1: Go 1.20 and later (`_func` gained `startLine`).
    Go120,
}

impl Layout {
    fn func_id_offset(self) -> usize {
        match self {
            Layout::Go118 => 36,
            Layout::Go120 => 40,
        }
    }

    /// The bytes of a `_func` this module reads (up to and including `flag`).
    fn func_len(self) -> usize {
        self.func_id_offset() + 2
    }
}

/// Where the table was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A section of its own: `.gopclntab` or `.data.rel.ro.gopclntab`.
    Section(&'static str),
    /// Inside another section (external linkers merge it into `.data.rel.ro`), found by its
    /// header.
    Within { section: String, offset: u64 },
    /// Bytes given by the caller.
    Bytes,
}

/// Where `runtime.text` came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextStartSource {
    /// The header's field, as written in the file.
    Header,
    /// The addend of the dynamic relocation of the header's field (PIE).
    Relocation,
    /// The module data's `text` field (Go 1.26+).
    ModuleData,
    /// Given by the caller.
    Caller,
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum PclntabError {
    /// The file's own error (it says it is not an ELF binary this agent understands).
    #[error(transparent)]
    BadElf(Arc<SymbolsError>),
    #[error(
        "the binary has no Go function table: no .gopclntab section and no valid table header \
         in its data"
    )]
    NotFound,
    #[error(
        "the Go function table has the layout of Go {go_versions} (magic {magic:#x}); only Go \
         1.18 and later are supported"
    )]
    UnsupportedGo {
        magic: u32,
        go_versions: &'static str,
    },
    #[error("not a Go function table (magic {0:#x})")]
    BadMagic(u32),
    #[error(
        "the Go function table is not for 64-bit x86 (instruction size {min_lc}, pointer size \
         {ptr_size})"
    )]
    WrongArchitecture { min_lc: u8, ptr_size: u8 },
    #[error("the Go function table is truncated or corrupt: {0}")]
    Corrupt(&'static str),
    #[error(
        "cannot find runtime.text: the function table's header leaves it zero and no module data \
         points at the table"
    )]
    NoTextStart,
    #[error(
        "the Go function table places code at {start:#x}..{end:#x}, outside the executable \
         segments"
    )]
    CodeOutsideText { start: u64, end: u64 },
}

/// A parsed pclntab, borrowing the binary's bytes.
#[derive(Clone, Debug)]
pub struct Pclntab<'a> {
    layout: Layout,
    location: Location,
    text_start: u64,
    text_start_source: TextStartSource,
    nfunc: usize,
    funcnametab: &'a [u8],
    pctab: &'a [u8],
    /// From the function table to the end of the data: the table, then the `_func` records
    /// its second column points at.
    pcln: &'a [u8],
}

impl<'a> Pclntab<'a> {
    /// Finds and parses the binary's pclntab, and resolves `runtime.text`.
    pub fn parse(elf: &'a ElfFile) -> Result<Self, PclntabError> {
        let obj = elf
            .object()
            .map_err(|e| PclntabError::BadElf(Arc::new(e)))?;
        for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
            if let Some(section) = obj.section_by_name(name) {
                let data = section
                    .data()
                    .map_err(|_| PclntabError::Corrupt("its section cannot be read"))?;
                return Self::in_elf(&obj, data, section.address(), Location::Section(name));
            }
        }
        locate::scan(&obj)
    }

    /// A table from its bytes alone (starting with its header). `runtime.text` is
    /// `text_start` when given, else the header's field (Go 1.18 to 1.25).
    pub fn from_bytes(table: &'a [u8], text_start: Option<u64>) -> Result<Self, PclntabError> {
        let header = parse_header(table)?;
        let (text_start, source) = match (text_start, header.text_start) {
            (Some(text), _) => (text, TextStartSource::Caller),
            (None, 0) => return Err(PclntabError::NoTextStart),
            (None, text) => (text, TextStartSource::Header),
        };
        let table = Self::new(header, text_start, source, Location::Bytes);
        table.code_range()?;
        Ok(table)
    }

    fn in_elf(
        obj: &object::File<'a>,
        data: &'a [u8],
        vaddr: u64,
        location: Location,
    ) -> Result<Self, PclntabError> {
        let header = parse_header(data)?;
        let first_entry = u64::from(entry_off(header.pcln, 0).unwrap_or(0));
        let (text_start, source) = locate::text_start(obj, vaddr, &header, first_entry)?;
        let table = Self::new(header, text_start, source, location);
        let (start, end) = table.code_range()?;
        let in_code = obj.segments().any(|seg| {
            matches!(seg.flags(), SegmentFlags::Elf { p_flags } if p_flags & PF_X != 0)
                && seg.address() <= start
                && seg
                    .address()
                    .checked_add(seg.size())
                    .is_some_and(|e| end <= e)
        });
        if !in_code {
            return Err(PclntabError::CodeOutsideText { start, end });
        }
        Ok(table)
    }

    fn new(
        header: Header<'a>,
        text_start: u64,
        text_start_source: TextStartSource,
        location: Location,
    ) -> Self {
        Self {
            layout: header.layout,
            location,
            text_start,
            text_start_source,
            nfunc: header.nfunc,
            funcnametab: header.funcnametab,
            pctab: header.pctab,
            pcln: header.pcln,
        }
    }

    /// First and end address of the code the table describes.
    fn code_range(&self) -> Result<(u64, u64), PclntabError> {
        let address = |i| {
            entry_off(self.pcln, i)
                .and_then(|off| self.text_start.checked_add(u64::from(off)))
                .ok_or(PclntabError::Corrupt("code addresses overflow"))
        };
        Ok((address(0)?, address(self.nfunc)?))
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    /// `runtime.text`: the link-time address entry offsets are relative to.
    pub fn text_start(&self) -> u64 {
        self.text_start
    }

    pub fn text_start_source(&self) -> TextStartSource {
        self.text_start_source
    }

    pub fn function_count(&self) -> usize {
        self.nfunc
    }
}

fn entry_off(pcln: &[u8], i: usize) -> Option<u32> {
    read_u32(pcln, i.checked_mul(FUNCTAB_ENTRY_LEN)?)
}

fn read_u32(data: &[u8], off: usize) -> Option<u32> {
    let bytes = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn read_i32(data: &[u8], off: usize) -> Option<i32> {
    read_u32(data, off).map(|v| v as i32)
}

fn read_u64(data: &[u8], off: usize) -> Option<u64> {
    let bytes = data.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}
