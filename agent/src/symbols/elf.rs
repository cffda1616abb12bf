//! ELF access for probe placement: symbols by name (from the symbol table, or for Go programs
//! from Go's function table when stripped), virtual address to file offset (what the kernel's
//! uprobe API takes), bytes at an address, and sections (possibly compressed).

use std::{borrow::Cow, collections::HashMap, fs::File, path::Path};

use object::{Object, ObjectSection, ObjectSegment, ObjectSymbol};

use super::{pclntab::Pclntab, ElfProblem, SymbolsError};

pub struct ElfFile {
    map: memmap2::Mmap,
}

/// A function's place in the binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionSymbol {
    pub address: u64,
    pub size: u64,
}

impl ElfFile {
    pub fn open(path: &Path) -> Result<Self, SymbolsError> {
        let io = |source| SymbolsError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only; a binary changed on disk underneath us yields wrong
        // bytes (caught by the parsers' checks), not undefined behaviour in safe code we rely
        // on for memory safety, since every read goes through bounds-checked slices.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let elf = Self { map };
        elf.object()?;
        Ok(elf)
    }

    pub fn from_bytes_for_test(bytes: &[u8]) -> Result<Self, SymbolsError> {
        let mut anon =
            memmap2::MmapMut::map_anon(bytes.len().max(1)).map_err(|source| SymbolsError::Io {
                path: "<memory>".into(),
                source,
            })?;
        anon[..bytes.len()].copy_from_slice(bytes);
        let map = anon.make_read_only().map_err(|source| SymbolsError::Io {
            path: "<memory>".into(),
            source,
        })?;
        let elf = Self { map };
        elf.object()?;
        Ok(elf)
    }

    pub fn object(&self) -> Result<object::File<'_>, SymbolsError> {
        let obj = object::File::parse(&*self.map)
            .map_err(|e| SymbolsError::BadElf(ElfProblem::Unparsable(e)))?;
        if obj.format() != object::BinaryFormat::Elf {
            return Err(SymbolsError::BadElf(ElfProblem::NotElf));
        }
        if obj.architecture() != object::Architecture::X86_64 {
            return Err(SymbolsError::BadElf(ElfProblem::Architecture(
                obj.architecture(),
            )));
        }
        Ok(obj)
    }

    /// Looks up the given function symbols in one pass over the symbol table.
    pub fn functions(
        &self,
        wanted: &[&str],
    ) -> Result<HashMap<String, FunctionSymbol>, SymbolsError> {
        let obj = self.object()?;
        let mut found = HashMap::new();
        for sym in obj.symbols() {
            let Ok(name) = sym.name() else { continue };
            if wanted.contains(&name) && sym.address() != 0 {
                found.insert(
                    name.to_owned(),
                    FunctionSymbol {
                        address: sym.address(),
                        size: sym.size(),
                    },
                );
            }
        }
        Ok(found)
    }

    /// Looks up Go functions: in the symbol table, then, for the names it lacks (a stripped
    /// binary has none), in Go's function table, which every Go binary keeps. Same addresses
    /// and sizes either way. A function table that cannot be read is an error only when there
    /// is no symbol table to trust instead.
    pub fn go_functions(
        &self,
        wanted: &[&str],
    ) -> Result<HashMap<String, FunctionSymbol>, SymbolsError> {
        let mut found = self.functions(wanted)?;
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|name| !found.contains_key(*name))
            .collect();
        if missing.is_empty() {
            return Ok(found);
        }
        match Pclntab::parse(self) {
            Ok(table) => found.extend(table.functions(&missing)),
            Err(e) if !self.has_symbols() => return Err(e.into()),
            Err(e) => log::debug!("symbol table lacks {missing:?}; function table: {e}"),
        }
        Ok(found)
    }

    /// Whether the binary has a symbol table at all.
    pub fn has_symbols(&self) -> bool {
        self.object()
            .map(|o| o.symbols().next().is_some())
            .unwrap_or(false)
    }

    /// The file offset of a virtual address, from the loadable segment holding it. Uprobes are
    /// placed by file offset.
    pub fn file_offset(&self, vaddr: u64) -> Option<u64> {
        let obj = self.object().ok()?;
        obj.segments().find_map(|seg| {
            let (file_off, file_size) = seg.file_range();
            let start = seg.address();
            (vaddr >= start && vaddr < start + file_size).then(|| vaddr - start + file_off)
        })
    }

    /// Whether a virtual address is inside a loadable segment, zero-filled part (`.bss`)
    /// included: where a global variable can be.
    pub fn is_loaded(&self, vaddr: u64) -> bool {
        self.object().is_ok_and(|obj| {
            obj.segments().any(|seg| {
                let start = seg.address();
                vaddr >= start && vaddr - start < seg.size()
            })
        })
    }

    /// The link-time address the loader maps the file's first page at (the lowest loadable
    /// segment's, page-aligned): subtracted from where it is mapped, it gives a process's load
    /// bias (0 unless PIE).
    pub fn image_base(&self) -> Option<u64> {
        let obj = self.object().ok()?;
        obj.segments()
            .filter(|seg| seg.file_range().0 == 0)
            .map(|seg| seg.address() & !0xfff)
            .min()
    }

    /// Up to `len` bytes of the file at a virtual address.
    pub fn bytes_at(&self, vaddr: u64, len: u64) -> Option<&[u8]> {
        let off = self.file_offset(vaddr)? as usize;
        let end = off.checked_add(len as usize)?.min(self.map.len());
        self.map.get(off..end)
    }

    /// A section's contents by name, decompressed if needed.
    pub fn section(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        let obj = self.object().ok()?;
        let section = obj.section_by_name(name)?;
        section.uncompressed_data().ok()
    }

    pub fn has_section(&self, name: &str) -> bool {
        self.object()
            .map(|o| o.section_by_name(name).is_some())
            .unwrap_or(false)
    }
}
