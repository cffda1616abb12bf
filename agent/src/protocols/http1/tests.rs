//! The HTTP/1 decoder alone, on one connection: what it emits and what it reports. (The
//! connection table's tests feed it syscall streams of real servers and clients.)

use obs_common::sockets::{DATA_PREFIX, EGRESS_PREFIX};

use super::*;

struct Conn {
    decoder: Http1,
    out: Records,
}

impl Conn {
    fn new(role: Option<Role>, from_start: bool) -> Self {
        Self {
            decoder: Http1::new(role, from_start),
            out: Records::default(),
        }
    }

    fn feed(
        &mut self,
        direction: Direction,
        ts_ns: u64,
        bytes: &[u8],
        capture: usize,
    ) -> Result<(), Issue> {
        let chunk = Chunk {
            ts_ns,
            data: &bytes[..bytes.len().min(capture)],
            bytes: bytes.len() as i64,
        };
        self.decoder.data(direction, chunk, &mut self.out)
    }

    fn read(&mut self, ts_ns: u64, bytes: &[u8]) -> Result<(), Issue> {
        self.feed(Direction::Ingress, ts_ns, bytes, DATA_PREFIX)
    }

    fn write(&mut self, ts_ns: u64, bytes: &[u8]) -> Result<(), Issue> {
        self.feed(Direction::Egress, ts_ns, bytes, EGRESS_PREFIX)
    }

    fn started(&mut self) -> Vec<RequestId> {
        self.out.started.drain(..).map(|s| s.id).collect()
    }

    fn completed(&mut self) -> Vec<(RequestId, &'static str, String, u16, u64, u64)> {
        self.out
            .completed
            .drain(..)
            .map(|c| (c.id, c.method, c.path, c.status, c.start_ns, c.end_ns))
            .collect()
    }
}

#[test]
fn requests_are_numbered_as_they_start_and_answered_in_order() {
    let mut s = Conn::new(Some(Role::Server), true);
    s.read(1, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")
        .unwrap();
    assert_eq!(s.started(), [0, 1]);
    assert_eq!(s.decoder.in_flight(), 2);
    s.write(2, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
    assert_eq!(s.decoder.response_in_progress(), Some(2));
    s.write(3, b"HTTP/1.1 404 Not Found\r\n\r\n").unwrap();
    // The first response is complete once the next one starts; the second when closed.
    assert_eq!(s.completed(), [(0, "GET", "/a".into(), 200, 1, 2)]);
    assert_eq!(s.decoder.close(&mut s.out), 0);
    assert_eq!(s.completed(), [(1, "GET", "/b".into(), 404, 1, 3)]);
}

#[test]
fn a_connection_seen_from_its_start_is_judged_by_its_first_bytes() {
    let mut tls = Conn::new(Some(Role::Server), true);
    assert_eq!(
        tls.read(1, b"\x16\x03\x01\x02\x00"),
        Err(Issue::NotThisProtocol)
    );
    assert!(tls.decoder.is_done());
    // Later bytes are not taken, HTTP-looking or not.
    tls.read(2, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(tls.started().is_empty());
    // A server that speaks first, seen from its client.
    let mut smtp = Conn::new(Some(Role::Client), true);
    assert_eq!(
        smtp.read(1, b"220 mail ESMTP\r\n"),
        Err(Issue::NotThisProtocol)
    );
    // Once HTTP, later garbage is a body or noise, never a verdict.
    let mut http = Conn::new(Some(Role::Server), true);
    http.read(1, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    http.write(2, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
    http.read(3, b"\x00\x01\x02").unwrap();
    assert!(!http.decoder.is_done());
}

#[test]
fn a_socket_found_at_attach_learns_its_role_and_is_never_refused() {
    let mut c = Conn::new(None, false);
    // Mid-stream bytes first: nothing decided.
    c.read(1, b"\x16\x03\x01 binary").unwrap();
    assert_eq!(c.decoder.role(), None);
    c.write(2, b"DELETE /c HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(c.decoder.role(), Some(Role::Client));
    c.read(3, b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
    c.decoder.finish_response(&mut c.out);
    assert_eq!(c.completed(), [(0, "DELETE", "/c".into(), 204, 2, 3)]);
}

#[test]
fn switching_protocols_completes_the_request_and_ends_decoding() {
    let mut s = Conn::new(Some(Role::Server), true);
    s.read(
        1,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\nGET /x HTTP/1.1\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        s.write(2, b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
        Err(Issue::Unanswered(1))
    );
    assert_eq!(s.completed(), [(0, "GET", "/ws".into(), 101, 1, 2)]);
    assert!(s.decoder.is_done());
    assert_eq!(s.decoder.in_flight(), 0);
}

#[test]
fn responses_without_requests_and_full_queues_are_reported() {
    let mut s = Conn::new(Some(Role::Server), true);
    s.read(1, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    s.write(2, b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
    assert_eq!(
        s.write(3, b"HTTP/1.1 200 OK\r\n\r\n"),
        Err(Issue::UnmatchedResponse)
    );
    let mut s = Conn::new(Some(Role::Server), true);
    for i in 0..MAX_PENDING {
        s.read(i as u64, b"GET / HTTP/1.1\r\n\r\n").unwrap();
    }
    assert_eq!(s.read(99, b"GET / HTTP/1.1\r\n\r\n"), Err(Issue::Overflow));
    assert_eq!(s.started().len(), MAX_PENDING);
    assert_eq!(s.decoder.close(&mut s.out), MAX_PENDING);
}
