//! Route normalization on arbitrary paths and patterns.
#![no_main]
use obs_agent::protocols::http::{collapse_path, normalize_method, route_from_pattern};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = normalize_method(data);
    let s = String::from_utf8_lossy(data);
    let route = collapse_path(&s);
    assert!(route.starts_with('/'));
    let _ = route_from_pattern(&s);
});
