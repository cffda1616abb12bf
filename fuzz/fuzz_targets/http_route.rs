//! Route normalization and ServeMux pattern parsing and matching on arbitrary text.
#![no_main]
use obs_agent::protocols::{
    go_mux::{Pattern, PatternSet},
    http::{collapse_path, normalize_method, route_from_pattern},
};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = normalize_method(data);
    let s = String::from_utf8_lossy(data);
    let route = collapse_path(&s);
    assert!(route.starts_with('/'));
    let _ = route_from_pattern(&s);
    // First line: patterns; rest: a request target to match.
    let (patterns, target) = s.split_once('\n').unwrap_or((&s, "/"));
    let set = PatternSet::new(patterns.split('|').filter_map(Pattern::parse));
    let _ = set.route_for("GET", target);
});
