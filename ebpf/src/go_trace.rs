//! Go goroutines: who created whom, and which goroutine asked for each outgoing HTTP call
//! (see `obs_common::go_trace`). Both uprobes sit on emulated instructions and run only in
//! processes user space attached them to (and set up in `GO_PROCS`).

use aya_ebpf::{
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::uprobe,
    programs::ProbeContext,
};
use obs_common::{
    go_trace::{
        GoClientCall, GoCreationBurst, GoOffsets, GoroutineKey, CREATION_WINDOW_NS, FOLLOW_PARENTS,
        MAX_GOROUTINE_CHAIN,
    },
    stats::Stat,
    EventKind,
};

use crate::{
    go_runtime,
    maps::{count, output, EVENTS, GO_PARENTS, GO_PROCS},
    user_mem::read,
};

/// The `call runtime.runqput` in `runtime.newproc.func1`: RBX is the new goroutine (its
/// `goid` and `startpc` already set), R14 the system goroutine g0, whose `m.curg` is the
/// creator. Counts the creation by start function; records the parent when tracing; reports
/// a burst of creations (the probe's cost is then to go at once).
#[uprobe]
pub fn go_newproc(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(off) = GO_PROCS.get_ptr_mut(tgid) else {
        return 0;
    };
    // SAFETY: the map's value, live while this program runs; other CPUs may update the
    // window fields at the same time (a lost count only delays a burst report).
    let off = unsafe { &mut *off };
    let (newg, g0) = unsafe { ((*ctx.regs).rbx, (*ctx.regs).r14) };
    go_runtime::count_creation(tgid, off, newg);
    burst_window(tgid, off);
    if off.flags & FOLLOW_PARENTS == 0 {
        return 0;
    }
    let Ok((goid, parent)) = creation(off, newg, g0) else {
        count(Stat::TargetReadErrors);
        return 0;
    };
    let key = GoroutineKey {
        tgid,
        _pad: 0,
        goid,
    };
    let _ = GO_PARENTS.insert(key, parent, 0);
    0
}

/// Counts a creation in the current window; the creation that reaches `burst_limit` reports
/// the burst (once per window).
#[inline(always)]
fn burst_window(tgid: u32, off: &mut GoOffsets) {
    if off.burst_limit == 0 {
        return;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(off.window_start_ns) >= CREATION_WINDOW_NS {
        off.window_start_ns = now;
        off.window_count = 1;
        return;
    }
    off.window_count += 1;
    if off.window_count == off.burst_limit {
        let event = GoCreationBurst {
            kind: EventKind::GoCreationBurst as u32,
            tgid,
        };
        // Woken at once: the burst costs the process until user space detaches the probe.
        if EVENTS
            .output::<GoCreationBurst>(&event, BPF_RB_FORCE_WAKEUP as u64)
            .is_err()
        {
            count(Stat::EventsLostRingFull);
        }
    }
}

#[inline(always)]
fn creation(off: &GoOffsets, newg: u64, g0: u64) -> Result<(u64, u64), i32> {
    let goid = read::<u64>(newg + off.g_goid)?;
    let m = read::<u64>(g0 + off.g_m)?;
    let curg = read::<u64>(m + off.m_curg)?;
    let parent = read::<u64>(curg + off.g_goid)?;
    Ok((goid, parent))
}

/// The stack-check jump of `net/http.(*persistConn).roundTrip`: RAX is the connection, R14
/// the calling goroutine.
#[uprobe]
pub fn go_round_trip(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(off) = (unsafe { GO_PROCS.get(tgid) }) else {
        return 0;
    };
    let (pconn, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).r14) };
    let Ok((fd, goid)) = call(off, pconn, g) else {
        count(Stat::TargetReadErrors);
        return 0;
    };
    let mut event = GoClientCall {
        kind: EventKind::GoClientCall as u32,
        tgid,
        fd,
        depth: 1,
        goids: [0; MAX_GOROUTINE_CHAIN],
    };
    event.goids[0] = goid;
    let mut key = GoroutineKey {
        tgid,
        _pad: 0,
        goid,
    };
    for i in 1..MAX_GOROUTINE_CHAIN {
        let Some(parent) = (unsafe { GO_PARENTS.get(key) }) else {
            break;
        };
        event.goids[i] = *parent;
        event.depth = i as u32 + 1;
        key.goid = *parent;
    }
    output(&event);
    0
}

/// The socket behind `persistConn.conn` (a `*net.TCPConn` for plain HTTP; anything else
/// gives a descriptor user space does not know as an HTTP client) and the goroutine's id.
#[inline(always)]
fn call(off: &GoOffsets, pconn: u64, g: u64) -> Result<(u32, u64), i32> {
    let goid = read::<u64>(g + off.g_goid)?;
    let conn = read::<u64>(pconn + off.pconn_conn + 8)?;
    let netfd = read::<u64>(conn + off.conn_fd)?;
    let fd = read::<i64>(netfd + off.netfd_sysfd)?;
    Ok((fd as u32, goid))
}
