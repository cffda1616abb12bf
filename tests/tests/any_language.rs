//! HTTP/1.x of processes in any language, from their socket syscalls alone: Python's
//! http.server, a Node http server, the JDK's com.sun.net.httpserver and Debian's nginx (files by sendfile, a proxy to a
//! backend), driven by ureq, curl, a Python client, wrk and raw sockets. The agent's counts
//! per (method, route, status) equal what the clients got and what the servers counted
//! themselves; bad input makes no series and is counted.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use obs_integration_tests::{
    data_path_under_test,
    load::{drive, Call},
    metrics::counts,
    nginx::Nginx,
    servers::{python3, ScriptServer},
    wait_for, Agent, GoServer, GoVersion, Proc, Samples,
};

/// The mix both script servers serve: GET/HEAD/POST/PUT/DELETE, 200/201/404/500, ids in
/// paths, request bodies, large responses, chunked responses.
fn mix() -> Vec<Call> {
    let mut calls = Vec::new();
    for n in 0..40 {
        for _ in 0..3 {
            calls.push(Call::new("GET", "/hello", "/hello", 200));
        }
        calls.push(Call::new("HEAD", "/hello", "/hello", 200));
        calls.push(Call::new(
            "GET",
            format!("/items/{}", n * 3),
            "/items/{id}",
            200,
        ));
        calls.push(Call::new("PUT", format!("/items/{n}"), "/items/{id}", 201));
        calls.push(Call::new(
            "DELETE",
            format!("/items/{n}"),
            "/items/{id}",
            404,
        ));
        calls.push(Call::new("POST", "/create", "/create", 201));
        calls.push(Call::new("GET", "/fail", "/fail", 500));
        calls.push(Call::new("GET", format!("/missing?n={n}"), "/missing", 404));
        if n % 4 == 0 {
            calls.push(Call::new("GET", "/big?kb=256", "/big", 200));
            calls.push(Call::new("GET", "/chunked?n=8", "/chunked", 200));
        }
    }
    calls
}

fn sorted(m: std::collections::HashMap<String, u64>) -> BTreeMap<String, u64> {
    m.into_iter().collect()
}

/// Waits until the server's own counts equal `want` (a Python handler thread counts a
/// request once its status line is out, which can be just after the client saw it).
fn served_eventually(server: &ScriptServer, want: &BTreeMap<String, u64>) {
    let mut last = BTreeMap::new();
    wait_for(Duration::from_secs(5), || {
        last = sorted(server.served());
        (&last == want).then_some(())
    })
    .unwrap_or_else(|| panic!("the server's own counts\n{last:#?}\nexpected\n{want:#?}"));
}

/// Waits until the agent's counts for `service` equal `want` (responses are reported once
/// complete: at the next response, the close, or after a quiet moment).
fn wait_for_counts(agent: &Agent, service: &str, want: &BTreeMap<String, u64>) -> Samples {
    let mut last = BTreeMap::new();
    wait_for(Duration::from_secs(10), || {
        let s = agent.scrape();
        last = s.server_counts_without_stats(service);
        (&last == want).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "{service}: agent counts\n{last:#?}\nexpected\n{want:#?}\nagent log:\n{}",
            agent.log()
        )
    })
}

fn exact_counts_for(server: ScriptServer, service: &str) {
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let calls = mix();
    let client = drive(&server.url(""), &calls, 4);
    assert!(client.failures.is_empty(), "{:?}", client.failures);
    assert_eq!(client.total(), calls.len() as u64);
    served_eventually(&server, &client.counts);
    let s = wait_for_counts(&agent, service, &client.counts);
    assert_eq!(
        s.sum(
            "obs_agent_non_http_connections_total",
            &[("service_name", service)]
        ),
        0.0
    );
    assert_eq!(
        s.sum(
            "obs_agent_decode_errors_total",
            &[("reason", "unmatched_response")]
        ),
        0.0
    );
    let info = s.target_info(service);
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels["go_version"], "");
    // Counted exactly on the data path under test.
    let path = data_path_under_test();
    assert_eq!(
        s.sum("obs_agent_data_path_info", &[("path", path.as_str())]),
        1.0
    );
}

#[test]
fn python_http_server_exact_counts() {
    exact_counts_for(ScriptServer::python("py-shop", &[]), "py-shop");
}

#[test]
fn node_http_server_exact_counts() {
    exact_counts_for(ScriptServer::node("node-shop"), "node-shop");
}

#[test]
fn java_http_server_exact_counts() {
    exact_counts_for(ScriptServer::java("java-shop"), "java-shop");
}

/// curl against Python in HTTP/1.0 mode (a connection per request) and in HTTP/1.1 with
/// several URLs on one connection; wrk against Node: the agent's count equals the server's.
#[test]
fn curl_and_wrk_clients() {
    let py10 = ScriptServer::python("py10", &["--http10"]);
    let node = ScriptServer::node("node-wrk");
    let agent = Agent::for_pids(&[py10.proc.pid(), node.proc.pid()]);
    for _ in 0..5 {
        let out = Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
                "-o",
                "/dev/null",
            ])
            .args(["-w", "%{http_code}\n"])
            .arg(py10.url("/hello"))
            .arg(py10.url("/items/7"))
            .arg(py10.url("/fail"))
            .output()
            .expect("run curl");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200\n200\n500\n");
    }
    let want = counts(&[
        ("GET /hello 200", 5),
        ("GET /items/{id} 200", 5),
        ("GET /fail 500", 5),
    ]);
    served_eventually(&py10, &want);
    wait_for_counts(&agent, "py10", &want);

    let out = Command::new("wrk")
        .args(["-t1", "-c8", "-d2s"])
        .arg(node.url("/hello"))
        .output()
        .expect("run wrk");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let wrk_count: u64 = report
        .lines()
        .find_map(|l| l.trim().split_once(" requests in"))
        .and_then(|(n, _)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {report}"));
    let served = sorted(node.served());
    let node_count = served["GET /hello 200"];
    // wrk does not count what was in flight when it stopped.
    assert!(
        node_count >= wrk_count && node_count <= wrk_count + 8,
        "wrk {wrk_count}, node {node_count}"
    );
    assert!(wrk_count > 1000, "{report}");
    wait_for_counts(&agent, "node-wrk", &served);
}

/// Requests sent in one write, answered in order on one connection.
#[test]
fn pipelined_requests() {
    for (server, service) in [
        (ScriptServer::python("py-pipe", &[]), "py-pipe"),
        (ScriptServer::node("node-pipe"), "node-pipe"),
        (ScriptServer::java("java-pipe"), "java-pipe"),
    ] {
        let agent = Agent::for_pids(&[server.proc.pid()]);
        let batch = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n\
                     GET /items/1 HTTP/1.1\r\nHost: x\r\n\r\n\
                     DELETE /items/2 HTTP/1.1\r\nHost: x\r\n\r\n\
                     POST /create HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
                     GET /fail HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        assert!(
            batch.len() < 256,
            "the agent sees the first 256 bytes of a read"
        );
        for _ in 0..3 {
            let mut conn = TcpStream::connect(("127.0.0.1", server.port)).unwrap();
            conn.write_all(batch.as_bytes()).unwrap();
            let mut answer = String::new();
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            conn.read_to_string(&mut answer).unwrap();
            let statuses: Vec<&str> = answer
                .match_indices("HTTP/1.1 ")
                .map(|(i, _)| &answer[i + 9..i + 12])
                .collect();
            assert_eq!(statuses, ["200", "200", "404", "201", "500"], "{answer}");
        }
        let want = counts(&[
            ("GET /hello 200", 3),
            ("GET /items/{id} 200", 3),
            ("DELETE /items/{id} 404", 3),
            ("POST /create 201", 3),
            ("GET /fail 500", 3),
        ]);
        served_eventually(&server, &want);
        let s = wait_for_counts(&agent, service, &want);
        assert_eq!(
            s.sum(
                "obs_agent_decode_errors_total",
                &[("reason", "unmatched_response")]
            ),
            0.0
        );
    }
}

/// Large request heads and bodies (bodies made of request lines, which must not be taken for
/// requests) and large and chunked responses, on keep-alive connections.
#[test]
fn large_and_chunked_bodies() {
    for (server, service) in [
        (ScriptServer::python("py-big", &[]), "py-big"),
        (ScriptServer::node("node-big"), "node-big"),
        (ScriptServer::java("java-big"), "java-big"),
    ] {
        let agent = Agent::for_pids(&[server.proc.pid()]);
        let http = ureq::AgentBuilder::new().build();
        let body = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".repeat(32 * 1024);
        for i in 0..4 {
            // A head far longer than the 256 bytes captured (the length comes after it).
            let r = http
                .put(&server.url(&format!("/items/{i}")))
                .set("X-Padding", &"p".repeat(6000))
                .send_string(&body)
                .unwrap();
            assert_eq!(r.status(), 201);
            let big = http.get(&server.url("/big?kb=2048")).call().unwrap();
            assert_eq!(big.into_string().unwrap().len(), 2048 * 1024);
            let chunked = http.get(&server.url("/chunked?n=20")).call().unwrap();
            assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
            let want: usize = (0..20).map(|i| format!("chunk {i}\n").len() * 100).sum();
            assert_eq!(chunked.into_string().unwrap().len(), want);
        }
        let want = counts(&[
            ("PUT /items/{id} 201", 4),
            ("GET /big 200", 4),
            ("GET /chunked 200", 4),
        ]);
        served_eventually(&server, &want);
        let s = wait_for_counts(&agent, service, &want);
        if service != "py-big" {
            // Node and Java write their 20 chunks at least 2 ms apart: each request lasts to
            // the last chunk, not to the headers.
            let chunked = s.sum(
                "http_server_request_duration_seconds_sum",
                &[("service_name", service), ("http_route", "/chunked")],
            );
            assert!(
                chunked >= 4.0 * 0.040,
                "{chunked} s for 4 chunked responses"
            );
        }
    }
}

/// A connection that closes at once (RST) and whose server then cannot write.
fn reset(conn: TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    use std::os::fd::AsRawFd;
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    drop(conn);
}

/// Garbage, TLS, truncated requests, clients that disconnect before their answer or in the
/// middle of it, and a server killed mid-request: no series beyond what the server really
/// answered, every loss counted, the agent unharmed.
#[test]
fn bad_input_makes_no_series_and_is_counted() {
    let mut server = ScriptServer::python("py-bad", &[]);
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let connect = || TcpStream::connect(("127.0.0.1", server.port)).unwrap();

    // Random bytes, then read whatever the server says (Python answers 400) until it closes.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..5 {
        let garbage: Vec<u8> = (0..200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x as u8) | 0x80
            })
            .chain(*b"\r\n\r\n")
            .collect();
        let mut c = connect();
        c.write_all(&garbage).unwrap();
        let _ = c.read_to_end(&mut Vec::new());
    }
    // A TLS ClientHello's start to a plain-HTTP server.
    let mut c = connect();
    c.write_all(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03GET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let _ = c.read_to_end(&mut Vec::new());
    // A request whose body never comes, the client gone (reset) before any answer.
    let mut c = connect();
    c.write_all(b"POST /create HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    reset(c);
    // A slow request whose client disconnects (reset) before the answer.
    let mut c = connect();
    c.write_all(b"GET /slow?ms=500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    reset(c);
    std::thread::sleep(Duration::from_millis(800));
    // A client that disconnects (reset) in the middle of a large response: the server did
    // answer 200 (its status line went out, and it counts it), the rest of its writes fail.
    let mut c = connect();
    c.write_all(b"GET /big?kb=16384 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut start = [0u8; 4096];
    c.read_exact(&mut start).unwrap();
    assert!(start.starts_with(b"HTTP/1.1 200"));
    reset(c);
    // And good requests between them all.
    for _ in 0..10 {
        assert_eq!(
            ureq::get(&server.url("/hello")).call().unwrap().status(),
            200
        );
    }
    // The server answered only the good requests, and the one cut short.
    let served = counts(&[("GET /hello 200", 10), ("GET /big 200", 1)]);
    served_eventually(&server, &served);
    let s = wait_for_counts(&agent, "py-bad", &served);
    let non_http = |reason| {
        s.sum(
            "obs_agent_non_http_connections_total",
            &[
                ("service_name", "py-bad"),
                ("role", "server"),
                ("reason", reason),
            ],
        )
    };
    assert_eq!((non_http("other"), non_http("tls")), (5.0, 1.0));
    assert_eq!(
        s.sum(
            "obs_agent_events_lost_total",
            &[("reason", "unanswered_request")]
        ),
        2.0,
        "the truncated and the abandoned request"
    );

    // The server dies mid-request: the request is lost and counted, the agent keeps serving.
    let crash = std::thread::spawn({
        let url = server.url("/crash");
        move || ureq::get(&url).call().is_err()
    });
    assert!(crash.join().unwrap());
    wait_for(Duration::from_secs(5), || {
        (!server.proc.is_running()).then_some(())
    })
    .expect("the server exited");
    // Released, and the request counted (its read may still be in the ring when the exit
    // is seen: it is counted when it comes).
    let unanswered = |s: &Samples| {
        s.sum(
            "obs_agent_events_lost_total",
            &[("reason", "unanswered_request")],
        )
    };
    let s = wait_for(Duration::from_secs(5), || {
        let s = agent.scrape();
        (s.sum("obs_agent_processes_watched", &[]) == 0.0 && unanswered(&s) >= 3.0).then_some(s)
    })
    .unwrap_or_else(|| panic!("the dead server is released; log:\n{}", agent.log()));
    assert_eq!(unanswered(&s), 3.0);
    assert_eq!(s.server_counts_without_stats("py-bad"), served);
    assert!(
        ureq::get(&format!("http://127.0.0.1:{}/healthz", agent.port))
            .call()
            .is_ok()
    );
}

/// nginx serving files (sendfile), 404s, HEAD, and proxying to a Python backend: nginx's
/// server and client sides and the backend's server side, each exact.
#[test]
fn nginx_files_and_proxy() {
    let backend = ScriptServer::python("backend", &[]);
    let nginx = Nginx::start(backend.port);
    std::fs::write(nginx.root.join("index.html"), "<h1>hello</h1>\n").unwrap();
    let big = vec![b'z'; 4 << 20];
    std::fs::write(nginx.root.join("big.bin"), &big).unwrap();
    let agent = Agent::for_pids(&[nginx.proc.pid(), backend.proc.pid()]);
    let http = ureq::AgentBuilder::new().build();
    let fresh = || ureq::AgentBuilder::new().max_idle_connections(0).build();
    for i in 0..10 {
        let c = if i % 2 == 0 { http.clone() } else { fresh() };
        assert_eq!(
            c.get(&nginx.url("/index.html")).call().unwrap().status(),
            200
        );
        assert_eq!(
            c.head(&nginx.url("/index.html")).call().unwrap().status(),
            200
        );
        let r = c.get(&nginx.url("/big.bin")).call().unwrap();
        let mut body = Vec::new();
        r.into_reader().read_to_end(&mut body).unwrap();
        assert_eq!(body.len(), big.len());
        match c.get(&nginx.url("/nope.html")).call() {
            Err(ureq::Error::Status(404, _)) => {}
            other => panic!("{other:?}"),
        }
        let r = c
            .get(&nginx.url(&format!("/api/items/{i}")))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        match c.get(&nginx.url("/api/fail")).call() {
            Err(ureq::Error::Status(500, _)) => {}
            other => panic!("{other:?}"),
        }
    }
    let want = counts(&[
        ("GET /index.html 200", 10),
        ("HEAD /index.html 200", 10),
        ("GET /big.bin 200", 10),
        ("GET /nope.html 404", 10),
        ("GET /api/items/{id} 200", 10),
        ("GET /api/fail 500", 10),
    ]);
    let s = wait_for_counts(&agent, "nginx", &want);
    let backend_want = counts(&[("GET /items/{id} 200", 10), ("GET /fail 500", 10)]);
    served_eventually(&backend, &backend_want);
    wait_for_counts(&agent, "backend", &backend_want);
    let b = format!("127.0.0.1:{}", backend.port);
    let client: BTreeMap<String, u64> =
        [(format!("GET 200 {b}"), 10), (format!("GET 500 {b}"), 10)]
            .into_iter()
            .collect();
    let got = wait_for(Duration::from_secs(5), || {
        let c = agent.scrape().client_counts("nginx");
        (c == client).then_some(c)
    });
    assert_eq!(got, Some(client), "nginx's calls to its backend");
    assert_eq!(
        s.sum("obs_agent_non_http_connections_total", &[]),
        0.0,
        "{}",
        agent.log()
    );
}

/// A trace through nginx to its Python backend, neither of which asks for its sockets' own
/// addresses (the agent reads nginx's from /proc on the kept-alive upstream connection):
/// nginx's server span continues the test's `traceparent`, nginx's call to the backend is
/// its child, and the backend's server span is that call's child (the agent sees both ends;
/// nginx passes the test's `traceparent` on, but the call it saw is nearer).
#[test]
fn trace_through_nginx_to_its_backend() {
    let backend = ScriptServer::python("traced-backend", &[]);
    let nginx = Nginx::start(backend.port);
    let agent = Agent::for_pids(&[nginx.proc.pid(), backend.proc.pid()]);
    // Kept-alive upstream connections, then one connection per request: opened, used and
    // closed long before the agent reads its ring, so the agent must learn nginx's end of
    // each from the kernel as it happens (nginx never asks for it).
    for n in 0..8u32 {
        let trace_id = format!("0af7651916cd43dd8448eb211c8f{n:04x}");
        let caller = format!("b7ad6b71692033{n:02x}");
        let prefix = if n < 3 { "api" } else { "short" };
        let r = ureq::get(&nginx.url(&format!("/{prefix}/items/{n}")))
            .set("traceparent", &format!("00-{trace_id}-{caller}-01"))
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        let spans = agent.wait_trace(&trace_id, 3);
        assert_eq!(spans.len(), 3, "{spans:#?}");
        let find = |service: &str, kind: &str| {
            spans
                .iter()
                .find(|s| s["resource"]["service.name"] == service && s["kind"] == kind)
                .unwrap_or_else(|| panic!("no {kind} span of {service}: {spans:#?}"))
        };
        let front = find("nginx", "server");
        let call = find("nginx", "client");
        let back = find("traced-backend", "server");
        assert_eq!(front["parent_span_id"], caller.as_str(), "{spans:#?}");
        assert_eq!(call["parent_span_id"], front["span_id"], "{spans:#?}");
        assert_eq!(back["parent_span_id"], call["span_id"], "{spans:#?}");
        assert_eq!(back["attributes"]["url.path"], format!("/items/{n}"));
    }
}

/// A client that reads a 16 MiB file slowly: nginx sends it by sendfile in many calls
/// (non-blocking, between EAGAINs); the request lasts to the last byte, not the headers.
#[test]
fn latency_runs_to_the_last_byte_of_a_sendfile_response() {
    let backend = ScriptServer::python("unused-backend", &[]);
    let nginx = Nginx::start(backend.port);
    std::fs::write(nginx.root.join("huge.bin"), vec![b'h'; 16 << 20]).unwrap();
    let agent = Agent::for_pids(&[nginx.proc.pid()]);
    let mut conn = TcpStream::connect(("127.0.0.1", nginx.port)).unwrap();
    // A small receive buffer, so that nginx must wait for the reader.
    use std::os::fd::AsRawFd;
    let size: libc::c_int = 64 * 1024;
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        )
    };
    let started = Instant::now();
    conn.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut total = 0;
    let mut buf = vec![0; 256 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        total += n;
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(total > 16 << 20);
    assert!(elapsed > 1.0, "the client took {elapsed} s");
    let want = counts(&[("GET /huge.bin 200", 1)]);
    let s = wait_for_counts(&agent, "nginx", &want);
    let seconds = s.sum(
        "http_server_request_duration_seconds_sum",
        &[("service_name", "nginx")],
    );
    // From the request to nginx's last sendfile: most of the client's time (which also
    // covers reading what was still buffered after that).
    assert!(
        seconds > elapsed * 0.5 && seconds <= elapsed,
        "agent {seconds} s, client {elapsed} s"
    );
}

/// Node-wide: a Python server, a Node server and a Go server are watched (each request
/// counted once), a Python client's calls are counted on its side, and a process without a
/// TCP socket is not watched.
#[test]
fn node_wide_watches_servers_and_clients_of_any_language() {
    let sleeper = Proc {
        child: Command::new("sleep").arg("60").spawn().unwrap(),
    };
    let py = ScriptServer::python("nw-py", &[]);
    let node = ScriptServer::node("nw-node");
    let go = GoServer::named("goserver", GoVersion::Old, "nw-go");
    let agent = Agent::start(&[]);
    for (server, pid) in [
        ("py", py.proc.pid()),
        ("node", node.proc.pid()),
        ("go", go.proc.pid()),
    ] {
        agent.wait_watched(pid, server);
    }
    // A Python client: connects, waits to be watched, then makes its calls on that
    // connection (open before the agent saw the process) and on new ones.
    let script = format!(
        "import http.client, sys
c = http.client.HTTPConnection('127.0.0.1', {port})
c.connect()
print('connected', flush=True)
sys.stdin.readline()
for i in range(6):
    c.request('GET', '/items/%d' % i); c.getresponse().read()
for i in range(4):
    n = http.client.HTTPConnection('127.0.0.1', {port})
    n.request('POST', '/create', body=b'x' * 100); n.getresponse().read(); n.close()
c.request('GET', '/fail'); c.getresponse().read()
c.close()
",
        port = node.port
    );
    let mut client = Command::new(python3())
        .args(["-c", &script])
        .env("OTEL_SERVICE_NAME", "nw-client")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(client.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    agent.wait_watched(client.id(), "the client");
    client.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(client.wait().unwrap().success());

    for (url, service) in [(py.url(""), "nw-py"), (go.url(""), "nw-go")] {
        let calls: Vec<Call> = (0..50)
            .flat_map(|i| {
                [
                    Call::new("GET", "/hello", "/hello", 200),
                    Call::new("GET", format!("/items/{i}"), "/items/{id}", 200),
                ]
            })
            .collect();
        let view = drive(&url, &calls, 2);
        assert!(view.failures.is_empty(), "{:?}", view.failures);
        wait_for_counts(&agent, service, &view.counts);
    }
    let node_want = counts(&[
        ("GET /items/{id} 200", 6),
        ("POST /create 201", 4),
        ("GET /fail 500", 1),
    ]);
    served_eventually(&node, &node_want);
    wait_for_counts(&agent, "nw-node", &node_want);
    let n = format!("127.0.0.1:{}", node.port);
    let client_want: BTreeMap<String, u64> = [
        (format!("GET 200 {n}"), 6),
        (format!("POST 201 {n}"), 4),
        (format!("GET 500 {n}"), 1),
    ]
    .into_iter()
    .collect();
    let got = wait_for(Duration::from_secs(5), || {
        let c = agent.scrape().client_counts("nw-client");
        (c == client_want).then_some(c)
    });
    assert_eq!(got, Some(client_want), "log:\n{}", agent.log());
    let s = agent.scrape();
    assert_eq!(
        s.matching(
            "obs_agent_target_info",
            &[("pid", &sleeper.pid().to_string())]
        )
        .count(),
        0,
        "a process without TCP sockets is not watched"
    );
}

/// Spans of a Python server: a request carrying a W3C `traceparent` continues the caller's
/// trace, with the same attributes as the Go path's server spans.
#[test]
fn python_server_spans_continue_the_callers_trace() {
    let server = ScriptServer::python("py-trace", &[]);
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller = "00f067aa0ba902b7";
    let r = ureq::get(&server.url("/items/9?x=1"))
        .set("traceparent", &format!("00-{trace_id}-{caller}-01"))
        .call()
        .unwrap();
    assert_eq!(r.status(), 200);
    let spans = agent.wait_trace(trace_id, 1);
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s["kind"], "server");
    assert_eq!(s["name"], "GET /items/{id}");
    assert_eq!(s["parent_span_id"], caller);
    assert_eq!(s["resource"]["service.name"], "py-trace");
    assert_eq!(s["attributes"]["http.route"], "/items/{id}");
    assert_eq!(s["attributes"]["url.path"], "/items/9");
    assert_eq!(s["attributes"]["http.response.status_code"], 200);
    assert_eq!(s["status"], "OK");
}

/// A Python client opening one IPv6 connection per call to a Python server, both watched:
/// each connection is opened, used and closed long before the agent reads its events, and
/// neither process asks for its own address, so the agent learns the client's end of each
/// from the kernel's TCP handshake. Every call is its own trace: the client span at the
/// root, the server span under it; no server span is left a root of its own.
#[test]
fn short_ipv6_connections_link_client_and_server_spans() {
    const CALLS: usize = 12;
    let server = ScriptServer::python("v6-server", &["--ipv6"]);
    let script = format!(
        "import http.client, sys
keep = http.client.HTTPConnection('::1', {port})
keep.connect()
print('connected', flush=True)
sys.stdin.readline()
for i in range({CALLS}):
    c = http.client.HTTPConnection('::1', {port})
    c.request('GET', '/items/%d' % i); c.getresponse().read(); c.close()
keep.close()
",
        port = server.port
    );
    let mut client = Proc {
        child: Command::new(python3())
            .args(["-c", &script])
            .env("OTEL_SERVICE_NAME", "v6-client")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    };
    let mut line = String::new();
    BufReader::new(client.child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let agent = Agent::for_pids(&[server.proc.pid(), client.pid()]);
    agent.wait_watched(server.proc.pid(), "the server");
    agent.wait_watched(client.pid(), "the client");
    client
        .child
        .stdin
        .take()
        .unwrap()
        .write_all(b"go\n")
        .unwrap();
    assert!(client.child.wait().unwrap().success());

    let roots = |list: &serde_json::Value, service: &str, spans: u64| {
        list.as_array()
            .map(|traces| {
                traces
                    .iter()
                    .filter(|t| t["root_service"] == service && t["span_count"] == spans)
                    .count()
            })
            .unwrap_or(0)
    };
    let list = wait_for(Duration::from_secs(10), || {
        let list = agent.traces(1000)?;
        (roots(&list, "v6-client", 2) + roots(&list, "v6-server", 1) >= CALLS).then_some(list)
    })
    .unwrap_or_else(|| panic!("fewer than {CALLS} traces; log:\n{}", agent.log()));
    assert_eq!(
        (roots(&list, "v6-client", 2), roots(&list, "v6-server", 1)),
        (CALLS, 0),
        "{list:#}"
    );
}
