//! The agent as a whole: decides what to watch (target), analyses binaries once per
//! (device, inode) (symbols), starts socket capture and mux discovery (probes), turns events
//! into requests (spans) and records them (metrics). Processes that exit are released.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use obs_common::{
    sockets::{nr, DIR_INGRESS, EINPROGRESS},
    stats::{Stat, STAT_COUNT},
};

use crate::{
    connections::{Connections, Dropped, Exchange, RESPONSE_QUIET_NS},
    events::{local_address, peer_address, DecodeError, Event},
    go_process::GoProcess,
    metrics::{
        self_metrics_labels::{module_labels, target_labels},
        Metrics, ModuleLabels, ProcessSeries, ServiceLabels, TargetLabels,
    },
    probes::{error_chain, ProbeError, Probes},
    protocols::go_mux::{Pattern, PatternSet},
    protocols::{trace_context::SpanContext, Role},
    spans::{
        goroutines::{Caller, Chain, Goroutines},
        route_of,
        trace::{Resource, SpanSink},
        tracer::Orphan,
        tracer::Tracer,
    },
    symbols::{
        elf::ElfFile,
        go_http::{self, MuxLayout, ProbePoint},
        go_runtime::FunctionNames,
        offsets::LayoutSource,
        SymbolsError,
    },
    target::{self, memory::ProcessMemory, BinaryId, Process, ProcessError, Selection},
};

/// The watched processes by pid, looked up on every event: a fast hash (pids are not
/// chosen by peers).
type WatchedMap = HashMap<u32, Watched, foldhash::fast::RandomState>;

/// Server requests that started before the client request of the same connection was seen
/// (usually in another watched process): now that client's children.
fn adopt(watched: &mut WatchedMap, adopted: Vec<(Orphan, SpanContext)>) {
    for (orphan, span) in adopted {
        if let Some(server) = watched.get_mut(&orphan.pid) {
            if server.connections.relink(orphan.fd, orphan.span_id, span) {
                server.goroutines.relink(span);
            }
        }
    }
}

/// How long an exited process's state is kept, so its last events (still in the ring buffer
/// when it exited) are attributed rather than dropped.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// The mux-discovery uprobe is detached once no new mux has shown up for this long after the
/// last one: it costs a uprobe hit per request while attached.
const DISCOVERY_QUIET: Duration = Duration::from_secs(1);
/// And re-attached this long after, to find muxes a process starts using later.
const REDISCOVERY: Duration = Duration::from_secs(300);
/// Registered patterns are re-read this often (routes added after start).
const PATTERN_REFRESH: Duration = Duration::from_secs(10);
/// A goroutine-creation probe detached for its cost, in a process whose runtime state cannot
/// be read (so the rate is unknown while detached), is tried again after this long.
const CREATION_PROBE_RETRY: Duration = Duration::from_secs(60);
/// How often the Go runtime figures are refreshed and the creation probes paced.
pub const GO_PACE_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(transparent)]
    Process(#[from] ProcessError),
    // Not `source`: the message already includes it, and error chains would repeat it.
    #[error("pid {pid} ({exe}): {error}")]
    Binary {
        pid: u32,
        exe: String,
        error: Arc<SymbolsError>,
    },
    #[error(transparent)]
    Probe(#[from] ProbeError),
}

impl WatchError {
    pub fn reason(&self) -> &'static str {
        match self {
            WatchError::Process(ProcessError::NotFound(_)) => "no_such_process",
            WatchError::Process(_) => "process_unreadable",
            WatchError::Binary { error, .. } => match **error {
                // Not an error for `watch` (other languages are watched); kept for callers.
                SymbolsError::NotGo => "not_go",
                SymbolsError::NotHttpServer(_) => "not_http_server",
                SymbolsError::NoStructOffsets { .. } => "no_struct_offsets",
                _ => "binary_unreadable",
            },
            WatchError::Probe(_) => "attach_failed",
        }
    }
}

/// A binary's analysis, shared by every process that runs it (errors too, so a binary that
/// cannot be watched is not analysed again).
type Analysis = Result<Arc<go_http::GoHttpBinary>, Arc<SymbolsError>>;

/// Discovering a process's ServeMux instances and reading their patterns.
struct Routes {
    discovery: Option<(ProbePoint, MuxLayout)>,
    muxes: Vec<u64>,
    patterns: PatternSet,
    last_new_mux: Option<Instant>,
    detached_at: Option<Instant>,
    read_at: Option<Instant>,
}

impl Routes {
    /// The pattern the request matched, if the process's router is known.
    fn pattern(&self, exchange: &Exchange) -> Option<&str> {
        self.patterns.route_for(exchange.method, &exchange.path)
    }

    /// Re-reads every known mux's patterns from the process's memory.
    fn read_patterns(&mut self, pid: u32) {
        let Some((_, layout)) = self.discovery else {
            return;
        };
        self.read_at = Some(Instant::now());
        let mem = match ProcessMemory::open(pid) {
            Ok(m) => m,
            Err(e) => return log::debug!("pid {pid}: cannot open its memory: {e}"),
        };
        let mut patterns = Vec::new();
        for &mux in &self.muxes {
            match target::go_mux::patterns(&mem, &layout, mux) {
                Ok(found) => patterns.extend(found.iter().filter_map(|s| Pattern::parse(s))),
                Err(e) => log::debug!("pid {pid}: mux {mux:#x}: {e}"),
            }
        }
        log::debug!("pid {pid}: {} route patterns", patterns.len());
        self.patterns = PatternSet::new(patterns);
    }
}

struct Watched {
    process: Process,
    /// What its spans say of it (OpenTelemetry resource).
    resource: Arc<Resource>,
    /// Its request series, resolved once per route and server.
    series: ProcessSeries,
    /// Its `obs_agent_target_info` and `obs_agent_target_module_info` series, removed at exit.
    target: TargetLabels,
    modules: Vec<ModuleLabels>,
    exited_at: Option<Instant>,
    connections: Connections,
    /// Go processes with goroutine tracking: which request each call is made for.
    goroutines: Goroutines,
    routes: Routes,
    /// Its Go runtime's figures (goroutines, GC, panics), when its goroutines are followed.
    go: Option<GoProcess>,
}

pub struct Agent {
    probes: Mutex<Probes>,
    pub metrics: Arc<Metrics>,
    selection: Selection,
    watched: Mutex<WatchedMap>,
    binaries: Mutex<HashMap<BinaryId, Analysis>>,
    /// Processes looked at and not watched, by (pid, start time), so rescans skip them.
    passed_over: Mutex<HashSet<(u32, u64)>>,
    kernel_stats_seen: Mutex<[u64; STAT_COUNT as usize]>,
    /// Span identities and links, and where finished spans go (none: no spans are made).
    tracer: Mutex<Tracer>,
    /// Set once at start (`enable_tracing`); read on every event without a lock.
    span_sink: OnceLock<Arc<dyn SpanSink>>,
    host_name: String,
    /// Most goroutine creations per second with the creation probe attached (0: no limit).
    pub goroutine_probe_max_rate: u64,
    /// Set at shutdown: no process is looked for or paced any more.
    stopping: AtomicBool,
}

impl Agent {
    pub fn new(probes: Probes, metrics: Arc<Metrics>, selection: Selection) -> Self {
        Self {
            probes: Mutex::new(probes),
            metrics,
            selection,
            watched: Mutex::new(WatchedMap::default()),
            binaries: Mutex::new(HashMap::new()),
            passed_over: Mutex::new(HashSet::new()),
            kernel_stats_seen: Mutex::new([0; STAT_COUNT as usize]),
            tracer: Mutex::new(Tracer::new(1.0)),
            span_sink: OnceLock::new(),
            host_name: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            goroutine_probe_max_rate: 0,
            stopping: AtomicBool::new(false),
        }
    }

    /// Makes spans of every request from now on, sampling new traces with `sample_ratio`
    /// (0.0–1.0; requests continuing a trace follow its decision), and sends them to `sink`.
    pub fn enable_tracing(&self, sink: Arc<dyn SpanSink>, sample_ratio: f64) {
        *lock(&self.tracer) = Tracer::new(sample_ratio);
        if self.span_sink.set(sink).is_err() {
            log::warn!("tracing was already enabled; keeping the first span sink");
        }
    }

    /// Starts watching `pid`: its socket syscalls, whatever its language; for a Go net/http
    /// server also its ServeMux routes. Binary analysis is cached per (device, inode).
    pub fn watch(&self, pid: u32) -> Result<(), WatchError> {
        let process = Process::inspect(pid)?;
        let binary = match self.analyse(&process) {
            Ok(binary) => Some(binary),
            // Any other language: HTTP/1.x from its socket syscalls alone.
            Err(error) if matches!(*error, SymbolsError::NotGo) => None,
            Err(error) => {
                return Err(WatchError::Binary {
                    pid,
                    exe: process.exe_name(),
                    error,
                })
            }
        };
        let mut connections = Connections::default();
        let open = target::sockets::open_sockets(pid);
        for s in &open {
            connections.add_socket(s.fd, s.role, s.peer);
            if let Some(local) = s.local {
                connections.set_local(s.fd, local);
            }
        }
        let routes = Routes {
            discovery: binary.as_ref().and_then(|b| b.mux_discovery),
            muxes: Vec::new(),
            patterns: PatternSet::default(),
            last_new_mux: None,
            detached_at: None,
            read_at: None,
        };
        let mut goroutines_followed = false;
        // The runtime's figures from the start; and, when the runtime's state can be read,
        // its creation rate before the creation probe goes in (a process already making
        // goroutines faster than the limit would pay for it until the next rescan).
        let mut go = binary
            .as_ref()
            .filter(|b| b.goroutines.is_ok())
            .map(|b| GoProcess::new(&process, b));
        let mut creation_probe = true;
        if let Some(go) = go.as_mut().filter(|g| g.reads_state()) {
            go.read_state(&self.metrics.go);
            // Judged by the process's average so far (no waiting for a second read, which
            // would hold up watching every other process): the pacing then corrects within
            // `GO_PACE_INTERVAL` a process busier, or calmer, now than on average.
            let rate = process.age().and_then(|age| go.lifetime_creation_rate(age));
            if self.goroutine_probe_max_rate > 0
                && rate.is_some_and(|r| r > self.goroutine_probe_max_rate as f64)
            {
                creation_probe = false;
                go.probe_paused_at = Some(Instant::now());
                log::info!(
                    "pid {pid}: {:.0} goroutines created per second on average (limit {}): \
                     creation probe not attached for now",
                    rate.unwrap_or(0.0),
                    self.goroutine_probe_max_rate
                );
            }
        }
        {
            let mut probes = lock(&self.probes);
            probes.watch_sockets(pid)?;
            // Runtime metrics need the creation and panic probes whenever the process is
            // watched; spans also need goroutine parentage and the transport probe (without
            // them, a call is linked to the process's request in flight when there is
            // exactly one).
            if let Some(binary) = &binary {
                match &binary.goroutines {
                    Ok(tracking) => match probes.attach_goroutine_tracking(
                        &process,
                        tracking,
                        &binary.panics,
                        self.span_sink.get().is_some(),
                        creation_probe,
                        burst_limit(self.goroutine_probe_max_rate),
                    ) {
                        Ok(()) => goroutines_followed = true,
                        Err(e) => {
                            log::warn!("pid {pid}: goroutines not followed: {}", error_chain(&e))
                        }
                    },
                    Err(why) => log::info!("pid {pid}: goroutines not followed: {why}"),
                }
            }
            if let Some((point, _)) = routes.discovery {
                // Without it, routes fall back to collapsed paths; requests are still counted.
                if let Err(e) = probes.attach_mux_discovery(&process, point) {
                    log::warn!("pid {pid}: no route patterns: {}", error_chain(&e));
                }
            }
        }
        let build = binary.as_ref().map(|b| b.build.clone()).unwrap_or_default();
        match &binary {
            Some(_) => log::info!(
                "watching pid {pid} ({}, service {:?}, {}{}{})",
                process.exe_path.display(),
                process.service_name,
                build.go_version,
                if routes.discovery.is_some() {
                    ", ServeMux patterns"
                } else {
                    ""
                },
                if goroutines_followed {
                    ", goroutines followed"
                } else {
                    ""
                }
            ),
            None => log::info!(
                "watching pid {pid} ({}, service {:?}, not Go: HTTP/1.x from its socket \
                 syscalls{})",
                process.exe_path.display(),
                process.service_name,
                if target::sockets::TcpTables::default().has_tcp_socket(pid) {
                    ""
                } else {
                    "; it has no TCP connection or listener yet"
                }
            ),
        }
        if let Some(source) = binary.as_ref().and_then(|b| b.layout_source.as_ref()) {
            // An assumed layout (a Go release newer than the offsets table) is worth seeing.
            let level = match source {
                LayoutSource::Table { assumed: true, .. } => log::Level::Info,
                _ => log::Level::Debug,
            };
            log::log!(
                level,
                "pid {pid}: struct offsets from {source} ({})",
                build.go_version
            );
        }
        let target = target_labels(&process, &build);
        let modules = module_labels(&process, &build);
        self.metrics.agent.target_info.get_or_create(&target).set(1);
        for m in &modules {
            self.metrics
                .agent
                .target_module_info
                .get_or_create(m)
                .set(1);
        }
        if !goroutines_followed {
            if let Some(go) = go.take() {
                go.runtime.remove_series(&self.metrics.go);
            }
        }
        if let Some(go) = &mut go {
            let starts = lock(&self.probes).goroutine_starts();
            go.record_creations(&self.metrics.go, &starts_of(&starts, pid));
        }
        let resource = Arc::new(Resource {
            service_name: process.service_name.clone(),
            instance_id: format!("{}:{}:{}", self.host_name, pid, process.start_time),
            pid,
            executable_name: process.exe_name(),
            host_name: self.host_name.clone(),
        });
        lock(&self.watched).insert(
            pid,
            Watched {
                resource,
                series: ProcessSeries::new(&process.service_name),
                process,
                target,
                modules,
                exited_at: None,
                connections,
                goroutines: Goroutines::default(),
                routes,
                go,
            },
        );
        Ok(())
    }

    fn analyse(&self, process: &Process) -> Analysis {
        if let Some(cached) = lock(&self.binaries).get(&process.binary) {
            return cached.clone();
        }
        let started = Instant::now();
        let result = ElfFile::open(&process.exe_link)
            .and_then(|elf| {
                if go_http::is_go(&elf) {
                    let mut binary = go_http::analyze(&elf)?;
                    binary.function_names = Some(Arc::new(FunctionNames::new(elf)));
                    Ok(binary)
                } else {
                    Err(SymbolsError::NotGo)
                }
            })
            .map(Arc::new)
            .map_err(Arc::new);
        let elapsed = started.elapsed();
        self.metrics
            .agent
            .binary_analysis
            .observe(elapsed.as_secs_f64());
        log::debug!("analysed {} in {elapsed:?}", process.exe_path.display());
        lock(&self.binaries).insert(process.binary, result.clone());
        result
    }

    /// Releases processes that exited, paces mux discovery, re-reads route patterns; in
    /// node-wide mode, starts watching new Go processes.
    pub fn reconcile(&self) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        let now = Instant::now();
        {
            let mut watched = lock(&self.watched);
            let mut probes = lock(&self.probes);
            watched.retain(|pid, w| {
                match w.exited_at {
                    Some(t) if now.duration_since(t) <= EXIT_GRACE => return true,
                    Some(_) => {
                        if let Some(go) = &mut w.go {
                            go.exited(&self.metrics.go);
                        }
                        return false;
                    }
                    None if !w.process.is_alive() => {
                        probes.detach(*pid);
                        log::info!(
                            "pid {pid} ({}) exited; probes detached",
                            w.process.service_name
                        );
                        w.exited_at = Some(now);
                        self.finish_dead(*pid, w);
                        w.connections = Connections::default();
                        w.goroutines = Goroutines::default();
                        if let Some(go) = &mut w.go {
                            go.exited(&self.metrics.go);
                        }
                        self.metrics.agent.target_info.remove(&w.target);
                        for m in &w.modules {
                            self.metrics.agent.target_module_info.remove(m);
                        }
                        return true;
                    }
                    None => {}
                }
                pace_discovery(*pid, w, &mut probes, now);
                true
            });
        }
        self.finish_quiet_responses();
        if self.selection == Selection::Node {
            self.scan_for_new();
        }
        self.forget_unused_binaries();
    }

    /// Reads every Go process's runtime state, then the kernel's creation counts by start
    /// function. In that order: a process's creations not attributed to a function are the
    /// runtime's total minus the probe's counts, and must never include a creation the probe
    /// counts later (the counter could not take it back). The map is read entry by entry,
    /// without holding the watched processes (the event handler's lock).
    fn refresh_go_processes(&self) {
        for w in lock(&self.watched).values_mut() {
            if let (None, Some(go)) = (w.exited_at, &mut w.go) {
                go.read_state(&self.metrics.go);
            }
        }
        let starts = lock(&self.probes).goroutine_starts();
        for (pid, w) in lock(&self.watched).iter_mut() {
            if let (None, Some(go)) = (w.exited_at, &mut w.go) {
                go.record_creations(&self.metrics.go, &starts_of(&starts, *pid));
            }
        }
    }

    /// Refreshes the Go runtime figures and paces the goroutine-creation probes by each
    /// process's creation rate. Called often (`GO_PACE_INTERVAL`): a process that starts
    /// making goroutines fast pays for the probe only until the next call.
    pub fn pace_go_probes(&self) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.refresh_go_processes();
        let now = Instant::now();
        let mut watched = lock(&self.watched);
        let mut probes = lock(&self.probes);
        for (pid, w) in watched.iter_mut() {
            pace_creation_probe(*pid, w, &mut probes, now, self.goroutine_probe_max_rate);
        }
    }

    /// Node-wide mode: watches every Go process, and every other process that has a TCP
    /// socket listening or connected (checked again at each scan until it has one).
    fn scan_for_new(&self) {
        let known: HashSet<u32> = lock(&self.watched)
            .iter()
            .filter(|(_, w)| w.exited_at.is_none())
            .map(|(pid, _)| *pid)
            .collect();
        let mut passed_over = lock(&self.passed_over);
        let mut alive = HashSet::new();
        let mut tcp = target::sockets::TcpTables::default();
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
            let is_go =
                !matches!(self.analyse(&process), Err(e) if matches!(*e, SymbolsError::NotGo));
            if !is_go && !tcp.has_tcp_socket(pid) {
                continue;
            }
            if let Err(e) = self.watch(pid) {
                match e.reason() {
                    "process_unreadable" | "no_such_process" => log::trace!("pid {pid}: {e}"),
                    _ => {
                        log::info!("not watching {e}");
                        self.metrics.agent.attach_failure(e.reason());
                    }
                }
                passed_over.insert(id);
            }
        }
        passed_over.retain(|id| alive.contains(id));
    }

    /// Drops analyses of binaries no watched process runs any more.
    fn forget_unused_binaries(&self) {
        let in_use: HashSet<BinaryId> = lock(&self.watched)
            .values()
            .map(|w| w.process.binary)
            .collect();
        let mut binaries = lock(&self.binaries);
        if self.selection == Selection::Node {
            // Keep negative results (non-Go binaries) so rescans stay cheap; bounded by the
            // number of distinct executables on the machine.
            binaries.retain(|id, r| in_use.contains(id) || r.is_err());
        } else {
            binaries.retain(|id, _| in_use.contains(id));
        }
    }

    /// One decoded (or undecodable) event from the kernel.
    pub fn handle(&self, event: Result<Event<'_>, DecodeError>) {
        let m = &self.metrics.agent;
        m.events_received.inc();
        let event = match event {
            Ok(e) => e,
            Err(e) => return m.decode_error(e.reason()),
        };
        let mut watched = lock(&self.watched);
        let tgid = match &event {
            Event::GoMuxSeen(e) => e.tgid,
            Event::GoClientCall(e) => e.tgid,
            Event::GoPanic(e) => e.tgid,
            Event::GoCreationBurst(e) => e.tgid,
            Event::SockConn(e) => e.tgid,
            Event::SockLocal(e) => e.tgid,
            Event::SockData(e) => e.tgid,
        };
        let Some(w) = watched.get_mut(&tgid) else {
            m.lost("unknown_process").inc();
            return;
        };
        let mut adopted = Vec::new();
        match event {
            Event::GoMuxSeen(e) => {
                if !w.routes.muxes.contains(&e.mux) {
                    w.routes.muxes.push(e.mux);
                    w.routes.last_new_mux = Some(Instant::now());
                    w.routes.read_patterns(tgid);
                }
            }
            Event::GoClientCall(c) => w.goroutines.call(c.fd, Chain::from(&c)),
            Event::GoPanic(p) => {
                if let Some(go) = &mut w.go {
                    go.panic_event(&self.metrics.go, &p);
                }
            }
            Event::GoCreationBurst(_) => {
                // The same lock order as everywhere: watched, then probes.
                let mut probes = lock(&self.probes);
                if let Some(go) = &mut w.go {
                    if probes.detach_newproc(tgid) {
                        go.probe_paused_at = Some(Instant::now());
                        log::info!(
                            "pid {tgid}: a burst of goroutine creations (over {} per second): \
                             creation probe detached; creations by function and goroutine \
                             ancestry paused",
                            4 * self.goroutine_probe_max_rate
                        );
                    }
                }
            }
            Event::SockConn(c) => {
                let dropped = match u64::from(c.syscall) {
                    nr::ACCEPT | nr::ACCEPT4 => {
                        w.connections
                            .new_connection(c.fd, Role::Server, peer_address(&c))
                    }
                    // Non-blocking sockets (Go's, nginx's, Node's) say "in progress" and
                    // complete later; a connection that then fails simply carries no
                    // requests. Other failures leave no connection.
                    nr::CONNECT if c.ret == 0 || c.ret == -EINPROGRESS => {
                        let dropped =
                            w.connections
                                .new_connection(c.fd, Role::Client, peer_address(&c));
                        if c.sock != 0 {
                            w.connections.connecting(c.fd, c.sock);
                        }
                        dropped
                    }
                    nr::GETSOCKNAME => {
                        if let Some(local) = peer_address(&c) {
                            w.connections.set_local(c.fd, local);
                        }
                        None
                    }
                    nr::CLOSE => {
                        w.goroutines.closed(c.fd);
                        w.connections.close(c.fd)
                    }
                    _ => None,
                };
                if let Some(d) = dropped {
                    self.count_dropped(d, &w.process.service_name);
                }
                adopted = self.record_finished(tgid, w, 0);
            }
            Event::SockLocal(l) => {
                if let Some(local) = local_address(&l) {
                    w.connections.handshake_done(l.sock, local);
                }
            }
            Event::SockData(d) => {
                let data = d.prefix();
                let result = if d.direction == DIR_INGRESS {
                    w.connections.ingress(d.fd, d.ts_ns, data, d.bytes)
                } else {
                    w.connections.egress(d.fd, d.ts_ns, data, d.bytes)
                };
                if let Err(dropped) = result {
                    self.count_dropped(dropped, &w.process.service_name);
                }
                adopted = self.record_finished(tgid, w, d.goid);
            }
        }
        if w.exited_at.is_some() {
            // An event the process made before it died, still in the ring when its exit was
            // seen: nothing it started can be answered any more.
            self.finish_dead(tgid, w);
        }
        adopt(&mut watched, adopted);
    }

    /// A process that died: the responses it was writing are complete, the requests it had
    /// not answered are lost (and counted).
    fn finish_dead(&self, pid: u32, w: &mut Watched) {
        let unanswered = w.connections.finish_all();
        // Nothing starts here, so nothing is adopted.
        self.record_finished(pid, w, 0);
        if unanswered > 0 {
            self.count_dropped(Dropped::Unanswered(unanswered), &w.process.service_name);
        }
    }

    /// Records the exchanges `w` (process `pid`) completed (metrics, spans), then gives the
    /// requests it started their span identities; `goid` is the goroutine of the event that
    /// brought them (0: unknown). In that order: a client's next request on a connection
    /// starts after its previous one finished. Returns the server requests (of any process)
    /// adopted by the client requests that started.
    fn record_finished(&self, pid: u32, w: &mut Watched, goid: u64) -> Vec<(Orphan, SpanContext)> {
        // One lock of the tracer per event, and only when tracing is on.
        let mut tracing = self.span_sink.get().map(|sink| (sink, lock(&self.tracer)));
        for e in w.connections.drain_finished() {
            let duration = Duration::from_nanos(e.end_ns.saturating_sub(e.start_ns));
            let route = match e.role {
                Role::Server => {
                    let route = route_of(&e, w.routes.pattern(&e));
                    Some(self.metrics.record_server(
                        &mut w.series,
                        &route,
                        e.method,
                        e.status,
                        duration,
                    ))
                }
                Role::Client => {
                    self.metrics
                        .record_client(&mut w.series, e.peer, e.method, e.status, duration);
                    None
                }
            };
            if let Some((sink, tracer)) = tracing.as_mut() {
                if let (Role::Server, Some(span)) = (e.role, &e.span) {
                    w.goroutines.served(goid, span);
                }
                let route = route.as_deref();
                if let Some(span) = tracer.finish(e, route, &w.resource) {
                    self.metrics.agent.spans.inc();
                    sink.submit(span);
                }
            }
        }
        let mut adopted = Vec::new();
        while let Some(mut started) = w.connections.take_started() {
            let Some((_, tracer)) = tracing.as_mut() else {
                continue;
            };
            // A client that never asked for its own address (most runtimes but Go's): read
            // it once per connection from /proc, so the server end in another watched
            // process can find this call.
            if started.role == Role::Client && started.local.is_none() && started.peer.is_some() {
                let local = target::sockets::local_address(pid, started.fd);
                log::debug!("pid {pid} fd {}: local address {local:?}", started.fd);
                if let Some(local) = local {
                    w.connections.set_local(started.fd, local);
                    started.local = Some(local);
                }
            }
            let parent = match started.role {
                Role::Client => match w.goroutines.caller(started.fd) {
                    Caller::Request(span) => Some(span),
                    Caller::NoRequest => None,
                    Caller::Unknown => w.connections.sole_server_span(),
                },
                Role::Server => None,
            };
            let ctx = tracer.start(&started, parent);
            w.connections.set_span(started.fd, started.id, ctx);
            match started.role {
                Role::Server => {
                    w.goroutines.serving(goid, ctx);
                    tracer.orphan(pid, &started, &ctx);
                }
                Role::Client => adopted.extend(tracer.adopt(&started, &ctx)),
            }
        }
        adopted
    }

    /// Completes responses that have been quiet for [`RESPONSE_QUIET_NS`] and whose socket
    /// has nothing left in flight: their last byte was seen.
    fn finish_quiet_responses(&self) {
        let now = monotonic_ns();
        let mut watched = lock(&self.watched);
        let mut adopted = Vec::new();
        for (pid, w) in watched.iter_mut() {
            let quiet = w.connections.quiet_responses(now, RESPONSE_QUIET_NS);
            if quiet.is_empty() {
                continue;
            }
            let busy = target::sockets::busy_sockets(*pid, &quiet);
            for fd in quiet.into_iter().filter(|fd| !busy.contains(fd)) {
                w.connections.finish_response(fd);
            }
            adopted.extend(self.record_finished(*pid, w, 0));
        }
        adopt(&mut watched, adopted);
    }

    fn count_dropped(&self, d: Dropped, service_name: &str) {
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
            Dropped::NotHttp { role, reason } => {
                m.non_http_connection(service_name, role.as_str(), reason.as_str())
            }
        }
    }

    /// Starts detaching every uprobe; no more are attached (at shutdown; see
    /// `Probes::detach_all`).
    pub fn detach_all(&self) -> crate::probes::Detaching {
        self.stopping.store(true, Ordering::Relaxed);
        lock(&self.probes).detach_all()
    }

    /// Brings gauges and kernel-side counters up to date (called before each scrape).
    pub fn refresh(&self) {
        self.refresh_go_processes();
        // The same lock order as `reconcile`: watched, then probes.
        let watched = lock(&self.watched);
        let probes = lock(&self.probes);
        let mut active: HashMap<&str, i64> = HashMap::new();
        let mut live = 0;
        for w in watched.values() {
            *active.entry(&w.process.service_name).or_default() += w.connections.in_flight() as i64;
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
        m.probes_detaching.set(probes.detaching_count() as i64);

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
        lock(&self.watched)
            .values()
            .filter(|w| w.exited_at.is_none())
            .count()
    }
}

/// Detaches the mux-discovery uprobe once discovery has gone quiet, re-attaches it after a
/// while, and re-reads patterns now and then.
fn pace_discovery(pid: u32, w: &mut Watched, probes: &mut Probes, now: Instant) {
    let routes = &mut w.routes;
    let Some((point, _)) = routes.discovery else {
        return;
    };
    let quiet = routes
        .last_new_mux
        .is_some_and(|t| now.duration_since(t) >= DISCOVERY_QUIET);
    let attached = probes.has_uprobes(pid);
    if attached && quiet {
        probes.detach_uprobes(pid);
        routes.detached_at = Some(now);
        log::debug!(
            "pid {pid}: mux discovery done ({} muxes)",
            routes.muxes.len()
        );
    } else if !attached
        && routes
            .detached_at
            .is_some_and(|t| now.duration_since(t) >= REDISCOVERY)
    {
        match probes.attach_mux_discovery(&w.process, point) {
            Ok(()) => routes.last_new_mux = Some(now),
            Err(e) => log::debug!("pid {pid}: re-attaching mux discovery: {e}"),
        }
    }
    if !routes.muxes.is_empty()
        && routes
            .read_at
            .is_none_or(|t| now.duration_since(t) >= PATTERN_REFRESH)
    {
        routes.read_patterns(pid);
    }
}

/// The kernel's monotonic clock (`bpf_ktime_get_ns`), as event timestamps use it.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// Creations within one kernel window (`CREATION_WINDOW_NS`) that make the creation probe
/// report a burst: four times the rate limit, so that a process far above it pays for the
/// probe a few milliseconds, not until the next rate check (`GO_PACE_INTERVAL`). 0 (no
/// limit): never.
fn burst_limit(max_rate: u64) -> u64 {
    if max_rate == 0 {
        return 0;
    }
    let window = obs_common::go_trace::CREATION_WINDOW_NS as f64 / 1e9;
    ((4 * max_rate) as f64 * window).ceil().max(2.0) as u64
}

/// Detaches the goroutine-creation probe of a process creating goroutines faster than
/// `max_rate` per second (each creation costs a uprobe hit), and re-attaches it once the
/// rate, read from the runtime's state, has fallen below half (or, when the state cannot be
/// read, after a while).
fn pace_creation_probe(
    pid: u32,
    w: &mut Watched,
    probes: &mut Probes,
    now: Instant,
    max_rate: u64,
) {
    let (None, Some(go)) = (w.exited_at, &mut w.go) else {
        return;
    };
    let (Some(point), Some(rate)) = (go.newproc_point(), go.creation_rate()) else {
        return;
    };
    if max_rate == 0 {
        return;
    }
    let attached = probes.has_newproc(pid);
    if attached && rate > max_rate as f64 {
        probes.detach_newproc(pid);
        go.probe_paused_at = Some(now);
        log::info!(
            "pid {pid}: {rate:.0} goroutines created per second (limit {max_rate}): creation \
             probe detached; creations by function and goroutine ancestry paused"
        );
    } else if !attached {
        let calm = if go.reads_state() {
            rate < max_rate as f64 / 2.0
        } else {
            go.probe_paused_at
                .is_some_and(|t| now.duration_since(t) >= CREATION_PROBE_RETRY)
        };
        if calm {
            match probes.attach_newproc(&w.process, point) {
                Ok(()) => {
                    go.probe_paused_at = None;
                    if !go.reads_state() {
                        go.reset_rate();
                    }
                    log::info!("pid {pid}: {rate:.0} goroutines created per second: creation probe re-attached");
                }
                Err(e) => log::debug!("pid {pid}: re-attaching the creation probe: {e}"),
            }
        }
    }
}

/// One process's goroutine creation counts, by runtime start address.
fn starts_of(
    starts: &HashMap<obs_common::go_runtime::GoStartKey, u64>,
    pid: u32,
) -> HashMap<u64, u64> {
    starts
        .iter()
        .filter(|(k, _)| k.tgid == pid)
        .map(|(k, n)| (k.startpc, *n))
        .collect()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The descriptors of `pid` that are sockets now (for connections accepted before attach).
#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::offsets::{GoRelease, TableMiss};

    #[test]
    fn missing_struct_offsets_are_counted_under_their_own_reason() {
        let refused = |error| WatchError::Binary {
            pid: 42,
            exe: "server".to_owned(),
            error: Arc::new(error),
        };
        let no_offsets = refused(SymbolsError::NoStructOffsets {
            go_version: "go1.20.3".to_owned(),
            reason: TableMiss::NotInTable {
                release: GoRelease {
                    major: 1,
                    minor: 20,
                },
            },
        });
        assert_eq!(no_offsets.reason(), "no_struct_offsets");
        let message = no_offsets.to_string();
        assert!(
            message.contains("go1.20.3") && message.contains("cargo xtask go-offsets"),
            "{message}"
        );
        let not_http = refused(SymbolsError::NotHttpServer("x"));
        assert_ne!(not_http.reason(), no_offsets.reason());
    }
}
