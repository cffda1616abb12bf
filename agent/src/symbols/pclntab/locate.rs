//! Where the table is in an ELF binary (its own section, else found by its header in the
//! data), and `runtime.text`: the header's field, the dynamic relocation of it (PIE), else the
//! module data's.

use object::{
    elf::R_X86_64_RELATIVE, Object, ObjectKind, ObjectSection, RelocationFlags, SectionKind,
};

use super::{
    header::{parse_header, Header},
    read_u32, read_u64, Location, Pclntab, PclntabError, TextStartSource, HEADER_LEN, MAGIC_GO116,
    MAGIC_GO118, MAGIC_GO12, MAGIC_GO120, MIN_LC, PTR_SIZE,
};

const HEADER_TEXT_START: usize = 24;
/// `moduledata` fields: `pcHeader`, six slices (`funcnametab` first), `findfunctab`, `minpc`,
/// `maxpc`, `text`. Unchanged from Go 1.18 to 1.27.
const MODULEDATA_FUNCNAMETAB: u64 = 8;
const MODULEDATA_MINPC: u64 = 8 + 6 * 24 + 8;
const MODULEDATA_TEXT: u64 = MODULEDATA_MINPC + 16;
/// Pointers to the table checked as the start of the module data when `.go.module` is absent.
const MODULEDATA_CANDIDATES_MAX: usize = 16;

/// Resolves `runtime.text`: the header's field (the dynamic relocation's addend in PIE), else
/// the module data's.
pub(super) fn text_start(
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
pub(super) fn scan<'a>(obj: &object::File<'a>) -> Result<Pclntab<'a>, PclntabError> {
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
