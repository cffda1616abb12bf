//! One process's connections: every socket descriptor it has (accepted: the process is the
//! server end; connected: the client end; found open at attach: told later), what is known of
//! each (addresses, the kernel socket of a connect), which decoder reads it, and the span
//! identities of its requests in flight.
//!
//! Socket events and data come in; out come the requests that started (to be given span
//! identities, [`Connections::take_started`]) and the exchanges that completed, with their
//! connection's addresses and span ([`Connections::drain_finished`]). What could not be
//! used is returned as [`Dropped`], for the self metrics.
//!
//! A connection gets its decoder with its first bytes. Only HTTP/1.x is decoded so far; a
//! connection seen from its start whose first bytes are not HTTP/1.x is reported once
//! ([`Dropped::NotHttp`], with what it looks like) and its later bytes are ignored.
//!
//! Bounded: at most [`MAX_CONNECTIONS`] sockets per process and [`MAX_PENDING`] requests in
//! flight per connection; what does not fit is counted.

mod handshake;
#[cfg(test)]
mod tests;

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
};

use crate::protocols::{
    http1::Http1,
    recognise::Unrecognised,
    trace_context::{SpanContext, SpanId, TraceParent},
    Chunk, Decoder, Direction, Exchange, Issue, Records, RequestId, Role, MAX_PENDING,
};

use self::handshake::Handshakes;

pub const MAX_CONNECTIONS: usize = 65_536;
/// A response with no byte seen for this long is complete, unless its socket still holds
/// bytes in flight (see [`Connections::quiet_responses`]).
pub const RESPONSE_QUIET_NS: u64 = 300_000_000;

/// Hashes a descriptor number: a multiplication, not SipHash. Descriptors are small integers
/// the kernel hands out lowest first, so nobody can choose colliding keys.
#[derive(Default)]
struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u32(&mut self, fd: u32) {
        self.0 = u64::from(fd).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type FdMap<V> = HashMap<u32, V, BuildHasherDefault<FdHasher>>;

/// A request that just started on a connection: what a span needs to be given its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    pub fd: u32,
    pub id: RequestId,
    pub role: Role,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub traceparent: Option<TraceParent>,
}

/// A request/response pair complete on one connection, with what the connection knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finished {
    pub role: Role,
    /// The other end: the client of a server connection, the server of a client connection.
    pub peer: Option<SocketAddr>,
    /// This end's address, when known.
    pub local: Option<SocketAddr>,
    /// The span identity given when the request started.
    pub span: Option<SpanContext>,
    /// What the connection's decoder made of it.
    pub exchange: Exchange,
}

/// What the socket data path knows of a socket it sees for the first time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeenSocket {
    /// `Client` when its connect was seen; `Server` for a TCP socket whose was not (it was
    /// accepted); `None` when unknown (told by its first message).
    pub role: Option<Role>,
    pub local: Option<SocketAddr>,
    pub peer: Option<SocketAddr>,
}

/// What happened to an event that did not complete an exchange, for the self metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Data on a descriptor that is not a known socket.
    NotASocket,
    /// A response with no request waiting for it.
    UnmatchedResponse,
    /// Requests still waiting when their connection closed or switched protocols.
    Unanswered(usize),
    /// The socket table or a connection's queue was full.
    Overflow,
    /// A connection that does not speak HTTP/1.x, by which end the process is and what it
    /// looks like: reported once per connection.
    NotHttp { role: Role, reason: Unrecognised },
}

/// How a socket's bytes are read.
#[derive(Debug, Default)]
enum Decoding {
    /// No byte seen yet.
    #[default]
    NotYet,
    Active(Box<dyn Decoder>),
    /// Not a protocol the agent decodes, or left for another one (101): its bytes are
    /// ignored.
    Ignored,
}

#[derive(Debug, Default)]
struct Socket {
    /// `None` until known (a socket found open at attach).
    role: Option<Role>,
    peer: Option<SocketAddr>,
    /// This end's address (getsockname, the kernel's handshake, /proc), when seen.
    local: Option<SocketAddr>,
    /// The kernel's socket, for a connection connected now (0: unknown).
    sock: u64,
    /// Seen from its start (accept, connect): its first bytes tell its protocol.
    from_start: bool,
    decoding: Decoding,
    /// Span identities of requests started and not yet complete, oldest first.
    spans: VecDeque<(RequestId, SpanContext)>,
    /// The request that started last.
    last_started: Option<RequestId>,
}

impl Socket {
    fn in_flight(&self) -> usize {
        match &self.decoding {
            Decoding::Active(d) => d.in_flight(),
            _ => 0,
        }
    }

    /// Requests in flight if this is a server end.
    fn server_in_flight(&self) -> usize {
        if self.role == Some(Role::Server) {
            self.in_flight()
        } else {
            0
        }
    }
}

/// Every socket of one process, server and client ends.
#[derive(Debug, Default)]
pub struct Connections {
    sockets: FdMap<Socket>,
    queues: Queues,
    handshakes: Handshakes,
    /// Requests in flight on server ends, kept as they come and go (read on every event).
    server_in_flight: usize,
}

/// What the table hands on, apart from the sockets so that a socket's decoder can fill them.
#[derive(Debug, Default)]
struct Queues {
    /// Requests started and not yet given a span identity (`take_started`), oldest first.
    started: VecDeque<Started>,
    /// Exchanges complete and not yet taken (`drain_finished`).
    finished: Vec<Finished>,
    /// What the decoder of the last call emitted, reused (no allocation per call).
    records: Records,
}

impl Queues {
    /// Moves what the decoder emitted into the queues, with what `socket` knows.
    fn collect(&mut self, fd: u32, socket: &mut Socket) {
        if self.records.started.is_empty() && self.records.completed.is_empty() {
            return;
        }
        let role = socket.role.unwrap_or(Role::Server);
        for new in self.records.started.drain(..) {
            if self.started.len() >= MAX_PENDING {
                self.started.pop_front();
            }
            socket.last_started = Some(new.id);
            self.started.push_back(Started {
                fd,
                id: new.id,
                role,
                peer: socket.peer,
                local: socket.local,
                traceparent: new.traceparent,
            });
        }
        for c in self.records.completed.drain(..) {
            let span = take_span(&mut socket.spans, c.id);
            self.finished.push(finished(role, socket, span, c));
        }
    }
}

impl Connections {
    /// A descriptor found to be a socket when the agent attached: accepted (`Server`),
    /// connected (`Client`), or unknown (`None`: told by its first message).
    pub fn add_socket(&mut self, fd: u32, role: Option<Role>, peer: Option<SocketAddr>) {
        self.insert(fd, role, peer, false);
    }

    /// A connection accepted (`Server`) or connected (`Client`) now, seen from its first
    /// byte. A descriptor reused for it starts afresh: what its previous connection left
    /// unanswered is returned.
    pub fn new_connection(
        &mut self,
        fd: u32,
        role: Role,
        peer: Option<SocketAddr>,
    ) -> Option<Dropped> {
        let dropped = self.close(fd);
        let inserted = self.insert(fd, Some(role), peer, true);
        dropped.or((!inserted).then_some(Dropped::Overflow))
    }

    /// The socket data path saw kernel socket `sock` on `fd` for the first time, with its
    /// role when the kernel knows it and both ends' addresses. The socket already on `fd`
    /// if it is this one or not yet identified (found open at attach) learns what it lacked;
    /// a descriptor that named another socket starts afresh, as in `new_connection`.
    pub fn opened(&mut self, fd: u32, sock: u64, seen: SeenSocket) -> Option<Dropped> {
        if let Some(s) = self.sockets.get_mut(&fd) {
            if s.sock == sock || s.sock == 0 {
                s.sock = sock;
                s.local = s.local.or(seen.local);
                s.peer = s.peer.or(seen.peer);
                // Found open at attach, its connect was not seen: only a client is sure.
                if s.from_start || seen.role == Some(Role::Client) {
                    s.role = s.role.or(seen.role);
                }
                return None;
            }
        }
        let dropped = self.close(fd);
        let inserted = self.insert(fd, seen.role, seen.peer, true);
        if let Some(s) = self.sockets.get_mut(&fd) {
            s.sock = sock;
            s.local = seen.local;
        }
        dropped.or((!inserted).then_some(Dropped::Overflow))
    }

    /// Whether `fd` may name kernel socket `sock`: it does, or its socket is not identified
    /// yet (found open at attach). For the socket data path's close of a socket, by when its
    /// descriptor may name a new one.
    pub fn is_socket(&self, fd: u32, sock: u64) -> bool {
        self.sockets
            .get(&fd)
            .is_some_and(|s| s.sock == sock || s.sock == 0)
    }

    /// Whether the socket found room in the table.
    fn insert(
        &mut self,
        fd: u32,
        role: Option<Role>,
        peer: Option<SocketAddr>,
        from_start: bool,
    ) -> bool {
        if self.sockets.len() >= MAX_CONNECTIONS && !self.sockets.contains_key(&fd) {
            return false;
        }
        let socket = Socket {
            role,
            peer,
            from_start,
            ..Socket::default()
        };
        if let Some(mut old) = self.sockets.insert(fd, socket) {
            self.server_in_flight -= old.server_in_flight();
            // A socket found again: what it was answering is complete.
            if let Decoding::Active(d) = &mut old.decoding {
                d.close(&mut self.queues.records);
            }
            self.queues.collect(fd, &mut old);
        }
        true
    }

    /// The socket's own address, from getsockname.
    pub fn set_local(&mut self, fd: u32, local: SocketAddr) {
        if let Some(s) = self.sockets.get_mut(&fd) {
            s.local = Some(local);
        }
    }

    /// The kernel socket whose handshake the connect on `fd` (just seen, `new_connection`)
    /// started; its local address comes with `handshake_done`, before or after.
    pub fn connecting(&mut self, fd: u32, sock: u64) {
        let Some(s) = self.sockets.get_mut(&fd) else {
            return;
        };
        s.sock = sock;
        if let Some(local) = self.handshakes.connecting(sock, fd) {
            s.local = Some(local);
        }
    }

    /// The handshake of kernel socket `sock` completed, with this end at `local`.
    pub fn handshake_done(&mut self, sock: u64, local: SocketAddr) {
        if let Some(fd) = self.handshakes.done(sock, local) {
            if let Some(s) = self.sockets.get_mut(&fd).filter(|s| s.sock == sock) {
                s.local = Some(local);
            }
        }
    }

    /// Bytes the process read from `fd` (`bytes` in all, `data` the captured start of them).
    pub fn ingress(&mut self, fd: u32, ts_ns: u64, data: &[u8], bytes: i64) -> Result<(), Dropped> {
        self.data(fd, Direction::Ingress, Chunk { ts_ns, data, bytes })
    }

    /// Bytes the process wrote to `fd` (`bytes` in all, `data` the captured start of them;
    /// empty for `sendfile`).
    pub fn egress(&mut self, fd: u32, ts_ns: u64, data: &[u8], bytes: i64) -> Result<(), Dropped> {
        self.data(fd, Direction::Egress, Chunk { ts_ns, data, bytes })
    }

    /// Bytes going `direction` on `fd`, to the connection's decoder.
    pub fn data(&mut self, fd: u32, direction: Direction, chunk: Chunk<'_>) -> Result<(), Dropped> {
        let Self {
            sockets,
            queues,
            server_in_flight,
            ..
        } = self;
        let socket = sockets.get_mut(&fd).ok_or(Dropped::NotASocket)?;
        if matches!(socket.decoding, Decoding::NotYet) {
            socket.decoding = Decoding::Active(decoder_for(socket.role, socket.from_start));
        }
        let before = socket.server_in_flight();
        let Decoding::Active(decoder) = &mut socket.decoding else {
            return Ok(());
        };
        let result = decoder.data(direction, chunk, &mut queues.records);
        socket.role = socket.role.or(decoder.role());
        let outcome = match result {
            Ok(()) => Ok(()),
            Err(Issue::NotThisProtocol) => {
                socket.decoding = Decoding::Ignored;
                Err(Dropped::NotHttp {
                    role: socket.role.unwrap_or(Role::Server),
                    reason: Unrecognised::of(chunk.data),
                })
            }
            Err(Issue::UnmatchedResponse) => Err(Dropped::UnmatchedResponse),
            Err(Issue::Overflow) => Err(Dropped::Overflow),
            Err(Issue::Unanswered(n)) => Err(Dropped::Unanswered(n)),
        };
        if matches!(&socket.decoding, Decoding::Active(d) if d.is_done()) {
            socket.decoding = Decoding::Ignored;
        }
        *server_in_flight = *server_in_flight - before + socket.server_in_flight();
        queues.collect(fd, socket);
        outcome
    }

    /// The oldest request started and not yet given its span identity (with `set_span`).
    pub fn take_started(&mut self) -> Option<Started> {
        self.queues.started.pop_front()
    }

    /// Gives request `id` on `fd` its span identity.
    pub fn set_span(&mut self, fd: u32, id: RequestId, span: SpanContext) {
        if let Some(s) = self.sockets.get_mut(&fd) {
            if s.spans.len() > MAX_PENDING {
                s.spans.pop_front();
            }
            s.spans.push_back((id, span));
        }
    }

    /// Gives the request in flight on `fd` with span `span_id` a new identity (adopted by a
    /// client span whose event came late). Whether it was still in flight.
    pub fn relink(&mut self, fd: u32, span_id: SpanId, span: SpanContext) -> bool {
        let Some(slot) = self
            .sockets
            .get_mut(&fd)
            .and_then(|s| s.spans.iter_mut().find(|(_, ctx)| ctx.span_id == span_id))
        else {
            return false;
        };
        slot.1 = span;
        true
    }

    /// Exchanges complete since the last call, in the order they completed.
    pub fn drain_finished(&mut self) -> std::vec::Drain<'_, Finished> {
        self.queues.finished.drain(..)
    }

    /// The span of the server request in flight, if exactly one is: the parent of the calls
    /// the process makes meanwhile. With several in flight the caller cannot be told apart
    /// from socket data alone.
    pub fn sole_server_span(&self) -> Option<SpanContext> {
        let mut busy = self
            .sockets
            .values()
            .filter(|s| s.role == Some(Role::Server))
            .filter(|s| s.in_flight() > 0);
        let (Some(socket), None) = (busy.next(), busy.next()) else {
            return None;
        };
        if socket.in_flight() != 1 {
            return None;
        }
        // The one request in flight is the last one that started.
        let last = socket.last_started?;
        socket
            .spans
            .iter()
            .find(|(id, _)| *id == last)
            .map(|(_, span)| *span)
    }

    /// The descriptor was closed: a response in progress is complete; unanswered requests
    /// are dropped.
    pub fn close(&mut self, fd: u32) -> Option<Dropped> {
        let mut socket = self.sockets.remove(&fd)?;
        self.server_in_flight -= socket.server_in_flight();
        if socket.sock != 0 {
            self.handshakes.forget(socket.sock);
        }
        let unanswered = match &mut socket.decoding {
            Decoding::Active(d) => d.close(&mut self.queues.records),
            _ => 0,
        };
        self.queues.collect(fd, &mut socket);
        (unanswered > 0).then_some(Dropped::Unanswered(unanswered))
    }

    /// Completes every response that has seen no byte since `quiet_ns` before `now_ns`
    /// (the kernel's monotonic clock, as event timestamps).
    pub fn finish_quiet(&mut self, now_ns: u64, quiet_ns: u64) {
        for fd in self.quiet_responses(now_ns, quiet_ns) {
            self.finish_response(fd);
        }
    }

    /// The descriptors whose response has seen no byte since `quiet_ns` before `now_ns`:
    /// complete unless the socket still has bytes queued (a slow reader).
    pub fn quiet_responses(&self, now_ns: u64, quiet_ns: u64) -> Vec<u32> {
        self.sockets
            .iter()
            .filter(|(_, s)| match &s.decoding {
                Decoding::Active(d) => d
                    .response_in_progress()
                    .is_some_and(|end| now_ns.saturating_sub(end) >= quiet_ns),
                _ => false,
            })
            .map(|(fd, _)| *fd)
            .collect()
    }

    /// The response in progress on `fd` is complete.
    pub fn finish_response(&mut self, fd: u32) {
        let Some(socket) = self.sockets.get_mut(&fd) else {
            return;
        };
        if let Decoding::Active(d) = &mut socket.decoding {
            d.finish_response(&mut self.queues.records);
        }
        self.queues.collect(fd, socket);
    }

    /// The process is gone: every response in progress is complete; returns how many
    /// requests were left unanswered. The table is left empty.
    pub fn finish_all(&mut self) -> usize {
        let mut unanswered = 0;
        let sockets = std::mem::take(&mut self.sockets);
        for (fd, mut socket) in sockets {
            if let Decoding::Active(d) = &mut socket.decoding {
                unanswered += d.close(&mut self.queues.records);
            }
            self.queues.collect(fd, &mut socket);
        }
        self.queues.started.clear();
        self.server_in_flight = 0;
        unanswered
    }

    /// Requests in flight on the server end of connections (read, not yet answered).
    pub fn in_flight(&self) -> usize {
        debug_assert_eq!(self.server_in_flight, self.in_flight_as(Some(Role::Server)));
        self.server_in_flight
    }

    /// Requests in flight on every connection, server and client ends.
    pub fn in_flight_all(&self) -> usize {
        self.in_flight_as(None)
    }

    fn in_flight_as(&self, role: Option<Role>) -> usize {
        self.sockets
            .values()
            .filter(|s| role.is_none() || s.role == role)
            .map(Socket::in_flight)
            .sum()
    }
}

/// The decoder a connection gets with its first bytes. HTTP/1.x is the only protocol decoded
/// yet; its decoder also tells when a connection seen from its start is not HTTP/1.x.
fn decoder_for(role: Option<Role>, from_start: bool) -> Box<dyn Decoder> {
    Box::new(Http1::new(role, from_start))
}

/// The span identity of request `id`, taken.
fn take_span(spans: &mut VecDeque<(RequestId, SpanContext)>, id: RequestId) -> Option<SpanContext> {
    let i = spans.iter().position(|(r, _)| *r == id)?;
    spans.remove(i).map(|(_, span)| span)
}

fn finished(
    role: Role,
    socket: &Socket,
    span: Option<SpanContext>,
    exchange: Exchange,
) -> Finished {
    Finished {
        role,
        peer: socket.peer,
        local: socket.local,
        span,
        exchange,
    }
}
