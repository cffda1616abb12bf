//! Go runtime events: goroutine creations counted by start function (from `go_newproc`), and
//! panics: started (`runtime.gopanic`), recovered (`runtime.recovery`), fatal
//! (`runtime.fatalpanic`). Attached per process by user space, which set it up in `GO_PROCS`.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};
use obs_common::{
    go_runtime::{GoPanic, GoStartKey, PANIC_FATAL, PANIC_FRAMES, PANIC_RECOVERED, PANIC_STARTED},
    go_trace::GoOffsets,
    stats::Stat,
    EventKind,
};

use crate::{
    maps::{count, output, GO_PROCS, GO_STARTS},
    user_mem::read,
};

/// One more goroutine started at `newg.startpc`.
#[inline(always)]
pub fn count_creation(tgid: u32, off: &GoOffsets, newg: u64) {
    let Ok(startpc) = read::<u64>(newg + off.g_startpc) else {
        count(Stat::TargetReadErrors);
        return;
    };
    let key = GoStartKey {
        tgid,
        _pad: 0,
        startpc,
    };
    // Per-CPU values: this CPU's slot is ours alone (programs do not nest on one CPU).
    if let Some(n) = GO_STARTS.get_ptr_mut(key) {
        unsafe { *n += 1 };
        return;
    }
    // Another CPU may insert the same key first (EEXIST): then add to our slot of theirs.
    if GO_STARTS.insert(key, 1, BPF_NOEXIST).is_err() {
        match GO_STARTS.get_ptr_mut(key) {
            Some(n) => unsafe { *n += 1 },
            None => count(Stat::GoStartsFull),
        }
    }
}

const BPF_NOEXIST: u64 = 1;

/// The stack-check jump of `runtime.gopanic`: R14 is the panicking goroutine, RSP points at
/// the return address into the function that called `panic`, RBP is that function's frame
/// (Go keeps frame pointers on amd64), whose callers follow by the chain.
#[uprobe]
pub fn go_panic(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(off) = (unsafe { GO_PROCS.get(tgid) }) else {
        return 0;
    };
    let (g, sp, mut fp) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rsp, (*ctx.regs).rbp) };
    let Ok(goid) = read::<u64>(g + off.g_goid) else {
        count(Stat::TargetReadErrors);
        return 0;
    };
    let mut event = event(tgid, PANIC_STARTED, goid);
    if let Ok(pc) = read::<u64>(sp) {
        event.pcs[0] = pc;
        event.depth = 1;
        for i in 1..PANIC_FRAMES {
            let (Ok(pc), Ok(next)) = (read::<u64>(fp + 8), read::<u64>(fp)) else {
                break;
            };
            event.pcs[i] = pc;
            event.depth = i as u32 + 1;
            if next <= fp {
                break;
            }
            fp = next;
        }
    }
    submit(&event);
    0
}

/// The stack-check jump of `runtime.recovery(gp)`, run on the system stack through `mcall`:
/// RAX is the goroutine whose panic was recovered.
#[uprobe]
pub fn go_recovery(ctx: ProbeContext) -> u32 {
    let gp = unsafe { (*ctx.regs).rax };
    report(gp, PANIC_RECOVERED)
}

/// The first instruction of `runtime.fatalpanic`: R14 is the goroutine whose panic kills
/// the process.
#[uprobe]
pub fn go_fatal_panic(ctx: ProbeContext) -> u32 {
    let g = unsafe { (*ctx.regs).r14 };
    report(g, PANIC_FATAL)
}

#[inline(always)]
fn report(g: u64, what: u32) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(off) = (unsafe { GO_PROCS.get(tgid) }) else {
        return 0;
    };
    let Ok(goid) = read::<u64>(g + off.g_goid) else {
        count(Stat::TargetReadErrors);
        return 0;
    };
    submit(&event(tgid, what, goid));
    0
}

#[inline(always)]
fn event(tgid: u32, what: u32, goid: u64) -> GoPanic {
    GoPanic {
        kind: EventKind::GoPanic as u32,
        tgid,
        what,
        depth: 0,
        goid,
        pcs: [0; PANIC_FRAMES],
    }
}

#[inline(always)]
fn submit(event: &GoPanic) {
    output(event);
}
