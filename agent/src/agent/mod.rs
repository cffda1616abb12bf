//! The agent as a whole, split by job:
//!
//! - `discovery`: which processes to watch (the `--pid` list, or node-wide scans), what their
//!   binaries are (analysed once per (device, inode)), starting to watch them and letting
//!   go of those that exit;
//! - `dispatch`: each event from the kernel to the process it belongs to: connections and
//!   their decoders, then spans and metrics;
//! - `routes`: Go ServeMux discovery and pattern reads; `go_probes`: following a Go
//!   process's goroutines, and pacing the goroutine-creation probe by its cost;
//! - `gauges`: gauges and kernel counters, brought up to date on a timer (a scrape only
//!   reads the registry);
//! - `kernel`: what all of them ask of the kernel side, as a trait (tests use a fake).
//!
//! State and its owners: the data path's state (every watched process and the tracer that
//! links spans across them) is one [`Pipeline`] behind one lock, held per event; the kernel
//! side behind another; discovery's caches behind a third, taken by discovery alone. When
//! both the pipeline and the kernel are needed, the pipeline is locked first
//! ([`Agent::lock_both`] is where that order lives); slow work (binary analysis, /proc
//! scans) runs under neither.

mod discovery;
mod dispatch;
mod gauges;
mod go_probes;
pub mod go_process;
mod kernel;
mod routes;
#[cfg(test)]
mod tests;
mod watched;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    time::Duration,
};

use self::{discovery::Discovery, gauges::CountersSeen, watched::WatchedMap};
pub use self::{discovery::WatchError, kernel::Kernel};
use crate::{
    metrics::Metrics,
    probes::{Detaching, Probes},
    spans::{trace::SpanSink, tracer::Tracer},
    target::{kubernetes::Kubernetes, Selection},
};

/// How often the Go runtime figures are refreshed, the creation probes paced and the gauges
/// brought up to date.
pub const PACE_INTERVAL: Duration = Duration::from_millis(100);

/// The state events change, locked per event.
struct Pipeline {
    watched: WatchedMap,
    /// Span identities and links across processes.
    tracer: Tracer,
}

/// The kernel side and the counters read from it so far.
struct KernelSide<K> {
    kernel: K,
    counters_seen: CountersSeen,
}

pub struct Agent<K: Kernel = Probes> {
    pipeline: Mutex<Pipeline>,
    kernel: Mutex<KernelSide<K>>,
    discovery: Mutex<Discovery>,
    pub metrics: Arc<Metrics>,
    /// Set once at start (`enable_tracing`); read on every event without a lock.
    span_sink: OnceLock<Arc<dyn SpanSink>>,
    host_name: String,
    /// Most goroutine creations per second with the creation probe attached (0: no limit).
    goroutine_probe_max_rate: u64,
    /// Set at shutdown: no process is looked for or paced any more.
    stopping: AtomicBool,
    /// Names the pods of processes in Kubernetes.
    kubernetes: Kubernetes,
    /// When the agent's own `process_*` figures were last read (by the pacing timer only).
    own_process_read_at: Mutex<Option<std::time::Instant>>,
}

impl<K: Kernel> Agent<K> {
    pub fn new(
        kernel: K,
        metrics: Arc<Metrics>,
        selection: Selection,
        goroutine_probe_max_rate: u64,
        kubernetes: Kubernetes,
    ) -> Self {
        Self {
            pipeline: Mutex::new(Pipeline {
                watched: WatchedMap::default(),
                tracer: Tracer::new(1.0),
            }),
            kernel: Mutex::new(KernelSide {
                kernel,
                counters_seen: CountersSeen::default(),
            }),
            discovery: Mutex::new(Discovery::new(selection)),
            metrics,
            span_sink: OnceLock::new(),
            host_name: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_owned())
                .unwrap_or_default(),
            goroutine_probe_max_rate,
            stopping: AtomicBool::new(false),
            kubernetes,
            own_process_read_at: Mutex::new(None),
        }
    }

    /// Makes spans of every request from now on, sampling new traces with `sample_ratio`
    /// (0.0–1.0; requests continuing a trace follow its decision), and sends them to `sink`.
    pub fn enable_tracing(&self, sink: Arc<dyn SpanSink>, sample_ratio: f64) {
        lock(&self.pipeline).tracer = Tracer::new(sample_ratio);
        if self.span_sink.set(sink).is_err() {
            log::warn!("tracing was already enabled; keeping the first span sink");
        }
    }

    /// Starts detaching every uprobe; no more are attached, no process is looked for (at
    /// shutdown; see `Probes::detach_all`).
    pub fn detach_all(&self) -> Detaching {
        self.stopping.store(true, Ordering::Relaxed);
        lock(&self.kernel).kernel.detach_all()
    }

    /// Processes watched now (exited ones not counted).
    pub fn watched_count(&self) -> usize {
        lock(&self.pipeline)
            .watched
            .values()
            .filter(|w| w.is_alive())
            .count()
    }

    /// Refreshes the Go runtime figures, paces the goroutine-creation probes by each
    /// process's creation rate, and brings the gauges and kernel counters up to date. Called
    /// every [`PACE_INTERVAL`]: a process that starts making goroutines fast pays for the
    /// probe only until the next call.
    pub fn pace(&self) {
        if self.stopping.load(Ordering::Relaxed) {
            return;
        }
        self.pace_go_probes();
        self.refresh_gauges();
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The pipeline and the kernel side, locked in the one order they are ever taken
    /// together.
    fn lock_both(&self) -> (MutexGuard<'_, Pipeline>, MutexGuard<'_, KernelSide<K>>) {
        let pipeline = lock(&self.pipeline);
        let kernel = lock(&self.kernel);
        (pipeline, kernel)
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
