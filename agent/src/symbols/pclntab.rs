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

use std::collections::HashMap;

use object::{
    elf::{PF_X, R_X86_64_RELATIVE},
    Object, ObjectKind, ObjectSection, ObjectSegment, RelocationFlags, SectionKind, SegmentFlags,
};

use super::elf::{ElfFile, FunctionSymbol};

const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;
const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO12: u32 = 0xffff_fffb;
/// Instruction-size quantum and pointer size on amd64.
const MIN_LC: u8 = 1;
const PTR_SIZE: u8 = 8;
/// Magic, two zero bytes, quantum, pointer size, then eight pointer-sized fields.
const HEADER_LEN: usize = 8 + 8 * PTR_SIZE as usize;
const HEADER_TEXT_START: usize = 24;
const FUNCTAB_ENTRY_LEN: usize = 8;
/// `_func` fields used here; `funcID` and `flag` follow `cuOffset` (Go 1.18/1.19) or
/// `startLine` (Go 1.20+).
const FUNC_NAME_OFF: usize = 4;
const FUNC_PCSP: usize = 16;
const FUNC_ID_NORMAL: u8 = 0;
const FUNC_FLAG_ASM: u8 = 1 << 2;
/// `moduledata` fields: `pcHeader`, six slices (`funcnametab` first), `findfunctab`, `minpc`,
/// `maxpc`, `text`. Unchanged from Go 1.18 to 1.27.
const MODULEDATA_FUNCNAMETAB: u64 = 8;
const MODULEDATA_MINPC: u64 = 8 + 6 * 24 + 8;
const MODULEDATA_TEXT: u64 = MODULEDATA_MINPC + 16;
/// Up to this many wanted names are compared one by one; more go through a hash map.
const LINEAR_LOOKUP_MAX: usize = 8;
/// Pointers to the table checked as the start of the module data when `.go.module` is absent.
const MODULEDATA_CANDIDATES_MAX: usize = 16;

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
    #[error("not an ELF binary this agent understands: {0}")]
    BadElf(String),
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

/// The header's fields, checked against the bytes they describe.
struct Header<'a> {
    layout: Layout,
    nfunc: usize,
    text_start: u64,
    funcnametab_offset: u64,
    funcnametab: &'a [u8],
    pctab: &'a [u8],
    pcln: &'a [u8],
}

impl<'a> Pclntab<'a> {
    /// Finds and parses the binary's pclntab, and resolves `runtime.text`.
    pub fn parse(elf: &'a ElfFile) -> Result<Self, PclntabError> {
        let obj = elf
            .object()
            .map_err(|e| PclntabError::BadElf(e.to_string()))?;
        for name in [".gopclntab", ".data.rel.ro.gopclntab"] {
            if let Some(section) = obj.section_by_name(name) {
                let data = section
                    .data()
                    .map_err(|_| PclntabError::Corrupt("its section cannot be read"))?;
                return Self::in_elf(&obj, data, section.address(), Location::Section(name));
            }
        }
        scan(&obj)
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
        let (text_start, source) = text_start(obj, vaddr, &header, first_entry)?;
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

    /// Link-time address and code size of the wanted functions that the table lists, in one
    /// pass that compares names in place.
    ///
    /// A name listed twice is a function and its ABI wrapper; as in the ELF symbol table, the
    /// name is the Go-callable one (ABIInternal): not the assembly body, not a wrapper the
    /// compiler made for assembly callers.
    pub fn functions(&self, wanted: &[&str]) -> HashMap<String, FunctionSymbol> {
        let by_name: Option<HashMap<&[u8], &str>> = (wanted.len() > LINEAR_LOOKUP_MAX)
            .then(|| wanted.iter().map(|w| (w.as_bytes(), *w)).collect());
        // Name -> (rank, symbol); a lower rank wins.
        let mut found: HashMap<&str, (u8, FunctionSymbol)> = HashMap::new();
        for i in 0..self.nfunc {
            let Some(func) = self.func(i) else { continue };
            let Some(name) = read_i32(func, FUNC_NAME_OFF)
                .and_then(|off| usize::try_from(off).ok())
                .and_then(|off| self.funcnametab.get(off..))
            else {
                continue;
            };
            let matched = match &by_name {
                Some(map) => name
                    .iter()
                    .position(|&b| b == 0)
                    .and_then(|end| map.get(&name[..end]).copied()),
                None => wanted
                    .iter()
                    .copied()
                    .find(|w| name.get(w.len()) == Some(&0) && name.starts_with(w.as_bytes())),
            };
            let Some(matched) = matched else { continue };
            let Some(symbol) = self.symbol(i, func) else {
                continue;
            };
            let flag = func.get(self.layout.func_id_offset() + 1).copied();
            let func_id = func.get(self.layout.func_id_offset()).copied();
            let rank = (u8::from(flag.is_some_and(|f| f & FUNC_FLAG_ASM != 0)) << 1)
                | u8::from(func_id != Some(FUNC_ID_NORMAL));
            match found.get(matched) {
                Some((best, _)) if *best <= rank => {}
                _ => {
                    found.insert(matched, (rank, symbol));
                }
            }
        }
        found
            .into_iter()
            .map(|(name, (_, symbol))| (name.to_owned(), symbol))
            .collect()
    }

    /// The name of the function whose code holds `pc` (a link-time address), for
    /// symbolizing addresses read from a process: a binary search of the entry column.
    pub fn function_name_at(&self, pc: u64) -> Option<String> {
        let off = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        if off >= entry_off(self.pcln, self.nfunc)? {
            return None;
        }
        // The last function whose entry is at or before `off`.
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if entry_off(self.pcln, mid)? <= off {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if entry_off(self.pcln, lo)? > off {
            return None;
        }
        let func = self.func(lo)?;
        let name = read_i32(func, FUNC_NAME_OFF)
            .and_then(|off| usize::try_from(off).ok())
            .and_then(|off| self.funcnametab.get(off..))?;
        let end = name.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&name[..end]).into_owned())
    }

    /// The `_func` record of function `i`.
    fn func(&self, i: usize) -> Option<&'a [u8]> {
        let off = read_u32(self.pcln, i * FUNCTAB_ENTRY_LEN + 4)?;
        self.pcln.get(usize::try_from(off).ok()?..)
    }

    fn symbol(&self, i: usize, func: &[u8]) -> Option<FunctionSymbol> {
        let entry = entry_off(self.pcln, i)?;
        if read_u32(func, 0)? != entry {
            return None;
        }
        let gap = u64::from(entry_off(self.pcln, i + 1)?.checked_sub(entry)?);
        // The pc-value tables span exactly the function's code; the next entry also counts
        // the alignment padding after it. C functions (cgo, internal linking) have no table.
        let size = read_u32(func, FUNC_PCSP)
            .filter(|&off| off != 0)
            .and_then(|off| self.pc_span(usize::try_from(off).ok()?, gap))
            .filter(|&size| size > 0)
            .unwrap_or(gap);
        Some(FunctionSymbol {
            address: self.text_start.checked_add(u64::from(entry))?,
            size,
        })
    }

    /// The code span of a pc-value table: the sum of its pc deltas, up to its terminating
    /// zero value delta. `None` if malformed or longer than `limit`.
    fn pc_span(&self, off: usize, limit: u64) -> Option<u64> {
        let mut table = self.pctab.get(off..)?;
        let mut span: u64 = 0;
        let mut first = true;
        loop {
            let value_delta = read_uvarint(&mut table)?;
            if value_delta == 0 && !first {
                return Some(span);
            }
            first = false;
            let pc_delta = read_uvarint(&mut table)?;
            span = span.checked_add(pc_delta * u64::from(MIN_LC))?;
            if span > limit {
                return None;
            }
        }
    }
}

/// Parses and checks the header, the function table and the first function's record.
fn parse_header(data: &[u8]) -> Result<Header<'_>, PclntabError> {
    let magic = read_u32(data, 0).ok_or(PclntabError::Corrupt("the header is truncated"))?;
    let layout = match magic {
        MAGIC_GO118 => Layout::Go118,
        MAGIC_GO120 => Layout::Go120,
        MAGIC_GO116 => {
            return Err(PclntabError::UnsupportedGo {
                magic,
                go_versions: "1.16 and 1.17",
            })
        }
        MAGIC_GO12 => {
            return Err(PclntabError::UnsupportedGo {
                magic,
                go_versions: "1.2 to 1.15",
            })
        }
        _ => return Err(PclntabError::BadMagic(magic)),
    };
    let header = data
        .get(..HEADER_LEN)
        .ok_or(PclntabError::Corrupt("the header is truncated"))?;
    let (min_lc, ptr_size) = (header[6], header[7]);
    if min_lc != MIN_LC || ptr_size != PTR_SIZE {
        return Err(PclntabError::WrongArchitecture { min_lc, ptr_size });
    }
    if header[4] != 0 || header[5] != 0 {
        return Err(PclntabError::Corrupt("the header's padding is not zero"));
    }
    let word = |i: usize| read_u64(header, 8 + 8 * i).unwrap_or(u64::MAX);
    let offset = |i: usize| usize::try_from(word(i)).unwrap_or(usize::MAX);
    let nfunc = offset(0);
    let text_start = word(2);
    let (funcnametab, cutab, filetab, pctab, pcln) =
        (offset(3), offset(4), offset(5), offset(6), offset(7));
    // The parts follow the header in this order (the linker lays them out so).
    let parts = [
        HEADER_LEN,
        funcnametab,
        cutab,
        filetab,
        pctab,
        pcln,
        data.len(),
    ];
    if !parts.windows(2).all(|w| w[0] <= w[1]) {
        return Err(PclntabError::Corrupt(
            "its parts' offsets are out of order or out of bounds",
        ));
    }
    let (pctab, pcln) = (&data[pctab..pcln], &data[pcln..]);
    if nfunc == 0 {
        return Err(PclntabError::Corrupt("it lists no function"));
    }
    let functab_len = nfunc
        .checked_add(1)
        .and_then(|n| n.checked_mul(FUNCTAB_ENTRY_LEN))
        .filter(|&len| len <= pcln.len())
        .ok_or(PclntabError::Corrupt(
            "its function count exceeds the table's size",
        ))?;
    let mut previous = 0;
    for (i, pair) in pcln[..functab_len]
        .chunks_exact(FUNCTAB_ENTRY_LEN)
        .enumerate()
    {
        let entry = read_u32(pair, 0).unwrap_or(0);
        if entry < previous {
            return Err(PclntabError::Corrupt(
                "its function entries are not in ascending order",
            ));
        }
        previous = entry;
        // The last pair holds only the end of the code.
        if i < nfunc {
            let func = read_u32(pair, 4).map_or(usize::MAX, |off| off as usize);
            if func < functab_len || func.saturating_add(layout.func_len()) > pcln.len() {
                return Err(PclntabError::Corrupt(
                    "a function record lies outside the table",
                ));
            }
        }
    }
    let header = Header {
        layout,
        nfunc,
        text_start,
        funcnametab_offset: funcnametab as u64,
        funcnametab: &data[funcnametab..cutab],
        pctab,
        pcln,
    };
    check_first_function(&header)?;
    Ok(header)
}

/// The first record must agree with the table on its entry and have a readable name: a table
/// found by scanning for its magic is real only if so.
fn check_first_function(header: &Header<'_>) -> Result<(), PclntabError> {
    let valid = || -> Option<bool> {
        let func = header.pcln.get(read_u32(header.pcln, 4)? as usize..)?;
        let name_off = usize::try_from(read_i32(func, FUNC_NAME_OFF)?).ok()?;
        let rest = header.funcnametab.get(name_off..)?;
        let name = &rest[..rest.iter().position(|&b| b == 0)?];
        Some(
            read_u32(func, 0) == entry_off(header.pcln, 0)
                && !name.is_empty()
                && std::str::from_utf8(name).is_ok_and(|s| !s.chars().any(char::is_control)),
        )
    };
    if valid() == Some(true) {
        Ok(())
    } else {
        Err(PclntabError::Corrupt(
            "its first function record is not valid",
        ))
    }
}

/// Resolves `runtime.text`: the header's field (the dynamic relocation's addend in PIE), else
/// the module data's.
fn text_start(
    obj: &object::File<'_>,
    vaddr: u64,
    header: &Header<'_>,
    first_entry: u64,
) -> Result<(u64, TextStartSource), PclntabError> {
    let field = vaddr.wrapping_add(HEADER_TEXT_START as u64);
    if let [Some(text)] = relative_addends(obj, &[field])[..] {
        if text != 0 {
            return Ok((text, TextStartSource::Relocation));
        }
    }
    if header.text_start != 0 {
        return Ok((header.text_start, TextStartSource::Header));
    }
    let funcnametab = vaddr.wrapping_add(header.funcnametab_offset);
    module_data_text(obj, vaddr, funcnametab, first_entry)
        .map(|text| (text, TextStartSource::ModuleData))
        .ok_or(PclntabError::NoTextStart)
}

/// `moduledata.text`, from the module data whose first two fields point at the table (at
/// `vaddr`) and its function names: the `.go.module` section (Go 1.26+), else an aligned
/// pointer to the table in a data section. Its `minpc` must be the first function's entry.
fn module_data_text(
    obj: &object::File<'_>,
    vaddr: u64,
    funcnametab: u64,
    first_entry: u64,
) -> Option<u64> {
    let candidates: Vec<u64> = match obj.section_by_name(".go.module") {
        Some(section) => vec![section.address()],
        None => data_sections(obj)
            .flat_map(|section| {
                let base = section.address();
                let data = section.data().unwrap_or(&[]);
                (aligned_start(base)..data.len())
                    .step_by(8)
                    .filter(move |&pos| read_u64(data, pos) == Some(vaddr))
                    .map(move |pos| base + pos as u64)
            })
            .take(MODULEDATA_CANDIDATES_MAX)
            .collect(),
    };
    candidates.into_iter().find_map(|md| {
        let fields = [0, MODULEDATA_FUNCNAMETAB, MODULEDATA_MINPC, MODULEDATA_TEXT]
            .map(|field| md.checked_add(field));
        let fields = fields.iter().copied().collect::<Option<Vec<u64>>>()?;
        let relocated = relative_addends(obj, &fields);
        let word = |i: usize| relocated[i].or_else(|| read_word(obj, fields[i]));
        let (text, minpc) = (word(3)?, word(2)?);
        (word(0)? == vaddr
            && word(1)? == funcnametab
            && text.checked_add(first_entry) == Some(minpc))
        .then_some(text)
    })
}

/// The 8 bytes at a link-time address, as the file holds them.
fn read_word(obj: &object::File<'_>, vaddr: u64) -> Option<u64> {
    obj.sections().find_map(|section| {
        let off = vaddr.checked_sub(section.address())?;
        read_u64(section.data().ok()?, usize::try_from(off).ok()?)
    })
}

/// Sections that hold initialized, non-executable data.
fn data_sections<'a, 'f>(
    obj: &'f object::File<'a>,
) -> impl Iterator<Item = object::Section<'a, 'f>> + 'f {
    obj.sections().filter(|s| {
        matches!(
            s.kind(),
            SectionKind::Data | SectionKind::ReadOnlyData | SectionKind::ReadOnlyDataWithRel
        )
    })
}

/// The first offset in a section at `base` whose address is 8-byte aligned.
fn aligned_start(base: u64) -> usize {
    ((8 - base % 8) % 8) as usize
}

/// The addends of the `R_X86_64_RELATIVE` relocations at the given addresses, in one pass: in
/// PIE, the link-time value of a pointer the loader relocates.
fn relative_addends(obj: &object::File<'_>, at: &[u64]) -> Vec<Option<u64>> {
    let mut found = vec![None; at.len()];
    if obj.kind() != ObjectKind::Dynamic {
        return found;
    }
    let Some(relocations) = obj.dynamic_relocations() else {
        return found;
    };
    for (offset, relocation) in relocations {
        if relocation.flags()
            != (RelocationFlags::Elf {
                r_type: R_X86_64_RELATIVE,
            })
        {
            continue;
        }
        if let Some(i) = at.iter().position(|&a| a == offset) {
            found[i] = u64::try_from(relocation.addend()).ok();
        }
    }
    found
}

/// Looks for a valid table in the binary's data sections (`.data.rel.ro` first), at 8-byte
/// aligned addresses holding a supported magic, quantum 1 and pointer size 8.
fn scan<'a>(obj: &object::File<'a>) -> Result<Pclntab<'a>, PclntabError> {
    let mut sections: Vec<_> = data_sections(obj).collect();
    sections.sort_by_key(|s| !s.name().is_ok_and(|n| n.starts_with(".data.rel.ro")));
    let mut unsupported = None;
    for section in sections {
        let Ok(data) = section.data() else { continue };
        let base = section.address();
        let mut pos = aligned_start(base);
        while pos + HEADER_LEN <= data.len() {
            let here = &data[pos..];
            if here[4..8] == [0, 0, MIN_LC, PTR_SIZE] {
                match read_u32(here, 0) {
                    Some(MAGIC_GO118 | MAGIC_GO120) => {
                        let location = Location::Within {
                            section: section.name().unwrap_or("?").to_owned(),
                            offset: pos as u64,
                        };
                        if let Ok(table) = Pclntab::in_elf(obj, here, base + pos as u64, location) {
                            return Ok(table);
                        }
                    }
                    Some(MAGIC_GO116 | MAGIC_GO12) if unsupported.is_none() => {
                        unsupported = parse_header(here).err();
                    }
                    _ => {}
                }
            }
            pos += 8;
        }
    }
    Err(unsupported.unwrap_or(PclntabError::NotFound))
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

/// An unsigned LEB128 value of up to 32 bits, as the pc-value tables hold.
fn read_uvarint(data: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let (&b, rest) = data.split_first()?;
        *data = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: u64 = 0x40_1000;

    /// One function of a synthetic table.
    struct Func {
        name: &'static str,
        entry: u32,
        /// Code size in its pc-value table; 0 for no table (C code).
        code: u32,
        func_id: u8,
        flag: u8,
    }

    fn func(name: &'static str, entry: u32, code: u32) -> Func {
        Func {
            name,
            entry,
            code,
            func_id: FUNC_ID_NORMAL,
            flag: 0,
        }
    }

    fn uvarint(out: &mut Vec<u8>, mut v: u32) {
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    /// A table as Go's linker lays it out: header, names, (empty) CU and file tables, pc-value
    /// tables, function table and `_func` records.
    fn table(layout: Layout, text_start: u64, funcs: &[Func], end: u32) -> Vec<u8> {
        let mut names = Vec::new();
        let mut name_offs = Vec::new();
        for f in funcs {
            name_offs.push(names.len() as u32);
            names.extend_from_slice(f.name.as_bytes());
            names.push(0);
        }
        // Offset 0 of the pc-value tables means "no table".
        let mut pctab = vec![0];
        let mut pcsp_offs = Vec::new();
        for f in funcs {
            if f.code == 0 {
                pcsp_offs.push(0);
                continue;
            }
            pcsp_offs.push(pctab.len() as u32);
            // Two runs (frame size 0, then 8) adding up to the code size, then the end.
            for (value_delta, pc_delta) in [(2, 1), (16, f.code - 1)] {
                uvarint(&mut pctab, value_delta);
                uvarint(&mut pctab, pc_delta);
            }
            pctab.push(0);
        }
        let functab_len = (funcs.len() + 1) * FUNCTAB_ENTRY_LEN;
        let mut pcln = vec![0; functab_len];
        for (i, f) in funcs.iter().enumerate() {
            let rec = pcln.len() as u32;
            pcln[i * 8..i * 8 + 4].copy_from_slice(&f.entry.to_le_bytes());
            pcln[i * 8 + 4..i * 8 + 8].copy_from_slice(&rec.to_le_bytes());
            let mut record = vec![0; layout.func_len()];
            record[0..4].copy_from_slice(&f.entry.to_le_bytes());
            record[4..8].copy_from_slice(&name_offs[i].to_le_bytes());
            record[16..20].copy_from_slice(&pcsp_offs[i].to_le_bytes());
            record[layout.func_id_offset()] = f.func_id;
            record[layout.func_id_offset() + 1] = f.flag;
            pcln.extend_from_slice(&record);
        }
        let n = funcs.len();
        pcln[n * 8..n * 8 + 4].copy_from_slice(&end.to_le_bytes());

        let magic = match layout {
            Layout::Go118 => MAGIC_GO118,
            Layout::Go120 => MAGIC_GO120,
        };
        let mut out = magic.to_le_bytes().to_vec();
        out.extend_from_slice(&[0, 0, MIN_LC, PTR_SIZE]);
        let funcnametab = HEADER_LEN;
        let cutab = funcnametab + names.len();
        let pctab_off = cutab;
        let pcln_off = pctab_off + pctab.len();
        for word in [
            n as u64,
            0,
            text_start,
            funcnametab as u64,
            cutab as u64,
            cutab as u64,
            pctab_off as u64,
            pcln_off as u64,
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&names);
        out.extend_from_slice(&pctab);
        out.extend_from_slice(&pcln);
        out
    }

    fn sample(layout: Layout) -> Vec<u8> {
        table(
            layout,
            TEXT,
            &[
                func("runtime.text", 0, 0),
                func("runtime.main", 0x20, 0x31),
                func("main.main", 0x60, 0x1c),
                func("net/http.serverHandler.ServeHTTP", 0x80, 0x40),
            ],
            0xc0,
        )
    }

    fn sym(address: u64, size: u64) -> FunctionSymbol {
        FunctionSymbol { address, size }
    }

    #[test]
    fn finds_wanted_functions_in_both_layouts() {
        for layout in [Layout::Go118, Layout::Go120] {
            let bytes = sample(layout);
            let t = Pclntab::from_bytes(&bytes, None).unwrap();
            assert_eq!(t.layout(), layout);
            assert_eq!(t.text_start(), TEXT);
            assert_eq!(t.text_start_source(), TextStartSource::Header);
            assert_eq!(t.function_count(), 4);
            let found = t.functions(&["main.main", "runtime.main", "runtime.text", "absent"]);
            assert_eq!(found.len(), 3);
            // Sizes from the pc-value tables, without the padding up to the next function.
            assert_eq!(found["runtime.main"], sym(TEXT + 0x20, 0x31));
            assert_eq!(found["main.main"], sym(TEXT + 0x60, 0x1c));
            // No pc-value table: up to the next function.
            assert_eq!(found["runtime.text"], sym(TEXT, 0x20));
        }
    }

    #[test]
    fn many_wanted_names_give_the_same_answer() {
        let bytes = sample(Layout::Go120);
        let t = Pclntab::from_bytes(&bytes, None).unwrap();
        let few = ["net/http.serverHandler.ServeHTTP", "main.main"];
        let mut many: Vec<&str> = few.to_vec();
        many.extend(["a", "b", "c", "d", "e", "f", "g", "h", "i"]);
        assert!(many.len() > LINEAR_LOOKUP_MAX);
        assert_eq!(t.functions(&few), t.functions(&many));
        assert_eq!(
            t.functions(&many)["net/http.serverHandler.ServeHTTP"],
            sym(TEXT + 0x80, 0x40)
        );
    }

    #[test]
    fn names_match_whole() {
        let bytes = sample(Layout::Go120);
        let t = Pclntab::from_bytes(&bytes, None).unwrap();
        assert!(t
            .functions(&["main.mai", "main.main.func1", "", "runtime"])
            .is_empty());
    }

    #[test]
    fn caller_text_start_wins_and_zero_header_needs_one() {
        let bytes = table(Layout::Go120, 0, &[func("main.main", 0, 8)], 16);
        assert_eq!(
            Pclntab::from_bytes(&bytes, None).unwrap_err(),
            PclntabError::NoTextStart
        );
        let t = Pclntab::from_bytes(&bytes, Some(0x1000)).unwrap();
        assert_eq!(t.text_start_source(), TextStartSource::Caller);
        assert_eq!(t.functions(&["main.main"])["main.main"], sym(0x1000, 8));
    }

    #[test]
    fn abi_wrappers_lose_to_the_go_callable_function() {
        const WRAPPER: u8 = 23;
        // A Go function and the ABI0 wrapper made for assembly callers; an assembly function
        // and the ABIInternal wrapper Go code calls.
        for (first, second, want) in [
            ((WRAPPER, 0), (FUNC_ID_NORMAL, 0), 0x40),
            ((FUNC_ID_NORMAL, 0), (WRAPPER, 0), 0x20),
            ((FUNC_ID_NORMAL, FUNC_FLAG_ASM), (WRAPPER, 0), 0x40),
            ((WRAPPER, 0), (FUNC_ID_NORMAL, FUNC_FLAG_ASM), 0x20),
        ] {
            let mut a = func("runtime.f", 0x20, 8);
            (a.func_id, a.flag) = first;
            let mut b = func("runtime.f", 0x40, 8);
            (b.func_id, b.flag) = second;
            let bytes = table(Layout::Go120, TEXT, &[func("x", 0, 8), a, b], 0x60);
            let t = Pclntab::from_bytes(&bytes, None).unwrap();
            assert_eq!(
                t.functions(&["runtime.f"])["runtime.f"].address,
                TEXT + want,
                "{first:?} {second:?}"
            );
        }
    }

    #[test]
    fn old_and_foreign_magics_are_refused() {
        let mut bytes = sample(Layout::Go120);
        for (magic, versions) in [(MAGIC_GO116, "1.16 and 1.17"), (MAGIC_GO12, "1.2 to 1.15")] {
            bytes[..4].copy_from_slice(&magic.to_le_bytes());
            let err = Pclntab::from_bytes(&bytes, None).unwrap_err();
            assert_eq!(
                err,
                PclntabError::UnsupportedGo {
                    magic,
                    go_versions: versions
                }
            );
            assert!(err.to_string().contains(versions), "{err}");
        }
        bytes[..4].copy_from_slice(&0x1234_5678u32.to_le_bytes());
        assert_eq!(
            Pclntab::from_bytes(&bytes, None).unwrap_err(),
            PclntabError::BadMagic(0x1234_5678)
        );
    }

    #[test]
    fn other_architectures_are_refused() {
        let mut bytes = sample(Layout::Go120);
        bytes[7] = 4;
        assert_eq!(
            Pclntab::from_bytes(&bytes, None).unwrap_err(),
            PclntabError::WrongArchitecture {
                min_lc: 1,
                ptr_size: 4
            }
        );
    }

    fn set_word(bytes: &mut [u8], field: usize, value: u64) {
        bytes[8 + 8 * field..16 + 8 * field].copy_from_slice(&value.to_le_bytes());
    }

    fn corrupt(bytes: &[u8]) -> &'static str {
        match Pclntab::from_bytes(bytes, None) {
            Err(PclntabError::Corrupt(what)) => what,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn inconsistent_headers_are_refused() {
        let good = sample(Layout::Go120);
        let pcln = read_u64(&good, 8 + 8 * 7).unwrap() as usize;
        // Function count beyond the table, and absurd.
        for nfunc in [0, 5_000, u64::MAX] {
            let mut b = good.clone();
            set_word(&mut b, 0, nfunc);
            corrupt(&b);
        }
        // Offsets out of bounds or out of order.
        for (field, value) in [
            (7, good.len() as u64 + 1),
            (7, u64::MAX),
            (3, 8),
            (6, 10_000),
        ] {
            let mut b = good.clone();
            set_word(&mut b, field, value);
            corrupt(&b);
        }
        // Entries descending.
        let mut b = good.clone();
        b[pcln + 8..pcln + 12].copy_from_slice(&0x1000u32.to_le_bytes());
        corrupt(&b);
        // A record outside the table, or inside the function table.
        for off in [u32::MAX, good.len() as u32, 4] {
            let mut b = good.clone();
            b[pcln + 12..pcln + 16].copy_from_slice(&off.to_le_bytes());
            corrupt(&b);
        }
        // First record disagreeing with the table, or with a garbage name.
        let first = read_u32(&good, pcln + 4).unwrap() as usize;
        let mut b = good.clone();
        b[pcln + first] ^= 1;
        corrupt(&b);
        for name_off in [u32::MAX, 0x7fff_ffff, 1_000] {
            let mut b = good.clone();
            b[pcln + first + 4..pcln + first + 8].copy_from_slice(&name_off.to_le_bytes());
            corrupt(&b);
        }
        let mut b = good.clone();
        b[HEADER_LEN] = b'\n';
        corrupt(&b);
    }

    #[test]
    fn every_truncation_is_an_error() {
        for layout in [Layout::Go118, Layout::Go120] {
            let bytes = sample(layout);
            for len in 0..bytes.len() {
                assert!(
                    Pclntab::from_bytes(&bytes[..len], None).is_err(),
                    "{layout:?} truncated to {len}"
                );
            }
        }
    }

    #[test]
    fn mutations_never_panic() {
        let good = sample(Layout::Go120);
        let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let wanted = [
            "main.main",
            "runtime.main",
            "net/http.serverHandler.ServeHTTP",
        ];
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..1 + next() % 4 {
                let i = next() as usize % b.len();
                b[i] = next() as u8;
            }
            if let Ok(t) = Pclntab::from_bytes(&b, None) {
                for s in t.functions(&wanted).values() {
                    assert!(s.size > 0 && s.address >= t.text_start());
                }
            }
        }
    }

    #[test]
    fn garbage_pc_value_tables_fall_back_to_the_next_entry() {
        let bytes = sample(Layout::Go120);
        let t = Pclntab::from_bytes(&bytes, None).unwrap();
        // Unterminated varints, a table longer than the gap, an empty table.
        assert_eq!(t.pc_span(t.pctab.len(), 100), None);
        assert_eq!(t.pc_span(1, 0x10), None);
        let mut table = &[0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff][..];
        assert_eq!(read_uvarint(&mut table), None);
    }
}
