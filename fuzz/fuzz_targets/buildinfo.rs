//! Go build info from arbitrary bytes: an error or a value, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = obs_agent::symbols::buildinfo::parse(data);
});
