//! Reading the target's memory (read-only, through bpf_probe_read_user).

use aya_ebpf::helpers::bpf_probe_read_user;

/// Reads a plain value at `addr`.
#[inline(always)]
pub fn read<T>(addr: u64) -> Result<T, i32> {
    unsafe { bpf_probe_read_user(addr as *const T) }
}
