//! Binary analysis on real Go binaries, and on corrupt ones: truncated or mutated binaries
//! give an error or a result, never a panic. The Go runtime's globals, found from code as in
//! a stripped binary, equal the symbol table's in every release and build mode.

use obs_agent::symbols::disasm::SiteKind;
use obs_agent::symbols::{
    elf::ElfFile,
    go_binary, go_runtime,
    offsets::{self, GoRelease},
    pclntab::Pclntab,
    runtime_globals::{self, GlobalsSource},
    SymbolsError,
};
use obs_integration_tests::{
    go_app, go_build_with_symbols, objcopy, toolchains, xorshift, BuildMode, GoVersion,
};

#[test]
fn real_binaries_are_analysed_for_both_go_versions() {
    for version in [GoVersion::Old, GoVersion::New] {
        let bin = go_app("goserver", version);
        let b = go_binary::analyze_path(&bin).unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert!(b.build.go_version.starts_with("go1."), "{:?}", b.build);
        // Only Go 1.22+ muxes have patterns to discover.
        assert_eq!(
            b.mux_discovery.is_some(),
            version.has_patterns(),
            "{version:?}"
        );
        // Every probe on an instruction the kernel emulates, but `fatalpanic` (nosplit: no
        // stack check; hit once, as the process dies).
        for p in b.probe_points() {
            let expected = match p.function {
                go_runtime::FATALPANIC => SiteKind::Entry,
                go_binary::NEWPROC_CLOSURE => SiteKind::Call,
                _ => SiteKind::StackCheckJump,
            };
            assert_eq!(p.site.kind, expected, "{version:?} {}", p.function);
        }
        let functions: Vec<&str> = b.probe_points().iter().map(|p| p.function).collect();
        for f in [
            go_binary::NEWPROC_CLOSURE,
            go_runtime::GOPANIC,
            go_runtime::RECOVERY,
        ] {
            assert!(
                functions.contains(&f),
                "{version:?}: no probe in {f}: {functions:?}"
            );
        }
        // With a symbol table, the runtime's globals come from it.
        let state = b
            .runtime_state
            .unwrap_or_else(|e| panic!("{version:?}: {e}"));
        assert_eq!(state.globals_source, GlobalsSource::SymbolTable);
    }
}

#[test]
fn go_program_without_http_is_refused() {
    let bin = go_app("gonohttp", GoVersion::Old);
    match go_binary::analyze_path(&bin) {
        Err(SymbolsError::NotHttpServer(_)) => {}
        other => panic!("expected NotHttpServer, got {other:?}"),
    }
}

fn strip(bin: &std::path::Path) -> std::path::PathBuf {
    objcopy(bin, "--strip-all", "stripped")
}

#[test]
fn stripped_go_1_19_binary_is_analysed_from_its_function_table() {
    let bin = go_app("goserver", GoVersion::Old);
    let stripped = strip(&bin);
    assert!(!ElfFile::open(&stripped).unwrap().has_symbols());
    let b = go_binary::analyze_path(&stripped).unwrap_or_else(|e| panic!("{e}"));
    assert!(b.build.go_version.starts_with("go1.19"), "{:?}", b.build);
    // Go 1.19's ServeMux has no patterns to discover: no layout needed.
    assert!(b.mux_discovery.is_none());
    // The runtime's globals, found from code, are where the symbol table had them.
    let with_symbols = go_binary::analyze_path(&bin).unwrap();
    assert_eq!(
        b.runtime_state.map(|s| s.globals),
        with_symbols.runtime_state.map(|s| s.globals)
    );
}

#[test]
fn stripped_newer_binary_gets_its_layouts_from_the_offsets_table() {
    let default = go_binary::analyze_path(&go_app("goserver", GoVersion::New)).unwrap();
    let stripped = strip(&go_app("goserver", GoVersion::New));
    let b = go_binary::analyze_path(&stripped).unwrap_or_else(|e| panic!("{e}"));
    let (point, layout) = b.mux_discovery.expect("mux discovery from pclntab + table");
    let (want_point, want_layout) = default.mux_discovery.unwrap();
    assert_eq!(point, want_point);
    assert_eq!(layout, want_layout);
}

/// For every release and build mode: the runtime's globals solved from code, with what a
/// stripped binary has (functions from Go's function table, offsets from the table), equal the
/// symbol table's in a build that keeps its symbols; and the same binary, stripped, is
/// analysed with these globals, found from code.
#[test]
fn runtime_globals_from_code_equal_the_symbol_tables() {
    let table = offsets::embedded().expect("the embedded offsets table");
    let mut checked = 0;
    for toolchain in toolchains() {
        let release = GoRelease::parse(&toolchain.minor).expect("MAJOR.MINOR");
        let layouts = &table
            .lookup(release)
            .unwrap_or_else(|e| panic!("Go {release}: {e}"))
            .entry
            .layouts;
        for mode in [
            BuildMode::Default,
            BuildMode::Pie,
            BuildMode::CgoExternal,
            BuildMode::PieExternal,
        ] {
            let what = format!("Go {release} {}", mode.name());
            let bin = go_build_with_symbols("goruntime", &toolchain, mode);
            let elf = ElfFile::open(&bin).unwrap();
            let truth = runtime_globals::from_symbols(&elf)
                .unwrap()
                .unwrap_or_else(|| panic!("{what}: the symbol table lacks a runtime global"));
            let functions = Pclntab::parse(&elf)
                .unwrap_or_else(|e| panic!("{what}: {e}"))
                .functions(&runtime_globals::CODE_FUNCTIONS);
            let from_code = runtime_globals::from_code(&elf, &functions, layouts)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(from_code, truth, "{what}");

            // The same binary stripped (a `-s -w` build differs: its build info, which
            // records the flags, moves the data).
            let stripped = strip(&bin);
            assert!(!ElfFile::open(&stripped).unwrap().has_symbols());
            let state = go_binary::analyze_path(&stripped)
                .unwrap_or_else(|e| panic!("{what}: {e}"))
                .runtime_state
                .unwrap_or_else(|e| panic!("{what} stripped: {e}"));
            assert_eq!(state.globals_source, GlobalsSource::Code, "{what}");
            assert_eq!(state.globals, truth, "{what} stripped");
            checked += 1;
        }
    }
    assert!(checked >= 4, "no Go toolchain");
}

#[test]
fn corrupt_binaries_never_panic() {
    let bytes = std::fs::read(go_app("goserver", GoVersion::Old)).unwrap();
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
    let mut outcomes = (0, 0);
    // Truncations, including inside the headers.
    for len in [
        0,
        1,
        4,
        16,
        63,
        64,
        200,
        4096,
        bytes.len() / 3,
        bytes.len() / 2,
        bytes.len() - 1,
    ] {
        match ElfFile::from_bytes_for_test(&bytes[..len]).and_then(|e| go_binary::analyze(&e)) {
            Ok(_) => outcomes.0 += 1,
            Err(_) => outcomes.1 += 1,
        }
    }
    // Random byte changes: in the first 4 KiB (headers), and anywhere.
    for round in 0..40 {
        let mut b = bytes.clone();
        for _ in 0..16 {
            let limit = if round % 2 == 0 { 4096 } else { b.len() };
            let i = (next() as usize) % limit;
            b[i] = next() as u8;
        }
        match ElfFile::from_bytes_for_test(&b).and_then(|e| go_binary::analyze(&e)) {
            Ok(_) => outcomes.0 += 1,
            Err(e) => {
                assert!(!e.to_string().is_empty());
                outcomes.1 += 1
            }
        }
    }
    assert!(
        outcomes.1 > 0,
        "some corruptions must be detected: {outcomes:?}"
    );
}

/// Damaged code of the functions the globals are solved from, in a stripped binary: never a
/// panic; for these 300 changes (fixed seed), either the right addresses (the change missed
/// what solves them) or a refusal.
#[test]
fn damaged_runtime_code_never_panics() {
    let newest = GoVersion::New.toolchain();
    let bin = go_build_with_symbols("goruntime", &newest, BuildMode::Default);
    let truth = runtime_globals::from_symbols(&ElfFile::open(&bin).unwrap())
        .unwrap()
        .unwrap();
    let stripped = strip(&bin);
    let bytes = std::fs::read(&stripped).unwrap();
    let elf = ElfFile::open(&stripped).unwrap();
    let functions = Pclntab::parse(&elf)
        .unwrap()
        .functions(&runtime_globals::CODE_FUNCTIONS);
    let code: Vec<(usize, usize)> = functions
        .values()
        .map(|f| {
            (
                elf.file_offset(f.address).unwrap() as usize,
                f.size as usize,
            )
        })
        .collect();
    assert_eq!(code.len(), runtime_globals::CODE_FUNCTIONS.len());
    let mut next = xorshift(0x2545_f491_4f6c_dd1d);
    let (mut right, mut refused) = (0, 0);
    for _ in 0..300 {
        let mut b = bytes.clone();
        let (start, len) = code[next() as usize % code.len()];
        for _ in 0..1 + next() % 3 {
            b[start + next() as usize % len] = next() as u8;
        }
        let elf = ElfFile::from_bytes_for_test(&b).unwrap();
        match go_binary::analyze(&elf).map(|a| a.runtime_state) {
            Ok(Ok(state)) => {
                assert_eq!(state.globals, truth);
                right += 1;
            }
            Ok(Err(why)) => {
                assert!(why.to_string().contains("cannot be read"), "{why}");
                refused += 1;
            }
            Err(e) => panic!("a change in the runtime's code failed the whole analysis: {e}"),
        }
    }
    assert!(right > 0 && refused > 0, "right {right}, refused {refused}");
}
