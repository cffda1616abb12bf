//! The syscall data path: socket syscalls of watched processes from one
//! `raw_tracepoint/sys_exit` program, and `close` at its entry. At syscall exit the saved
//! user registers still hold the arguments (rdi, rsi, rdx), so no entry probe is needed. The
//! fallback for kernels without the socket tracepoints (before 6.3): any program on the
//! syscall tracepoints makes the kernel flag every task of the machine, whose every syscall
//! then pays for it (a bit test in an array, for the processes not watched).

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use obs_common::{sockets::nr, stats::Stat};

use super::{conn, conn_event, connected, data_at, Regs};
use crate::maps::{count, empty_programs, is_watched};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
    if empty_programs() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_watched(tgid) {
        return 0;
    }
    let regs: *const pt_regs = ctx.arg(0);
    let ret: i64 = ctx.arg(1);
    // Most syscalls of a watched process are not socket I/O: read only the number first.
    let Ok(syscall) = (unsafe { bpf_probe_read_kernel(&raw const (*regs).orig_rax) }) else {
        count(Stat::TargetReadErrors);
        return 0;
    };
    if !matches!(
        syscall,
        nr::READ
            | nr::WRITE
            | nr::CLOSE
            | nr::READV
            | nr::WRITEV
            | nr::CONNECT
            | nr::ACCEPT
            | nr::SENDTO
            | nr::RECVFROM
            | nr::SENDMSG
            | nr::RECVMSG
            | nr::ACCEPT4
            | nr::GETSOCKNAME
            | nr::SENDFILE
    ) {
        return 0;
    }
    // A failed call is of no interest but for connect (EINPROGRESS on a non-blocking socket):
    // a Go server's every request ends in a read that fails with EAGAIN.
    if ret < 0 && syscall != nr::CONNECT {
        return 0;
    }
    let Ok(regs) = (unsafe { bpf_probe_read_kernel(regs) }) else {
        count(Stat::TargetReadErrors);
        return 0;
    };
    match syscall {
        nr::READ
        | nr::RECVFROM
        | nr::WRITE
        | nr::SENDTO
        | nr::READV
        | nr::WRITEV
        | nr::RECVMSG
        | nr::SENDMSG
        | nr::SENDFILE
            if ret > 0 =>
        {
            data_at(tgid, &Regs::of(&regs), syscall, ret)
        }
        // The kernel wrote the peer's address to rsi (if the caller asked for it).
        nr::ACCEPT | nr::ACCEPT4 if ret >= 0 => conn(tgid, syscall, ret as u32, ret, regs.rsi),
        nr::CONNECT => connected(conn_event(tgid, syscall, regs.rdi as u32, ret, regs.rsi)),
        // The socket's own address (Go asks right after connect and accept): the local end
        // that links a client span to the server span of the same connection.
        nr::GETSOCKNAME if ret == 0 => conn(tgid, syscall, regs.rdi as u32, ret, regs.rsi),
        _ => {}
    }
    0
}

/// `close` is seen on entry, not exit: on exit the descriptor may already belong to a new
/// connection accepted on another CPU, whose accept event would then precede the close.
#[tracepoint(category = "syscalls", name = "sys_enter_close")]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    if empty_programs() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_watched(tgid) {
        return 0;
    }
    // struct trace_event_raw_sys_enter: the first argument at offset 16.
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(16) }) else {
        count(Stat::TargetReadErrors);
        return 0;
    };
    conn(tgid, nr::CLOSE, fd as u32, 0, 0);
    0
}
