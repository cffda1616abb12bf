//! HTTP/1.x requests from socket data: per connection, request starts read by the server are
//! queued and paired, in order, with the status lines it writes. Interim (1xx) responses do
//! not complete a request. Bounded: at most [`MAX_PENDING`] requests per connection and
//! [`MAX_CONNECTIONS`] connections per process; what does not fit is counted.

use std::collections::{HashMap, HashSet, VecDeque};

use crate::protocols::http::{classify_request, parse_status, RequestParse, RequestStart};

pub const MAX_PENDING: usize = 64;
pub const MAX_CONNECTIONS: usize = 65_536;

/// A request the server has read and not yet answered.
#[derive(Clone, Debug)]
struct Pending {
    request: RequestStart,
    start_ns: u64,
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

/// The server side of every socket of one process.
#[derive(Default, Debug)]
pub struct ServerConnections {
    sockets: HashSet<u32>,
    connections: HashMap<u32, Connection>,
}

impl ServerConnections {
    /// A descriptor that is a socket (accepted, or found open at attach).
    pub fn add_socket(&mut self, fd: u32) {
        if self.sockets.len() < MAX_CONNECTIONS {
            self.sockets.insert(fd);
        }
    }

    /// The descriptor was closed: its unanswered requests are dropped.
    pub fn close(&mut self, fd: u32) -> Option<Dropped> {
        self.sockets.remove(&fd);
        let n = self.connections.remove(&fd).map_or(0, |c| c.pending.len());
        (n > 0).then_some(Dropped::Unanswered(n))
    }

    /// Bytes the process read from `fd`.
    pub fn ingress(&mut self, fd: u32, ts_ns: u64, data: &[u8]) -> Option<Dropped> {
        if !self.sockets.contains(&fd) {
            return Some(Dropped::NotASocket);
        }
        if !self.connections.contains_key(&fd) && self.connections.len() >= MAX_CONNECTIONS {
            return Some(Dropped::Overflow);
        }
        let conn = self.connections.entry(fd).or_default();
        let joined;
        let (data, start_ns) = if conn.head.is_empty() {
            (data, ts_ns)
        } else {
            joined = [conn.head.as_slice(), data].concat();
            (joined.as_slice(), conn.head_ns)
        };
        match classify_request(data) {
            RequestParse::Start(request) => {
                conn.head.clear();
                if conn.pending.len() >= MAX_PENDING {
                    return Some(Dropped::Overflow);
                }
                conn.pending.push_back(Pending { request, start_ns });
            }
            RequestParse::Incomplete => {
                conn.head = data.to_vec();
                conn.head_ns = start_ns;
            }
            // A body, another protocol: not a request.
            RequestParse::NotRequest => conn.head.clear(),
        }
        None
    }

    /// Bytes the process wrote to `fd`: a status line answers the oldest waiting request.
    pub fn egress(
        &mut self,
        fd: u32,
        ts_ns: u64,
        data: &[u8],
    ) -> Result<Option<Exchange>, Dropped> {
        if !self.sockets.contains(&fd) {
            return Err(Dropped::NotASocket);
        }
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
            method: pending.request.method,
            path: pending.request.path,
            truncated: pending.request.truncated,
            status,
            start_ns: pending.start_ns,
            end_ns: ts_ns,
        }))
    }

    /// Requests read and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.connections.values().map(|c| c.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerConnections {
        let mut s = ServerConnections::default();
        s.add_socket(7);
        s
    }

    #[test]
    fn pairs_request_and_response() {
        let mut s = server();
        assert_eq!(
            s.ingress(7, 100, b"POST /create HTTP/1.1\r\nHost: x\r\n"),
            None
        );
        assert_eq!(s.in_flight(), 1);
        // The body arrives separately: not a request.
        assert_eq!(s.ingress(7, 110, b"{\"a\":1}"), None);
        assert_eq!(s.egress(7, 150, b"HTTP/1.1 100 Continue\r\n\r\n"), Ok(None));
        let e = s
            .egress(7, 300, b"HTTP/1.1 201 Created\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.method, e.path.as_str(), e.status, e.end_ns - e.start_ns),
            ("POST", "/create", 201, 200)
        );
        // Body bytes written after the headers are not a new response.
        assert_eq!(s.egress(7, 310, b"created"), Ok(None));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn joins_a_request_line_split_across_reads() {
        let mut s = server();
        assert_eq!(s.ingress(7, 10, b"G"), None);
        assert_eq!(s.in_flight(), 0);
        assert_eq!(
            s.ingress(7, 12, b"ET /hello HTTP/1.1\r\nHost: a\r\n\r\n"),
            None
        );
        let e = s.egress(7, 20, b"HTTP/1.1 200 OK\r\n").unwrap().unwrap();
        assert_eq!(
            (e.method, e.path.as_str(), e.start_ns),
            ("GET", "/hello", 10)
        );
        // A head that turns out not to be HTTP is forgotten.
        assert_eq!(s.ingress(7, 30, b"G"), None);
        assert_eq!(s.ingress(7, 31, b"\x00\x01binary"), None);
        assert_eq!(s.ingress(7, 32, b"GET /x HTTP/1.1\r\n"), None);
        assert_eq!(
            s.egress(7, 40, b"HTTP/1.1 200 OK\r\n")
                .unwrap()
                .unwrap()
                .path,
            "/x"
        );
    }

    #[test]
    fn keeps_order_of_pipelined_requests() {
        let mut s = server();
        s.ingress(7, 1, b"GET /a HTTP/1.1\r\n\r\n");
        s.ingress(7, 2, b"GET /b HTTP/1.1\r\n\r\n");
        assert_eq!(
            s.egress(7, 3, b"HTTP/1.1 200 OK\r\n")
                .unwrap()
                .unwrap()
                .path,
            "/a"
        );
        assert_eq!(
            s.egress(7, 4, b"HTTP/1.1 404 Not Found\r\n")
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
            Some(Dropped::NotASocket)
        );
        assert_eq!(
            s.egress(7, 1, b"HTTP/1.1 200 OK\r\n"),
            Err(Dropped::UnmatchedResponse)
        );
        assert_eq!(s.ingress(7, 1, &[0x16, 3, 1, 0, 0x50]), None);
        assert_eq!(s.ingress(7, 1, b""), None);
        assert_eq!(s.in_flight(), 0);
        s.ingress(7, 1, b"GET / HTTP/1.1\r\n");
        assert_eq!(s.close(7), Some(Dropped::Unanswered(1)));
        assert_eq!(
            s.ingress(7, 1, b"GET / HTTP/1.1\r\n"),
            Some(Dropped::NotASocket)
        );
    }

    #[test]
    fn queues_are_bounded() {
        let mut s = server();
        for i in 0..MAX_PENDING {
            assert_eq!(s.ingress(7, i as u64, b"GET / HTTP/1.1\r\n"), None);
        }
        assert_eq!(
            s.ingress(7, 0, b"GET / HTTP/1.1\r\n"),
            Some(Dropped::Overflow)
        );
    }
}
