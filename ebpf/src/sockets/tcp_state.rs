//! TCP state changes (`raw_tracepoint/inet_sock_set_state`) of watched processes' sockets:
//! this end's address of the connections they open, and, on the socket data path, their
//! connects and closes.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use obs_common::{
    sockets::{nr, set_state, SockConn, SockInfo, SockLocal, FD_UNKNOWN, SOCK_CLIENT},
    stats::Stat,
    EventKind,
};

use super::{sock_addresses, user_regs};
use crate::maps::{
    count, empty_programs, is_watched, output, socket_path, CONNECTING, CONNECTING_SOCKS, SOCKS,
    SOCK_OFFSETS,
};

/// TCP state changes of watched processes' sockets. Every change returns after comparing the
/// states unless it concerns them:
/// - into SYN_SENT (inside the process's connect, which names the thread): the socket is
///   remembered for its local address; on the socket data path the connect is reported here
///   (its descriptor from the saved registers, the peer from the socket);
/// - out of SYN_SENT into ESTABLISHED (anywhere, often in a softirq): the now-bound local
///   address is read from the socket (`SOCK_OFFSETS`) and reported, keyed by the socket:
///   most runtimes never ask for it (getsockname), and a short connection is gone from /proc
///   by the time user space reads the ring;
/// - on the socket data path, the end of a watched process's socket inside its `close`
///   (ESTABLISHED to FIN_WAIT1, CLOSE_WAIT to LAST_ACK, or into CLOSE), reported with its
///   descriptor (see `closed`).
///
/// A raw tracepoint: the kernel builds no record for it, which is most of what a
/// `sock:inet_sock_set_state` perf tracepoint costs per call.
#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: RawTracePointContext) -> i32 {
    if empty_programs() {
        return 0;
    }
    let old = ctx.arg::<u64>(1) as i32;
    let new = ctx.arg::<u64>(2) as i32;
    if new == set_state::TCP_SYN_SENT {
        connecting(ctx.arg(0));
        return 0;
    }
    if old == set_state::TCP_SYN_SENT {
        handshake_done(ctx.arg(0), new);
    }
    let ends = new == set_state::TCP_CLOSE
        || (old == set_state::TCP_ESTABLISHED && new == set_state::TCP_FIN_WAIT1)
        || (old == set_state::TCP_CLOSE_WAIT && new == set_state::TCP_LAST_ACK);
    if ends && socket_path() {
        closed(ctx.arg(0));
    }
    0
}

/// A watched thread's connect started the handshake of `sock`.
#[inline(always)]
fn connecting(sock: u64) {
    let thread = bpf_get_current_pid_tgid();
    let tgid = (thread >> 32) as u32;
    if !is_watched(tgid) {
        return;
    }
    let _ = CONNECTING_SOCKS.insert(sock, tgid, 0);
    if !socket_path() {
        // The connect's sys_exit takes it (see `syscalls`).
        let _ = CONNECTING.insert(thread, sock, 0);
        return;
    }
    // The descriptor is the connect's first argument. A handshake started otherwise (a
    // sendto with MSG_FASTOPEN, io_uring) leaves it unknown: the socket's first data names it.
    let fd = match user_regs() {
        Some(regs) if regs.syscall == nr::CONNECT => regs.di as u32,
        _ => FD_UNKNOWN,
    };
    let info = SockInfo {
        tgid,
        fd,
        flags: SOCK_CLIENT,
        _pad: 0,
    };
    let _ = SOCKS.insert(sock, info, 0);
    if fd == FD_UNKNOWN {
        return;
    }
    let mut event = SockConn {
        kind: EventKind::SockConn as u32,
        tgid,
        fd,
        syscall: nr::CONNECT as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ret: 0,
        family: 0,
        port: 0,
        _pad: 0,
        addr: [0; 16],
        sock,
    };
    if let Some(a) = SOCK_OFFSETS
        .get(0)
        .and_then(|off| sock_addresses(sock, off))
    {
        event.family = a.family;
        event.port = a.peer_port;
        event.addr = a.peer;
    }
    output(&event);
}

/// The handshake of `sock` ended in state `new`: when established, this end's address.
#[inline(always)]
fn handshake_done(sock: u64, new: i32) {
    let Some(tgid) = (unsafe { CONNECTING_SOCKS.get(sock) }).copied() else {
        return;
    };
    let _ = CONNECTING_SOCKS.remove(sock);
    if new == set_state::TCP_ESTABLISHED {
        local_address(tgid, sock);
    }
}

/// A socket of a watched process ends in its owner's `close` (`new`: ESTABLISHED to
/// FIN_WAIT1, CLOSE_WAIT to LAST_ACK, or into CLOSE): reported as a close of its
/// descriptor. A change elsewhere (a reset in a softirq, a `shutdown`) is not an end: the
/// descriptor is still the process's, and what it writes still belongs to the connection;
/// such a socket ends at its destruction (`tcp_destroy_sock`), after its owner closed it. A
/// socket the data path has not seen (open at attach, idle since) is reported by its own
/// close.
#[inline(always)]
fn closed(sock: u64) {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_watched(tgid) {
        return;
    }
    let fd = match user_regs() {
        Some(regs) if regs.syscall == nr::CLOSE => regs.di as u32,
        _ => return,
    };
    if let Some(info) = unsafe { SOCKS.get(sock) }.copied() {
        if info.tgid != tgid {
            return;
        }
        let _ = SOCKS.remove(sock);
    }
    close_event(tgid, fd, sock);
}

/// A TCP socket is destroyed (`raw_tracepoint/tcp_destroy_sock`, on the socket data path):
/// its owner has closed it, and the end was not seen in its `close` (a socket shut down or
/// reset before). Reported as a close of the descriptor it was last seen on.
#[raw_tracepoint(tracepoint = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: RawTracePointContext) -> i32 {
    if empty_programs() {
        return 0;
    }
    let sock: u64 = ctx.arg(0);
    let Some(info) = (unsafe { SOCKS.get(sock) }).copied() else {
        return 0;
    };
    let _ = SOCKS.remove(sock);
    if info.fd != FD_UNKNOWN {
        close_event(info.tgid, info.fd, sock);
    }
    0
}

#[inline(always)]
fn close_event(tgid: u32, fd: u32, sock: u64) {
    output(&SockConn {
        kind: EventKind::SockConn as u32,
        tgid,
        fd,
        syscall: nr::CLOSE as u32,
        ts_ns: unsafe { bpf_ktime_get_ns() },
        ret: 0,
        family: 0,
        port: 0,
        _pad: 0,
        addr: [0; 16],
        sock,
    });
}

/// This end's address of `sock`, connected by process `tgid`.
#[inline(always)]
fn local_address(tgid: u32, sock: u64) {
    let Some(off) = SOCK_OFFSETS.get(0) else {
        return;
    };
    let Some(a) = sock_addresses(sock, off) else {
        count(Stat::TargetReadErrors);
        return;
    };
    output(&SockLocal {
        kind: EventKind::SockLocal as u32,
        tgid,
        sock,
        family: a.family,
        port: a.local_port,
        _pad: 0,
        addr: a.local,
    });
}
