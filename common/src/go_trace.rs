//! Go goroutines, for linking an outgoing HTTP call to the request it is made for when a
//! process serves several requests at once.
//!
//! - Socket data events of a Go process carry the goroutine that made the syscall (its `goid`,
//!   read through R14, Go's register for the current goroutine, saved at syscall entry).
//! - A uprobe on the `call runtime.runqput` of `runtime.newproc.func1` (an emulated
//!   instruction) records which goroutine created which: RBX is the new goroutine, R14 the
//!   system goroutine g0, whose `m.curg` is the creator.
//! - A uprobe on the stack-check jump of `net/http.(*persistConn).roundTrip` reports the
//!   connection (its socket descriptor) a call is about to be written to and the calling
//!   goroutine with its known ancestors: net/http's transport writes the request from its own
//!   goroutine, so the syscall's goroutine does not say who asked.

/// Ancestors reported with a call, the caller included.
pub const MAX_GOROUTINE_CHAIN: usize = 8;
/// Goroutine parentage remembered, across all processes (LRU).
pub const MAX_GOROUTINE_PARENTS: u32 = 131_072;

/// Struct member offsets in one Go binary (DWARF or the offsets table), per watched process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoOffsets {
    /// `runtime.g.goid`
    pub g_goid: u64,
    /// `runtime.g.m`
    pub g_m: u64,
    /// `runtime.m.curg`
    pub m_curg: u64,
    /// `net/http.persistConn.conn` (a `net.Conn` interface: type word, data word).
    pub pconn_conn: u64,
    /// `net.conn.fd` (`*net.TCPConn` holds a `net.conn` at offset 0).
    pub conn_fd: u64,
    /// `net.netFD.pfd` plus `internal/poll.FD.Sysfd`: the descriptor within a `netFD`.
    pub netfd_sysfd: u64,
    /// `runtime.g.startpc`: the function a goroutine was started with.
    pub g_startpc: u64,
    /// `FOLLOW_PARENTS` when goroutines are followed for spans (tracing is on and the program
    /// has net/http's client): parentage recorded, the goroutine of each socket event read.
    pub flags: u64,
    /// Creations within one `CREATION_WINDOW_NS` that make the creation probe report a burst
    /// (`GoCreationBurst`), so that user space detaches it at once rather than at its next
    /// rate check; 0: never.
    pub burst_limit: u64,
    /// The creation probe's current window: when it began (kernel clock) and how many
    /// creations it has seen. Written by the probe only (from any CPU: approximate).
    pub window_start_ns: u64,
    pub window_count: u64,
}

/// The window over which the creation probe counts a burst.
pub const CREATION_WINDOW_NS: u64 = 25_000_000;

/// The creation probe saw `GoOffsets::burst_limit` creations within one window.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoCreationBurst {
    pub kind: u32,
    pub tgid: u32,
}

/// `GoOffsets::flags`: record which goroutine created which (for spans).
pub const FOLLOW_PARENTS: u64 = 1;

/// Key of the goroutine parentage map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoroutineKey {
    pub tgid: u32,
    pub _pad: u32,
    pub goid: u64,
}

/// An HTTP call a Go process is about to write to socket `fd`: the calling goroutine first,
/// then its ancestors as far as known (`depth` entries are valid).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoClientCall {
    pub kind: u32,
    pub tgid: u32,
    pub fd: u32,
    pub depth: u32,
    pub goids: [u64; MAX_GOROUTINE_CHAIN],
}

const _: () = assert!(core::mem::size_of::<GoOffsets>() == 88);
const _: () = assert!(core::mem::size_of::<GoCreationBurst>() == 8);
const _: () = assert!(core::mem::size_of::<GoroutineKey>() == 16);
const _: () = assert!(core::mem::size_of::<GoClientCall>() == 16 + 8 * MAX_GOROUTINE_CHAIN);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for GoOffsets {}
    unsafe impl aya::Pod for GoroutineKey {}
    unsafe impl aya::Pod for GoClientCall {}
    unsafe impl aya::Pod for GoCreationBurst {}
}
