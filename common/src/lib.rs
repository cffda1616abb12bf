//! Types shared by the kernel programs (obs-ebpf) and user space (obs-agent).
//!
//! Everything here is `#[repr(C)]`, `Copy`, free of `bool` and of implicit padding, so both
//! sides read the same bytes. Sizes are asserted at compile time. The `user` feature adds
//! `aya::Pod` impls for user space.
#![no_std]

pub mod go_http;
pub mod go_runtime;
pub mod go_trace;
pub mod sockets;
pub mod stats;

/// Names of the maps and programs in the eBPF object; user space looks them up by these.
pub mod names {
    pub const MAP_EVENTS: &str = "EVENTS";
    pub const MAP_STATS: &str = "STATS";
    pub const MAP_WATCHED: &str = "WATCHED";
    pub const MAP_GO_MUXES: &str = "GO_MUXES";
    pub const MAP_GO_PROCS: &str = "GO_PROCS";
    pub const MAP_GO_PARENTS: &str = "GO_PARENTS";
    pub const MAP_GO_STARTS: &str = "GO_STARTS";
    pub const MAP_SOCK_OFFSETS: &str = "SOCK_OFFSETS";
    pub const PROG_SYS_EXIT: &str = "sys_exit";
    pub const PROG_SYS_ENTER_CLOSE: &str = "sys_enter_close";
    pub const PROG_INET_SOCK_SET_STATE: &str = "inet_sock_set_state";
    pub const PROG_SOCK_RECV_LENGTH: &str = "sock_recv_length";
    pub const PROG_SOCK_SEND_LENGTH: &str = "sock_send_length";
    pub const PROG_TCP_DESTROY_SOCK: &str = "tcp_destroy_sock";
    pub const MAP_SOCKS: &str = "SOCKS";
    /// Read-only globals of the eBPF object, set at load.
    pub const GLOBAL_DATA_PATH: &str = "DATA_PATH";
    pub const GLOBAL_EMPTY_PROGRAMS: &str = "EMPTY_PROGRAMS";
    pub const PROG_GO_MUX_SERVE_HTTP: &str = "go_mux_serve_http";
    pub const PROG_GO_NEWPROC: &str = "go_newproc";
    pub const PROG_GO_ROUND_TRIP: &str = "go_round_trip";
    pub const PROG_GO_PANIC: &str = "go_panic";
    pub const PROG_GO_RECOVERY: &str = "go_recovery";
    pub const PROG_GO_FATAL_PANIC: &str = "go_fatal_panic";
}

/// The first field of every record on the event ring buffer.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    GoMuxSeen = 1,
    SockData = 2,
    SockConn = 3,
    SockDataShort = 4,
    GoClientCall = 5,
    GoPanic = 6,
    GoCreationBurst = 7,
    SockLocal = 8,
    SockOpen = 9,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::GoMuxSeen),
            2 => Some(Self::SockData),
            3 => Some(Self::SockConn),
            4 => Some(Self::SockDataShort),
            5 => Some(Self::GoClientCall),
            6 => Some(Self::GoPanic),
            7 => Some(Self::GoCreationBurst),
            8 => Some(Self::SockLocal),
            9 => Some(Self::SockOpen),
            _ => None,
        }
    }
}

/// Size of the event ring buffer, in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 8 << 20;
/// The reader drains the ring on its own timer; the kernel wakes it only when the ring fills
/// past half (a burst), and only from the one event that crosses that mark. Waking user space
/// costs ~1.4 µs, and waking from every event once past a mark costs far more.
pub const EVENTS_WAKEUP_BYTES: u64 = (EVENTS_RING_BYTES as u64) / 2;
/// Width of the window at the mark in which an event wakes the reader (a few records).
pub const EVENTS_WAKEUP_WINDOW: u64 = 2048;

/// The eBPF object's `DATA_PATH` when the socket data path (`sock_recv_length`,
/// `sock_send_length`) is in use; 0 for the syscall data path.
pub const DATA_PATH_SOCKETS: u32 = 1;

/// Most processes watched at once (size of the per-process maps).
pub const MAX_WATCHED_PROCESSES: u32 = 4096;

/// The watched-process filter is a bitmap over every possible pid (PID_MAX_LIMIT, 2^22 on
/// 64-bit Linux), 64 pids per array slot: 512 KiB, and a lookup the verifier inlines (an
/// array index), so every syscall of every other process costs only a few instructions.
pub const PID_LIMIT: u32 = 1 << 22;
pub const WATCHED_WORDS: u32 = PID_LIMIT / 64;

/// The slot and bit of a pid in the watched bitmap.
#[inline(always)]
pub const fn watched_slot(pid: u32) -> (u32, u64) {
    (pid / 64, 1u64 << (pid % 64))
}
/// (process, mux) pairs remembered as reported (LRU).
pub const MAX_MUXES: u32 = 4096;
