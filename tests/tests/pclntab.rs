//! Go's function table (pclntab) on real binaries: for each Go the tests have and each build
//! mode, the stripped binary's table gives the functions' addresses and sizes that the
//! unstripped twin's ELF symbol table gives (same toolchain, same sources: same code layout,
//! which is checked too), and the table is found where that mode puts it.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use obs_agent::symbols::{
    elf::{ElfFile, FunctionSymbol},
    go_binary,
    pclntab::{Location, Pclntab, PclntabError, TextStartSource},
};
use obs_integration_tests::{go_build_pure, toolchains, xorshift, BuildMode, GoVersion, Toolchain};

const APP: &str = "gohello";
const WANTED: [&str; 4] = [
    "net/http.serverHandler.ServeHTTP",
    "net/http.(*ServeMux).ServeHTTP",
    "runtime.main",
    "main.main",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// `go build`, pure Go.
    Default,
    /// `-buildmode=pie`, pure Go, Go's linker.
    Pie,
    /// cgo, linked by gcc (`-linkmode=external`): C code before Go's in `.text`.
    CgoExternal,
    /// cgo, PIE linked by gcc: the table merged into `.data.rel.ro` before Go 1.26.
    PieExternal,
}

impl Mode {
    /// The library's build mode of this mode's build, with its symbols or `stripped`
    /// (`-s -w`).
    fn build_mode(self, stripped: bool) -> BuildMode {
        match self {
            Mode::Default if stripped => BuildMode::Stripped,
            Mode::Default => BuildMode::Default,
            Mode::Pie => BuildMode::Pie,
            Mode::CgoExternal => BuildMode::CgoExternal,
            Mode::PieExternal => BuildMode::PieExternal,
        }
    }

    fn external(self) -> bool {
        matches!(self, Mode::CgoExternal | Mode::PieExternal)
    }
}

/// A Go toolchain and the release it reports (`go1.25.5`, minor 25).
struct Go {
    toolchain: Toolchain,
    version: String,
    minor: u32,
}

fn go(toolchain: Toolchain) -> Go {
    let out = Command::new(&toolchain.go)
        .args(["env", "GOVERSION"])
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", toolchain.go.display()));
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let minor = toolchain.minor_number();
    Go {
        toolchain,
        version,
        minor,
    }
}

/// Builds tests/apps/gohello in `mode`, with `-s -w` if `stripped`; pure Go but in the modes
/// that link C with gcc.
fn build(tc: &Go, mode: Mode, stripped: bool) -> PathBuf {
    go_build_pure(APP, &tc.toolchain, mode.build_mode(stripped), !stripped)
}

/// Every function symbol: name -> addresses (a few names are defined more than once).
fn symbol_table(elf: &ElfFile) -> HashMap<String, Vec<FunctionSymbol>> {
    let mut symbols: HashMap<String, Vec<FunctionSymbol>> = HashMap::new();
    for sym in elf.object().unwrap().symbols() {
        if sym.kind() == SymbolKind::Text && sym.address() != 0 {
            if let Ok(name) = sym.name() {
                symbols
                    .entry(name.to_owned())
                    .or_default()
                    .push(FunctionSymbol {
                        address: sym.address(),
                        size: sym.size(),
                    });
            }
        }
    }
    symbols
}

fn section_address(elf: &ElfFile, name: &str) -> u64 {
    elf.object()
        .unwrap()
        .section_by_name(name)
        .unwrap_or_else(|| panic!("no {name} section"))
        .address()
}

/// Where the table is, and where `runtime.text` comes from, for this mode and Go.
fn expected(mode: Mode, go_minor: u32) -> (&'static str, TextStartSource) {
    if go_minor >= 26 {
        return (".gopclntab", TextStartSource::ModuleData);
    }
    match mode {
        Mode::Default | Mode::CgoExternal => (".gopclntab", TextStartSource::Header),
        Mode::Pie => (".data.rel.ro.gopclntab", TextStartSource::Relocation),
        Mode::PieExternal => (".data.rel.ro", TextStartSource::Relocation),
    }
}

fn check_mode(mode: Mode) {
    for toolchain in toolchains() {
        let tc = go(toolchain);
        let what = format!("{} {mode:?}", tc.version);
        let full = ElfFile::open(&build(&tc, mode, false)).unwrap();
        let stripped_path = build(&tc, mode, true);
        let stripped = ElfFile::open(&stripped_path).unwrap();
        assert!(full.has_symbols(), "{what}");
        assert!(!stripped.has_symbols(), "{what}: -s left a symbol table");

        let table = Pclntab::parse(&stripped).unwrap_or_else(|e| panic!("{what}: {e}"));
        let (section, source) = expected(mode, tc.minor);
        match table.location() {
            Location::Section(name) => assert_eq!(*name, section, "{what}"),
            Location::Within { section: name, .. } => assert_eq!(name, section, "{what}"),
            Location::Bytes => unreachable!(),
        }
        assert_eq!(table.text_start_source(), source, "{what}");

        let symbols = symbol_table(&full);
        let runtime_text = symbols["runtime.text"][0].address;
        assert_eq!(table.text_start(), runtime_text, "{what}: runtime.text");
        let text_section = section_address(&stripped, ".text");
        if mode.external() {
            // gcc put C code before Go's.
            assert!(runtime_text > text_section, "{what}: {runtime_text:#x}");
        } else {
            assert_eq!(runtime_text, text_section, "{what}");
        }

        // The four functions: exactly the symbol table's address and size.
        let from_table = table.functions(&WANTED);
        let from_symbols = full.functions(&WANTED).unwrap();
        assert_eq!(from_symbols.len(), WANTED.len(), "{what}");
        assert_eq!(from_table, from_symbols, "{what}");
        assert_eq!(
            stripped.go_functions(&WANTED).unwrap(),
            from_symbols,
            "{what}"
        );

        // The assumption: -s -w changes no code address.
        let full_table = Pclntab::parse(&full).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(full_table.text_start(), table.text_start(), "{what}");
        assert_eq!(
            full_table.function_count(),
            table.function_count(),
            "{what}"
        );

        // Every function the symbol table and the table both list: the same address.
        let names: Vec<&str> = symbols.keys().map(String::as_str).collect();
        let listed = table.functions(&names);
        assert_eq!(
            full_table.functions(&names),
            listed,
            "{what}: layouts differ"
        );
        let mut same_size = 0;
        for (name, found) in &listed {
            let candidates = &symbols[name];
            assert!(
                candidates.iter().any(|s| s.address == found.address),
                "{what}: {name} at {:#x} in the table, {candidates:x?} in the symbol table",
                found.address
            );
            same_size += usize::from(candidates.contains(found));
        }
        // Most of the table is in the symbol table (Go 1.19 abbreviates generic names in
        // the table only), and sizes agree but for code without pc tables (markers, C).
        assert!(
            listed.len() * 10 > table.function_count() * 9,
            "{what}: only {} of {} functions compared",
            listed.len(),
            table.function_count()
        );
        assert!(
            listed.len() - same_size <= 4,
            "{what}: {} of {} sizes differ",
            listed.len() - same_size,
            listed.len()
        );
        eprintln!(
            "{what}: {:?} runtime.text {runtime_text:#x} ({source:?}), {} functions, {} \
             compared, {} sizes differ",
            table.location(),
            table.function_count(),
            listed.len(),
            listed.len() - same_size
        );

        check_fallbacks(&what, &stripped_path, &table, &from_symbols);

        // The whole analysis accepts the stripped binary; Go 1.22+ gets pattern discovery
        // (functions from the pclntab, layouts from the offsets table).
        match go_binary::analyze(&stripped) {
            Ok(b) => assert_eq!(b.mux_discovery.is_some(), tc.minor >= 22, "{what}"),
            Err(e) => panic!("{what}: {e}"),
        }
        if tc.minor < 22 {
            let b = go_binary::analyze(&stripped).unwrap();
            assert!(b.mux_discovery.is_none(), "{what}");
        }
    }
}

/// The less common ways to `runtime.text`, on copies of the binary: a PIE whose header field
/// the file leaves zero (only the relocation holds it); module data not in `.go.module`.
fn check_fallbacks(
    what: &str,
    path: &Path,
    table: &Pclntab<'_>,
    wanted: &HashMap<String, FunctionSymbol>,
) {
    let mut bytes = std::fs::read(path).unwrap();
    match table.text_start_source() {
        TextStartSource::Relocation => {
            let original = ElfFile::open(path).unwrap();
            let obj = original.object().unwrap();
            let (section, offset) = match table.location() {
                Location::Section(name) => (*name, 0),
                Location::Within { section, offset } => (section.as_str(), *offset),
                Location::Bytes => unreachable!(),
            };
            let (start, _) = obj.section_by_name(section).unwrap().file_range().unwrap();
            let field = (start + offset) as usize + 24;
            bytes[field..field + 8].fill(0);
        }
        TextStartSource::ModuleData => {
            let (from, to) = (&b".go.module\0"[..], &b".go.modulX\0"[..]);
            let at = bytes
                .windows(from.len())
                .rposition(|w| w == from)
                .expect("the .go.module section name");
            bytes[at..at + to.len()].copy_from_slice(to);
        }
        TextStartSource::Header | TextStartSource::Caller => return,
    }
    let elf = ElfFile::from_bytes_for_test(&bytes).unwrap();
    let changed = Pclntab::parse(&elf).unwrap_or_else(|e| panic!("{what} (changed): {e}"));
    assert_eq!(changed.text_start(), table.text_start(), "{what} (changed)");
    assert_eq!(
        changed.text_start_source(),
        table.text_start_source(),
        "{what}"
    );
    assert_eq!(&changed.functions(&WANTED), wanted, "{what} (changed)");
}

#[test]
fn default_build() {
    check_mode(Mode::Default);
}

#[test]
fn pie() {
    check_mode(Mode::Pie);
}

#[test]
fn cgo_external_linking() {
    check_mode(Mode::CgoExternal);
}

#[test]
fn pie_external_linking() {
    check_mode(Mode::PieExternal);
}

/// Mutated copies of a real table, and of a real binary around its table: an error or a
/// table, never a panic; and every error is one sentence.
#[test]
fn corrupt_tables_never_panic() {
    let tc = go(GoVersion::New.toolchain());
    let bytes = std::fs::read(build(&tc, Mode::PieExternal, true)).unwrap();
    let elf = ElfFile::from_bytes_for_test(&bytes).unwrap();
    let (start, len) = {
        let obj = elf.object().unwrap();
        let section = obj
            .section_by_name(".gopclntab")
            .or_else(|| obj.section_by_name(".data.rel.ro"))
            .unwrap();
        let (start, len) = section.file_range().unwrap();
        (start as usize, len as usize)
    };
    let original = Pclntab::parse(&elf).unwrap();
    let header_at = match original.location() {
        Location::Within { offset, .. } => start + *offset as usize,
        _ => start,
    };
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = (0, 0);
    let mut tally = |result: Result<Pclntab<'_>, PclntabError>| match result {
        Ok(t) => {
            let _ = t.functions(&WANTED);
            outcomes.0 += 1;
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            outcomes.1 += 1;
        }
    };
    let table = &bytes[header_at..start + len];
    for round in 0..2_000 {
        let mut t = table.to_vec();
        // Mostly the header and the function table, sometimes anywhere.
        let limit = if round % 4 == 0 { t.len() } else { 4096 };
        for _ in 0..1 + next() % 8 {
            let i = next() as usize % limit;
            t[i] = next() as u8;
        }
        tally(Pclntab::from_bytes(&t, Some(0x40_0000)));
        tally(Pclntab::from_bytes(&t[..next() as usize % t.len()], None));
    }
    for round in 0..30 {
        let mut b = bytes.clone();
        for _ in 0..1 + round % 6 {
            let i = header_at + next() as usize % 4096;
            b[i] = next() as u8;
        }
        if let Ok(elf) = ElfFile::from_bytes_for_test(&b) {
            tally(Pclntab::parse(&elf));
        }
    }
    assert!(outcomes.1 > 0, "{outcomes:?}");
}
