//! The kernel's BTF reader on arbitrary bytes: parse, then look fields up.
#![no_main]
use obs_agent::probes::btf::Btf;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(btf) = Btf::parse(data) {
        for field in ["skc_num", "skc_v6_rcv_saddr", "a"] {
            let _ = btf.field_offset("sock_common", field);
        }
    }
});
