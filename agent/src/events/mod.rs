//! Reading the kernel's event ring buffer and decoding its raw records into typed events.
//!
//! The kernel does not wake the reader per event (that costs ~1.4 µs each); a short timer
//! drains the ring, so events are never older than [`DRAIN_INTERVAL`] when they reach the
//! metrics. Only a burst that fills the ring past half wakes the reader early.

use std::{mem::size_of, time::Duration};

use aya::maps::{MapData, RingBuf};
use obs_common::{
    go_http::GoMuxSeen,
    go_runtime::GoPanic,
    go_trace::GoClientCall,
    sockets::{SockConn, SockData, SockDataN, SockDataShort, AF_INET, AF_INET6, DATA_PREFIX},
    EventKind,
};
use tokio::io::unix::AsyncFd;

pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Socket data, long (read) or short (written) prefix alike, without a heap allocation.
#[derive(Clone, Debug)]
pub struct Data {
    pub tgid: u32,
    pub fd: u32,
    pub ts_ns: u64,
    pub direction: u32,
    /// The Go goroutine that made the syscall, 0 if unknown.
    pub goid: u64,
    /// What the syscall transferred (the prefix is at most this).
    pub bytes: i64,
    len: usize,
    prefix: [u8; DATA_PREFIX],
}

impl Data {
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..self.len]
    }

    /// Whether the prefix holds everything the syscall transferred.
    pub fn captured_all(&self) -> bool {
        self.bytes <= self.len as i64
    }

    fn from_record<const N: usize>(d: &SockDataN<N>) -> Self {
        let len = (d.prefix_len as usize).min(N).min(DATA_PREFIX);
        let mut prefix = [0; DATA_PREFIX];
        prefix[..len].copy_from_slice(&d.prefix[..len]);
        Self {
            tgid: d.tgid,
            fd: d.fd,
            ts_ns: d.ts_ns,
            direction: d.direction,
            goid: d.goid,
            bytes: d.bytes,
            len,
            prefix,
        }
    }
}

#[derive(Clone, Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "moved by value, never stored: no allocation per event"
)]
pub enum Event {
    GoMuxSeen(GoMuxSeen),
    GoClientCall(GoClientCall),
    GoPanic(GoPanic),
    SockData(Data),
    SockConn(SockConn),
}

/// The peer address of an accept or connect, when the process gave or got an IPv4/IPv6 one.
pub fn peer_address(c: &SockConn) -> Option<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let ip = match c.family {
        AF_INET => IpAddr::V4(Ipv4Addr::new(c.addr[0], c.addr[1], c.addr[2], c.addr[3])),
        AF_INET6 => IpAddr::V6(Ipv6Addr::from(c.addr)),
        _ => return None,
    };
    Some(std::net::SocketAddr::new(ip, c.port))
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

impl DecodeError {
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::Short(_) => "short_record",
            DecodeError::UnknownKind(_) => "unknown_kind",
            DecodeError::WrongSize { .. } => "wrong_size",
        }
    }
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<Event, DecodeError> {
    let kind_bytes: [u8; 4] = record
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .ok_or(DecodeError::Short(record.len()))?;
    let raw_kind = u32::from_ne_bytes(kind_bytes);
    let kind = EventKind::from_u32(raw_kind).ok_or(DecodeError::UnknownKind(raw_kind))?;
    match kind {
        EventKind::GoMuxSeen => read_pod::<GoMuxSeen>(kind, record).map(Event::GoMuxSeen),
        EventKind::GoPanic => read_pod::<GoPanic>(kind, record).map(Event::GoPanic),
        EventKind::SockData => {
            read_pod::<SockData>(kind, record).map(|d| Event::SockData(Data::from_record(&d)))
        }
        EventKind::SockDataShort => {
            read_pod::<SockDataShort>(kind, record).map(|d| Event::SockData(Data::from_record(&d)))
        }
        EventKind::SockConn => read_pod::<SockConn>(kind, record).map(Event::SockConn),
        EventKind::GoClientCall => read_pod::<GoClientCall>(kind, record).map(Event::GoClientCall),
    }
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

/// Drains the ring buffer forever, handing each record (decoded or not) to `sink`.
pub async fn read_forever<F>(ring: RingBuf<MapData>, mut sink: F) -> std::io::Result<()>
where
    F: FnMut(Result<Event, DecodeError>),
{
    // SAFETY: the AsyncFd owns the ring buffer, which owns the fd: it stays open for as long
    // as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)? };
    let mut tick = tokio::time::interval(DRAIN_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            guard = fd.readable_mut() => {
                let mut guard = guard?;
                drain(guard.get_inner_mut(), &mut sink);
                guard.clear_ready();
            }
            _ = tick.tick() => drain(fd.get_mut(), &mut sink),
        }
    }
}

fn drain<F: FnMut(Result<Event, DecodeError>)>(ring: &mut RingBuf<MapData>, sink: &mut F) {
    while let Some(record) = ring.next() {
        sink(decode(&record));
    }
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
        let Ok(Event::SockData(d)) = decode(&record(EventKind::SockData, size_of::<SockData>()))
        else {
            panic!("not data");
        };
        assert_eq!(d.tgid, 1234);
        let Ok(Event::SockConn(c)) = decode(&record(EventKind::SockConn, size_of::<SockConn>()))
        else {
            panic!("not a connection");
        };
        assert_eq!(c.tgid, 1234);
        let Ok(Event::GoClientCall(c)) =
            decode(&record(EventKind::GoClientCall, size_of::<GoClientCall>()))
        else {
            panic!("not a call");
        };
        assert_eq!(c.tgid, 1234);
    }
}
