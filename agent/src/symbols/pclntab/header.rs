//! The table's header: its magic (which `_func` layout), architecture, function count and
//! the offsets of its parts, each checked against the bytes it describes, with the function
//! table and the first function's record.

use super::{
    entry_off, read_i32, read_u32, read_u64, Layout, PclntabError, FUNCTAB_ENTRY_LEN,
    FUNC_NAME_OFF, HEADER_LEN, MAGIC_GO116, MAGIC_GO118, MAGIC_GO12, MAGIC_GO120, MIN_LC, PTR_SIZE,
};

/// The header's fields, checked against the bytes they describe.
pub(super) struct Header<'a> {
    pub(super) layout: Layout,
    pub(super) nfunc: usize,
    pub(super) text_start: u64,
    pub(super) funcnametab_offset: u64,
    pub(super) funcnametab: &'a [u8],
    pub(super) pctab: &'a [u8],
    pub(super) pcln: &'a [u8],
}

/// Parses and checks the header, the function table and the first function's record.
pub(super) fn parse_header(data: &[u8]) -> Result<Header<'_>, PclntabError> {
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
