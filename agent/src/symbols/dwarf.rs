//! Struct layouts from DWARF (gimli): the byte offset of each named member of named structs.
//! Go emits one DW_TAG_structure_type per Go struct, named by its package path
//! (`net/http.Request`), with DW_AT_data_member_location constants.

use std::{borrow::Cow, collections::HashMap};

use gimli::{AttributeValue, EndianSlice, RunTimeEndian};

use super::{elf::ElfFile, SymbolsError};

/// Struct name -> (member name -> offset).
pub type Layouts = HashMap<String, HashMap<String, u64>>;

/// Reads the layouts of the `wanted` structs. Returns `Ok(None)` when the binary has no DWARF.
pub fn struct_layouts(elf: &ElfFile, wanted: &[&str]) -> Result<Option<Layouts>, SymbolsError> {
    if !elf.has_section(".debug_info") && !elf.has_section(".zdebug_info") {
        return Ok(None);
    }
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<'_, [u8]>, SymbolsError> {
        Ok(elf.section(id.name()).unwrap_or(Cow::Borrowed(&[])))
    })?;
    let dwarf = sections.borrow(|s| EndianSlice::new(s, RunTimeEndian::Little));
    let bad = SymbolsError::BadDwarf;

    let mut layouts = Layouts::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next().map_err(bad)? {
        let unit = dwarf.unit(header).map_err(bad)?;
        let mut entries = unit.entries();
        // Depth of the struct whose members we are collecting, if any.
        let mut collecting: Option<(isize, String)> = None;
        let mut depth: isize = 0;
        while let Some((delta, entry)) = entries.next_dfs().map_err(bad)? {
            depth += delta;
            if let Some((struct_depth, _)) = &collecting {
                if depth <= *struct_depth {
                    collecting = None;
                }
            }
            match entry.tag() {
                gimli::DW_TAG_structure_type if collecting.is_none() => {
                    let Some(name) = entry_name(&dwarf, &unit, entry) else {
                        continue;
                    };
                    if wanted.contains(&name.as_str()) && !layouts.contains_key(&name) {
                        layouts.insert(name.clone(), HashMap::new());
                        collecting = Some((depth, name));
                    }
                }
                gimli::DW_TAG_member => {
                    let Some((struct_depth, struct_name)) = &collecting else {
                        continue;
                    };
                    if depth != struct_depth + 1 {
                        continue;
                    }
                    let (Some(name), Some(offset)) =
                        (entry_name(&dwarf, &unit, entry), member_offset(entry))
                    else {
                        continue;
                    };
                    if let Some(members) = layouts.get_mut(struct_name) {
                        members.insert(name, offset);
                    }
                }
                _ => {}
            }
        }
        if layouts.len() == wanted.len() && collecting.is_none() {
            break;
        }
    }
    Ok(Some(layouts))
}

type Reader<'a> = EndianSlice<'a, RunTimeEndian>;

fn entry_name(
    dwarf: &gimli::Dwarf<Reader<'_>>,
    unit: &gimli::Unit<Reader<'_>>,
    entry: &gimli::DebuggingInformationEntry<'_, '_, Reader<'_>>,
) -> Option<String> {
    let value = entry.attr_value(gimli::DW_AT_name).ok()??;
    let s = dwarf.attr_string(unit, value).ok()?;
    Some(String::from_utf8_lossy(s.slice()).into_owned())
}

fn member_offset(entry: &gimli::DebuggingInformationEntry<'_, '_, Reader<'_>>) -> Option<u64> {
    match entry.attr_value(gimli::DW_AT_data_member_location).ok()?? {
        AttributeValue::Udata(v) => Some(v),
        AttributeValue::Sdata(v) => u64::try_from(v).ok(),
        AttributeValue::Data1(v) => Some(v.into()),
        AttributeValue::Data2(v) => Some(v.into()),
        AttributeValue::Data4(v) => Some(v.into()),
        AttributeValue::Data8(v) => Some(v),
        _ => None,
    }
}

/// Looks up one member's offset, with an error that names what is missing.
pub fn offset_of(layouts: &Layouts, strukt: &str, member: &str) -> Result<u64, SymbolsError> {
    layouts
        .get(strukt)
        .and_then(|m| m.get(member))
        .copied()
        .ok_or_else(|| SymbolsError::MissingField {
            strukt: strukt.to_owned(),
            member: member.to_owned(),
        })
}
