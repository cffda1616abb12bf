//! Reading a Go process's runtime state (read-only, /proc/PID/mem) at the addresses and
//! offsets `symbols::go_runtime` found: the runtime's own counts, as it computes them.
//! Values the runtime changes concurrently are read without its locks, like `gcount` does;
//! they are exact whenever the process is quiescent, and each is a value the runtime held.

use std::io;

use super::{memory::ProcessMemory, BinaryId};
use crate::symbols::go_runtime::RuntimeState;

/// Most Ps read (GOMAXPROCS is bounded by the runtime at 1024... times a margin).
const MAX_PS: u64 = 4096;

/// The runtime's figures at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `runtime.NumGoroutine()`: live goroutines, system goroutines excluded.
    pub goroutines: u64,
    /// `runtime.ngsys`: live system goroutines.
    pub system_goroutines: u64,
    /// Goroutines created since the process started, system ones included.
    pub created: u64,
    pub gc_cycles: u64,
    pub pause_total_ns: u64,
    /// The pause histogram's buckets as the runtime keeps them (`counts`), and the counts
    /// below its first bucket (negative durations) and beyond its last.
    pub pause_counts: Vec<u64>,
    pub pause_underflow: u64,
    pub pause_overflow: u64,
    pub heap_live: u64,
    pub heap_goal: u64,
    /// GOGC (-1: off) and GOMEMLIMIT in bytes (`i64::MAX`: no limit).
    pub gc_percent: i32,
    pub memory_limit: i64,
}

/// Where a process's image is loaded relative to its link-time addresses (0 unless PIE):
/// the mapping of the executable's first page, from /proc/PID/maps.
pub fn load_bias(pid: u32, binary: BinaryId, image_base: u64) -> io::Result<u64> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(_perms), Some(offset), Some(_dev), Some(inode)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            continue;
        };
        if inode.parse::<u64>().ok() != Some(binary.ino)
            || u64::from_str_radix(offset, 16).ok() != Some(0)
        {
            continue;
        }
        let start = range
            .split('-')
            .next()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| io::Error::other(format!("bad maps line {line:?}")))?;
        return Ok(start.wrapping_sub(image_base));
    }
    Err(io::Error::other("the executable is not mapped"))
}

/// Reads the runtime's figures; `bias` is the process's load bias.
pub fn read(mem: &ProcessMemory, s: &RuntimeState, bias: u64) -> io::Result<Snapshot> {
    let at = |a: u64| a.wrapping_add(bias);
    let i32_at = |a: u64| -> io::Result<i64> {
        let mut b = [0; 4];
        mem.read(at(a), &mut b)?;
        Ok(i64::from(i32::from_le_bytes(b)))
    };
    // Creations are counted before live goroutines, so that "exited = created - live" never
    // counts a goroutine created between the reads (counters cannot go back).
    let goidgen = mem.u64(at(s.goidgen))?;
    let (allp, nprocs) = (mem.u64(at(s.allp))?, mem.u64(at(s.allp) + 8)?);
    if nprocs > MAX_PS {
        return Err(io::Error::other(format!("{nprocs} Ps")));
    }
    let mut ps = vec![0u8; nprocs as usize * 8];
    mem.read(allp, &mut ps)?;
    let ps: Vec<u64> = ps
        .chunks_exact(8)
        .map(|p| u64::from_le_bytes(p.try_into().expect("8 bytes")))
        .filter(|&p| p != 0)
        .collect();
    let mut unused_ids: u64 = 0;
    for &p in &ps {
        let (next, end) = (mem.u64(p + s.p_goidcache)?, mem.u64(p + s.p_goidcacheend)?);
        unused_ids += end.saturating_sub(next);
    }
    let allglen = mem.u64(at(s.allglen))? as i64;
    let mut free = 0;
    for a in s.sched_free.into_iter().flatten() {
        free += i32_at(a)?;
    }
    for &p in &ps {
        let mut b = [0; 4];
        mem.read(p + s.p_free, &mut b)?;
        free += i64::from(i32::from_le_bytes(b));
    }
    let system = i32_at(s.ngsys)?;
    let mut numgc = [0; 4];
    mem.read(at(s.numgc), &mut numgc)?;
    let h = &s.pauses;
    let mut counts = vec![0u8; h.buckets * 8];
    mem.read(at(h.counts), &mut counts)?;
    Ok(Snapshot {
        // gcount's own floor: at least the goroutine running.
        goroutines: (allglen - free - system).max(1) as u64,
        system_goroutines: system.max(0) as u64,
        created: goidgen.saturating_sub(unused_ids),
        gc_cycles: u64::from(u32::from_le_bytes(numgc)),
        pause_total_ns: mem.u64(at(s.pause_total_ns))?,
        pause_counts: counts
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        pause_underflow: mem.u64(at(h.underflow))?,
        pause_overflow: match h.overflow {
            Some(a) => mem.u64(at(a))?,
            None => 0,
        },
        heap_live: mem.u64(at(s.heap_marked))?,
        heap_goal: mem.u64(at(s.heap_goal))?,
        gc_percent: i32_at(s.gc_percent)? as i32,
        memory_limit: mem.u64(at(s.memory_limit))? as i64,
    })
}
