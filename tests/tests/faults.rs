//! Bad input and faults: pids that do not exist, are not Go (watched through their sockets), or
//! are Go without an HTTP server; targets that exit; the agent killed with SIGKILL under load;
//! missing privileges; a kernel BTF the agent cannot use.

use std::{
    process::{Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use obs_agent::symbols::go_binary::analyze_path;
use obs_integration_tests::{
    go_app,
    load::{drive, Call},
    metrics::counts,
    read_process_memory,
    servers::ScriptServer,
    tempdir, wait_for, Agent, GoServer, GoVersion, Proc,
};

const NO_SUCH_PID: u32 = 4_194_305; // above any pid_max

fn agent_exits_with(args: &[&str]) -> (Option<i32>, String) {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Agent::spawn(&args).wait_exit(Duration::from_secs(20))
}

#[test]
fn pid_that_does_not_exist() {
    let (code, log) = agent_exits_with(&["--pid", &NO_SUCH_PID.to_string()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("no process with pid {NO_SUCH_PID}")),
        "{log}"
    );
    assert!(log.contains("nothing to watch"), "{log}");
}

/// Any language is watched through its socket syscalls: a process that is not Go is watched,
/// and the log says what that means (and that it has no TCP socket yet).
#[test]
fn pid_that_is_not_go_is_watched_through_its_sockets() {
    let sleeper = Proc {
        child: Command::new("sleep").arg("60").spawn().unwrap(),
    };
    let pid = sleeper.pid().to_string();
    let agent = Agent::start(&["--pid".into(), pid.clone()]);
    let s = agent.scrape();
    assert_eq!(s.sum("obs_agent_processes_watched", &[]), 1.0);
    let by_pid = [("pid", pid.as_str())];
    let info: Vec<_> = s.matching("obs_agent_target_info", &by_pid).collect();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].labels["go_version"], "");
    let log = agent.log();
    assert!(
        log.contains("not Go: HTTP/1.x from its socket syscalls")
            && log.contains("no TCP connection or listener yet"),
        "{log}"
    );
}

#[test]
fn go_program_that_is_not_an_http_server() {
    let bin = go_app("gonohttp", GoVersion::Old);
    let p = Proc {
        child: Command::new(bin).stdout(Stdio::null()).spawn().unwrap(),
    };
    let (code, log) = agent_exits_with(&["--pid", &p.pid().to_string()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("without net/http's server"), "{log}");
}

#[test]
fn bad_pids_are_reported_and_the_rest_watched() {
    let server = GoServer::named("goserver", GoVersion::Old, "mixed");
    let agent = Agent::start(&[
        "--pid".into(),
        NO_SUCH_PID.to_string(),
        "--pid".into(),
        server.proc.pid().to_string(),
    ]);
    ureq::get(&server.url("/hello")).call().unwrap();
    let s = agent
        .wait_for_sum(
            "http_server_request_duration_seconds_count",
            &[("service_name", "mixed")],
            1.0,
            Duration::from_secs(5),
        )
        .expect("the valid pid is watched");
    assert_eq!(s.sum("obs_agent_processes_watched", &[]), 1.0);
    assert_eq!(
        s.sum(
            "obs_agent_attach_failures_total",
            &[("reason", "no_such_process")]
        ),
        1.0
    );
    assert!(agent
        .log()
        .contains(&format!("no process with pid {NO_SUCH_PID}")));
}

#[test]
fn target_exit_mid_request_releases_its_state() {
    let mut server = GoServer::named("goserver", GoVersion::Old, "exiting");
    let pid = server.proc.pid();
    let agent = Agent::for_pids(&[pid]);
    ureq::get(&server.url("/hello")).call().unwrap();
    // A request in flight when the process dies.
    let slow = server.url("/slow?ms=5000");
    let inflight = std::thread::spawn(move || ureq::get(&slow).call().is_err());
    agent
        .wait_for_sum(
            "http_server_active_requests",
            &[],
            1.0,
            Duration::from_secs(2),
        )
        .expect("slow request in flight");
    server.proc.kill(libc::SIGKILL);
    assert!(
        inflight.join().unwrap(),
        "the in-flight request failed with its server"
    );

    // Released, and its uprobes detached by the kernel (one at a time, off the event path).
    let s = wait_for(Duration::from_secs(10), || {
        let s = agent.scrape();
        (s.sum("obs_agent_processes_watched", &[]) == 0.0
            && s.sum("obs_agent_probes_detaching", &[]) == 0.0)
            .then_some(s)
    })
    .unwrap_or_else(|| panic!("agent still watches the dead pid; log:\n{}", agent.log()));
    // Only the shared programs remain: two for syscalls, one for TCP handshakes.
    assert_eq!(
        s.sum("obs_agent_probes_attached", &[]),
        obs_integration_tests::shared_probes_under_test()
    );
    // The request in flight when it died is counted as unanswered, not silently dropped.
    assert_eq!(
        s.sum(
            "obs_agent_events_lost_total",
            &[("reason", "unanswered_request")]
        ),
        1.0
    );
    assert_eq!(s.target_info("exiting").len(), 0);
    // What it counted before stays; the agent keeps serving.
    assert_eq!(
        s.sum(
            "http_server_request_duration_seconds_count",
            &[("service_name", "exiting")]
        ),
        1.0
    );
    assert!(
        agent.log().contains(&format!("pid {pid} (exiting) exited")),
        "{}",
        agent.log()
    );
}

#[test]
fn node_wide_mode_follows_new_and_restarted_processes() {
    let agent = Agent::start(&[]);
    for round in 0..2 {
        let server = GoServer::named("goserver", GoVersion::New, "nodewide");
        agent.wait_watched(
            server.proc.pid(),
            &format!("round {round}: the new process"),
        );
        ureq::get(&server.url("/hello")).call().unwrap();
        let want = (round + 1) as f64;
        agent
            .wait_for_sum(
                "http_server_request_duration_seconds_count",
                &[("service_name", "nodewide")],
                want,
                Duration::from_secs(5),
            )
            .unwrap_or_else(|| panic!("round {round}: request not counted"));
    }
}

/// The ids of the eBPF programs a process holds open (from /proc/PID/fdinfo).
fn bpf_program_ids(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .unwrap()
        .flatten()
    {
        if let Ok(info) = std::fs::read_to_string(entry.path()) {
            ids.extend(
                info.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:")?.trim().parse::<u32>().ok()),
            );
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn program_loaded(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("bpftool")
        .success()
}

#[test]
fn sigkill_under_load_leaves_the_target_unharmed() {
    stop_under_load_leaves_the_target_unharmed(libc::SIGKILL);
}

#[test]
fn sigterm_under_load_restores_every_probe_site() {
    stop_under_load_leaves_the_target_unharmed(libc::SIGTERM);
}

/// Stops the agent with `signal` while four clients load the target, and checks that no
/// request failed, the target still serves, and its code is back to what it was.
fn stop_under_load_leaves_the_target_unharmed(signal: i32) {
    // Go 1.22+: the agent also puts a (temporary) uprobe into the target.
    let server = GoServer::start("goserver", GoVersion::New, &[]);
    let pid = server.proc.pid();
    let bin = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let binary = analyze_path(&bin).expect("analyse goserver");
    // ServeMux discovery, goroutine creation, panics (gopanic, recovery, fatalpanic).
    let points = binary.probe_points();
    assert_eq!(points.len(), 5, "{points:?}");
    let read_all = || -> Vec<Vec<u8>> {
        points
            .iter()
            .map(|p| read_process_memory(pid, p.address, 1))
            .collect()
    };
    let original = read_all();

    let mut agent = Agent::for_pids(&[pid]);
    // Attached: the kernel has put a breakpoint at each probe site.
    assert_eq!(read_all(), vec![vec![0xcc]; points.len()]);
    let programs = bpf_program_ids(agent.proc.pid());
    assert!(
        programs.len() >= 2,
        "agent holds its programs: {programs:?}"
    );
    assert!(programs.iter().all(|&id| program_loaded(id)));

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            let url = server.url(if t % 2 == 0 { "/hello" } else { "/slow?ms=20" });
            std::thread::spawn(move || {
                let agent = ureq::AgentBuilder::new()
                    .timeout(Duration::from_secs(10))
                    .build();
                while !stop.load(Ordering::Relaxed) {
                    let fresh = ureq::AgentBuilder::new().max_idle_connections(0).build();
                    let a = if t < 2 { &agent } else { &fresh };
                    match a.get(&url).call() {
                        Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    agent.proc.kill(signal);
    // The load goes on until the agent has gone, and a little after.
    let exited = wait_for(Duration::from_secs(30), || {
        (!agent.proc.is_running()).then_some(())
    });
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed around the agent's signal {signal}"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    let mut server = server;
    assert!(server.proc.is_running(), "target died");
    ureq::get(&server.url("/hello"))
        .call()
        .expect("target still serves");
    assert!(
        exited.is_some(),
        "the agent still runs 30 s after signal {signal}"
    );
    // The probes are gone once the agent has exited (its shutdown or, after SIGKILL, its exit
    // detaches them, ~0.1 s each on a busy machine): the target's code is byte-for-byte what
    // it was, and the kernel freed the agent's programs.
    assert_eq!(read_all(), original);
    let still = wait_for(Duration::from_secs(5), || {
        programs.iter().all(|&id| !program_loaded(id)).then_some(())
    });
    assert!(
        still.is_some(),
        "programs {programs:?} still loaded after signal {signal}"
    );
}

#[test]
fn without_root_the_agent_says_so() {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(obs_integration_tests::agent_bin())
        .args(["--pid", "1"])
        .output()
        .expect("setpriv (util-linux)");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("must run as root"), "{stderr}");
}

/// Garbage where the kernel's BTF should be (bind-mounted over /sys/kernel/btf/vmlinux in a
/// mount namespace of the agent's own): the socket data path needs the BTF, so `auto` falls
/// back to the syscall path and says why; the agent says what it goes without (the local
/// addresses of short connections), attaches everything else, and counts every request.
/// Told to use the socket path, it refuses to start, saying why.
#[test]
fn unusable_kernel_btf_costs_only_the_handshake_program() {
    let garbage = tempdir().join("vmlinux");
    std::fs::write(&garbage, b"not BTF at all").unwrap();
    // Not Go: no uprobes, so the shared programs are all that is attached.
    let server = ScriptServer::python("nobtf", &[]);
    let script = format!(
        "mount --bind {} /sys/kernel/btf/vmlinux && exec \"$@\"",
        garbage.display()
    );
    let agent = Agent::start_in(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ],
        &[
            "--data-path".to_owned(),
            "auto".to_owned(),
            "--pid".to_owned(),
            server.proc.pid().to_string(),
        ],
    );
    let log = agent.log();
    assert!(
        log.contains("not watching TCP handshakes (not BTF (magic 0x6f6e))"),
        "{log}"
    );
    assert!(
        log.contains(
            "using the syscall data path: the kernel's BTF is needed (not BTF (magic 0x6f6e))"
        ),
        "{log}"
    );
    assert_eq!(
        agent
            .scrape()
            .sum("obs_agent_data_path_info", &[("path", "syscalls")]),
        1.0
    );
    for _ in 0..5 {
        ureq::get(&server.url("/hello")).call().unwrap();
    }
    let counted = wait_for(Duration::from_secs(10), || {
        let n = agent
            .scrape()
            .server_counts("nobtf")
            .get("GET /hello 200")
            .copied()?;
        (n == 5).then_some(n)
    });
    assert_eq!(counted, Some(5), "log:\n{}", agent.log());
    assert_eq!(
        agent.scrape().sum("obs_agent_probes_attached", &[]),
        2.0,
        "the two syscall programs, not the handshake one"
    );
    drop(agent);
    let refused = Agent::spawn_in(
        &[
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &script,
            "sh",
        ],
        &["--data-path".to_owned(), "sockets".to_owned()],
    );
    let (code, log) = refused.wait_exit(Duration::from_secs(20));
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("the socket data path cannot be used: the kernel's BTF is needed"),
        "{log}"
    );
}

#[derive(PartialEq)]
enum Then {
    /// Read whatever comes back until the server closes or a second passes.
    Read,
    /// Close the write side (the server sees EOF), then read.
    HalfClose,
    /// Close at once.
    Close,
}

/// Sends raw bytes on a fresh connection.
fn send_raw(port: u16, bytes: &[u8], then: Then) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.write_all(bytes).unwrap();
    match then {
        Then::Close => return,
        Then::HalfClose => s.shutdown(std::net::Shutdown::Write).unwrap(),
        Then::Read => {}
    }
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
}

#[test]
fn garbage_and_truncated_input_make_no_series() {
    let server = GoServer::named("goserver", GoVersion::Old, "garbage");
    let agent = Agent::for_pids(&[server.proc.pid()]);
    let mut seed: u32 = 12345;
    let garbage: Vec<u8> = (0..600)
        .map(|_| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            (seed >> 16) as u8
        })
        .collect();
    // A TLS ClientHello's first bytes.
    let tls = [
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ];
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(5000));
    // Not HTTP: Go answers 400, which answers no request.
    send_raw(server.port, &garbage, Then::Read);
    send_raw(server.port, &tls, Then::Read);
    send_raw(server.port, b"\r\n\r\n\x00\x00\x00", Then::Read);
    send_raw(server.port, b"BREW /coffee HTCPCP/1.0\r\n\r\n", Then::Read);
    // A request line cut short, and the client gone.
    send_raw(server.port, b"GET /hel", Then::Close);
    // A request cut inside its headers: Go answers it with 400, and so does the agent count it.
    send_raw(
        server.port,
        b"GET /hello HTTP/1.1\r\nHost: x\r\n",
        Then::HalfClose,
    );
    // Real requests, on a connection of their own, after all that.
    let calls: Vec<Call> = (0..10)
        .map(|_| Call::new("GET", "/hello", "/hello", 200))
        .collect();
    let client = drive(&server.url(""), &calls, 2);
    assert!(client.failures.is_empty());
    // A request line longer than the capture: counted under a truncated route.
    send_raw(server.port, long_line.as_bytes(), Then::Read);

    let s = wait_for(Duration::from_secs(10), || {
        let s = agent.scrape();
        (s.server_counts("garbage").values().sum::<u64>() >= 12).then_some(s)
    })
    .unwrap_or_else(|| panic!("agent log:\n{}", agent.log()));
    let want = counts(&[
        ("GET /hello 200", 10),
        ("GET /hello 400", 1),
        ("GET /* 404", 1),
    ]);
    assert_eq!(s.server_counts("garbage"), want);
    // The 400s the server wrote for the garbage answered no request: counted, not exported.
    assert!(
        s.sum(
            "obs_agent_decode_errors_total",
            &[("reason", "unmatched_response")]
        ) >= 1.0
    );
    assert!(agent.log().lines().all(|l| !l.contains("panicked")));
}
