//! The table parsed from synthetic tables laid out as Go's linker does, good and damaged.

use super::{
    functab::{read_uvarint, FUNC_FLAG_ASM, FUNC_ID_NORMAL, LINEAR_LOOKUP_MAX},
    *,
};
use crate::symbols::elf::FunctionSymbol;

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
