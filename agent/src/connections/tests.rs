//! The connection table with the HTTP/1 decoder behind it, fed syscall by syscall as the
//! kernel reports them: pairing, pipelining, bodies, roles, handshakes, bounds, bad input.

use super::{handshake::MAX_HANDSHAKES, *};
use crate::protocols::recognise::Unrecognised;
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
        .map(|f| {
            let e = f.exchange;
            (e.method, e.path, e.status, e.start_ns, e.end_ns)
        })
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
    read(
        &mut s,
        7,
        100,
        b"POST /create HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nExpect: 100-continue\r\n\r\n",
    )
    .unwrap();
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
            3 => Unrecognised::Tls,
            4 => Unrecognised::Http2,
            _ => Unrecognised::Other,
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
            reason: Unrecognised::Other
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
    let e: Vec<Finished> = c.drain_finished().collect();
    assert_eq!(
        (
            e[0].role,
            e[0].peer,
            e[0].exchange.method,
            e[0].exchange.status,
            e[0].exchange.start_ns,
            e[0].exchange.end_ns
        ),
        (Role::Client, Some(peer), "GET", 503, 100, 450)
    );
    assert!(e[0].exchange.truncated);
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
        .map(|e| (e.role, e.exchange.method, e.exchange.status))
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
        .map(|e| {
            (
                e.role,
                e.exchange.path,
                e.exchange.status,
                e.exchange.end_ns,
            )
        })
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
