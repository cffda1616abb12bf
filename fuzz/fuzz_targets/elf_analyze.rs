//! Whole-binary analysis (ELF, build info, symbols, DWARF, disassembly) on arbitrary bytes.
#![no_main]
use obs_agent::symbols::{elf::ElfFile, go_binary};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(elf) = ElfFile::from_bytes_for_test(data) {
        let _ = go_binary::analyze(&elf);
    }
});
