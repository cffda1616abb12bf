//! Which processes are watched: starting to watch one (its binary analysed once per
//! (device, inode), its sockets open now, its Go probes), node-wide scans for new ones, and
//! letting go of those that exit.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    connections::Connections,
    metrics::self_metrics_labels::{module_labels, target_labels},
    metrics::{reasons::AttachFailure, ProcessSeries},
    probes::{error_chain, table::Probe, ProbeError},
    spans::{goroutines::Goroutines, trace::Resource},
    symbols::{
        elf::ElfFile,
        go_binary::{self, GoBinary},
        go_runtime::FunctionNames,
        offsets::LayoutSource,
        SymbolsError,
    },
    target::{self, BinaryId, Process, ProcessError, Selection},
};

use super::{
    go_probes::{self, burst_limit},
    go_process::GoProcess,
    kernel::Kernel,
    lock,
    routes::{pace_discovery, Routes},
    watched::{service_of, Watched},
    Agent,
};

/// How long an exited process's state is kept, so its last events (still in the ring buffer
/// when it exited) are attributed rather than dropped.
const EXIT_GRACE: Duration = Duration::from_secs(5);

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
    /// Why, as `obs_agent_attach_failures_total` counts it.
    pub fn reason(&self) -> AttachFailure {
        match self {
            WatchError::Process(ProcessError::NotFound(_)) => AttachFailure::NoSuchProcess,
            WatchError::Process(_) => AttachFailure::ProcessUnreadable,
            WatchError::Binary { error, .. } => match **error {
                SymbolsError::NotGo => AttachFailure::NotGo,
                SymbolsError::NotHttpServer(_) => AttachFailure::NotHttpServer,
                SymbolsError::NoStructOffsets { .. } => AttachFailure::NoStructOffsets,
                _ => AttachFailure::BinaryUnreadable,
            },
            WatchError::Probe(_) => AttachFailure::AttachFailed,
        }
    }
}

/// A binary's analysis, shared by every process that runs it (errors too, so a binary that
/// cannot be watched is not analysed again).
type Analysis = Result<Arc<GoBinary>, Arc<SymbolsError>>;

/// What discovery remembers between scans.
pub struct Discovery {
    selection: Selection,
    binaries: HashMap<BinaryId, Analysis>,
    /// Processes looked at and not watched, by (pid, start time), so rescans skip them.
    passed_over: HashSet<(u32, u64)>,
}

impl Discovery {
    pub fn new(selection: Selection) -> Self {
        Self {
            selection,
            binaries: HashMap::new(),
            passed_over: HashSet::new(),
        }
    }
}

impl<K: Kernel> Agent<K> {
    /// Starts watching `pid`: its socket syscalls, whatever its language; for a Go net/http
    /// server also its ServeMux routes, goroutines and runtime figures.
    pub fn watch(&self, pid: u32) -> Result<(), WatchError> {
        let mut process = Process::inspect(pid)?;
        match self.kubernetes.identify(pid) {
            Ok(Some(identity)) => process.set_pod(identity),
            Ok(None) => {}
            Err(e) => {
                log::info!("pid {pid}: no Kubernetes labels: {e}");
                self.metrics.agent.k8s_identity_failure((&e).into());
            }
        }
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
        for s in target::sockets::open_sockets(pid) {
            connections.add_socket(s.fd, s.role, s.peer);
            if let Some(local) = s.local {
                connections.set_local(s.fd, local);
            }
        }
        let routes = Routes::new(binary.as_ref().and_then(|b| b.mux_discovery));
        // The runtime's figures from the start; and, when the runtime's state can be read,
        // its creation rate before the creation probe goes in.
        let mut go = binary
            .as_ref()
            .filter(|b| b.goroutines.is_ok())
            .map(|b| GoProcess::new(&process, b));
        let creation_probe = go.as_mut().is_none_or(|go| {
            go_probes::creation_probe_affordable(
                go,
                &process,
                &self.metrics.go,
                self.goroutine_probe_max_rate,
            )
        });
        let mut goroutines_followed = false;
        {
            let kernel = &mut lock(&self.kernel).kernel;
            kernel.watch_sockets(pid)?;
            // Runtime metrics need the creation and panic probes whenever the process is
            // watched; spans also need goroutine parentage and the transport probe (without
            // them, a call is linked to the process's request in flight when there is
            // exactly one).
            if let Some(binary) = &binary {
                match &binary.goroutines {
                    Ok(tracking) => match go_probes::follow_goroutines(
                        kernel,
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
                if let Err(e) = kernel.attach(&process, Probe::GoMuxServeHttp, point) {
                    log::warn!("pid {pid}: no route patterns: {}", error_chain(&e));
                }
            }
        }
        log_watching(&process, binary.as_deref(), &routes, goroutines_followed);
        let build = binary.as_ref().map(|b| b.build.clone()).unwrap_or_default();
        let target = target_labels(&process, &build);
        let modules = module_labels(&process, &build);
        self.metrics.agent.target_info.get_or_create(&target).set(1);
        self.metrics.agent.service_watched(&process.service_name);
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
            let starts = lock(&self.kernel).kernel.goroutine_starts();
            go.record_creations(&self.metrics.go, &go_probes::starts_of(&starts, pid));
        }
        let service = service_of(&process);
        let resource = Arc::new(Resource {
            service_name: service.name.clone(),
            k8s: process.k8s.clone(),
            instance_id: format!("{}:{}:{}", self.host_name, pid, process.start_time),
            pid,
            executable_name: process.exe_name(),
            host_name: self.host_name.clone(),
        });
        lock(&self.pipeline).watched.insert(
            pid,
            Watched {
                resource,
                series: ProcessSeries::new(service.clone()),
                process,
                target,
                modules,
                exited_at: None,
                connections,
                goroutines: Goroutines::default(),
                routes,
                go,
                active: self
                    .metrics
                    .server_active
                    .get_or_create(&service.labels())
                    .clone(),
                active_added: 0,
            },
        );
        Ok(())
    }

    /// The analysis of the process's binary, from the cache or made now (outside any lock).
    fn analyse(&self, process: &Process) -> Analysis {
        if let Some(cached) = lock(&self.discovery).binaries.get(&process.binary) {
            return cached.clone();
        }
        let started = Instant::now();
        let result = ElfFile::open(&process.exe_link)
            .and_then(|elf| {
                if go_binary::is_go(&elf) {
                    let mut binary = go_binary::analyze(&elf)?;
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
        lock(&self.discovery)
            .binaries
            .insert(process.binary, result.clone());
        result
    }

    /// Releases processes that exited, paces mux discovery, completes quiet responses; in
    /// node-wide mode, starts watching new processes.
    pub fn reconcile(&self) {
        if self.stopping() {
            return;
        }
        self.release_exited(Instant::now());
        self.finish_quiet_responses();
        let node_wide = lock(&self.discovery).selection == Selection::Node;
        if node_wide {
            self.scan_for_new();
        }
        self.forget_unused_binaries(node_wide);
    }

    /// Processes that exited: their probes go, what they were answering is complete; their
    /// state is kept [`EXIT_GRACE`] for the events they left behind. Live ones have their
    /// mux discovery paced.
    fn release_exited(&self, now: Instant) {
        let (mut pipeline, mut kernel) = self.lock_both();
        let kernel = &mut kernel.kernel;
        let pipeline = &mut *pipeline;
        let mut gone = Vec::new();
        for (pid, w) in pipeline.watched.iter_mut() {
            match w.exited_at {
                Some(t) if now.duration_since(t) <= EXIT_GRACE => {}
                Some(_) => gone.push(*pid),
                None if !w.process.is_alive() => {
                    kernel.forget_process(*pid);
                    log::info!(
                        "pid {pid} ({}) exited; probes detached",
                        w.process.service_name
                    );
                    w.exited_at = Some(now);
                    self.finish_dead(&mut pipeline.tracer, *pid, w);
                    w.connections = Connections::default();
                    w.sync_active();
                    w.goroutines = Goroutines::default();
                    if let Some(go) = &mut w.go {
                        go.exited(&self.metrics.go);
                    }
                    self.metrics.agent.target_info.remove(&w.target);
                    for m in &w.modules {
                        self.metrics.agent.target_module_info.remove(m);
                    }
                }
                None => pace_discovery(*pid, w, kernel, now),
            }
        }
        for pid in gone {
            if let Some(mut w) = pipeline.watched.remove(&pid) {
                if let Some(go) = &mut w.go {
                    go.exited(&self.metrics.go);
                }
            }
        }
    }

    /// Node-wide mode: watches every Go process, and every other process that has a TCP
    /// socket listening or connected (checked again at each scan until it has one).
    fn scan_for_new(&self) {
        let known: HashSet<u32> = lock(&self.pipeline)
            .watched
            .iter()
            .filter(|(_, w)| w.is_alive())
            .map(|(pid, _)| *pid)
            .collect();
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
            if lock(&self.discovery).passed_over.contains(&id) {
                continue;
            }
            let is_go =
                !matches!(self.analyse(&process), Err(e) if matches!(*e, SymbolsError::NotGo));
            if !is_go && !tcp.has_tcp_socket(pid) {
                continue;
            }
            if let Err(e) = self.watch(pid) {
                match e.reason() {
                    // Gone, or a kernel thread, meanwhile.
                    AttachFailure::ProcessUnreadable | AttachFailure::NoSuchProcess => {
                        log::trace!("pid {pid}: {e}")
                    }
                    _ => {
                        log::info!("not watching {e}");
                        self.metrics.agent.attach_failure(e.reason());
                    }
                }
                lock(&self.discovery).passed_over.insert(id);
            }
        }
        lock(&self.discovery)
            .passed_over
            .retain(|id| alive.contains(id));
    }

    /// Drops analyses of binaries no watched process runs any more.
    fn forget_unused_binaries(&self, node_wide: bool) {
        let in_use: HashSet<BinaryId> = lock(&self.pipeline)
            .watched
            .values()
            .map(|w| w.process.binary)
            .collect();
        let mut discovery = lock(&self.discovery);
        if node_wide {
            // Keep negative results (non-Go binaries) so rescans stay cheap; bounded by the
            // number of distinct executables on the machine.
            discovery
                .binaries
                .retain(|id, r| in_use.contains(id) || r.is_err());
        } else {
            discovery.binaries.retain(|id, _| in_use.contains(id));
        }
    }
}

/// What a user wants to read when a process starts being watched.
fn log_watching(
    process: &Process,
    binary: Option<&GoBinary>,
    routes: &Routes,
    goroutines_followed: bool,
) {
    let pid = process.pid;
    match binary {
        Some(b) => log::info!(
            "watching pid {pid} ({}, service {:?}, {}{}{})",
            process.exe_path.display(),
            process.service_name,
            b.build.go_version,
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
    if let Some(source) = binary.and_then(|b| b.layout_source.as_ref()) {
        // An assumed layout (a Go release newer than the offsets table) is worth seeing.
        let level = match source {
            LayoutSource::Table { assumed: true, .. } => log::Level::Info,
            _ => log::Level::Debug,
        };
        log::log!(
            level,
            "pid {pid}: struct offsets from {source} ({})",
            binary.map_or("", |b| b.build.go_version.as_str())
        );
    }
}

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
        assert_eq!(no_offsets.reason(), AttachFailure::NoStructOffsets);
        let message = no_offsets.to_string();
        assert!(
            message.contains("go1.20.3") && message.contains("cargo xtask go-offsets"),
            "{message}"
        );
        let not_http = refused(SymbolsError::NotHttpServer("x"));
        assert_ne!(not_http.reason(), no_offsets.reason());
    }
}
