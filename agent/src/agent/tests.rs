//! Discovery and dispatch without BPF: a fake kernel that records what it is asked, and
//! events made as the kernel programs write them (raw ring-buffer records, decoded by the
//! real decoder).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use obs_common::{
    go_runtime::GoStartKey,
    go_trace::GoOffsets,
    sockets::{
        nr, SockConn, SockDataN, AF_INET, DATA_PREFIX, DIR_EGRESS, DIR_INGRESS, EGRESS_PREFIX,
    },
    stats::{Stat, STAT_COUNT},
    EventKind,
};

use super::*;
use crate::{
    events::decode,
    probes::{table::Probe, Detaching, ProbeError},
    symbols::go_binary::ProbePoint,
    target::{kubernetes::KubernetesConfig, Process},
};

/// The kernel side as a record of what the agent asked of it.
#[derive(Default)]
struct FakeKernel {
    watched: HashSet<u32>,
    forgotten: Vec<u32>,
    uprobes: HashSet<(u32, Probe)>,
    counters: [u64; STAT_COUNT as usize],
}

impl Kernel for FakeKernel {
    fn watch_sockets(&mut self, pid: u32) -> Result<(), ProbeError> {
        self.watched.insert(pid);
        Ok(())
    }
    fn set_go_offsets(&mut self, _: u32, _: Option<GoOffsets>) -> Result<(), ProbeError> {
        Ok(())
    }
    fn attach(&mut self, p: &Process, probe: Probe, _: ProbePoint) -> Result<(), ProbeError> {
        self.uprobes.insert((p.pid, probe));
        Ok(())
    }
    fn detach(&mut self, pid: u32, probe: Probe) -> bool {
        self.uprobes.remove(&(pid, probe))
    }
    fn is_attached(&self, pid: u32, probe: Probe) -> bool {
        self.uprobes.contains(&(pid, probe))
    }
    fn forget_process(&mut self, pid: u32) {
        self.watched.remove(&pid);
        self.uprobes.retain(|(p, _)| *p != pid);
        self.forgotten.push(pid);
    }
    fn detach_all(&mut self) -> Detaching {
        self.uprobes.clear();
        Detaching::none()
    }
    fn goroutine_starts(&self) -> HashMap<GoStartKey, u64> {
        HashMap::new()
    }
    fn counters(&self) -> [u64; STAT_COUNT as usize] {
        self.counters
    }
    fn attached_count(&self) -> usize {
        self.uprobes.len()
    }
    fn detaching_count(&self) -> usize {
        0
    }
}

fn agent(selection: Selection) -> Agent<FakeKernel> {
    Agent::new(
        FakeKernel::default(),
        Arc::new(Metrics::new(200)),
        selection,
        10_000,
        Kubernetes::new(
            KubernetesConfig {
                node: None,
                pod_logs: "/nonexistent/pods".into(),
                container_logs: "/nonexistent/containers".into(),
            },
            None,
        ),
    )
}

/// A record as the kernel writes it: the struct's bytes.
fn bytes_of<T: Copy>(value: &T) -> Vec<u8> {
    // SAFETY: the shared event types are `repr(C)` plain data without padding (asserted in
    // obs-common); reading their bytes is reading their fields.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
}

fn conn(pid: u32, syscall: u64, fd: u32, peer: Option<([u8; 4], u16)>) -> Vec<u8> {
    let mut addr = [0u8; 16];
    let (family, port) = match peer {
        Some((ip, port)) => {
            addr[..4].copy_from_slice(&ip);
            (AF_INET, port)
        }
        None => (0, 0),
    };
    bytes_of(&SockConn {
        kind: EventKind::SockConn as u32,
        tgid: pid,
        fd,
        syscall: syscall as u32,
        ts_ns: 1,
        ret: 0,
        family,
        port,
        _pad: 0,
        addr,
        sock: 0,
    })
}

/// A read's record is as long as what was captured; a write's has room for its prefix.
fn data(pid: u32, fd: u32, ts_ns: u64, ingress: bool, payload: &[u8]) -> Vec<u8> {
    let (kind, room) = if ingress {
        (EventKind::SockData, DATA_PREFIX)
    } else {
        (EventKind::SockDataShort, EGRESS_PREFIX)
    };
    let captured = payload.len().min(room);
    let header = SockDataN::<0> {
        kind: kind as u32,
        tgid: pid,
        fd,
        syscall: if ingress { nr::READ } else { nr::WRITE } as u32,
        ts_ns,
        bytes: payload.len() as i64,
        direction: if ingress { DIR_INGRESS } else { DIR_EGRESS },
        prefix_len: captured as u32,
        goid: 0,
        prefix: [],
    };
    let mut record = bytes_of(&header);
    record.extend_from_slice(&payload[..captured]);
    if !ingress {
        record.resize(record.len() + room - captured, 0);
    }
    record
}

fn feed(agent: &Agent<FakeKernel>, records: &[Vec<u8>]) {
    for r in records {
        agent.handle(decode(r));
    }
}

#[test]
fn watching_a_process_of_another_language_captures_its_sockets_only() {
    let a = agent(Selection::Pids(vec![]));
    let me = std::process::id();
    a.watch(me).expect("the test process can be watched");
    let side = lock(&a.kernel);
    assert!(side.kernel.watched.contains(&me));
    assert!(side.kernel.uprobes.is_empty(), "no Go: no uprobes");
    drop(side);
    assert_eq!(a.watched_count(), 1);
    let text = a.metrics.encode().unwrap();
    assert!(
        text.contains(&format!("obs_agent_target_info{{pid=\"{me}\"")),
        "{text}"
    );
}

#[test]
fn a_pid_that_does_not_exist_is_refused_with_its_reason() {
    let a = agent(Selection::Pids(vec![]));
    let err = a.watch(4_194_305).unwrap_err();
    assert_eq!(
        err.reason(),
        crate::metrics::reasons::AttachFailure::NoSuchProcess
    );
    assert!(lock(&a.kernel).kernel.watched.is_empty());
}

#[test]
fn recorded_socket_events_become_request_metrics() {
    let a = agent(Selection::Pids(vec![]));
    let me = std::process::id();
    a.watch(me).unwrap();
    let client = Some(([127, 0, 0, 1], 50_000));
    feed(
        &a,
        &[
            conn(me, nr::ACCEPT4, 900, client),
            data(
                me,
                900,
                1_000,
                true,
                b"GET /items/42?x=1 HTTP/1.1\r\nHost: a\r\n\r\n",
            ),
            data(
                me,
                900,
                3_000,
                false,
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
            ),
            data(
                me,
                900,
                4_000,
                true,
                b"POST /items HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
            ),
            data(me, 900, 9_000, false, b"HTTP/1.1 201 Created\r\n\r\n"),
            conn(me, nr::CLOSE, 900, None),
        ],
    );
    let text = a.metrics.encode().unwrap();
    let service = Process::inspect(me).unwrap().service_name;
    for (method, status, route) in [("GET", 404, "/items/{id}"), ("POST", 201, "/items")] {
        let series = format!(
            "http_server_request_duration_seconds_count{{service_name=\"{service}\",\
             http_request_method=\"{method}\",http_response_status_code=\"{status}\",\
             http_route=\"{route}\"}} 1"
        );
        assert!(text.contains(&series), "{series} missing from:\n{text}");
    }
    assert!(text.contains("obs_agent_events_received_total 6"), "{text}");
}

#[test]
fn events_of_unknown_processes_and_bad_records_are_counted() {
    let a = agent(Selection::Pids(vec![]));
    feed(&a, &[conn(4_000_000, nr::ACCEPT, 3, None), vec![1, 2]]);
    let text = a.metrics.encode().unwrap();
    assert!(
        text.contains("obs_agent_events_lost_total{reason=\"unknown_process\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("obs_agent_decode_errors_total{reason=\"short_record\"} 1"),
        "{text}"
    );
}

#[test]
fn a_connection_that_is_not_http_is_counted_once_by_what_it_looks_like() {
    let a = agent(Selection::Pids(vec![]));
    let me = std::process::id();
    a.watch(me).unwrap();
    feed(
        &a,
        &[
            conn(me, nr::ACCEPT, 901, None),
            data(me, 901, 1, true, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc"),
            data(me, 901, 2, true, b"GET / HTTP/1.1\r\n\r\n"),
        ],
    );
    let text = a.metrics.encode().unwrap();
    assert!(text.contains("role=\"server\",reason=\"tls\"} 1"), "{text}");
    assert!(
        !text.contains("http_server_request_duration_seconds_count"),
        "{text}"
    );
}

#[test]
fn gauges_and_kernel_counters_are_refreshed_by_the_agent_not_the_scrape() {
    let a = agent(Selection::Pids(vec![]));
    a.watch(std::process::id()).unwrap();
    lock(&a.kernel).kernel.counters[Stat::EventsLostRingFull as usize] = 7;
    let before = a.metrics.encode().unwrap();
    assert!(
        !before.contains("obs_agent_processes_watched 1"),
        "{before}"
    );
    a.pace();
    let after = a.metrics.encode().unwrap();
    assert!(after.contains("obs_agent_processes_watched 1"), "{after}");
    assert!(
        after.contains("obs_agent_events_lost_total{reason=\"ring_full\"} 7"),
        "{after}"
    );
    // Counters grow by what the kernel counted since: never twice.
    a.pace();
    let again = a.metrics.encode().unwrap();
    assert!(again.contains("reason=\"ring_full\"} 7"), "{again}");
}

#[test]
fn a_process_that_exits_is_released_and_its_probes_go() {
    let a = agent(Selection::Pids(vec![]));
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("sleep");
    let pid = child.id();
    a.watch(pid).unwrap();
    a.reconcile();
    assert!(lock(&a.kernel).kernel.forgotten.is_empty());
    child.kill().unwrap();
    child.wait().unwrap();
    a.reconcile();
    assert_eq!(lock(&a.kernel).kernel.forgotten, [pid]);
    assert_eq!(a.watched_count(), 0);
    let text = a.metrics.encode().unwrap();
    assert!(!text.contains(&format!("pid=\"{pid}\"")), "{text}");
}

#[test]
fn requests_in_flight_are_exact_after_every_event() {
    let a = agent(Selection::Pids(vec![]));
    let me = std::process::id();
    a.watch(me).unwrap();
    let service = Process::inspect(me).unwrap().service_name;
    let active = || {
        let text = a.metrics.encode().unwrap();
        let line = format!("http_server_active_requests{{service_name=\"{service}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(line.as_str()))
            .map(|v| v.parse::<i64>().unwrap())
    };
    assert_eq!(active(), Some(0));
    feed(
        &a,
        &[
            conn(me, nr::ACCEPT, 902, None),
            data(
                me,
                902,
                1,
                true,
                b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n",
            ),
        ],
    );
    assert_eq!(active(), Some(2));
    feed(&a, &[data(me, 902, 2, false, b"HTTP/1.1 200 OK\r\n\r\n")]);
    assert_eq!(active(), Some(1));
    // Closed with one unanswered: none in flight, one lost.
    feed(&a, &[conn(me, nr::CLOSE, 902, None)]);
    assert_eq!(active(), Some(0));
    let text = a.metrics.encode().unwrap();
    assert!(
        text.contains("obs_agent_events_lost_total{reason=\"unanswered_request\"} 1"),
        "{text}"
    );
}
