//! The agent as a whole: decides what to watch (target), analyses binaries once per
//! (device, inode) (symbols), attaches (probes), turns events into requests (spans) and
//! records them (metrics). Lifecycle: processes that exit are detached and forgotten.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use obs_common::{
    sockets::{nr, DIR_INGRESS},
    stats::{Stat, STAT_COUNT},
};

use crate::{
    events::{DecodeError, Event},
    metrics::{self_metrics_labels::target_labels, Metrics, ServiceLabels},
    probes::{ProbeError, Probes},
    spans::{
        http1::{Dropped, ServerConnections},
        ServerRequest,
    },
    symbols::{elf::ElfFile, go_http, SymbolsError},
    target::{self, BinaryId, Process, ProcessError, Selection},
};

/// How long an exited process's identity is kept, so that its last events (still in the
/// ring buffer when it exited) are attributed rather than dropped.
const EXIT_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error("pid {pid} ({exe}): {source}")]
    Binary {
        pid: u32,
        exe: String,
        source: Arc<SymbolsError>,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

impl WatchError {
    pub fn reason(&self) -> &'static str {
        match self {
            WatchError::Process(ProcessError::NotFound(_)) => "no_such_process",
            WatchError::Process(_) => "process_unreadable",
            WatchError::Binary { source, .. } => match **source {
                SymbolsError::NotGo => "not_go",
                SymbolsError::NotHttpServer(_) => "not_http_server",
                SymbolsError::NoDebugInfo { .. } => "no_debug_info",
                _ => "binary_unreadable",
            },
            WatchError::Probe(_) => "attach_failed",
        }
    }
}

/// A binary's analysis, shared by every process that runs it (errors too, so a binary that
/// cannot be watched is not analysed again).
type Analysis = Result<Arc<go_http::GoHttpBinary>, Arc<SymbolsError>>;

struct Watched {
    process: Process,
    go_version: String,
    exited_at: Option<Instant>,
}

pub struct Agent {
    probes: Mutex<Probes>,
    pub metrics: Arc<Metrics>,
    selection: Selection,
    watched: RwLock<HashMap<u32, Watched>>,
    binaries: Mutex<HashMap<BinaryId, Analysis>>,
    /// Processes looked at and not watched, by (pid, start time), so rescans skip them.
    passed_over: Mutex<HashSet<(u32, u64)>>,
    kernel_stats_seen: Mutex<[u64; STAT_COUNT as usize]>,
    /// Server-side HTTP/1 state of every watched process's sockets.
    servers: Mutex<HashMap<u32, ServerConnections>>,
}

impl Agent {
    pub fn new(probes: Probes, metrics: Arc<Metrics>, selection: Selection) -> Self {
        Self {
            probes: Mutex::new(probes),
            metrics,
            selection,
            watched: RwLock::new(HashMap::new()),
            binaries: Mutex::new(HashMap::new()),
            passed_over: Mutex::new(HashSet::new()),
            kernel_stats_seen: Mutex::new([0; STAT_COUNT as usize]),
            servers: Mutex::new(HashMap::new()),
        }
    }

    pub fn selection(&self) -> &Selection {
        &self.selection
    }

    /// Starts watching `pid`. Binary analysis is cached per (device, inode).
    pub fn watch(&self, pid: u32) -> Result<usize, WatchError> {
        let process = Process::inspect(pid)?;
        let binary = self
            .analyse(&process)
            .map_err(|source| WatchError::Binary {
                pid,
                exe: process.exe_name(),
                source,
            })?;
        let mut connections = ServerConnections::default();
        for fd in socket_fds(pid) {
            connections.add_socket(fd);
        }
        lock(&self.servers).insert(pid, connections);
        if let Err(e) = lock(&self.probes).watch_sockets(pid) {
            lock(&self.servers).remove(&pid);
            return Err(e.into());
        }
        let attached = 1;
        log::info!(
            "watching pid {pid} ({}, service {:?}, {}): {attached} probes",
            process.exe_path.display(),
            process.service_name,
            binary.build.go_version
        );
        self.metrics
            .agent
            .target_info
            .get_or_create(&target_labels(&process, &binary.build.go_version))
            .set(1);
        write(&self.watched).insert(
            pid,
            Watched {
                process,
                go_version: binary.build.go_version.clone(),
                exited_at: None,
            },
        );
        Ok(attached)
    }

    fn analyse(&self, process: &Process) -> Analysis {
        if let Some(cached) = lock(&self.binaries).get(&process.binary) {
            return cached.clone();
        }
        let started = Instant::now();
        let result = ElfFile::open(&process.exe_link)
            .and_then(|elf| {
                if go_http::is_go(&elf) {
                    go_http::analyze(&elf)
                } else {
                    Err(SymbolsError::NotGo)
                }
            })
            .map(Arc::new)
            .map_err(Arc::new);
        log::debug!(
            "analysed {} in {:?}",
            process.exe_path.display(),
            started.elapsed()
        );
        lock(&self.binaries).insert(process.binary, result.clone());
        result
    }

    /// Releases processes that exited; in node-wide mode, starts watching new Go processes.
    pub fn reconcile(&self) {
        let now = Instant::now();
        let mut exited = Vec::new();
        let mut forget = Vec::new();
        for (pid, w) in read(&self.watched).iter() {
            match w.exited_at {
                None if !w.process.is_alive() => exited.push(*pid),
                Some(t) if now.duration_since(t) > EXIT_GRACE => forget.push(*pid),
                _ => {}
            }
        }
        for pid in exited {
            lock(&self.probes).detach(pid);
            lock(&self.servers).remove(&pid);
            if let Some(w) = write(&self.watched).get_mut(&pid) {
                log::info!(
                    "pid {pid} ({}) exited; probes detached",
                    w.process.service_name
                );
                w.exited_at = Some(now);
                self.metrics
                    .agent
                    .target_info
                    .remove(&target_labels(&w.process, &w.go_version));
            }
        }
        if !forget.is_empty() {
            let mut watched = write(&self.watched);
            for pid in forget {
                watched.remove(&pid);
            }
        }
        if self.selection == Selection::AllGo {
            self.scan_for_new();
        }
        self.forget_unused_binaries();
    }

    fn scan_for_new(&self) {
        let known: HashSet<u32> = read(&self.watched)
            .iter()
            .filter(|(_, w)| w.exited_at.is_none())
            .map(|(pid, _)| *pid)
            .collect();
        let mut passed_over = lock(&self.passed_over);
        let mut alive = HashSet::new();
        for pid in target::all_pids() {
            if known.contains(&pid) {
                continue;
            }
            let Ok(process) = Process::inspect(pid) else {
                continue;
            };
            let id = (pid, process.start_time);
            alive.insert(id);
            if passed_over.contains(&id) {
                continue;
            }
            match self.watch(pid) {
                Ok(_) => {}
                Err(e) => {
                    match e.reason() {
                        "not_go" | "process_unreadable" | "no_such_process" => {
                            log::trace!("pid {pid}: {e}")
                        }
                        _ => {
                            log::info!("not watching {e}");
                            self.metrics.agent.attach_failure(e.reason());
                        }
                    }
                    passed_over.insert(id);
                }
            }
        }
        passed_over.retain(|id| alive.contains(id));
    }

    /// Drops analyses of binaries no watched process runs any more.
    fn forget_unused_binaries(&self) {
        let in_use: HashSet<BinaryId> = read(&self.watched)
            .values()
            .map(|w| w.process.binary)
            .collect();
        let mut binaries = lock(&self.binaries);
        if self.selection == Selection::AllGo {
            // Keep negative results (non-Go binaries) so rescans stay cheap; bounded by the
            // number of distinct executables on the machine.
            binaries.retain(|id, r| in_use.contains(id) || r.is_err());
        } else {
            binaries.retain(|id, _| in_use.contains(id));
        }
    }

    /// One decoded (or undecodable) event from the kernel.
    pub fn handle(&self, event: Result<Event, DecodeError>) {
        let m = &self.metrics.agent;
        m.events_received.inc();
        let event = match event {
            Ok(e) => e,
            Err(e) => return m.decode_error(e.reason()),
        };
        match event {
            Event::GoHttpServer(raw) => {
                let request = match ServerRequest::from_go(&raw) {
                    Ok(r) => r,
                    Err(e) => {
                        log::debug!("pid {}: {e}", raw.tgid);
                        return m.decode_error(match e {
                            crate::spans::SpanError::TargetRead => "target_read",
                            crate::spans::SpanError::BadStatus(_) => "bad_status",
                        });
                    }
                };
                let watched = read(&self.watched);
                let Some(w) = watched.get(&request.pid) else {
                    m.lost("unknown_process").inc();
                    return;
                };
                self.metrics
                    .record_server_request(&w.process.service_name, &request);
            }
            Event::SockConn(c) => {
                let mut servers = lock(&self.servers);
                let Some(conns) = servers.get_mut(&c.tgid) else {
                    return;
                };
                match u64::from(c.syscall) {
                    nr::ACCEPT | nr::ACCEPT4 => conns.add_socket(c.fd),
                    nr::CLOSE => {
                        if let Some(d) = conns.close(c.fd) {
                            self.count_dropped(d);
                        }
                    }
                    _ => {}
                }
            }
            Event::SockData(d) => {
                let data = &d.prefix[..(d.prefix_len as usize).min(d.prefix.len())];
                let exchange = {
                    let mut servers = lock(&self.servers);
                    let Some(conns) = servers.get_mut(&d.tgid) else {
                        return;
                    };
                    if d.direction == DIR_INGRESS {
                        conns.ingress(d.fd, d.ts_ns, data).map(Err)
                    } else {
                        conns.egress(d.fd, d.ts_ns, data).transpose()
                    }
                };
                match exchange {
                    Some(Ok(e)) => {
                        let request = ServerRequest::from_exchange(d.tgid, &e);
                        let watched = read(&self.watched);
                        if let Some(w) = watched.get(&d.tgid) {
                            self.metrics
                                .record_server_request(&w.process.service_name, &request);
                        }
                    }
                    Some(Err(dropped)) => self.count_dropped(dropped),
                    None => {}
                }
            }
        }
    }

    fn count_dropped(&self, d: Dropped) {
        let m = &self.metrics.agent;
        match d {
            // Data on files, pipes and terminals is expected: not a loss.
            Dropped::NotASocket => {}
            Dropped::UnmatchedResponse => m.decode_error("unmatched_response"),
            Dropped::Unanswered(n) => {
                m.lost("unanswered_request").inc_by(n as u64);
            }
            Dropped::Overflow => {
                m.lost("connection_table_full").inc();
            }
        }
    }

    /// Brings gauges and kernel-side counters up to date (called before each scrape).
    pub fn refresh(&self) {
        let probes = lock(&self.probes);
        let watched = read(&self.watched);
        let mut active: HashMap<&str, i64> = HashMap::new();
        let mut live = 0;
        let servers = lock(&self.servers);
        for (pid, w) in watched.iter() {
            let in_flight = servers.get(pid).map_or(0, |c| c.in_flight() as i64);
            *active.entry(&w.process.service_name).or_default() +=
                probes.active_requests(*pid) + in_flight;
            live += i64::from(w.exited_at.is_none());
        }
        for (service, n) in active {
            self.metrics
                .server_active
                .get_or_create(&ServiceLabels {
                    service_name: service.to_owned(),
                })
                .set(n);
        }
        let m = &self.metrics.agent;
        m.processes_watched.set(live);
        m.probes_attached.set(probes.attached_count() as i64);

        let now = probes.kernel_stats();
        let mut seen = lock(&self.kernel_stats_seen);
        for stat in Stat::ALL {
            let delta = now[stat as usize].saturating_sub(seen[stat as usize]);
            if delta == 0 {
                continue;
            }
            match stat {
                Stat::EventsLostRingFull => m.lost("ring_full").inc_by(delta),
                other => m
                    .kernel_errors
                    .get_or_create(&crate::metrics::self_metrics_labels::reason(other.name()))
                    .inc_by(delta),
            };
        }
        *seen = now;
    }

    pub fn watched_count(&self) -> usize {
        read(&self.watched)
            .values()
            .filter(|w| w.exited_at.is_none())
            .count()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}
fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// The descriptors of `pid` that are sockets now (for connections accepted before attach).
fn socket_fds(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let target = std::fs::read_link(e.path()).ok()?;
        target
            .to_str()?
            .starts_with("socket:")
            .then(|| e.file_name().to_str()?.parse().ok())?
    })
    .collect()
}
