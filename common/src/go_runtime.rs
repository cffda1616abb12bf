//! Go runtime events the kernel side sees: goroutine creations counted per start function
//! (the `go_newproc` uprobe, see `go_trace`), and panics (uprobes on `runtime.gopanic`,
//! `runtime.recovery` and `runtime.fatalpanic`). The rest of the runtime's vital signs are
//! read from the process's memory by user space.

/// (process, start function) creation counters, across all processes.
pub const MAX_GO_STARTS: u32 = 16_384;
/// Return addresses reported with a panic, innermost first: the caller of `gopanic`, then
/// its callers by the frame-pointer chain (runtime helpers such as `panicIndex` or
/// `sigpanic` sit between a faulting function and `gopanic`).
pub const PANIC_FRAMES: usize = 4;

/// Key of the creation counters: goroutines started at `startpc` (a runtime address).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoStartKey {
    pub tgid: u32,
    pub _pad: u32,
    pub startpc: u64,
}

/// `GoPanic::what`.
pub const PANIC_STARTED: u32 = 0;
pub const PANIC_RECOVERED: u32 = 1;
pub const PANIC_FATAL: u32 = 2;

/// A panic started (`pcs` valid up to `depth`), was recovered, or is killing the process, in
/// goroutine `goid`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoPanic {
    pub kind: u32,
    pub tgid: u32,
    pub what: u32,
    pub depth: u32,
    pub goid: u64,
    pub pcs: [u64; PANIC_FRAMES],
}

const _: () = assert!(core::mem::size_of::<GoStartKey>() == 16);
const _: () = assert!(core::mem::size_of::<GoPanic>() == 24 + 8 * PANIC_FRAMES);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl aya::Pod for GoStartKey {}
    unsafe impl aya::Pod for GoPanic {}
}
