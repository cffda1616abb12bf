//! Socket I/O of watched processes, any language, no uprobe, on kernels without kprobes. Two
//! data paths, one chosen at load (user space's `DATA_PATH` config): the socket tracepoints
//! (`sock_length`, Linux 6.3+), which run only on socket reads and writes, or the syscall
//! tracepoints (`syscalls`), which run on every syscall of every task. Both write the same
//! records; `tcp_state` follows TCP state changes for both.

pub mod sock_length;
pub mod syscalls;
pub mod tcp_state;

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task_btf, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_task_pt_regs,
    },
};
use obs_common::{
    go_trace::FOLLOW_PARENTS,
    sockets::{
        nr, SockConn, SockDataN, SockOffsets, AF_INET, AF_INET6, DATA_PREFIX, DIR_EGRESS,
        DIR_INGRESS, EGRESS_PREFIX, SOCK_DATA_HEADER,
    },
    stats::Stat,
    EventKind,
};

use crate::{
    maps::{count, output, wakeup_flags, CONNECTING, EVENTS, GO_PROCS, SCRATCH},
    user_mem::read,
};

/// The data a socket syscall moved (`ret` bytes), as its saved registers describe it: the
/// buffer of `read`/`write`/`recvfrom`/`sendto`, the first of a vector (`readv`, `writev`,
/// `recvmsg`, `sendmsg`: no more of it than it holds), nothing for `sendfile` (a file's bytes,
/// counted).
#[inline(always)]
pub fn data_at(tgid: u32, regs: &Regs, syscall: u64, ret: i64) {
    match syscall {
        nr::READ | nr::RECVFROM => data(tgid, regs, ret, DIR_INGRESS, regs.si, ret),
        nr::WRITE | nr::SENDTO => data(tgid, regs, ret, DIR_EGRESS, regs.si, ret),
        nr::READV | nr::WRITEV | nr::RECVMSG | nr::SENDMSG => {
            let (base, len) = if matches!(syscall, nr::READV | nr::WRITEV) {
                first_iov(regs.si)
            } else {
                // struct msghdr: msg_iov at offset 16.
                msg_iov(regs.si)
            };
            let direction = if matches!(syscall, nr::READV | nr::RECVMSG) {
                DIR_INGRESS
            } else {
                DIR_EGRESS
            };
            data(tgid, regs, ret, direction, base, len)
        }
        nr::SENDFILE => data(tgid, regs, ret, DIR_EGRESS, 0, 0),
        _ => {}
    }
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
fn data(tgid: u32, regs: &Regs, ret: i64, direction: u32, buf: u64, readable: i64) {
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
fn ingress(tgid: u32, regs: &Regs, ret: i64, buf: u64, copy: i64) {
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
    regs: &Regs,
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
    regs: &Regs,
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
    e.fd = regs.di as u32;
    e.syscall = regs.syscall as u32;
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
fn goroutine(tgid: u32, regs: &Regs) -> u64 {
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

/// What the data path reads of a syscall's saved user registers: its number, its first two
/// arguments, and R14 (Go's current goroutine).
#[derive(Clone, Copy)]
pub struct Regs {
    pub syscall: u64,
    pub di: u64,
    pub si: u64,
    pub r14: u64,
}

impl Regs {
    #[inline(always)]
    pub fn of(r: &pt_regs) -> Self {
        Regs {
            syscall: r.orig_rax,
            di: r.rdi,
            si: r.rsi,
            r14: r.r14,
        }
    }
}

/// `__USER_CS`: a 64-bit syscall's code segment.
const USER_CS: u64 = 0x33;

/// The current thread's user registers, saved at syscall entry, if they are a 64-bit
/// syscall's of this very thread: not an io_uring worker's or a kernel thread's (no user
/// registers: ip and sp are 0).
///
/// Read with direct loads from the kernel's `struct pt_regs` (`bpf_task_pt_regs` gives a
/// typed pointer; the verifier turns each load into a faulting-safe one): four fields and
/// three checks, not a copy of the whole 168-byte struct through a helper.
#[inline(always)]
pub fn user_regs() -> Option<Regs> {
    // SAFETY: helpers the verifier checks; the result is the task's pt_regs (never null),
    // whose fields the loads below read at their x86_64 offsets.
    unsafe {
        let r = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        // cs is a 16-bit selector (with FRED, the rest of its 8 bytes holds other bits).
        let cs = core::ptr::read_volatile(&raw const (*r).cs) & 0xffff;
        let ip = core::ptr::read_volatile(&raw const (*r).rip);
        let sp = core::ptr::read_volatile(&raw const (*r).rsp);
        if cs != USER_CS || ip == 0 || sp == 0 {
            return None;
        }
        Some(Regs {
            syscall: core::ptr::read_volatile(&raw const (*r).orig_rax),
            di: core::ptr::read_volatile(&raw const (*r).rdi),
            si: core::ptr::read_volatile(&raw const (*r).rsi),
            r14: core::ptr::read_volatile(&raw const (*r).r14),
        })
    }
}

/// Both ends of a socket, read from the kernel's `struct sock` at the BTF offsets user space
/// gave (`SOCK_OFFSETS`).
pub struct SockAddrs {
    pub family: u16,
    pub local: [u8; 16],
    pub local_port: u16,
    pub peer: [u8; 16],
    pub peer_port: u16,
}

/// The addresses of `sock`, if it is an IPv4 or IPv6 one (a Unix socket has none).
#[inline(always)]
pub fn sock_addresses(sock: u64, off: &SockOffsets) -> Option<SockAddrs> {
    let field = |offset: u32| (sock + u64::from(offset)) as *const u8;
    // SAFETY: reads of the kernel's socket, checked by the helper.
    let family = unsafe { bpf_probe_read_kernel(field(off.family).cast::<u16>()) }.ok()?;
    let local_port = unsafe { bpf_probe_read_kernel(field(off.num).cast::<u16>()) }.ok()?;
    let peer_port = unsafe { bpf_probe_read_kernel(field(off.dport).cast::<u16>()) }
        .map(u16::from_be)
        .unwrap_or(0);
    let (local, peer) = match family {
        AF_INET => (
            unsafe { bpf_probe_read_kernel(field(off.rcv_saddr).cast::<[u8; 4]>()) }
                .map(ipv4_in_16)
                .ok()?,
            unsafe { bpf_probe_read_kernel(field(off.daddr).cast::<[u8; 4]>()) }
                .map(ipv4_in_16)
                .unwrap_or([0; 16]),
        ),
        AF_INET6 if off.v6_rcv_saddr != SockOffsets::NONE => (
            unsafe { bpf_probe_read_kernel(field(off.v6_rcv_saddr).cast::<[u8; 16]>()) }.ok()?,
            if off.v6_daddr == SockOffsets::NONE {
                [0; 16]
            } else {
                unsafe { bpf_probe_read_kernel(field(off.v6_daddr).cast::<[u8; 16]>()) }
                    .unwrap_or([0; 16])
            },
        ),
        _ => return None,
    };
    Some(SockAddrs {
        family,
        local,
        local_port,
        peer,
        peer_port,
    })
}
