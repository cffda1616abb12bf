//! HTTP/1.x requests from socket data, on both ends of a connection, for any language. On a
//! server connection (accepted), requests read by the process are queued and paired, in
//! order, with the status lines it writes; on a client connection (connected), requests
//! written are paired with the status lines read. A socket found open at attach gets its role
//! from the first request line or status line seen on it.
//!
//! - Several requests in one read (pipelining) are each queued, as far as the captured prefix
//!   shows them; a request body of known length (`Content-Length`) is skipped, in this read
//!   or later ones, so body bytes are never taken for requests. A body that cannot be
//!   followed (chunked, or behind a head longer than the capture) makes the server end read
//!   nothing as a request until the response starts.
//! - A response lasts from its status line to the last byte of it seen: later writes (server)
//!   or reads (client) without a status line, `sendfile` included, extend it. It is complete
//!   (and reported) when the next response starts on the connection, the client sends its
//!   next request, the connection closes, or it has been quiet for a while
//!   ([`Connections::finish_quiet`]). Interim (1xx) responses do not complete a request;
//!   `101 Switching Protocols` does, and the connection is left alone after it.
//! - The first bytes of a connection the agent saw open (accept, connect) tell whether it
//!   speaks HTTP/1.x at all; one that does not (TLS, HTTP/2, a binary protocol, garbage) is
//!   reported once ([`Dropped::NotHttp`]) and ignored from then on: it never yields a request.
//!
//! Bounded: at most [`MAX_PENDING`] requests per connection and [`MAX_CONNECTIONS`]
//! connections per process; what does not fit is counted.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
    net::SocketAddr,
};

use crate::protocols::http::{
    classify_request, other_protocol, parse_request_head, parse_status, request_start_prefix,
    BodyFraming, RequestParse, RequestStart, TraceParent,
};

use super::trace::{SpanId, TraceId};

/// A span's identity, given when its request starts (children made while it runs need it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent_id: Option<SpanId>,
    pub sampled: bool,
}

/// A request that just started on a connection: what a span needs to be given its identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Started {
    pub fd: u32,
    pub role: Role,
    pub peer: Option<SocketAddr>,
    pub local: Option<SocketAddr>,
    pub traceparent: Option<TraceParent>,
}

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

pub const MAX_PENDING: usize = 64;
pub const MAX_CONNECTIONS: usize = 65_536;
/// A response with no byte seen for this long is complete, unless its socket still holds
/// bytes in flight (see [`Connections::quiet_responses`]).
pub const RESPONSE_QUIET_NS: u64 = 300_000_000;

/// A request the server has read and not yet answered.
#[derive(Clone, Debug)]
struct Pending {
    request: RequestStart,
    start_ns: u64,
    span: Option<SpanContext>,
}

/// Which end of the connection the watched process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// What a connection speaks, as far as its first bytes tell.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Protocol {
    /// Nothing seen yet, or a socket found open at attach (its first bytes were missed).
    #[default]
    Unknown,
    Http,
    /// Not HTTP/1.x: ignored.
    Other,
    /// Switched to another protocol by `101 Switching Protocols`: ignored.
    Upgraded,
}

#[derive(Clone, Copy, Debug, Default)]
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
    protocol: Protocol,
}

#[derive(Default, Debug)]
struct Connection {
    pending: VecDeque<Pending>,
    /// The response being written (server) or read (client): its status line was seen.
    responding: Option<Exchange>,
    /// The start of a request line whose rest has not been read yet, with the time of its
    /// first byte.
    head: Vec<u8>,
    head_ns: u64,
    /// Bytes of a request body (known length) still to be read (server end).
    body_left: u64,
    /// A request whose body cannot be followed (its head was longer than the capture, or
    /// its body is chunked) is being read: nothing read is a new request until its response
    /// starts (server end). Body bytes never become requests; a request pipelined behind
    /// such a one is not seen.
    body_unknown: bool,
}

/// A request/response pair seen on one connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub role: Role,
    /// The other end: the client of a server connection, the server of a client connection.
    pub peer: Option<SocketAddr>,
    /// This end's address, when known.
    pub local: Option<SocketAddr>,
    /// The span identity given when the request started.
    pub span: Option<SpanContext>,
    pub method: &'static str,
    pub path: String,
    pub truncated: bool,
    pub status: u16,
    /// The first byte of the request (read by a server, written by a client).
    pub start_ns: u64,
    /// The last byte of the response seen (written by a server, read by a client).
    pub end_ns: u64,
}

/// What happened to an event that did not complete an exchange, for the self metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dropped {
    /// Data on a descriptor that is not a known socket.
    NotASocket,
    /// A response with no request waiting for it.
    UnmatchedResponse,
    /// Requests still waiting when their connection closed or overflowed.
    Unanswered(usize),
    /// The connection table or a connection's queue was full.
    Overflow,
    /// A connection that does not speak HTTP/1.x, by which end the process is and what it
    /// looks like (`protocols::http::other_protocol`): reported once per connection.
    NotHttp { role: Role, reason: &'static str },
}

/// Every socket of one process, server and client ends.
#[derive(Default, Debug)]
pub struct Connections {
    sockets: FdMap<Socket>,
    connections: FdMap<Connection>,
    /// Requests started and not yet given a span identity (`take_started`), oldest first.
    started: VecDeque<Started>,
    /// Exchanges complete and not yet taken (`drain_finished`).
    finished: Vec<Exchange>,
    /// The requests of one read, reused (no allocation per read).
    read_requests: Vec<(RequestStart, u64)>,
    /// Connects and completed handshakes still waiting for each other, by kernel socket
    /// (either may come first).
    handshakes: HashMap<u64, Handshake>,
}

/// One half of the pair that names a connected socket's own address.
#[derive(Clone, Copy, Debug)]
enum Handshake {
    Connect(u32),
    Local(SocketAddr),
}

/// Handshakes waiting for their other half, at most: more (their connects never seen) are
/// forgotten.
const MAX_HANDSHAKES: usize = 1024;

impl Connections {
    /// A descriptor found to be a socket when the agent attached: accepted (`Server`),
    /// connected (`Client`), or unknown (`None`: told by its first request or status line).
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
        self.insert(fd, Some(role), peer, true);
        dropped
    }

    fn insert(&mut self, fd: u32, role: Option<Role>, peer: Option<SocketAddr>, from_start: bool) {
        if self.sockets.len() < MAX_CONNECTIONS || self.sockets.contains_key(&fd) {
            self.sockets.insert(
                fd,
                Socket {
                    role,
                    peer,
                    local: None,
                    sock: 0,
                    from_start,
                    protocol: Protocol::Unknown,
                },
            );
            if let Some(mut c) = self.connections.remove(&fd) {
                self.finished.extend(c.responding.take());
            }
        }
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
        match self.handshakes.remove(&sock) {
            Some(Handshake::Local(local)) => s.local = Some(local),
            _ => self.remember(sock, Handshake::Connect(fd)),
        }
    }

    /// The handshake of kernel socket `sock` completed, with this end at `local`.
    pub fn handshake_done(&mut self, sock: u64, local: SocketAddr) {
        match self.handshakes.remove(&sock) {
            Some(Handshake::Connect(fd)) => {
                if let Some(s) = self.sockets.get_mut(&fd).filter(|s| s.sock == sock) {
                    s.local = Some(local);
                }
            }
            _ => self.remember(sock, Handshake::Local(local)),
        }
    }

    fn remember(&mut self, sock: u64, half: Handshake) {
        if self.handshakes.len() >= MAX_HANDSHAKES {
            self.handshakes.clear();
        }
        self.handshakes.insert(sock, half);
    }

    /// The oldest request started and not yet given its span identity (with `set_span`).
    pub fn take_started(&mut self) -> Option<Started> {
        self.started.pop_front()
    }

    /// Gives the oldest request waiting on `fd` without a span identity that identity.
    pub fn set_span(&mut self, fd: u32, span: SpanContext) {
        if let Some(p) = self
            .connections
            .get_mut(&fd)
            .and_then(|c| c.pending.iter_mut().find(|p| p.span.is_none()))
        {
            p.span = Some(span);
        }
    }

    /// Gives the request waiting on `fd` with span `span_id` a new identity (adopted by a
    /// client span whose event came late). Whether it was still waiting.
    pub fn relink(&mut self, fd: u32, span_id: SpanId, span: SpanContext) -> bool {
        let Some(p) = self.connections.get_mut(&fd).and_then(|c| {
            c.pending
                .iter_mut()
                .find(|p| p.span.is_some_and(|s| s.span_id == span_id))
        }) else {
            return false;
        };
        p.span = Some(span);
        true
    }

    /// Exchanges complete since the last call, in the order they completed.
    pub fn drain_finished(&mut self) -> std::vec::Drain<'_, Exchange> {
        self.finished.drain(..)
    }

    /// The span of the server request in flight, if exactly one is: the parent of the calls
    /// the process makes meanwhile. With several in flight the caller cannot be told apart
    /// from socket data alone.
    pub fn sole_server_span(&self) -> Option<SpanContext> {
        let mut spans = self
            .connections
            .iter()
            .filter(|(fd, _)| {
                self.sockets
                    .get(fd)
                    .is_some_and(|s| s.role == Some(Role::Server))
            })
            .flat_map(|(_, c)| c.pending.iter());
        match (spans.next(), spans.next()) {
            (Some(p), None) => p.span,
            _ => None,
        }
    }

    /// The descriptor was closed: a response in progress is complete; unanswered requests
    /// are dropped.
    pub fn close(&mut self, fd: u32) -> Option<Dropped> {
        if let Some(s) = self.sockets.remove(&fd) {
            if s.sock != 0 {
                self.handshakes.remove(&s.sock);
            }
        }
        let mut c = self.connections.remove(&fd)?;
        self.finished.extend(c.responding.take());
        let n = c.pending.len();
        (n > 0).then_some(Dropped::Unanswered(n))
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
        self.connections
            .iter()
            .filter(|(_, c)| {
                c.responding
                    .as_ref()
                    .is_some_and(|r| now_ns.saturating_sub(r.end_ns) >= quiet_ns)
            })
            .map(|(fd, _)| *fd)
            .collect()
    }

    /// The response in progress on `fd` is complete.
    pub fn finish_response(&mut self, fd: u32) {
        if let Some(c) = self.connections.get_mut(&fd) {
            self.finished.extend(c.responding.take());
        }
    }

    /// The process is gone: every response in progress is complete; returns how many
    /// requests were left unanswered. The table is left empty.
    pub fn finish_all(&mut self) -> usize {
        let mut unanswered = 0;
        for (_, mut c) in self.connections.drain() {
            self.finished.extend(c.responding.take());
            unanswered += c.pending.len();
        }
        self.sockets.clear();
        self.started.clear();
        unanswered
    }

    /// Bytes the process read from `fd` (`bytes` in all, `data` the captured start of them):
    /// requests (server end) or a response (client end).
    pub fn ingress(&mut self, fd: u32, ts_ns: u64, data: &[u8], bytes: i64) -> Result<(), Dropped> {
        let socket = self.sockets.get_mut(&fd).ok_or(Dropped::NotASocket)?;
        if matches!(socket.protocol, Protocol::Other | Protocol::Upgraded) || data.is_empty() {
            return Ok(());
        }
        if socket.role.is_none() {
            socket.role = infer_role(data, Role::Server, Role::Client);
        }
        match socket.role {
            Some(Role::Server) => self.server_read(fd, ts_ns, data, bytes.max(0) as u64),
            Some(Role::Client) => self.response_start(fd, ts_ns, data, Role::Client),
            None => Ok(()),
        }
    }

    /// Bytes the process wrote to `fd` (`bytes` in all, `data` the captured start of them;
    /// empty for `sendfile`): a response (server end) or a request (client end).
    pub fn egress(&mut self, fd: u32, ts_ns: u64, data: &[u8], bytes: i64) -> Result<(), Dropped> {
        let socket = self.sockets.get_mut(&fd).ok_or(Dropped::NotASocket)?;
        if matches!(socket.protocol, Protocol::Other | Protocol::Upgraded) {
            return Ok(());
        }
        if socket.role.is_none() {
            socket.role = infer_role(data, Role::Client, Role::Server);
        }
        match socket.role {
            Some(Role::Server) => self.response_start(fd, ts_ns, data, Role::Server),
            Some(Role::Client) => {
                let cut = bytes > data.len() as i64;
                self.client_write(fd, ts_ns, data, cut)
            }
            None => Ok(()),
        }
    }

    /// The first bytes of a connection seen from its start decide whether it is HTTP; those
    /// of other connections (found open at attach) may be mid-message and decide nothing.
    fn judge(&mut self, fd: u32, is_http: bool, data: &[u8]) -> Result<(), Dropped> {
        let Some(s) = self.sockets.get_mut(&fd) else {
            return Ok(());
        };
        if s.protocol != Protocol::Unknown {
            return Ok(());
        }
        if is_http {
            s.protocol = Protocol::Http;
            return Ok(());
        }
        if !s.from_start {
            return Ok(());
        }
        s.protocol = Protocol::Other;
        let role = s.role.unwrap_or(Role::Server);
        self.connections.remove(&fd);
        Err(Dropped::NotHttp {
            role,
            reason: other_protocol(data),
        })
    }

    /// A server read: requests, the rest of one (headers beyond the first read), or a body.
    fn server_read(&mut self, fd: u32, ts_ns: u64, data: &[u8], bytes: u64) -> Result<(), Dropped> {
        let conn = connection(&mut self.connections, fd)?;
        let (mut data, mut bytes) = (data, bytes.max(data.len() as u64));
        if conn.body_left > 0 {
            let skip = conn.body_left.min(bytes);
            conn.body_left -= skip;
            bytes -= skip;
            // What follows the body beyond the captured bytes, if anything, is not seen.
            if skip >= data.len() as u64 {
                conn.head.clear();
                return Ok(());
            }
            data = &data[skip as usize..];
        }
        if conn.body_unknown {
            return Ok(());
        }
        let joined;
        let (buf, first_ns, mut total) = if conn.head.is_empty() {
            (data, ts_ns, bytes)
        } else {
            joined = [conn.head.as_slice(), data].concat();
            (
                joined.as_slice(),
                conn.head_ns,
                bytes + conn.head.len() as u64,
            )
        };
        conn.head.clear();
        let requests = &mut self.read_requests;
        requests.clear();
        let mut offset = 0usize;
        let mut not_request = false;
        while offset < buf.len() {
            let rest = &buf[offset..];
            let start_ns = if offset == 0 { first_ns } else { ts_ns };
            if let Some(head) = parse_request_head(rest) {
                requests.push((head.start, start_ns));
                offset += head.head_len;
                total = total.saturating_sub(head.head_len as u64);
                match head.body {
                    BodyFraming::None => continue,
                    BodyFraming::Length(n) if total >= n => {
                        total -= n;
                        match offset.checked_add(n as usize) {
                            Some(end) if end <= buf.len() => offset = end,
                            // The body ends beyond the capture: what follows it is not seen.
                            _ => break,
                        }
                    }
                    BodyFraming::Length(n) => {
                        conn.body_left = n - total;
                        break;
                    }
                    // Chunks and unknown framing are not followed: what is read next is
                    // body until the response starts.
                    BodyFraming::Chunked | BodyFraming::Unknown => {
                        conn.body_unknown = true;
                        break;
                    }
                }
            } else {
                match classify_request(rest) {
                    // The request line, with the head cut by the read or the capture: where
                    // its body starts, and how long it is, are not seen.
                    RequestParse::Start(r) => {
                        requests.push((r, start_ns));
                        conn.body_unknown = true;
                    }
                    // A request line cut by the read: joined with the next one (only when
                    // every byte read so far was captured).
                    RequestParse::Incomplete if rest.len() as u64 == total => {
                        conn.head = rest.to_vec();
                        conn.head_ns = start_ns;
                    }
                    RequestParse::Incomplete => {}
                    RequestParse::NotRequest => not_request = offset == 0,
                }
                break;
            }
        }
        if not_request {
            // A body, the rest of a long head, or another protocol.
            return self.judge(fd, false, buf);
        }
        if requests.is_empty() {
            return Ok(());
        }
        self.judge(fd, true, buf)?;
        let mut overflow = false;
        let mut requests = std::mem::take(&mut self.read_requests);
        for (request, start_ns) in requests.drain(..) {
            overflow |= !self.push_request(fd, Role::Server, request, start_ns);
        }
        self.read_requests = requests;
        if overflow {
            return Err(Dropped::Overflow);
        }
        Ok(())
    }

    /// A client write: a request (its line possibly cut by the capture: `cut`), or a body.
    fn client_write(&mut self, fd: u32, ts_ns: u64, data: &[u8], cut: bool) -> Result<(), Dropped> {
        if data.is_empty() {
            return Ok(());
        }
        let request = if cut {
            request_start_prefix(data)
        } else {
            match classify_request(data) {
                RequestParse::Start(r) => Some(r),
                _ => None,
            }
        };
        let Some(request) = request else {
            return self.judge(fd, false, data);
        };
        self.judge(fd, true, data)?;
        // The client asks again: the previous response has been read.
        let conn = connection(&mut self.connections, fd)?;
        self.finished.extend(conn.responding.take());
        if !self.push_request(fd, Role::Client, request, ts_ns) {
            return Err(Dropped::Overflow);
        }
        Ok(())
    }

    /// Queues a request; false if the connection's queue is full.
    fn push_request(&mut self, fd: u32, role: Role, request: RequestStart, start_ns: u64) -> bool {
        let socket = self.sockets.get(&fd).copied().unwrap_or_default();
        let Some(conn) = self.connections.get_mut(&fd) else {
            return false;
        };
        if conn.pending.len() >= MAX_PENDING {
            return false;
        }
        if self.started.len() >= MAX_PENDING {
            self.started.pop_front();
        }
        self.started.push_back(Started {
            fd,
            role,
            peer: socket.peer,
            local: socket.local,
            traceparent: request.traceparent,
        });
        conn.pending.push_back(Pending {
            request,
            start_ns,
            span: None,
        });
        true
    }

    /// Response bytes going one way on `fd`: a status line answers the oldest waiting
    /// request; other bytes extend the response in progress.
    fn response_start(
        &mut self,
        fd: u32,
        ts_ns: u64,
        data: &[u8],
        role: Role,
    ) -> Result<(), Dropped> {
        let socket = self.sockets.get(&fd).copied().unwrap_or_default();
        let status = parse_status(data);
        let Some(status) = status else {
            match self
                .connections
                .get_mut(&fd)
                .and_then(|c| c.responding.as_mut())
            {
                Some(r) => r.end_ns = ts_ns,
                // The server spoke first: not HTTP.
                None if !data.is_empty() => self.judge(fd, false, data)?,
                None => {}
            }
            return Ok(());
        };
        if (100..200).contains(&status) && status != 101 {
            return Ok(());
        }
        let conn = connection(&mut self.connections, fd)?;
        self.finished.extend(conn.responding.take());
        if role == Role::Server {
            // The server answers: it has read the request it answers.
            conn.body_unknown = false;
        }
        let Some(pending) = conn.pending.pop_front() else {
            return Err(Dropped::UnmatchedResponse);
        };
        let exchange = Exchange {
            role,
            peer: socket.peer,
            local: socket.local,
            span: pending.span,
            method: pending.request.method,
            path: pending.request.path,
            truncated: pending.request.truncated,
            status,
            start_ns: pending.start_ns,
            end_ns: ts_ns,
        };
        if status == 101 {
            // What follows is another protocol (WebSocket, h2c): leave the connection alone.
            self.finished.push(exchange);
            if let Some(s) = self.sockets.get_mut(&fd) {
                s.protocol = Protocol::Upgraded;
            }
            let unanswered = self.connections.remove(&fd).map_or(0, |c| c.pending.len());
            if unanswered > 0 {
                return Err(Dropped::Unanswered(unanswered));
            }
        } else {
            conn.responding = Some(exchange);
        }
        Ok(())
    }

    /// Requests in flight on the server end of connections (read, not yet answered).
    pub fn in_flight(&self) -> usize {
        self.in_flight_as(Some(Role::Server))
    }

    /// Requests in flight on every connection, server and client ends.
    pub fn in_flight_all(&self) -> usize {
        self.in_flight_as(None)
    }

    fn in_flight_as(&self, role: Option<Role>) -> usize {
        self.connections
            .iter()
            .filter(|(fd, _)| {
                role.is_none() || self.sockets.get(fd).is_some_and(|s| s.role == role)
            })
            .map(|(_, c)| c.pending.len())
            .sum()
    }
}

/// The connection on `fd`, made if new and the table has room.
fn connection(connections: &mut FdMap<Connection>, fd: u32) -> Result<&mut Connection, Dropped> {
    if !connections.contains_key(&fd) && connections.len() >= MAX_CONNECTIONS {
        return Err(Dropped::Overflow);
    }
    Ok(connections.entry(fd).or_default())
}

/// The role a socket of unknown role turns out to have, from the first data on it: a request
/// start going this way means `if_request`, a status line `if_status`.
fn infer_role(data: &[u8], if_request: Role, if_status: Role) -> Option<Role> {
    if parse_status(data).is_some() {
        Some(if_status)
    } else if matches!(classify_request(data), RequestParse::Start(_))
        || request_start_prefix(data).is_some()
    {
        Some(if_request)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use obs_common::sockets::{DATA_PREFIX, EGRESS_PREFIX};

    /// A read of `bytes` as the kernel reports it: its first bytes (up to `DATA_PREFIX`), and its length.
    fn read(c: &mut Connections, fd: u32, ts: u64, bytes: &[u8]) -> Result<(), Dropped> {
        c.ingress(
            fd,
            ts,
            &bytes[..bytes.len().min(DATA_PREFIX)],
            bytes.len() as i64,
        )
    }

    /// A write of `bytes`: its first 32 bytes, and its length.
    fn write(c: &mut Connections, fd: u32, ts: u64, bytes: &[u8]) -> Result<(), Dropped> {
        c.egress(
            fd,
            ts,
            &bytes[..bytes.len().min(EGRESS_PREFIX)],
            bytes.len() as i64,
        )
    }

    /// `sendfile` of `n` bytes: nothing captured.
    fn sendfile(c: &mut Connections, fd: u32, ts: u64, n: i64) -> Result<(), Dropped> {
        c.egress(fd, ts, &[], n)
    }

    fn done(c: &mut Connections) -> Vec<(&'static str, String, u16, u64, u64)> {
        c.drain_finished()
            .map(|e| (e.method, e.path, e.status, e.start_ns, e.end_ns))
            .collect()
    }

    fn server() -> Connections {
        let mut s = Connections::default();
        assert_eq!(s.new_connection(7, Role::Server, None), None);
        s
    }

    /// The local address of a request's connection, as its span starts with it.
    fn started_local(c: &mut Connections, fd: u32) -> Option<SocketAddr> {
        write(c, fd, 1, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let started = c.take_started().expect("a request started");
        assert_eq!(started.fd, fd);
        started.local
    }

    #[test]
    fn connects_meet_their_handshakes_in_either_order() {
        let a: SocketAddr = "10.0.0.1:40001".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:40002".parse().unwrap();
        let mut c = Connections::default();
        // The handshake completed inside connect (loopback): its event comes first.
        c.handshake_done(0xa000, a);
        c.new_connection(5, Role::Client, None);
        c.connecting(5, 0xa000);
        assert_eq!(started_local(&mut c, 5), Some(a));
        // A non-blocking connect that completes later.
        c.new_connection(6, Role::Client, None);
        c.connecting(6, 0xb000);
        c.handshake_done(0xb000, b);
        assert_eq!(started_local(&mut c, 6), Some(b));
        // A descriptor reused for another socket before the first one's handshake completed:
        // the late handshake names nothing.
        c.new_connection(7, Role::Client, None);
        c.connecting(7, 0xc000);
        c.close(7);
        c.new_connection(7, Role::Client, None);
        c.connecting(7, 0xd000);
        c.handshake_done(0xc000, a);
        assert_eq!(started_local(&mut c, 7), None);
        // Halves that never meet are bounded.
        for sock in 0..3 * MAX_HANDSHAKES as u64 {
            c.handshake_done(0x1_0000 + sock, a);
        }
        assert!(c.handshakes.len() <= MAX_HANDSHAKES);
    }

    #[test]
    fn a_response_lasts_to_its_last_byte() {
        let mut s = server();
        // Expect: 100-continue: head first, interim response, then the body.
        read(&mut s, 7, 100, b"POST /create HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n").unwrap();
        assert_eq!(s.in_flight(), 1);
        write(&mut s, 7, 150, b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        // The body: never a request, even when it looks like one.
        read(&mut s, 7, 160, b"GET / H").unwrap();
        assert_eq!(s.in_flight(), 1);
        write(
            &mut s,
            7,
            300,
            b"HTTP/1.1 201 Created\r\nContent-Length: 7\r\n\r\n",
        )
        .unwrap();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(done(&mut s), []);
        // Body bytes written after the headers extend the response.
        write(&mut s, 7, 310, b"created").unwrap();
        sendfile(&mut s, 7, 320, 4096).unwrap();
        assert_eq!(done(&mut s), []);
        assert_eq!(s.close(7), None);
        assert_eq!(done(&mut s), [("POST", "/create".into(), 201, 100, 320)]);
    }

    #[test]
    fn quiet_responses_are_complete() {
        let mut s = server();
        read(&mut s, 7, 1_000, b"HEAD /h HTTP/1.1\r\n\r\n").unwrap();
        write(
            &mut s,
            7,
            2_000,
            b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n",
        )
        .unwrap();
        s.finish_quiet(2_000 + RESPONSE_QUIET_NS - 1, RESPONSE_QUIET_NS);
        assert_eq!(done(&mut s), []);
        s.finish_quiet(2_000 + RESPONSE_QUIET_NS, RESPONSE_QUIET_NS);
        assert_eq!(done(&mut s), [("HEAD", "/h".into(), 200, 1_000, 2_000)]);
        // Nothing more on it: later bytes without a status line are not a response.
        write(&mut s, 7, 3_000, b"late").unwrap();
        assert_eq!(s.close(7), None);
        assert_eq!(done(&mut s), []);
    }

    #[test]
    fn joins_a_request_line_split_across_reads() {
        let mut s = server();
        read(&mut s, 7, 10, b"G").unwrap();
        assert_eq!(s.in_flight(), 0);
        read(&mut s, 7, 12, b"ET /hello HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        write(&mut s, 7, 20, b"HTTP/1.1 200 OK\r\n\r\nhi").unwrap();
        // A head that turns out not to be HTTP is forgotten (the connection is HTTP already).
        read(&mut s, 7, 30, b"G").unwrap();
        assert_eq!(done(&mut s), []);
        read(&mut s, 7, 31, b"\x00\x01binary").unwrap();
        read(&mut s, 7, 32, b"GET /x HTTP/1.1\r\n\r\n").unwrap();
        write(&mut s, 7, 40, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(done(&mut s), [("GET", "/hello".into(), 200, 10, 20)]);
        s.close(7);
        assert_eq!(done(&mut s), [("GET", "/x".into(), 200, 32, 40)]);
    }

    #[test]
    fn pipelined_requests_in_one_read_are_each_answered_in_order() {
        let mut s = server();
        let batch = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPUT /d HTTP/1.1\r\n\r\nDELETE /e HTTP/1.1\r\n\r\n";
        read(&mut s, 7, 1, batch).unwrap();
        assert_eq!(s.in_flight(), 4);
        write(
            &mut s,
            7,
            3,
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na",
        )
        .unwrap();
        write(&mut s, 7, 4, b"HTTP/1.1 201 Created\r\n\r\n").unwrap();
        write(&mut s, 7, 5, b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap();
        write(&mut s, 7, 6, b"HTTP/1.1 500 Internal Server Error\r\n\r\n").unwrap();
        assert_eq!(s.close(7), None);
        let got: Vec<_> = done(&mut s).into_iter().map(|e| (e.0, e.1, e.2)).collect();
        assert_eq!(
            got,
            [
                ("GET", "/a".into(), 200),
                ("POST", "/b".into(), 201),
                ("PUT", "/d".into(), 404),
                ("DELETE", "/e".into(), 500)
            ]
        );
        // More pipelined requests than the capture shows: the rest are not seen, and their
        // responses are counted as unmatched, not paired with the wrong request.
        let mut s = server();
        let mut batch = Vec::new();
        for i in 0..60 {
            batch.extend(format!("GET /p{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        }
        assert!(batch.len() > DATA_PREFIX);
        read(&mut s, 7, 1, &batch).unwrap();
        let seen = s.in_flight();
        assert!((7..60).contains(&seen), "{seen}");
        for i in 0..60 {
            let r = write(&mut s, 7, 2 + i, b"HTTP/1.1 200 OK\r\n\r\n");
            assert_eq!(r.is_err(), i as usize >= seen, "{i}");
        }
    }

    #[test]
    fn request_bodies_are_skipped_across_reads() {
        let mut s = server();
        let mut req = b"PUT /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000\r\n\r\n".to_vec();
        let head = req.len();
        req.extend(std::iter::repeat_n(b'G', 10_000 - 200));
        read(&mut s, 7, 1, &req).unwrap();
        // The rest of the body, which here happens to hold a request line.
        let mut rest = b"GET /not-a-request HTTP/1.1\r\n\r\n".to_vec();
        rest.resize(200, b'x');
        read(&mut s, 7, 2, &rest).unwrap();
        assert_eq!(s.in_flight(), 1);
        assert!(head < 100);
        // The body's end and the next request in the same read.
        let mut s = server();
        read(
            &mut s,
            7,
            1,
            b"POST /a HTTP/1.1\r\nContent-Length: 6\r\n\r\nab",
        )
        .unwrap();
        read(&mut s, 7, 2, b"cdefGET /b HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(s.in_flight(), 2);
    }

    #[test]
    fn bodies_behind_long_heads_are_never_requests() {
        let mut s = server();
        let mut head = b"PUT /up HTTP/1.1\r\nX-Padding: ".to_vec();
        head.extend(std::iter::repeat_n(b'p', 6000));
        head.extend(b"\r\nContent-Length: 340\r\n\r\n");
        read(&mut s, 7, 1, &head[..4096]).unwrap();
        read(&mut s, 7, 2, &head[4096..]).unwrap();
        for i in 0..10 {
            read(&mut s, 7, 3 + i, b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        }
        assert_eq!(s.in_flight(), 1);
        write(&mut s, 7, 20, b"HTTP/1.1 201 Created\r\n\r\n").unwrap();
        // The next request, after the answer, is seen again.
        read(&mut s, 7, 30, b"GET /next HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(s.in_flight(), 1);
        write(&mut s, 7, 40, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        s.close(7);
        let got: Vec<_> = done(&mut s).into_iter().map(|e| (e.1, e.2)).collect();
        assert_eq!(got, [("/up".into(), 201), ("/next".into(), 200)]);
    }

    #[test]
    fn chunked_and_long_heads() {
        let mut s = server();
        // A head longer than the capture: the request line counts; header reads that follow
        // and the chunked body are not requests.
        let mut req = b"POST /chunks HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 6_000));
        req.extend(b"\r\n\r\n");
        read(&mut s, 7, 1, &req[..4096]).unwrap();
        read(&mut s, 7, 2, &req[4096..]).unwrap();
        read(&mut s, 7, 3, b"5\r\nhello\r\n").unwrap();
        read(&mut s, 7, 4, b"0\r\n\r\n").unwrap();
        assert_eq!(s.in_flight(), 1);
        // A chunked response: the status line, then chunks, each a write.
        write(
            &mut s,
            7,
            10,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        write(&mut s, 7, 11, b"5\r\nhello\r\n").unwrap();
        write(&mut s, 7, 12, b"0\r\n\r\n").unwrap();
        read(&mut s, 7, 20, b"GET /next HTTP/1.1\r\n\r\n").unwrap();
        write(&mut s, 7, 21, b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(done(&mut s), [("POST", "/chunks".into(), 200, 1, 12)]);
    }

    #[test]
    fn other_protocols_are_reported_once_and_ignored() {
        let mut s = Connections::default();
        for (fd, first) in [
            (
                3,
                &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfcGET / HTTP/1.1\r\n"[..],
            ),
            (4, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            (5, b"\x00\x00\x00\x08\x04\xd2\x16\x2f"),
            (6, b"SSH-2.0-OpenSSH_9.2\r\n"),
        ] {
            s.new_connection(fd, Role::Server, None);
            let want = match fd {
                3 => "tls",
                4 => "http2",
                _ => "other",
            };
            assert_eq!(
                read(&mut s, fd, 1, first),
                Err(Dropped::NotHttp {
                    role: Role::Server,
                    reason: want
                })
            );
            // Whatever follows, HTTP-looking or not, is ignored.
            read(&mut s, fd, 2, b"GET / HTTP/1.1\r\n\r\n").unwrap();
            write(&mut s, fd, 3, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
            read(&mut s, fd, 4, first).unwrap();
        }
        // A server that speaks first (SMTP, MySQL) seen from its client.
        s.new_connection(9, Role::Client, None);
        assert_eq!(
            read(&mut s, 9, 1, b"220 mail.example ESMTP\r\n"),
            Err(Dropped::NotHttp {
                role: Role::Client,
                reason: "other"
            })
        );
        write(&mut s, 9, 2, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(s.in_flight_all(), 0);
        assert_eq!(done(&mut s), []);
    }

    #[test]
    fn bad_input_is_dropped_and_counted() {
        let mut s = server();
        assert_eq!(
            read(&mut s, 9, 1, b"GET / HTTP/1.1\r\n"),
            Err(Dropped::NotASocket)
        );
        assert_eq!(
            write(&mut s, 7, 1, b"HTTP/1.1 200 OK\r\n"),
            Err(Dropped::UnmatchedResponse)
        );
        read(&mut s, 7, 1, b"").unwrap();
        read(&mut s, 7, 1, b"GET / HTTP/1.1\r\n").unwrap();
        assert_eq!(s.close(7), Some(Dropped::Unanswered(1)));
        assert_eq!(
            read(&mut s, 7, 1, b"GET / HTTP/1.1\r\n"),
            Err(Dropped::NotASocket)
        );
        // Random bytes on fresh connections: never a request, never a panic.
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        for fd in 100..400 {
            s.new_connection(
                fd,
                if fd % 2 == 0 {
                    Role::Server
                } else {
                    Role::Client
                },
                None,
            );
            for _ in 0..4 {
                let bytes: Vec<u8> = (0..(x % 300))
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let _ = read(&mut s, fd, 1, &bytes);
                let _ = write(&mut s, fd, 2, &bytes);
            }
            assert_eq!(s.close(fd), None);
        }
        assert_eq!(done(&mut s), []);
    }

    #[test]
    fn queues_are_bounded() {
        let mut s = server();
        for i in 0..MAX_PENDING {
            read(&mut s, 7, i as u64, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        }
        assert_eq!(
            read(&mut s, 7, 0, b"GET / HTTP/1.1\r\n\r\n"),
            Err(Dropped::Overflow)
        );
        let mut started = 0;
        while s.take_started().is_some() {
            started += 1;
        }
        assert_eq!(started, MAX_PENDING);
    }

    #[test]
    fn client_requests_are_paired_with_the_responses_read() {
        let peer: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let mut c = Connections::default();
        c.new_connection(5, Role::Client, Some(peer));
        // A request line longer than the 32 bytes captured of writes.
        write(
            &mut c,
            5,
            100,
            b"GET /a/very/long/path/that/does/not/fit HTTP/1.1\r\n\r\n",
        )
        .unwrap();
        write(&mut c, 5, 101, b"body bytes").unwrap();
        read(
            &mut c,
            5,
            400,
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\n",
        )
        .unwrap();
        read(&mut c, 5, 450, b"busy").unwrap();
        // Keep-alive: the next request on the same connection ends the previous response.
        write(&mut c, 5, 500, b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        let e: Vec<Exchange> = c.drain_finished().collect();
        assert_eq!(
            (
                e[0].role,
                e[0].peer,
                e[0].method,
                e[0].status,
                e[0].start_ns,
                e[0].end_ns
            ),
            (Role::Client, Some(peer), "GET", 503, 100, 450)
        );
        assert!(e[0].truncated);
        read(&mut c, 5, 600, b"HTTP/1.1 201 Created\r\n\r\n").unwrap();
        // A status line with nothing asked is counted, not paired.
        assert_eq!(
            read(&mut c, 5, 700, b"HTTP/1.1 200 OK\r\n"),
            Err(Dropped::UnmatchedResponse)
        );
        assert_eq!(done(&mut c), [("POST", "/x".into(), 201, 500, 600)]);
    }

    #[test]
    fn sockets_found_at_attach_get_their_role_from_their_first_http_line() {
        let mut c = Connections::default();
        c.add_socket(3, None, None);
        c.add_socket(4, None, None);
        // Garbage first (mid-stream at attach): still unknown, nothing counted.
        read(&mut c, 3, 1, b"\x16\x03\x01").unwrap();
        read(&mut c, 3, 2, b"GET /s HTTP/1.1\r\n\r\n").unwrap();
        write(&mut c, 3, 3, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        write(&mut c, 4, 2, b"DELETE /c HTTP/1.1\r\n\r\n").unwrap();
        read(&mut c, 4, 3, b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap();
        c.close(3);
        c.close(4);
        let got: Vec<_> = c
            .drain_finished()
            .map(|e| (e.role, e.method, e.status))
            .collect();
        assert_eq!(
            got,
            [(Role::Server, "GET", 200), (Role::Client, "DELETE", 404)]
        );
    }

    #[test]
    fn a_reused_descriptor_starts_afresh() {
        let mut c = server();
        read(&mut c, 7, 1, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            c.new_connection(7, Role::Client, None),
            Some(Dropped::Unanswered(1))
        );
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn switching_protocols_ends_http_on_the_connection() {
        let mut s = server();
        read(
            &mut s,
            7,
            1,
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        )
        .unwrap();
        write(&mut s, 7, 2, b"HTTP/1.1 101 Switching Protocols\r\n\r\n").unwrap();
        assert_eq!(done(&mut s), [("GET", "/ws".into(), 101, 1, 2)]);
        // WebSocket frames after it, even HTTP-looking ones: nothing.
        read(&mut s, 7, 3, b"\x81\x85GET /").unwrap();
        read(&mut s, 7, 4, b"GET / HTTP/1.1\r\n\r\n").unwrap();
        write(&mut s, 7, 5, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(s.in_flight(), 0);
        assert_eq!(done(&mut s), []);
    }

    /// Byte streams in the shapes real servers and clients put on the wire, one syscall per
    /// element, checked end to end.
    #[test]
    fn streams_of_real_servers() {
        // Python http.server (HTTP/1.0 responses): the request in one recv, headers flushed
        // in one write at end_headers, the body in another, then close.
        let mut s = server();
        read(&mut s, 7, 10, b"GET /items/42?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8000\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n").unwrap();
        write(&mut s, 7, 20, b"HTTP/1.0 404 Not Found\r\nServer: BaseHTTP/0.6 Python/3.11.7\r\nDate: Sat, 21 Nov 2026 21:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\n").unwrap();
        write(&mut s, 7, 25, b"not found").unwrap();
        s.close(7);
        assert_eq!(done(&mut s), [("GET", "/items/42?x=1".into(), 404, 10, 25)]);

        // Node http: keep-alive, head and body in one write; a chunked body in several.
        let mut s = server();
        read(&mut s, 7, 10, b"POST /orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"qty\": 1234}").unwrap();
        write(&mut s, 7, 20, b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nDate: Sat, 21 Nov 2026 21:00:00 GMT\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nContent-Length: 2\r\n\r\n{}").unwrap();
        read(&mut s, 7, 30, b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        write(
            &mut s,
            7,
            40,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        )
        .unwrap();
        write(&mut s, 7, 41, b"4\r\nabcd\r\n").unwrap();
        write(&mut s, 7, 42, b"0\r\n\r\n").unwrap();
        s.finish_quiet(42 + RESPONSE_QUIET_NS, RESPONSE_QUIET_NS);
        assert_eq!(
            done(&mut s),
            [
                ("POST", "/orders".into(), 201, 10, 20),
                ("GET", "/stream".into(), 200, 30, 42)
            ]
        );

        // nginx serving a file: headers by writev, the body by sendfile in pieces.
        let mut s = server();
        read(
            &mut s,
            7,
            10,
            b"GET /static/big.bin HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .unwrap();
        write(
            &mut s,
            7,
            20,
            b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nContent-Length: 1048576\r\n\r\n",
        )
        .unwrap();
        sendfile(&mut s, 7, 30, 524_288).unwrap();
        sendfile(&mut s, 7, 40, 524_288).unwrap();
        // nginx as a proxy: it is the client of its backend on another socket.
        s.new_connection(8, Role::Client, Some("127.0.0.1:9000".parse().unwrap()));
        read(
            &mut s,
            7,
            50,
            b"GET /api/users/7 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        )
        .unwrap();
        write(
            &mut s,
            8,
            51,
            b"GET /api/users/7 HTTP/1.0\r\nHost: backend\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        read(
            &mut s,
            8,
            60,
            b"HTTP/1.0 500 Internal Server Error\r\nContent-Length: 4\r\n\r\noops",
        )
        .unwrap();
        s.close(8);
        write(
            &mut s,
            7,
            61,
            b"HTTP/1.1 500 Internal Server Error\r\nServer: nginx/1.22.1\r\n\r\noops",
        )
        .unwrap();
        s.close(7);
        let got: Vec<_> = s
            .drain_finished()
            .map(|e| (e.role, e.path, e.status, e.end_ns))
            .collect();
        assert_eq!(
            got,
            [
                (Role::Client, "/api/users/7".into(), 500, 60),
                // Complete when the next response on its connection starts.
                (Role::Server, "/static/big.bin".into(), 200, 40),
                (Role::Server, "/api/users/7".into(), 500, 61)
            ]
        );
    }
}
