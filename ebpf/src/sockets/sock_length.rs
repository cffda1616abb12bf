//! The socket data path: `raw_tracepoint/sock_recv_length` and `sock_send_length` (Linux 6.3+)
//! run inside `sock_recvmsg` and `sock_sendmsg`, so only socket reads and writes pay for them,
//! not every syscall of every task. The socket, the byte count (or error) and the recv flags
//! are their arguments; the descriptor and the buffer come from the syscall's saved user
//! registers (`bpf_task_pt_regs`), as at `sys_exit`. A socket seen for the first time (or
//! under another descriptor) is reported with both ends' addresses ([`SockOpen`]), so user
//! space needs no accept or getsockname.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use obs_common::{
    sockets::{
        nr, SockInfo, SockOpen, DIR_EGRESS, DIR_INGRESS, IPPROTO_TCP, MSG_PEEK, SOCK_CLIENT,
        SOCK_TCP,
    },
    stats::Stat,
    EventKind,
};

use super::{data_at, sock_addresses, user_regs};
use crate::maps::{count, empty_programs, is_watched, output, SOCKS, SOCK_OFFSETS};

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv_length(ctx: RawTracePointContext) -> i32 {
    socket_io(&ctx, DIR_INGRESS)
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send_length(ctx: RawTracePointContext) -> i32 {
    socket_io(&ctx, DIR_EGRESS)
}

#[inline(always)]
fn socket_io(ctx: &RawTracePointContext, direction: u32) -> i32 {
    if empty_programs() {
        return 0;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_watched(tgid) {
        return 0;
    }
    // The int arguments arrive zero-extended.
    let ret = i64::from(ctx.arg::<u64>(1) as i32);
    // Failed calls (a Go server's every request ends in a read that fails with EAGAIN), end
    // of stream, and peeks (the same bytes are read again) carry nothing.
    if ret <= 0 || (direction == DIR_INGRESS && ctx.arg::<u64>(2) & MSG_PEEK != 0) {
        return 0;
    }
    // Only a 64-bit socket syscall of this very thread describes this data: not an io_uring
    // worker (no user registers), not a completion run on the way out of another syscall.
    let Some(regs) = user_regs() else {
        return 0;
    };
    let syscall = regs.syscall;
    let reads = matches!(syscall, nr::READ | nr::RECVFROM | nr::READV | nr::RECVMSG);
    let writes = matches!(
        syscall,
        nr::WRITE | nr::SENDTO | nr::WRITEV | nr::SENDMSG | nr::SENDFILE
    );
    if !(reads && direction == DIR_INGRESS || writes && direction == DIR_EGRESS) {
        return 0;
    }
    // The socket's descriptor: the first argument of each of these (sendfile's out_fd).
    let fd = regs.di as u32;
    seen(tgid, ctx.arg::<u64>(0), fd);
    data_at(tgid, &regs, syscall, ret);
    0
}

/// Reports socket `sock` of process `tgid` under descriptor `fd` the first time it is seen
/// there, with both ends' addresses.
#[inline(always)]
fn seen(tgid: u32, sock: u64, fd: u32) {
    let known = unsafe { SOCKS.get(sock) }.copied();
    if known.is_some_and(|k| k.tgid == tgid && k.fd == fd) {
        return;
    }
    let Some(off) = SOCK_OFFSETS.get(0) else {
        return;
    };
    let client = known.map_or(0, |k| k.flags & SOCK_CLIENT);
    let protocol = unsafe { bpf_probe_read_kernel((sock + u64::from(off.protocol)) as *const u16) }
        .unwrap_or(0);
    let mut event = SockOpen {
        kind: EventKind::SockOpen as u32,
        tgid,
        fd,
        flags: client | if protocol == IPPROTO_TCP { SOCK_TCP } else { 0 },
        sock,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        family: 0,
        peer_port: 0,
        local_port: 0,
        _pad: 0,
        peer_addr: [0; 16],
        local_addr: [0; 16],
    };
    if let Some(a) = sock_addresses(sock, off) {
        event.family = a.family;
        event.local_port = a.local_port;
        event.local_addr = a.local;
        event.peer_port = a.peer_port;
        event.peer_addr = a.peer;
    }
    let info = SockInfo {
        tgid,
        fd,
        flags: client,
        _pad: 0,
    };
    let _ = SOCKS.insert(sock, info, 0);
    output(&event);
}
