//! Reading a watched process's memory (never writing it), through /proc/PID/mem: Go values
//! at addresses and offsets that `symbols` found. Every read is bounded.

use std::{fs::File, os::unix::fs::FileExt};

pub struct ProcessMemory {
    mem: File,
}

/// Longest Go string read (a ServeMux pattern).
pub const MAX_STRING: u64 = 1024;
/// Most elements read from a Go slice.
pub const MAX_SLICE: u64 = 4096;

impl ProcessMemory {
    pub fn open(pid: u32) -> std::io::Result<Self> {
        Ok(Self {
            mem: File::open(format!("/proc/{pid}/mem"))?,
        })
    }

    pub fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.mem.read_exact_at(buf, addr)
    }

    pub fn u8(&self, addr: u64) -> std::io::Result<u8> {
        let mut b = [0; 1];
        self.read(addr, &mut b)?;
        Ok(b[0])
    }

    pub fn u64(&self, addr: u64) -> std::io::Result<u64> {
        let mut b = [0; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A Go string (data pointer, length) at `addr`, up to [`MAX_STRING`] bytes.
    pub fn go_string(&self, addr: u64) -> std::io::Result<String> {
        let (data, len) = (self.u64(addr)?, self.u64(addr + 8)?);
        if len > MAX_STRING {
            return Err(std::io::Error::other(format!("string of {len} bytes")));
        }
        let mut buf = vec![0; len as usize];
        self.read(data, &mut buf)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let value: u64 = 0x1122_3344_5566_7788;
        let mem = ProcessMemory::open(std::process::id()).unwrap();
        assert_eq!(mem.u64(&value as *const u64 as u64).unwrap(), value);
        assert!(mem.u64(8).is_err(), "unmapped address");
    }
}
