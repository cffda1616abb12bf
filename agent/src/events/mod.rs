//! The kernel's events: decoding raw ring-buffer records into typed events (kind and exact
//! size checked; socket data borrowed from the record, not copied), and reading the ring
//! (`reader`).

mod reader;

pub use reader::read_forever;

use std::mem::size_of;

use obs_common::{
    go_http::GoMuxSeen,
    go_runtime::GoPanic,
    go_trace::{GoClientCall, GoCreationBurst},
    sockets::{
        SockConn, SockDataN, SockLocal, SockOpen, AF_INET, AF_INET6, DATA_PREFIX, EGRESS_PREFIX,
        SOCK_DATA_HEADER,
    },
    EventKind,
};

/// Socket data, long (read) or short (written) prefix alike, borrowed from the ring buffer's
/// record: no copy, no allocation.
#[derive(Clone, Debug)]
pub struct Data<'a> {
    pub tgid: u32,
    pub fd: u32,
    pub ts_ns: u64,
    pub direction: u32,
    /// The Go goroutine that made the syscall, 0 if unknown.
    pub goid: u64,
    /// What the syscall transferred (the prefix is at most this).
    pub bytes: i64,
    prefix: &'a [u8],
}

impl<'a> Data<'a> {
    pub fn prefix(&self) -> &'a [u8] {
        self.prefix
    }

    /// Whether the prefix holds everything the syscall transferred.
    pub fn captured_all(&self) -> bool {
        self.bytes <= self.prefix.len() as i64
    }
}

#[derive(Clone, Debug)]
pub enum Event<'a> {
    GoMuxSeen(GoMuxSeen),
    GoClientCall(GoClientCall),
    GoPanic(GoPanic),
    GoCreationBurst(GoCreationBurst),
    SockData(Data<'a>),
    SockConn(SockConn),
    SockLocal(SockLocal),
    SockOpen(SockOpen),
}

impl Event<'_> {
    /// The process the event is about.
    pub fn tgid(&self) -> u32 {
        match self {
            Event::GoMuxSeen(e) => e.tgid,
            Event::GoClientCall(e) => e.tgid,
            Event::GoPanic(e) => e.tgid,
            Event::GoCreationBurst(e) => e.tgid,
            Event::SockConn(e) => e.tgid,
            Event::SockLocal(e) => e.tgid,
            Event::SockOpen(e) => e.tgid,
            Event::SockData(e) => e.tgid,
        }
    }
}

/// The peer address of an accept or connect, when the process gave or got an IPv4/IPv6 one.
pub fn peer_address(c: &SockConn) -> Option<std::net::SocketAddr> {
    socket_address(c.family, c.port, c.addr)
}

/// Both ends of a socket the socket data path saw first: (this end, the other end).
pub fn open_addresses(
    o: &SockOpen,
) -> (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>) {
    (
        socket_address(o.family, o.local_port, o.local_addr),
        socket_address(o.family, o.peer_port, o.peer_addr),
    )
}

/// This end's address of a connection a process opened.
pub fn local_address(l: &SockLocal) -> Option<std::net::SocketAddr> {
    socket_address(l.family, l.port, l.addr)
}

fn socket_address(family: u16, port: u16, addr: [u8; 16]) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])),
        // An IPv4 client of a dual-stack socket is seen as ::ffff:a.b.c.d by one end and
        // a.b.c.d by the other: one form, so both ends name the connection alike.
        AF_INET6 => Ipv6Addr::from(addr).to_canonical(),
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, port))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short for a header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("{kind:?} record of {got} bytes, expected {want}")]
    WrongSize {
        kind: EventKind,
        got: usize,
        want: usize,
    },
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    let kind_bytes: [u8; 4] = record
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError::Short(record.len()))?;
    let raw_kind = u32::from_ne_bytes(kind_bytes);
    let kind = EventKind::from_u32(raw_kind).ok_or(DecodeError::UnknownKind(raw_kind))?;
    match kind {
        EventKind::GoMuxSeen => read_pod::<GoMuxSeen>(kind, record).map(Event::GoMuxSeen),
        EventKind::GoPanic => read_pod::<GoPanic>(kind, record).map(Event::GoPanic),
        EventKind::GoCreationBurst => {
            read_pod::<GoCreationBurst>(kind, record).map(Event::GoCreationBurst)
        }
        EventKind::SockData => decode_data(kind, record, DATA_PREFIX, false).map(Event::SockData),
        EventKind::SockDataShort => {
            decode_data(kind, record, EGRESS_PREFIX, true).map(Event::SockData)
        }
        EventKind::SockConn => read_pod::<SockConn>(kind, record).map(Event::SockConn),
        EventKind::GoClientCall => read_pod::<GoClientCall>(kind, record).map(Event::GoClientCall),
        EventKind::SockLocal => read_pod::<SockLocal>(kind, record).map(Event::SockLocal),
        EventKind::SockOpen => read_pod::<SockOpen>(kind, record).map(Event::SockOpen),
    }
}

/// A data record: a header, then the prefix. Reads' records are as long as their prefix
/// (`prefix_len`, at most `max`); writes' have room for `max` bytes whatever was copied
/// (`whole`).
fn decode_data(
    kind: EventKind,
    record: &[u8],
    max: usize,
    whole: bool,
) -> Result<Data<'_>, DecodeError> {
    let wrong = || DecodeError::WrongSize {
        kind,
        got: record.len(),
        want: SOCK_DATA_HEADER + max,
    };
    let fits = if whole {
        record.len() == SOCK_DATA_HEADER + max
    } else {
        (SOCK_DATA_HEADER..=SOCK_DATA_HEADER + max).contains(&record.len())
    };
    if !fits {
        return Err(wrong());
    }
    let header = read_pod::<SockDataN<0>>(kind, &record[..SOCK_DATA_HEADER])?;
    let room = &record[SOCK_DATA_HEADER..];
    let len = header.prefix_len as usize;
    let prefix = match (whole, room.get(..len)) {
        (true, Some(p)) => p,
        (false, Some(p)) if len == room.len() => p,
        _ => return Err(wrong()),
    };
    Ok(Data {
        tgid: header.tgid,
        fd: header.fd,
        ts_ns: header.ts_ns,
        direction: header.direction,
        goid: header.goid,
        bytes: header.bytes,
        prefix,
    })
}

/// Copies a record into `T`. Sound because every `T` passed here is `repr(C)` plain data
/// whose every bit pattern is valid (integers and byte arrays only; no bool, enum or
/// reference), and the length is checked to be exactly `size_of::<T>()`.
fn read_pod<T: aya::Pod>(kind: EventKind, record: &[u8]) -> Result<T, DecodeError> {
    if record.len() != size_of::<T>() {
        return Err(DecodeError::WrongSize {
            kind,
            got: record.len(),
            want: size_of::<T>(),
        });
    }
    // SAFETY: see above; read_unaligned copes with any alignment of `record`.
    Ok(unsafe { std::ptr::read_unaligned(record.as_ptr().cast::<T>()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_records() {
        assert_eq!(decode(&[]).unwrap_err(), DecodeError::Short(0));
        assert_eq!(decode(&[1, 2]).unwrap_err(), DecodeError::Short(2));
        assert_eq!(
            decode(&99u32.to_ne_bytes()).unwrap_err(),
            DecodeError::UnknownKind(99)
        );
        let mut rec = (EventKind::SockData as u32).to_ne_bytes().to_vec();
        rec.resize(10, 0);
        assert!(matches!(
            decode(&rec),
            Err(DecodeError::WrongSize { got: 10, .. })
        ));
    }

    #[test]
    fn decodes_each_kind() {
        let record = |kind: EventKind, size: usize| {
            let mut rec = vec![0u8; size];
            rec[..4].copy_from_slice(&(kind as u32).to_ne_bytes());
            rec[4..8].copy_from_slice(&1234u32.to_ne_bytes());
            rec
        };
        let Ok(Event::GoMuxSeen(e)) = decode(&record(EventKind::GoMuxSeen, size_of::<GoMuxSeen>()))
        else {
            panic!("not a mux");
        };
        assert_eq!(e.tgid, 1234);
        // A read's record is as long as its prefix: header, then `prefix_len` bytes.
        let mut read = record(EventKind::SockData, SOCK_DATA_HEADER);
        let Ok(Event::SockData(d)) = decode(&read) else {
            panic!("not data");
        };
        assert_eq!((d.tgid, d.prefix()), (1234, &b""[..]));
        read[36..40].copy_from_slice(&5u32.to_ne_bytes());
        read.extend_from_slice(b"GET /");
        let Ok(Event::SockData(d)) = decode(&read) else {
            panic!("not data");
        };
        assert_eq!(d.prefix(), b"GET /");
        // A prefix length that disagrees with the record's, or a record too long: refused.
        read.push(b'x');
        assert!(matches!(decode(&read), Err(DecodeError::WrongSize { .. })));
        // A write's record has room for its prefix whatever was copied; more than the room
        // is refused.
        let mut short = record(EventKind::SockDataShort, SOCK_DATA_HEADER + EGRESS_PREFIX);
        short[36..40].copy_from_slice(&3u32.to_ne_bytes());
        short[SOCK_DATA_HEADER..SOCK_DATA_HEADER + 3].copy_from_slice(b"HTT");
        let Ok(Event::SockData(d)) = decode(&short) else {
            panic!("not data");
        };
        assert_eq!(d.prefix(), b"HTT");
        short[36..40].copy_from_slice(&(EGRESS_PREFIX as u32 + 1).to_ne_bytes());
        assert!(matches!(decode(&short), Err(DecodeError::WrongSize { .. })));
        let mut long = record(EventKind::SockData, SOCK_DATA_HEADER + DATA_PREFIX + 1);
        long[36..40].copy_from_slice(&(DATA_PREFIX as u32 + 1).to_ne_bytes());
        assert!(matches!(decode(&long), Err(DecodeError::WrongSize { .. })));
        let Ok(Event::SockConn(c)) = decode(&record(EventKind::SockConn, size_of::<SockConn>()))
        else {
            panic!("not a connection");
        };
        assert_eq!(c.tgid, 1234);
        let mut local = record(EventKind::SockLocal, size_of::<SockLocal>());
        local[16..18].copy_from_slice(&AF_INET6.to_ne_bytes());
        local[18..20].copy_from_slice(&41000u16.to_ne_bytes());
        local[24..40].copy_from_slice(
            &"::ffff:127.0.0.2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        let Ok(Event::SockLocal(l)) = decode(&local) else {
            panic!("not a local address");
        };
        assert_eq!(l.tgid, 1234);
        assert_eq!(local_address(&l), Some("127.0.0.2:41000".parse().unwrap()));
        let Ok(Event::GoClientCall(c)) =
            decode(&record(EventKind::GoClientCall, size_of::<GoClientCall>()))
        else {
            panic!("not a call");
        };
        assert_eq!(c.tgid, 1234);
    }
}
