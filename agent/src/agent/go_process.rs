//! One watched Go process's runtime figures: reads its runtime's state, names the addresses
//! the kernel reports (goroutine start functions, panicking callers) and feeds
//! `metrics::go_runtime`. Called by the agent every `PACE_INTERVAL` and on panic events.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use obs_common::go_runtime::{GoPanic, PANIC_FATAL, PANIC_RECOVERED, PANIC_STARTED};

use crate::{
    metrics::go_runtime::{panicking_function, GoRuntimeMetrics, ProcessRuntime},
    symbols::{
        go_binary::{GoBinary, ProbePoint},
        go_runtime::{FunctionNames, RuntimeState},
    },
    target::{go_runtime, memory::ProcessMemory, Process},
};

use super::watched::service_of;

/// Most start addresses named per process (the kernel's table bounds them too).
const MAX_NAMES: usize = 4096;

pub struct GoProcess {
    pid: u32,
    /// Where the runtime's counts are, when they can be found without guessing (see
    /// `symbols::runtime_globals`).
    state: Option<RuntimeState>,
    mem: Option<ProcessMemory>,
    /// Runtime address minus link-time address.
    bias: u64,
    names: Option<Arc<FunctionNames>>,
    /// Link-time start address -> function name.
    start_names: HashMap<u64, String>,
    pub runtime: ProcessRuntime,
    read_failed: bool,
    /// The goroutine-creation probe site, and since when it is detached for its cost.
    newproc: Option<ProbePoint>,
    pub probe_paused_at: Option<Instant>,
    /// Goroutines created, as last counted (runtime state, else the probe), and when.
    last_created: Option<(Instant, u64)>,
    /// Creations per second between the last two counts.
    rate: Option<f64>,
}

/// Counts closer together than this do not make a rate.
const RATE_MIN_INTERVAL: Duration = Duration::from_millis(90);

impl GoProcess {
    pub fn new(process: &Process, binary: &GoBinary) -> Self {
        let pid = process.pid;
        let bias = binary
            .image_base
            .map(|base| go_runtime::load_bias(pid, process.binary, base))
            .transpose()
            .unwrap_or_else(|e| {
                log::info!("pid {pid}: load address unknown ({e}); runtime state not read");
                None
            });
        let state = match (&binary.runtime_state, bias) {
            (Ok(state), Some(_)) => Some(*state),
            (Err(why), _) => {
                log::info!("pid {pid}: Go runtime state not read: {why}");
                None
            }
            _ => None,
        };
        let mem = state.and_then(|_| match ProcessMemory::open(pid) {
            Ok(m) => Some(m),
            Err(e) => {
                log::info!("pid {pid}: cannot open its memory ({e}); runtime state not read");
                None
            }
        });
        Self {
            pid,
            state,
            mem,
            bias: bias.unwrap_or(0),
            names: binary.function_names.clone(),
            start_names: HashMap::new(),
            runtime: ProcessRuntime::new(&service_of(process), pid),
            read_failed: false,
            newproc: binary.goroutines.as_ref().ok().map(|t| t.newproc),
            probe_paused_at: None,
            last_created: None,
            rate: None,
        }
    }

    /// Whether the runtime's own counts are read (else only probe-based figures exist).
    pub fn reads_state(&self) -> bool {
        self.state.is_some() && self.mem.is_some()
    }

    /// Reads the runtime's state. Then call `record_creations` with the kernel's counts read
    /// after it, so that the creations not attributed to a function never count one too
    /// many.
    pub fn read_state(&mut self, m: &GoRuntimeMetrics) {
        if let (Some(state), Some(mem)) = (&self.state, &self.mem) {
            match go_runtime::read(mem, state, self.bias) {
                Ok(snapshot) => {
                    self.read_failed = false;
                    self.runtime
                        .record_snapshot(m, state.pauses.scheme, &snapshot);
                    self.note_created(snapshot.created);
                }
                Err(e) if !self.read_failed => {
                    self.read_failed = true;
                    log::debug!("pid {}: reading the Go runtime's state: {e}", self.pid);
                }
                Err(_) => {}
            }
        }
    }

    /// Creations counted by the kernel since attach (`starts`: runtime start address ->
    /// count), attributed to start functions.
    pub fn record_creations(&mut self, m: &GoRuntimeMetrics, starts: &HashMap<u64, u64>) {
        let counts: HashMap<u64, u64> = starts
            .iter()
            .map(|(pc, n)| (pc.wrapping_sub(self.bias), *n))
            .collect();
        let unnamed: Vec<u64> = self
            .runtime
            .unnamed(&counts, &self.start_names)
            .take(MAX_NAMES.saturating_sub(self.start_names.len()))
            .collect();
        if !unnamed.is_empty() {
            let names = self.name(&unnamed);
            for (pc, name) in unnamed.into_iter().zip(names) {
                self.start_names
                    .insert(pc, name.unwrap_or_else(|| "_UNKNOWN".to_owned()));
            }
        }
        self.runtime.record_creations(m, &counts, &self.start_names);
        if !self.reads_state() {
            self.note_created(counts.values().sum());
        }
    }

    fn note_created(&mut self, created: u64) {
        let now = Instant::now();
        match self.last_created {
            Some((t, _)) if now.duration_since(t) < RATE_MIN_INTERVAL => {}
            Some((t, n)) => {
                let secs = now.duration_since(t).as_secs_f64();
                self.rate = Some(created.saturating_sub(n) as f64 / secs);
                self.last_created = Some((now, created));
            }
            None => self.last_created = Some((now, created)),
        }
    }

    /// Goroutine creations per second, when two counts have been made.
    pub fn creation_rate(&self) -> Option<f64> {
        self.rate
    }

    /// Goroutine creations per second over the process's life so far, from one read of the
    /// runtime's state: what decides, without waiting for a second read, whether the
    /// creation probe goes in when the process starts being watched.
    pub fn lifetime_creation_rate(&self, age: Duration) -> Option<f64> {
        let (_, created) = self.last_created?;
        Some(created as f64 / age.as_secs_f64().max(RATE_MIN_INTERVAL.as_secs_f64()))
    }

    /// The creation probe's site (when goroutines are followed).
    pub fn newproc_point(&self) -> Option<ProbePoint> {
        self.newproc
    }

    /// Starts measuring the rate afresh (the probe's counts restart from a gap).
    pub fn reset_rate(&mut self) {
        self.last_created = None;
        self.rate = None;
    }

    /// A panic event from the kernel.
    pub fn panic_event(&mut self, m: &GoRuntimeMetrics, e: &GoPanic) {
        match e.what {
            PANIC_STARTED => {
                let depth = (e.depth as usize).min(e.pcs.len());
                // Return addresses: the call is the byte before.
                let pcs: Vec<u64> = e.pcs[..depth]
                    .iter()
                    .map(|pc| pc.wrapping_sub(self.bias).wrapping_sub(1))
                    .collect();
                let function = panicking_function(&self.name(&pcs));
                self.runtime.panic_started(e.goid, function);
            }
            PANIC_RECOVERED => self.runtime.panics_resolved(m, e.goid, true),
            PANIC_FATAL => self.runtime.panics_resolved(m, e.goid, false),
            _ => {}
        }
    }

    fn name(&self, pcs: &[u64]) -> Vec<Option<String>> {
        match &self.names {
            Some(n) => n.names(pcs),
            None => vec![None; pcs.len()],
        }
    }

    /// The process exited: unresolved panics count as not recovered; its series go.
    pub fn exited(&mut self, m: &GoRuntimeMetrics) {
        self.runtime.exited(m);
        self.runtime.remove_series(m);
        self.mem = None;
    }
}
