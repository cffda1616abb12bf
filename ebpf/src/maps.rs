//! Every map of the eBPF object, in one place. Names and sizes come from obs-common.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use obs_common::{
    go_http::MuxKey,
    go_runtime::{GoStartKey, MAX_GO_STARTS},
    go_trace::{GoOffsets, GoroutineKey, MAX_GOROUTINE_PARENTS},
    sockets::{SockData, SockInfo, SockOffsets, MAX_CONNECTING, MAX_SOCKS},
    stats::{Stat, STAT_COUNT},
    watched_slot, DATA_PATH_SOCKETS, EVENTS_RING_BYTES, EVENTS_WAKEUP_BYTES, EVENTS_WAKEUP_WINDOW,
    MAX_MUXES, MAX_WATCHED_PROCESSES, WATCHED_WORDS,
};

/// All events for user space.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Per-CPU room to build a read's record before copying its used part to `EVENTS`.
#[map(name = "SCRATCH")]
pub static SCRATCH: PerCpuArray<SockData> = PerCpuArray::with_max_entries(1, 0);

/// The kernel side's own counters, indexed by `Stat`.
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Processes whose socket syscalls are captured: a bitmap over all pids (see
/// `obs_common::watched_slot`).
#[map(name = "WATCHED")]
pub static WATCHED: Array<u64> = Array::with_max_entries(WATCHED_WORDS, 0);

/// Whether `tgid` is watched: an inlined array lookup and a bit test.
#[inline(always)]
pub fn is_watched(tgid: u32) -> bool {
    let (slot, bit) = watched_slot(tgid);
    WATCHED.get(slot).is_some_and(|word| word & bit != 0)
}

/// Threads of watched processes inside a connect that started a TCP handshake: thread
/// (pid_tgid) -> the kernel's socket, taken by the connect's exit.
#[map(name = "CONNECTING")]
pub static CONNECTING: LruHashMap<u64, u64> = LruHashMap::with_max_entries(MAX_CONNECTING, 0);

/// Sockets of watched processes in SYN_SENT -> their process, until the handshake ends.
#[map(name = "CONNECTING_SOCKS")]
pub static CONNECTING_SOCKS: LruHashMap<u64, u32> = LruHashMap::with_max_entries(MAX_CONNECTING, 0);

/// `struct sock_common`'s address fields on the running kernel, from its BTF (one entry,
/// written before `inet_sock_set_state` is attached).
#[map(name = "SOCK_OFFSETS")]
pub static SOCK_OFFSETS: Array<SockOffsets> = Array::with_max_entries(1, 0);

/// (process, mux) pairs already reported by `go_mux_serve_http`.
#[map(name = "GO_MUXES")]
pub static GO_MUXES: LruHashMap<MuxKey, u8> = LruHashMap::with_max_entries(MAX_MUXES, 0);

/// Go processes whose goroutines are followed, with their binary's struct offsets.
#[map(name = "GO_PROCS")]
pub static GO_PROCS: HashMap<u32, GoOffsets> = HashMap::with_max_entries(MAX_WATCHED_PROCESSES, 0);

/// (process, goroutine) -> the goroutine that created it.
#[map(name = "GO_PARENTS")]
pub static GO_PARENTS: LruHashMap<GoroutineKey, u64> =
    LruHashMap::with_max_entries(MAX_GOROUTINE_PARENTS, 0);

/// (process, start function) -> goroutines created there, per CPU. User space sums the CPUs
/// and deletes a process's keys when it exits.
#[map(name = "GO_STARTS")]
pub static GO_STARTS: PerCpuHashMap<GoStartKey, u64> =
    PerCpuHashMap::with_max_entries(MAX_GO_STARTS, 0);

#[inline(always)]
pub fn count(stat: Stat) {
    if let Some(v) = STATS.get_ptr_mut(stat as u32) {
        // Per-CPU slot: no other CPU writes it, and programs do not nest on one CPU.
        unsafe { *v += 1 };
    }
}

/// Writes `event` to the ring (counting it lost if the ring is full).
#[inline(always)]
pub fn output<T: ?Sized>(event: &T) {
    if EVENTS.output::<T>(event, wakeup_flags()).is_err() {
        count(Stat::EventsLostRingFull);
    }
}

/// Ring-buffer submit flags: never wake the reader (its timer drains the ring), except from
/// the event that fills the ring past half, so a burst cannot overflow it unseen.
#[inline(always)]
pub fn wakeup_flags() -> u64 {
    let waiting = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if (EVENTS_WAKEUP_BYTES..EVENTS_WAKEUP_BYTES + EVENTS_WAKEUP_WINDOW).contains(&waiting) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Which data path user space chose: `DATA_PATH_SOCKETS`, or 0 for the syscalls. Set at
/// load (read-only data, so the verifier knows it and drops the other path's branches).
#[unsafe(no_mangle)]
static DATA_PATH: u32 = 0;

/// Nonzero when the data path's programs are to return at once (`cargo xtask bench
/// --floors`: what the hooks alone cost). Set at load; 0 in normal use, where the verifier
/// removes the test.
#[unsafe(no_mangle)]
static EMPTY_PROGRAMS: u32 = 0;

/// Whether the socket data path is the one in use.
#[inline(always)]
pub fn socket_path() -> bool {
    // SAFETY: a plain read of read-only data.
    unsafe { core::ptr::read_volatile(&raw const DATA_PATH) == DATA_PATH_SOCKETS }
}

/// Whether the data path's programs are to do nothing (see `EMPTY_PROGRAMS`).
#[inline(always)]
pub fn empty_programs() -> bool {
    // SAFETY: a plain read of read-only data.
    unsafe { core::ptr::read_volatile(&raw const EMPTY_PROGRAMS) != 0 }
}

/// Kernel sockets of watched processes seen by the socket data path: socket -> its process,
/// descriptor, and whether it is a client end. Removed when the socket closes.
#[map(name = "SOCKS")]
pub static SOCKS: LruHashMap<u64, SockInfo> = LruHashMap::with_max_entries(MAX_SOCKS, 0);
