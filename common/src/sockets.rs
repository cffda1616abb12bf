//! Socket syscalls of watched processes, seen at `raw_tracepoint/sys_exit`: data (a bounded
//! prefix of what was read or written) and connection life (accept, connect, close); and
//! at `sock:inet_sock_set_state`, this end of each TCP connection a watched process opens.

/// Bytes of each read copied to user space, at most: a request's head with its headers
/// (`traceparent` among them) even with cookies. Records are as long as what was copied
/// ([`SOCK_DATA_HEADER`] + `prefix_len`), so a short request costs no more than its length.
pub const DATA_PREFIX: usize = 1024;
/// Size of a data record without its prefix.
pub const SOCK_DATA_HEADER: usize = 48;
/// Bytes copied of what a process writes: a status line (`HTTP/1.1 200 `) or a request line's
/// start. Less copying on the hot path.
pub const EGRESS_PREFIX: usize = 32;

/// x86_64 syscall numbers the program looks at.
pub mod nr {
    pub const READ: u64 = 0;
    pub const WRITE: u64 = 1;
    pub const CLOSE: u64 = 3;
    pub const READV: u64 = 19;
    pub const WRITEV: u64 = 20;
    pub const SENDFILE: u64 = 40;
    pub const CONNECT: u64 = 42;
    pub const GETSOCKNAME: u64 = 51;
    pub const ACCEPT: u64 = 43;
    pub const SENDTO: u64 = 44;
    pub const RECVFROM: u64 = 45;
    pub const SENDMSG: u64 = 46;
    pub const RECVMSG: u64 = 47;
    pub const ACCEPT4: u64 = 288;
}

pub const DIR_INGRESS: u32 = 0;
pub const DIR_EGRESS: u32 = 1;

/// Data read from or written to a file descriptor (sockets are told apart in user space),
/// with the first `N` bytes: [`SockData`] for reads (on the ring buffer cut to
/// `SOCK_DATA_HEADER + prefix_len` bytes), [`SockDataShort`] for writes (whole).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockDataN<const N: usize> {
    pub kind: u32,
    pub tgid: u32,
    pub fd: u32,
    pub syscall: u32,
    pub ts_ns: u64,
    /// The syscall's result: bytes transferred.
    pub bytes: i64,
    pub direction: u32,
    pub prefix_len: u32,
    /// The Go goroutine that made the syscall (Go processes with known offsets), else 0.
    pub goid: u64,
    pub prefix: [u8; N],
}

pub type SockData = SockDataN<DATA_PREFIX>;
pub type SockDataShort = SockDataN<EGRESS_PREFIX>;

/// A connection accepted, connected or a descriptor closed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockConn {
    pub kind: u32,
    pub tgid: u32,
    /// For accept: the new descriptor; otherwise the argument.
    pub fd: u32,
    pub syscall: u32,
    pub ts_ns: u64,
    pub ret: i64,
    /// The peer's address as the process passed (connect) or received (accept) it, when it
    /// is IPv4 or IPv6: `AF_INET`/`AF_INET6`, else 0.
    pub family: u16,
    /// Port, host byte order.
    pub port: u16,
    pub _pad: u32,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
    /// For connect: the kernel's socket (an opaque identity) when the call started a TCP
    /// handshake, else 0. A later [`SockLocal`] with the same `sock` names this end.
    pub sock: u64,
}

/// This end of a TCP connection a watched process opened, once the handshake completed
/// (`sock:inet_sock_set_state`, SYN_SENT -> ESTABLISHED): the address most runtimes never
/// ask for with getsockname, and that is gone from /proc once a short connection closes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockLocal {
    pub kind: u32,
    pub tgid: u32,
    /// The kernel's socket, as in the connect's [`SockConn`].
    pub sock: u64,
    /// `AF_INET` or `AF_INET6`.
    pub family: u16,
    /// Port, host byte order.
    pub port: u16,
    pub _pad: u32,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub addr: [u8; 16],
}

/// `sock:inet_sock_set_state` (raw tracepoint: the socket, the old and the new state).
pub mod set_state {
    /// include/net/tcp_states.h
    pub const TCP_ESTABLISHED: i32 = 1;
    pub const TCP_SYN_SENT: i32 = 2;
    pub const TCP_FIN_WAIT1: i32 = 4;
    pub const TCP_CLOSE: i32 = 7;
    pub const TCP_CLOSE_WAIT: i32 = 8;
    pub const TCP_LAST_ACK: i32 = 9;
}

/// A socket a watched process reads or writes, as the socket data path first sees it (the
/// `sock_recv_length` and `sock_send_length` tracepoints): its descriptor, the kernel socket
/// (the identity later events of it carry), and both ends' addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockOpen {
    pub kind: u32,
    pub tgid: u32,
    pub fd: u32,
    /// [`SOCK_CLIENT`] when the process's connect was seen; [`SOCK_TCP`] for a TCP socket.
    pub flags: u32,
    pub sock: u64,
    pub ts_ns: u64,
    /// `AF_INET`/`AF_INET6` (else 0: no address), ports in host byte order.
    pub family: u16,
    pub peer_port: u16,
    pub local_port: u16,
    pub _pad: u16,
    /// IPv4 in the first 4 bytes, or IPv6.
    pub peer_addr: [u8; 16],
    pub local_addr: [u8; 16],
}

/// `SockOpen::flags`: the socket is the client end (its connect was seen).
pub const SOCK_CLIENT: u32 = 1;
/// `SockOpen::flags`: a TCP socket.
pub const SOCK_TCP: u32 = 2;

/// What the socket data path keeps per kernel socket of a watched process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockInfo {
    pub tgid: u32,
    pub fd: u32,
    /// `SOCK_CLIENT` once its connect was seen.
    pub flags: u32,
    pub _pad: u32,
}

/// `SockInfo::fd` of a socket whose descriptor is not known yet.
pub const FD_UNKNOWN: u32 = u32::MAX;

/// Kernel sockets of watched processes remembered (LRU), per map.
pub const MAX_SOCKS: u32 = 65_536;
/// `IPPROTO_TCP`, as `sock.sk_protocol` holds it.
pub const IPPROTO_TCP: u16 = 6;
/// `recvmsg` flag: the bytes stay queued and will be read again.
pub const MSG_PEEK: u64 = 2;

/// Where the fields of `struct sock_common` that name a socket's own address lie on the
/// running kernel, from its BTF; [`SockOffsets::NONE`] for a field it lacks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockOffsets {
    /// `skc_family`
    pub family: u32,
    /// `skc_num`: the local port, host byte order.
    pub num: u32,
    /// `skc_rcv_saddr`: the local IPv4 address.
    pub rcv_saddr: u32,
    /// `skc_v6_rcv_saddr` (kernels with IPv6).
    pub v6_rcv_saddr: u32,
    /// `skc_daddr`: the peer's IPv4 address.
    pub daddr: u32,
    /// `skc_dport`: the peer's port, network byte order.
    pub dport: u32,
    /// `skc_v6_daddr` (kernels with IPv6).
    pub v6_daddr: u32,
    /// `sock.sk_protocol` (a `u16`).
    pub protocol: u32,
}

impl SockOffsets {
    pub const NONE: u32 = u32::MAX;
}

/// Handshakes in flight in watched processes, per map (threads in connect; sockets).
pub const MAX_CONNECTING: u32 = 4096;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
/// Go's sockets are non-blocking: `connect` returns this and completes later.
pub const EINPROGRESS: i64 = 115;

const _: () = assert!(core::mem::size_of::<SockData>() == SOCK_DATA_HEADER + DATA_PREFIX);
const _: () = assert!(core::mem::size_of::<SockDataShort>() == SOCK_DATA_HEADER + EGRESS_PREFIX);
const _: () = assert!(core::mem::size_of::<SockConn>() == 64);
const _: () = assert!(core::mem::size_of::<SockLocal>() == 40);
const _: () = assert!(core::mem::size_of::<SockOpen>() == 72);
const _: () = assert!(core::mem::size_of::<SockInfo>() == 16);
const _: () = assert!(core::mem::size_of::<SockOffsets>() == 32);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    unsafe impl<const N: usize> aya::Pod for SockDataN<N> {}
    unsafe impl aya::Pod for SockConn {}
    unsafe impl aya::Pod for SockLocal {}
    unsafe impl aya::Pod for SockOffsets {}
    unsafe impl aya::Pod for SockOpen {}
    unsafe impl aya::Pod for SockInfo {}
}
