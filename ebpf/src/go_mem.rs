//! Reading Go values out of the target's memory (read-only, through bpf_probe_read_user).

use aya_ebpf::helpers::{bpf_probe_read_user, bpf_probe_read_user_buf};

/// Reads a plain value at `addr`.
#[inline(always)]
pub fn read<T>(addr: u64) -> Result<T, i32> {
    unsafe { bpf_probe_read_user(addr as *const T) }
}

/// Reads the Go `string` header at `addr` and copies up to `N` bytes of its contents into
/// `dst`. Returns (bytes copied, whether the string was longer than `N`).
#[inline(always)]
pub fn read_string<const N: usize>(addr: u64, dst: &mut [u8; N]) -> Result<(usize, bool), i32> {
    let header: [u64; 2] = read(addr)?;
    let (data, len) = (header[0], header[1]);
    let n = if len > N as u64 { N } else { len as usize };
    if n == 0 {
        return Ok((0, false));
    }
    let Some(dst) = dst.get_mut(..n) else {
        return Err(-1);
    };
    unsafe { bpf_probe_read_user_buf(data as *const u8, dst)? };
    Ok((n, len > N as u64))
}
