//! Socket syscalls of watched processes, from one `raw_tracepoint/sys_exit` program: any
//! language, no uprobe, and on kernels without kprobes. At syscall exit the saved user
//! registers still hold the arguments (rdi, rsi, rdx), so no entry probe is needed.
//!
//! Cost for every other process on the machine: a bit test in an array (inlined) per syscall.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use obs_common::{
    go_trace::FOLLOW_PARENTS,
    sockets::{
        nr, set_state, SockConn, SockDataN, SockLocal, SockOffsets, AF_INET, AF_INET6, DATA_PREFIX,
        DIR_EGRESS, DIR_INGRESS, EGRESS_PREFIX, SOCK_DATA_HEADER,
    },
    stats::Stat,
    EventKind,
};

use crate::{
    maps::{
        count, is_watched, output, wakeup_flags, CONNECTING, CONNECTING_SOCKS, EVENTS, GO_PROCS,
        SCRATCH, SOCK_OFFSETS,
    },
    user_mem::read,
};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn sys_exit(ctx: RawTracePointContext) -> i32 {
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
        nr::READ | nr::RECVFROM if ret > 0 => data(tgid, &regs, ret, DIR_INGRESS, regs.rsi, ret),
        nr::WRITE | nr::SENDTO if ret > 0 => data(tgid, &regs, ret, DIR_EGRESS, regs.rsi, ret),
        // Only the first buffer of a vector is copied, and no more of it than it holds.
        nr::READV | nr::WRITEV | nr::RECVMSG | nr::SENDMSG if ret > 0 => {
            let (base, len) = if matches!(syscall, nr::READV | nr::WRITEV) {
                first_iov(regs.rsi)
            } else {
                // struct msghdr: msg_iov at offset 16.
                msg_iov(regs.rsi)
            };
            let direction = if matches!(syscall, nr::READV | nr::RECVMSG) {
                DIR_INGRESS
            } else {
                DIR_EGRESS
            };
            data(tgid, &regs, ret, direction, base, len)
        }
        // sendfile(out_fd, in_fd, ...): file bytes sent on a socket (a static file's body):
        // counted, nothing to copy.
        nr::SENDFILE if ret > 0 => data(tgid, &regs, ret, DIR_EGRESS, 0, 0),
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

/// `struct sockaddr_in` (family, port, 4-byte address) or `sockaddr_in6` (family, port,
/// flowinfo, 16-byte address), ports in network byte order.
#[inline(always)]
fn peer_address(sockaddr: u64, event: &mut SockConn) {
    let Ok(family) = read::<u16>(sockaddr) else {
        return;
    };
    let Ok(port) = read::<u16>(sockaddr + 2) else {
        return;
    };
    let addr = match family {
        AF_INET => read::<[u8; 4]>(sockaddr + 4).map(ipv4_in_16),
        AF_INET6 => read::<[u8; 16]>(sockaddr + 8),
        _ => return,
    };
    if let Ok(addr) = addr {
        event.family = family;
        event.port = u16::from_be(port);
        event.addr = addr;
    }
}

/// An IPv4 address in the first 4 bytes of an event's 16-byte address field.
#[inline(always)]
fn ipv4_in_16(a: [u8; 4]) -> [u8; 16] {
    let mut full = [0; 16];
    full[..4].copy_from_slice(&a);
    full
}

/// `struct iovec`: base, then length.
#[inline(always)]
fn first_iov(iov: u64) -> (u64, i64) {
    match (read::<u64>(iov), read::<i64>(iov + 8)) {
        (Ok(base), Ok(len)) => (base, len),
        _ => (0, 0),
    }
}

#[inline(always)]
fn msg_iov(msghdr: u64) -> (u64, i64) {
    read::<u64>(msghdr + 16).map(first_iov).unwrap_or((0, 0))
}

/// Reads get a long prefix (a whole request line); writes a short one (a status line). At
/// most `readable` bytes are copied from `buf` (a vector's first buffer may be shorter than
/// what the call transferred).
#[inline(always)]
fn data(tgid: u32, regs: &pt_regs, ret: i64, direction: u32, buf: u64, readable: i64) {
    let copy = if readable < ret { readable } else { ret };
    if direction == DIR_EGRESS {
        data_n::<EGRESS_PREFIX>(
            EventKind::SockDataShort,
            tgid,
            regs,
            ret,
            direction,
            buf,
            copy,
        )
    } else {
        ingress(tgid, regs, ret, buf, copy)
    }
}

/// What a process read: up to `DATA_PREFIX` bytes, built in a per-CPU scratch record and
/// copied to the ring buffer only as far as filled (header + prefix), so a 100-byte request
/// costs 148 bytes of ring, and a request head with long headers is still seen whole.
#[inline(always)]
fn ingress(tgid: u32, regs: &pt_regs, ret: i64, buf: u64, copy: i64) {
    let Some(e) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: the per-CPU scratch slot; programs do not nest on one CPU.
    let len = unsafe {
        fill(
            &mut *e,
            EventKind::SockData,
            tgid,
            regs,
            ret,
            DIR_INGRESS,
            buf,
            copy,
        )
    };
    let record = unsafe {
        core::slice::from_raw_parts(e.cast::<u8>(), SOCK_DATA_HEADER + len.min(DATA_PREFIX))
    };
    output::<[u8]>(record);
}

#[inline(always)]
fn data_n<const N: usize>(
    kind: EventKind,
    tgid: u32,
    regs: &pt_regs,
    ret: i64,
    direction: u32,
    buf: u64,
    copy: i64,
) {
    let Some(mut entry) = EVENTS.reserve::<SockDataN<N>>(0) else {
        count(Stat::EventsLostRingFull);
        return;
    };
    // SAFETY: the reserved record, ours until submitted.
    unsafe {
        fill(
            &mut *entry.as_mut_ptr(),
            kind,
            tgid,
            regs,
            ret,
            direction,
            buf,
            copy,
        )
    };
    entry.submit(wakeup_flags());
}

/// Fills a data record: its header, and up to `N` bytes (at most `copy`) from `buf`.
/// Returns how many bytes were copied.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn fill<const N: usize>(
    e: &mut SockDataN<N>,
    kind: EventKind,
    tgid: u32,
    regs: &pt_regs,
    ret: i64,
    direction: u32,
    buf: u64,
    copy: i64,
) -> usize {
    let n = if copy <= 0 {
        0
    } else if copy as u64 > N as u64 {
        N
    } else {
        copy as usize
    };
    e.kind = kind as u32;
    e.tgid = tgid;
    e.fd = regs.rdi as u32;
    e.syscall = regs.orig_rax as u32;
    e.ts_ns = unsafe { bpf_ktime_get_ns() };
    e.bytes = ret;
    e.direction = direction;
    e.prefix_len = 0;
    e.goid = goroutine(tgid, regs);
    if buf != 0 && n > 0 {
        if let Some(dst) = e.prefix.get_mut(..n) {
            if unsafe { aya_ebpf::helpers::bpf_probe_read_user_buf(buf as *const u8, dst) }.is_ok()
            {
                e.prefix_len = n as u32;
            } else {
                count(Stat::TargetReadErrors);
            }
        }
    }
    e.prefix_len as usize
}

/// The goroutine making the syscall, in a Go process whose offsets user space gave: R14
/// holds it in Go code, and the syscall path leaves it alone. 0 otherwise.
#[inline(always)]
fn goroutine(tgid: u32, regs: &pt_regs) -> u64 {
    match unsafe { GO_PROCS.get(tgid) } {
        Some(off) if off.flags & FOLLOW_PARENTS != 0 => {
            read::<u64>(regs.r14 + off.g_goid).unwrap_or(0)
        }
        _ => 0,
    }
}

#[inline(always)]
fn conn_event(tgid: u32, syscall: u64, fd: u32, ret: i64, sockaddr: u64) -> SockConn {
    let mut event = SockConn {
        kind: EventKind::SockConn as u32,
        tgid,
        fd,
        syscall: syscall as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ret,
        family: 0,
        port: 0,
        _pad: 0,
        addr: [0; 16],
        sock: 0,
    };
    if sockaddr != 0 {
        peer_address(sockaddr, &mut event);
    }
    event
}

#[inline(always)]
fn conn(tgid: u32, syscall: u64, fd: u32, ret: i64, sockaddr: u64) {
    output(&conn_event(tgid, syscall, fd, ret, sockaddr));
}

/// A connect's exit: the socket whose handshake it started (see `inet_sock_set_state`), if
/// any, goes with it, whatever the result.
#[inline(always)]
fn connected(mut event: SockConn) {
    let thread = bpf_get_current_pid_tgid();
    if let Some(sock) = unsafe { CONNECTING.get(thread) } {
        event.sock = *sock;
        let _ = CONNECTING.remove(thread);
    }
    output(&event);
}

/// TCP state changes, for this end's address of the connections watched processes open:
/// most runtimes never ask for it (getsockname), and a short connection is gone from /proc
/// by the time user space reads the ring. Into SYN_SENT (inside the process's connect, which
/// names the thread): the socket is remembered; out of it into ESTABLISHED (anywhere, often
/// in a softirq), its now-bound local address is read from the socket (`SOCK_OFFSETS`) and
/// reported, keyed by the socket. Every other change returns after comparing the states.
/// A raw tracepoint: the kernel builds no record for it, which is most of what a
/// `sock:inet_sock_set_state` perf tracepoint costs per call.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    let new = ctx.arg::<u64>(2) as i32;
    if new == set_state::TCP_SYN_SENT {
        let thread = bpf_get_current_pid_tgid();
        let tgid = (thread >> 32) as u32;
        if is_watched(tgid) {
            let sock: u64 = ctx.arg(0);
            let _ = CONNECTING.insert(thread, sock, 0);
            let _ = CONNECTING_SOCKS.insert(sock, tgid, 0);
        }
        return 0;
    }
    if ctx.arg::<u64>(1) as i32 != set_state::TCP_SYN_SENT {
        return 0;
    }
    let sock: u64 = ctx.arg(0);
    let Some(tgid) = (unsafe { CONNECTING_SOCKS.get(sock) }).copied() else {
        return 0;
    };
    let _ = CONNECTING_SOCKS.remove(sock);
    if new == set_state::TCP_ESTABLISHED {
        local_address(tgid, sock);
    }
    0
}

#[inline(always)]
fn local_address(tgid: u32, sock: u64) {
    let Some(off) = SOCK_OFFSETS.get(0) else {
        return;
    };
    let field = |offset: u32| (sock + u64::from(offset)) as *const u8;
    let family = unsafe { bpf_probe_read_kernel(field(off.family).cast::<u16>()) };
    let port = unsafe { bpf_probe_read_kernel(field(off.num).cast::<u16>()) };
    let (Ok(family), Ok(port)) = (family, port) else {
        count(Stat::TargetReadErrors);
        return;
    };
    let addr = match family {
        AF_INET => {
            unsafe { bpf_probe_read_kernel(field(off.rcv_saddr).cast::<[u8; 4]>()) }.map(ipv4_in_16)
        }
        AF_INET6 if off.v6_rcv_saddr != SockOffsets::NONE => unsafe {
            bpf_probe_read_kernel(field(off.v6_rcv_saddr).cast::<[u8; 16]>())
        },
        _ => return,
    };
    let Ok(addr) = addr else {
        count(Stat::TargetReadErrors);
        return;
    };
    output(&SockLocal {
        kind: EventKind::SockLocal as u32,
        tgid,
        sock,
        family,
        port,
        _pad: 0,
        addr,
    });
}
