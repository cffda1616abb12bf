//! Go's function table from arbitrary bytes: as a bare table (its header's runtime.text, or a
//! given one) and as a whole ELF binary (locating the table, scanning data for it, reading
//! relocations and module data). An error or a table, never a panic. Seed it with a real
//! binary and its `.gopclntab` section (see the README).
#![no_main]
use obs_agent::symbols::{elf::ElfFile, pclntab::Pclntab};

const WANTED: [&str; 3] = [
    "net/http.serverHandler.ServeHTTP",
    "runtime.main",
    "main.main",
];

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    for text_start in [None, Some(0x40_1000)] {
        if let Ok(table) = Pclntab::from_bytes(data, text_start) {
            let _ = table.functions(&WANTED);
        }
    }
    if let Ok(elf) = ElfFile::from_bytes_for_test(data) {
        if let Ok(table) = Pclntab::parse(&elf) {
            let _ = table.functions(&WANTED);
        }
        let _ = elf.go_functions(&WANTED);
    }
});
