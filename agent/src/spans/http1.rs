//! HTTP/1.x requests from socket data, on both ends of a connection. On a server connection
//! (accepted), request starts read by the process are queued and paired, in order, with the
//! status lines it writes; on a client connection (connected), request starts written are
//! paired with the status lines read. A socket found open at attach gets its role from the
//! first request line or status line seen on it. Interim (1xx) responses do not complete a
//! request. Bounded: at most [`MAX_PENDING`] requests per connection and [`MAX_CONNECTIONS`]
//! connections per process; what does not fit is counted.

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
};

use crate::protocols::http::{
    classify_request, parse_status, request_start_prefix, RequestParse, RequestStart, TraceParent,
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

pub const MAX_PENDING: usize = 64;
pub const MAX_CONNECTIONS: usize = 65_536;

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

#[derive(Clone, Copy, Debug, Default)]
struct Socket {
    /// `None` until known (a socket found open at attach).
    role: Option<Role>,
    peer: Option<SocketAddr>,
    /// This end's address (from getsockname), when seen.
    local: Option<SocketAddr>,
}

#[derive(Default, Debug)]
struct Connection {
    pending: VecDeque<Pending>,
    /// The start of a request line whose rest has not been read yet, with the time of its
    /// first byte.
    head: Vec<u8>,
    head_ns: u64,
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
    pub start_ns: u64,
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
}

/// Every socket of one process, server and client ends.
#[derive(Default, Debug)]
pub struct Connections {
    sockets: HashMap<u32, Socket>,
    connections: HashMap<u32, Connection>,
    /// The request started by the last call, until taken (`take_started`).
    started: Option<Started>,
}

impl Connections {
    /// A descriptor that is a socket: accepted (`Server`), connected (`Client`), or found open
    /// at attach (`None`: told by its first request or status line). A descriptor reused for
    /// a new connection starts afresh.
    pub fn add_socket(&mut self, fd: u32, role: Option<Role>, peer: Option<SocketAddr>) {
        if self.sockets.len() < MAX_CONNECTIONS || self.sockets.contains_key(&fd) {
            self.sockets.insert(
                fd,
                Socket {
                    role,
                    peer,
                    local: None,
                },
            );
            self.connections.remove(&fd);
        }
    }

    /// The socket's own address, from getsockname.
    pub fn set_local(&mut self, fd: u32, local: SocketAddr) {
        if let Some(s) = self.sockets.get_mut(&fd) {
            s.local = Some(local);
        }
    }

    /// The request the last `ingress`/`egress` call started, if any: give it its span
    /// identity with `set_span`.
    pub fn take_started(&mut self) -> Option<Started> {
        self.started.take()
    }

    /// Gives the newest request waiting on `fd` its span identity.
    pub fn set_span(&mut self, fd: u32, span: SpanContext) {
        if let Some(p) = self
            .connections
            .get_mut(&fd)
            .and_then(|c| c.pending.back_mut())
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

    /// The descriptor was closed: its unanswered requests are dropped.
    pub fn close(&mut self, fd: u32) -> Option<Dropped> {
        self.sockets.remove(&fd);
        let n = self.connections.remove(&fd).map_or(0, |c| c.pending.len());
        (n > 0).then_some(Dropped::Unanswered(n))
    }

    /// Bytes the process read from `fd`: a request start (server) or a status line (client).
    /// `captured_all` is false when the capture cut what was read.
    pub fn ingress(
        &mut self,
        fd: u32,
        ts_ns: u64,
        data: &[u8],
    ) -> Result<Option<Exchange>, Dropped> {
        let socket = self.sockets.get_mut(&fd).ok_or(Dropped::NotASocket)?;
        if socket.role.is_none() {
            socket.role = infer_role(data, Role::Server, Role::Client);
        }
        match *socket {
            Socket {
                role: Some(Role::Server),
                ..
            } => self
                .request(fd, ts_ns, data, Role::Server, false)
                .map(|()| None),
            Socket {
                role: Some(Role::Client),
                peer,
                ..
            } => self.response(fd, ts_ns, data, Role::Client, peer),
            Socket { role: None, .. } => Ok(None),
        }
    }

    /// Bytes the process wrote to `fd`: a status line (server) or a request start (client).
    /// `captured_all` is false when the capture cut what was written (a request line longer
    /// than the prefix copied).
    pub fn egress(
        &mut self,
        fd: u32,
        ts_ns: u64,
        data: &[u8],
        captured_all: bool,
    ) -> Result<Option<Exchange>, Dropped> {
        let socket = self.sockets.get_mut(&fd).ok_or(Dropped::NotASocket)?;
        if socket.role.is_none() {
            socket.role = infer_role(data, Role::Client, Role::Server);
        }
        match *socket {
            Socket {
                role: Some(Role::Server),
                peer,
                ..
            } => self.response(fd, ts_ns, data, Role::Server, peer),
            Socket {
                role: Some(Role::Client),
                ..
            } => self
                .request(fd, ts_ns, data, Role::Client, !captured_all)
                .map(|()| None),
            Socket { role: None, .. } => Ok(None),
        }
    }

    /// A request start going one way on `fd`: queued until its status line comes back.
    /// Server reads may split a request line (Go reads the next request's first byte on its
    /// own), so a possible head is kept and joined with the next read; a client's request
    /// line is written whole, but the capture may cut it (`cut`).
    fn request(
        &mut self,
        fd: u32,
        ts_ns: u64,
        data: &[u8],
        role: Role,
        cut: bool,
    ) -> Result<(), Dropped> {
        if !self.connections.contains_key(&fd) && self.connections.len() >= MAX_CONNECTIONS {
            return Err(Dropped::Overflow);
        }
        let conn = self.connections.entry(fd).or_default();
        let (request, start_ns) = match role {
            Role::Client => {
                let request = if cut {
                    request_start_prefix(data)
                } else {
                    match classify_request(data) {
                        RequestParse::Start(r) => Some(r),
                        _ => None,
                    }
                };
                (request, ts_ns)
            }
            Role::Server => {
                let joined;
                let (data, start_ns) = if conn.head.is_empty() {
                    (data, ts_ns)
                } else {
                    joined = [conn.head.as_slice(), data].concat();
                    (joined.as_slice(), conn.head_ns)
                };
                conn.head.clear();
                match classify_request(data) {
                    RequestParse::Start(request) => (Some(request), start_ns),
                    RequestParse::Incomplete => {
                        conn.head = data.to_vec();
                        conn.head_ns = start_ns;
                        (None, start_ns)
                    }
                    // A body, another protocol: not a request.
                    RequestParse::NotRequest => (None, start_ns),
                }
            }
        };
        if let Some(request) = request {
            if conn.pending.len() >= MAX_PENDING {
                return Err(Dropped::Overflow);
            }
            let socket = self.sockets.get(&fd).copied().unwrap_or_default();
            self.started = Some(Started {
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
        }
        Ok(())
    }

    /// A status line coming back on `fd` answers the oldest waiting request.
    fn response(
        &mut self,
        fd: u32,
        ts_ns: u64,
        data: &[u8],
        role: Role,
        peer: Option<SocketAddr>,
    ) -> Result<Option<Exchange>, Dropped> {
        let local = self.sockets.get(&fd).and_then(|s| s.local);
        let Some(status) = parse_status(data) else {
            // The rest of a response (body bytes), or not HTTP.
            return Ok(None);
        };
        if (100..200).contains(&status) {
            return Ok(None);
        }
        let pending = self
            .connections
            .get_mut(&fd)
            .and_then(|c| c.pending.pop_front())
            .ok_or(Dropped::UnmatchedResponse)?;
        Ok(Some(Exchange {
            role,
            peer,
            local,
            span: pending.span,
            method: pending.request.method,
            path: pending.request.path,
            truncated: pending.request.truncated,
            status,
            start_ns: pending.start_ns,
            end_ns: ts_ns,
        }))
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

    fn server() -> Connections {
        let mut s = Connections::default();
        s.add_socket(7, Some(Role::Server), None);
        s
    }

    #[test]
    fn pairs_request_and_response() {
        let mut s = server();
        assert_eq!(
            s.ingress(7, 100, b"POST /create HTTP/1.1\r\nHost: x\r\n"),
            Ok(None)
        );
        assert_eq!(s.in_flight(), 1);
        // The body arrives separately: not a request.
        assert_eq!(s.ingress(7, 110, b"{\"a\":1}"), Ok(None));
        assert_eq!(
            s.egress(7, 150, b"HTTP/1.1 100 Continue\r\n\r\n", true),
            Ok(None)
        );
        let e = s
            .egress(7, 300, b"HTTP/1.1 201 Created\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.method, e.path.as_str(), e.status, e.end_ns - e.start_ns),
            ("POST", "/create", 201, 200)
        );
        // Body bytes written after the headers are not a new response.
        assert_eq!(s.egress(7, 310, b"created", true), Ok(None));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn joins_a_request_line_split_across_reads() {
        let mut s = server();
        assert_eq!(s.ingress(7, 10, b"G"), Ok(None));
        assert_eq!(s.in_flight(), 0);
        assert_eq!(
            s.ingress(7, 12, b"ET /hello HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(None)
        );
        let e = s
            .egress(7, 20, b"HTTP/1.1 200 OK\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.method, e.path.as_str(), e.start_ns),
            ("GET", "/hello", 10)
        );
        // A head that turns out not to be HTTP is forgotten.
        assert_eq!(s.ingress(7, 30, b"G"), Ok(None));
        assert_eq!(s.ingress(7, 31, b"\x00\x01binary"), Ok(None));
        assert_eq!(s.ingress(7, 32, b"GET /x HTTP/1.1\r\n"), Ok(None));
        assert_eq!(
            s.egress(7, 40, b"HTTP/1.1 200 OK\r\n", true)
                .unwrap()
                .unwrap()
                .path,
            "/x"
        );
    }

    #[test]
    fn keeps_order_of_pipelined_requests() {
        let mut s = server();
        s.ingress(7, 1, b"GET /a HTTP/1.1\r\n\r\n").unwrap();
        s.ingress(7, 2, b"GET /b HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(
            s.egress(7, 3, b"HTTP/1.1 200 OK\r\n", true)
                .unwrap()
                .unwrap()
                .path,
            "/a"
        );
        assert_eq!(
            s.egress(7, 4, b"HTTP/1.1 404 Not Found\r\n", true)
                .unwrap()
                .unwrap()
                .path,
            "/b"
        );
    }

    #[test]
    fn bad_input_is_dropped_and_counted() {
        let mut s = server();
        assert_eq!(
            s.ingress(9, 1, b"GET / HTTP/1.1\r\n"),
            Err(Dropped::NotASocket)
        );
        assert_eq!(
            s.egress(7, 1, b"HTTP/1.1 200 OK\r\n", true),
            Err(Dropped::UnmatchedResponse)
        );
        assert_eq!(s.ingress(7, 1, &[0x16, 3, 1, 0, 0x50]), Ok(None));
        assert_eq!(s.ingress(7, 1, b""), Ok(None));
        assert_eq!(s.in_flight(), 0);
        s.ingress(7, 1, b"GET / HTTP/1.1\r\n").unwrap();
        assert_eq!(s.close(7), Some(Dropped::Unanswered(1)));
        assert_eq!(
            s.ingress(7, 1, b"GET / HTTP/1.1\r\n"),
            Err(Dropped::NotASocket)
        );
    }

    #[test]
    fn queues_are_bounded() {
        let mut s = server();
        for i in 0..MAX_PENDING {
            assert_eq!(s.ingress(7, i as u64, b"GET / HTTP/1.1\r\n"), Ok(None));
        }
        assert_eq!(
            s.ingress(7, 0, b"GET / HTTP/1.1\r\n"),
            Err(Dropped::Overflow)
        );
    }

    #[test]
    fn client_requests_are_paired_with_the_responses_read() {
        let peer: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        let mut c = Connections::default();
        c.add_socket(5, Some(Role::Client), Some(peer));
        // A request line longer than the 32 bytes captured of writes.
        let line = b"GET /a/very/long/path/that/does/n";
        assert_eq!(c.egress(5, 100, line, false), Ok(None));
        assert_eq!(c.egress(5, 101, b"body bytes", true), Ok(None));
        let e = c
            .ingress(5, 400, b"HTTP/1.1 503 Service Unavailable\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.role, e.peer, e.method, e.status, e.end_ns - e.start_ns),
            (Role::Client, Some(peer), "GET", 503, 300)
        );
        assert!(e.truncated);
        // Keep-alive: the next request on the same connection.
        c.egress(5, 500, b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n", true)
            .unwrap();
        let e = c
            .ingress(5, 600, b"HTTP/1.1 201 Created\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((e.method, e.path.as_str(), e.status), ("POST", "/x", 201));
        // A status line with nothing asked is counted, not paired.
        assert_eq!(
            c.ingress(5, 700, b"HTTP/1.1 200 OK\r\n"),
            Err(Dropped::UnmatchedResponse)
        );
    }

    #[test]
    fn sockets_found_at_attach_get_their_role_from_their_first_http_line() {
        let mut c = Connections::default();
        c.add_socket(3, None, None);
        c.add_socket(4, None, None);
        // Garbage first: still unknown, nothing counted.
        assert_eq!(c.ingress(3, 1, b"\x16\x03\x01"), Ok(None));
        c.ingress(3, 2, b"GET /s HTTP/1.1\r\n\r\n").unwrap();
        let e = c
            .egress(3, 3, b"HTTP/1.1 200 OK\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!((e.role, e.path.as_str()), (Role::Server, "/s"));
        c.egress(4, 2, b"DELETE /c HTTP/1.1\r\n\r\n", true).unwrap();
        let e = c
            .ingress(4, 3, b"HTTP/1.1 404 Not Found\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((e.role, e.method, e.status), (Role::Client, "DELETE", 404));
    }

    #[test]
    fn a_reused_descriptor_starts_afresh() {
        let mut c = server();
        c.ingress(7, 1, b"GET / HTTP/1.1\r\n").unwrap();
        c.add_socket(7, Some(Role::Client), None);
        assert_eq!(c.in_flight(), 0);
    }
}
