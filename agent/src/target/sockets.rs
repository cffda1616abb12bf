//! The TCP sockets a process has open when the agent attaches: from `/proc/PID/fd` (which
//! descriptors are sockets, by inode) and `/proc/PID/net/tcp{,6}` (each inode's local and
//! remote address and state, in the process's network namespace). A socket whose local port
//! is one the process listens on is the server end of a connection; another established
//! socket is a client end, connected to its remote address.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use crate::protocols::Role;

/// A socket descriptor open at attach, with what /proc says of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenSocket {
    pub fd: u32,
    /// `None` when /proc does not tell (not TCP, or gone meanwhile).
    pub role: Option<Role>,
    pub peer: Option<SocketAddr>,
    /// This end's address: links spans across processes like getsockname does for new ones.
    pub local: Option<SocketAddr>,
}

/// TCP states in /proc/net/tcp.
const ESTABLISHED: u8 = 0x01;
const LISTEN: u8 = 0x0A;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct TcpEntry {
    local: SocketAddr,
    remote: SocketAddr,
    state: u8,
    /// Bytes written and not yet acknowledged, and bytes received and not yet read.
    tx_queue: u32,
    rx_queue: u32,
    inode: u64,
}

pub fn open_sockets(pid: u32) -> Vec<OpenSocket> {
    let fds = socket_fds(pid);
    let mut entries: HashMap<u64, TcpEntry> = HashMap::new();
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            entries.extend(parse_tcp_table(&text).into_iter().map(|e| (e.inode, e)));
        }
    }
    let inodes: HashSet<u64> = fds.iter().map(|(_, inode)| *inode).collect();
    let listening: HashSet<u16> = entries
        .values()
        .filter(|e| e.state == LISTEN && inodes.contains(&e.inode))
        .map(|e| e.local.port())
        .collect();
    fds.into_iter()
        .map(|(fd, inode)| match entries.get(&inode) {
            Some(e) if e.state == LISTEN => OpenSocket {
                fd,
                role: None,
                peer: None,
                local: None,
            },
            Some(e) if listening.contains(&e.local.port()) => OpenSocket {
                fd,
                role: Some(Role::Server),
                peer: Some(e.remote),
                local: Some(e.local),
            },
            Some(e) if e.state == ESTABLISHED => OpenSocket {
                fd,
                role: Some(Role::Client),
                peer: Some(e.remote),
                local: Some(e.local),
            },
            _ => OpenSocket {
                fd,
                role: None,
                peer: None,
                local: None,
            },
        })
        .collect()
}

/// The TCP tables of network namespaces, read once each (a node-wide scan looks at every
/// process, and most share a few namespaces).
#[derive(Default)]
pub struct TcpTables {
    /// Network namespace inode -> (socket inode -> TCP state).
    by_netns: HashMap<u64, HashMap<u64, u8>>,
}

impl TcpTables {
    /// Whether `pid` has a TCP socket listening or connected (IPv4 or IPv6).
    pub fn has_tcp_socket(&mut self, pid: u32) -> bool {
        let fds = socket_fds(pid);
        if fds.is_empty() {
            return false;
        }
        let Ok(netns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else {
            return false;
        };
        use std::os::unix::fs::MetadataExt;
        let states = self.by_netns.entry(netns.ino()).or_insert_with(|| {
            let mut states = HashMap::new();
            for table in ["tcp", "tcp6"] {
                if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
                    states.extend(
                        parse_tcp_table(&text)
                            .into_iter()
                            .map(|e| (e.inode, e.state)),
                    );
                }
            }
            states
        });
        fds.iter().any(|(_, inode)| {
            states
                .get(inode)
                .is_some_and(|&s| s == LISTEN || s == ESTABLISHED)
        })
    }
}

/// Which of `fds` (TCP sockets of `pid`) still have bytes in flight: written and not yet
/// acknowledged by the peer, or received and not yet read. A response on such a socket is
/// still being transferred (a slow reader), however long since the last write.
pub fn busy_sockets(pid: u32, fds: &[u32]) -> HashSet<u32> {
    let inodes: HashMap<u64, u32> = fds
        .iter()
        .filter_map(|&fd| {
            let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((inode, fd))
        })
        .collect();
    let mut busy = HashSet::new();
    if inodes.is_empty() {
        return busy;
    }
    for table in ["tcp", "tcp6"] {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            busy.extend(
                parse_tcp_table(&text)
                    .into_iter()
                    .filter(|e| e.tx_queue > 0 || e.rx_queue > 0)
                    .filter_map(|e| inodes.get(&e.inode).copied()),
            );
        }
    }
    busy
}

/// This end's address of TCP socket `fd` of `pid`, from /proc: for processes that never ask
/// (getsockname), the local end that links a call to the server span of the same connection
/// in another watched process. `None` if the socket is gone or not TCP.
pub fn local_address(pid: u32, fd: u32) -> Option<SocketAddr> {
    let target = std::fs::read_link(format!("/proc/{pid}/fd/{fd}")).ok()?;
    let inode: u64 = target
        .to_str()?
        .strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()?;
    ["tcp", "tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok()?;
        parse_tcp_table(&text)
            .into_iter()
            .find(|e| e.inode == inode)
            .map(|e| e.local)
    })
}

/// (descriptor, socket inode) of every socket the process has open.
fn socket_fds(pid: u32) -> Vec<(u32, u64)> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        let inode = target
            .to_str()?
            .strip_prefix("socket:[")?
            .strip_suffix(']')?
            .parse()
            .ok()?;
        Some((e.file_name().to_str()?.parse().ok()?, inode))
    })
    .collect()
}

/// The lines of /proc/net/tcp or tcp6: `sl local_address rem_address st ... inode ...`, with
/// addresses as hex (host-order 32-bit words) and ports as hex. Malformed lines are skipped.
fn parse_tcp_table(text: &str) -> Vec<TcpEntry> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (tx, rx) = f.get(4)?.split_once(':')?;
            Some(TcpEntry {
                local: parse_hex_addr(f.get(1)?)?,
                remote: parse_hex_addr(f.get(2)?)?,
                state: u8::from_str_radix(f.get(3)?, 16).ok()?,
                tx_queue: u32::from_str_radix(tx, 16).ok()?,
                rx_queue: u32::from_str_radix(rx, 16).ok()?,
                inode: f.get(9)?.parse().ok()?,
            })
        })
        .collect()
}

fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(
            u32::from_str_radix(addr, 16).ok()?.to_le_bytes(),
        )),
        32 => {
            let mut bytes = [0u8; 16];
            for (i, chunk) in bytes.chunks_mut(4).enumerate() {
                let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            // IPv4 clients of dual-stack sockets in the IPv4 form, as the events give them.
            Ipv6Addr::from(bytes).to_canonical()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:1F90 0100007F:D431 01 0001F000:00000010 00:00000000 00000000     0        0 1002 1 0 20 4 30 10 -1
   2: 0100007F:9C40 0100007F:0050 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 20 4 30 10 -1
   garbage line
";

    #[test]
    fn local_address_of_a_connected_socket() {
        use std::os::fd::AsRawFd;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let pid = std::process::id();
        assert_eq!(
            local_address(pid, client.as_raw_fd() as u32),
            Some(client.local_addr().unwrap())
        );
        assert_eq!(local_address(pid, 0xffff), None);
    }

    #[test]
    fn parses_proc_net_tcp() {
        let e = parse_tcp_table(TCP);
        assert_eq!(e.len(), 3);
        assert_eq!(e[0].local, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(e[0].state, LISTEN);
        assert_eq!(e[1].remote, "127.0.0.1:54321".parse().unwrap());
        assert_eq!((e[1].tx_queue, e[1].rx_queue), (0x1F000, 0x10));
        assert_eq!(e[2].inode, 1003);
        let v6 = parse_hex_addr("00000000000000000000000001000000:0050").unwrap();
        assert_eq!(v6, "[::1]:80".parse().unwrap());
        assert_eq!(parse_hex_addr("zz:1"), None);
        assert_eq!(parse_hex_addr("0100007F"), None);
    }

    #[test]
    fn own_sockets_are_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        let sockets = open_sockets(std::process::id());
        let find = |fd: i32| sockets.iter().find(|s| s.fd == fd as u32).copied();
        use std::os::fd::AsRawFd;
        let c = find(client.as_raw_fd()).unwrap();
        assert_eq!(c.role, Some(Role::Client));
        assert_eq!(c.peer, Some(listener.local_addr().unwrap()));
        let a = find(accepted.as_raw_fd()).unwrap();
        assert_eq!(a.role, Some(Role::Server));
        assert_eq!(a.peer, Some(client.local_addr().unwrap()));
        assert_eq!(find(listener.as_raw_fd()).unwrap().role, None);
        assert!(TcpTables::default().has_tcp_socket(std::process::id()));
    }
}
