//! Go runtime metrics (`go_*`) per watched process: goroutines, garbage collection, panics.
//!
//! Sources (see `symbols::go_runtime` and `target::go_runtime`):
//! - read from the runtime's own state at each refresh (every scrape, and every second):
//!   live goroutines, GC cycles, the GC pause histogram and its total, heap goal and live
//!   heap: exact, including what happened before the agent attached;
//! - goroutines created (since the process started, from goroutine ids) and exited (created
//!   minus live, system goroutines included in both) from the runtime's state too; the
//!   `go_newproc` uprobe attributes creations to start functions since attach, the rest
//!   (before attach) is [`UNATTRIBUTED`];
//! - panic events: counted when resolved (recovered, or fatal).

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge, MetricType, TypedMetric},
    registry::{Registry, Unit},
};

use super::{
    route_guard::{RouteGuard, OVERFLOW_ROUTE},
    K8sLabels, Service,
};
use crate::{symbols::go_runtime::PauseScheme, target::go_runtime::Snapshot};

/// The `function` of created goroutines whose start the probe did not see (created before
/// the agent attached).
pub const UNATTRIBUTED: &str = "_UNATTRIBUTED";
/// Distinct start functions per process, and panicking functions per service, exported by
/// name; later ones are `_OTHER`.
pub const MAX_FUNCTIONS: usize = 64;
/// Upper bounds of the pause histogram's buckets: powers of two nanoseconds, which are bucket
/// boundaries of the runtime's own histogram in every release, so each count is exact.
const PAUSE_BOUNDS_LOG2_NS: [u32; 11] = [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GoProcessLabels {
    pub service_name: String,
    pub pid: u32,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GoStartLabels {
    pub service_name: String,
    pub pid: u32,
    pub function: String,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GoPanicLabels {
    pub service_name: String,
    pub function: String,
    pub recovered: &'static str,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

/// A histogram whose buckets are set from a cumulative source (the runtime's own).
#[derive(Clone, Debug, Default)]
pub struct SetHistogram {
    inner: Arc<Mutex<HistogramValue>>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistogramValue {
    pub sum: f64,
    pub count: u64,
    /// (upper bound, count in this bucket), the last one `+Inf`.
    pub buckets: Vec<(f64, u64)>,
}

impl SetHistogram {
    pub fn set(&self, value: HistogramValue) {
        *self.inner.lock().unwrap_or_else(|e| e.into_inner()) = value;
    }

    pub fn get(&self) -> HistogramValue {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl TypedMetric for SetHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for SetHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let v = self.get();
        encoder.encode_histogram::<NoLabelSet>(v.sum, v.count, &v.buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// The runtime's pause histogram in Prometheus buckets, with `PauseTotalNs` as the sum.
pub fn pause_histogram(scheme: PauseScheme, s: &Snapshot) -> HistogramValue {
    let mut buckets: Vec<(f64, u64)> = PAUSE_BOUNDS_LOG2_NS
        .iter()
        .map(|&b| ((1u64 << b) as f64 / 1e9, 0))
        .chain(std::iter::once((f64::INFINITY, 0)))
        .collect();
    let mut place = |lower_ns: u64, upper_ns: Option<u64>, n: u64| {
        // The first of our buckets that holds the whole runtime bucket.
        let i = PAUSE_BOUNDS_LOG2_NS
            .iter()
            .position(|&b| upper_ns.is_some_and(|u| u <= 1 << b) && lower_ns < 1 << b)
            .unwrap_or(PAUSE_BOUNDS_LOG2_NS.len());
        buckets[i].1 += n;
    };
    place(0, Some(0), s.pause_underflow);
    for (i, &n) in s.pause_counts.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let upper = (i + 1 < scheme.buckets()).then(|| scheme.lower_bound_ns(i + 1));
        place(scheme.lower_bound_ns(i), upper, n);
    }
    place(u64::MAX, None, s.pause_overflow);
    let count = buckets.iter().map(|b| b.1).sum();
    HistogramValue {
        sum: s.pause_total_ns as f64 / 1e9,
        count,
        buckets,
    }
}

#[derive(Clone)]
pub struct GoRuntimeMetrics {
    pub goroutines: Family<GoProcessLabels, Gauge>,
    pub created: Family<GoStartLabels, Counter>,
    pub exited: Family<GoProcessLabels, Counter>,
    pub gc_cycles: Family<GoProcessLabels, Counter>,
    pub gc_pauses: Family<GoProcessLabels, SetHistogram>,
    pub heap_goal: Family<GoProcessLabels, Gauge>,
    pub heap_live: Family<GoProcessLabels, Gauge>,
    pub gogc: Family<GoProcessLabels, Gauge>,
    pub memory_limit: Family<GoProcessLabels, Gauge>,
    pub panics: Family<GoPanicLabels, Counter>,
    panic_functions: Arc<Mutex<RouteGuard>>,
}

impl GoRuntimeMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            goroutines: Family::default(),
            created: Family::default(),
            exited: Family::default(),
            gc_cycles: Family::default(),
            gc_pauses: Family::default(),
            heap_goal: Family::default(),
            heap_live: Family::default(),
            gogc: Family::default(),
            memory_limit: Family::default(),
            panics: Family::default(),
            panic_functions: Arc::new(Mutex::new(RouteGuard::new(MAX_FUNCTIONS))),
        };
        r.register(
            "go_goroutines",
            "Live goroutines, as runtime.NumGoroutine counts them (system goroutines excluded), read from the runtime",
            m.goroutines.clone(),
        );
        r.register(
            "go_goroutines_created",
            "Goroutines created since the process started (runtime system goroutines included), by the function they started with; those created before the agent attached under function=\"_UNATTRIBUTED\"",
            m.created.clone(),
        );
        r.register(
            "go_goroutines_exited",
            "Goroutines that exited since the process started (created minus live, system goroutines included)",
            m.exited.clone(),
        );
        r.register(
            "go_gc_cycles",
            "Completed GC cycles (runtime memstats.numgc), since the process started",
            m.gc_cycles.clone(),
        );
        r.register_with_unit(
            "go_gc_pause",
            "Stop-the-world GC pauses, from the runtime's own histogram (/gc/pauses:seconds); the sum is the runtime's PauseTotalNs",
            Unit::Seconds,
            m.gc_pauses.clone(),
        );
        r.register_with_unit(
            "go_gc_heap_goal",
            "Heap size the GOGC setting aims for at the next GC cycle (gcController.gcPercentHeapGoal)",
            Unit::Bytes,
            m.heap_goal.clone(),
        );
        r.register_with_unit(
            "go_gc_heap_live",
            "Heap bytes marked live by the last GC cycle (gcController.heapMarked)",
            Unit::Bytes,
            m.heap_live.clone(),
        );
        r.register(
            "go_gc_gogc_percent",
            "The GOGC setting (environment or runtime/debug.SetGCPercent), -1 when off (gcController.gcPercent)",
            m.gogc.clone(),
        );
        r.register_with_unit(
            "go_gc_gomemlimit",
            "The GOMEMLIMIT setting (environment or runtime/debug.SetMemoryLimit), 9223372036854775807 when unset (gcController.memoryLimit)",
            Unit::Bytes,
            m.memory_limit.clone(),
        );
        r.register(
            "go_panics",
            "Panics, by the function that panicked and whether they were recovered (recovered=\"false\": the process died of it)",
            m.panics.clone(),
        );
        m
    }

    fn panic_function(&self, service: &str, function: &str) -> String {
        let mut guard = self
            .panic_functions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        guard.admit(service, function).to_owned()
    }
}

/// One process's runtime bookkeeping: what was last exported, names of start functions,
/// panics not yet resolved.
#[derive(Debug, Default)]
pub struct ProcessRuntime {
    pub labels: Option<GoProcessLabels>,
    /// Goroutines created since the process started, from the last read of its state.
    created_total: Option<u64>,
    /// Creations the probe saw, per start function label.
    attributed: HashMap<String, u64>,
    /// Exported counts per function label (`UNATTRIBUTED` included).
    exported_created: HashMap<String, u64>,
    exported_exited: u64,
    exported_cycles: u64,
    functions: HashSet<String>,
    /// Panics started and not resolved: goroutine -> panicking functions.
    pending_panics: HashMap<u64, Vec<String>>,
}

impl ProcessRuntime {
    pub fn new(service: &Service, pid: u32) -> Self {
        Self {
            labels: Some(GoProcessLabels {
                service_name: service.name.clone(),
                pid,
                k8s: service.k8s.clone(),
            }),
            ..Self::default()
        }
    }

    fn labels(&self) -> GoProcessLabels {
        self.labels.clone().expect("set at creation")
    }

    /// Updates the gauges and counters from a snapshot of the runtime's state. Counters only
    /// move forward (a read racing with the runtime may be a little behind; the next one
    /// catches up).
    pub fn record_snapshot(&mut self, m: &GoRuntimeMetrics, scheme: PauseScheme, s: &Snapshot) {
        let labels = self.labels();
        m.goroutines.get_or_create(&labels).set(s.goroutines as i64);
        advance(
            &m.gc_cycles,
            &labels,
            &mut self.exported_cycles,
            s.gc_cycles,
        );
        m.gc_pauses
            .get_or_create(&labels)
            .set(pause_histogram(scheme, s));
        m.heap_goal.get_or_create(&labels).set(s.heap_goal as i64);
        m.heap_live.get_or_create(&labels).set(s.heap_live as i64);
        m.gogc.get_or_create(&labels).set(i64::from(s.gc_percent));
        m.memory_limit.get_or_create(&labels).set(s.memory_limit);
        let live_all = s.goroutines + s.system_goroutines;
        let exited = s.created.saturating_sub(live_all);
        advance(&m.exited, &labels, &mut self.exported_exited, exited);
        // The unattributed rest is exported with the probe's counts read after this.
        self.created_total = Some(s.created);
    }

    /// Start addresses (link-time) whose names are not known yet, among `counts`.
    pub fn unnamed<'a>(
        &'a self,
        counts: &'a HashMap<u64, u64>,
        names: &'a HashMap<u64, String>,
    ) -> impl Iterator<Item = u64> + 'a {
        counts.keys().copied().filter(|pc| !names.contains_key(pc))
    }

    /// Updates creation counters from the kernel's per-start-address totals since attach
    /// (link-time addresses), named by `names`.
    pub fn record_creations(
        &mut self,
        m: &GoRuntimeMetrics,
        counts: &HashMap<u64, u64>,
        names: &HashMap<u64, String>,
    ) {
        let mut by_function: HashMap<String, u64> = HashMap::new();
        for (pc, &n) in counts {
            let name = names.get(pc).map_or("_UNKNOWN", String::as_str);
            let label = self.function_label(name);
            *by_function.entry(label).or_default() += n;
        }
        for (function, n) in by_function {
            let before = self.exported_created.get(&function).copied().unwrap_or(0);
            if n > before {
                self.add_created(m, &function, n - before);
                self.exported_created.insert(function.clone(), n);
            }
            self.attributed.insert(function, n);
        }
        self.export_unattributed(m);
    }

    /// The runtime's total minus what the probe attributed.
    fn export_unattributed(&mut self, m: &GoRuntimeMetrics) {
        let Some(total) = self.created_total else {
            return;
        };
        let rest = total.saturating_sub(self.attributed.values().sum());
        let before = self
            .exported_created
            .get(UNATTRIBUTED)
            .copied()
            .unwrap_or(0);
        if rest > before || !self.exported_created.contains_key(UNATTRIBUTED) {
            self.add_created(m, UNATTRIBUTED, rest.saturating_sub(before));
            self.exported_created
                .insert(UNATTRIBUTED.to_owned(), rest.max(before));
        }
    }

    fn add_created(&mut self, m: &GoRuntimeMetrics, function: &str, n: u64) {
        let labels = self.labels();
        m.created
            .get_or_create(&GoStartLabels {
                service_name: labels.service_name,
                pid: labels.pid,
                function: function.to_owned(),
                k8s: labels.k8s,
            })
            .inc_by(n);
    }

    fn function_label(&mut self, name: &str) -> String {
        if self.functions.contains(name) {
            return name.to_owned();
        }
        if self.functions.len() >= MAX_FUNCTIONS {
            return OVERFLOW_ROUTE.to_owned();
        }
        self.functions.insert(name.to_owned());
        name.to_owned()
    }

    /// A panic started in goroutine `goid`, in `function`.
    pub fn panic_started(&mut self, goid: u64, function: String) {
        let pending = self.pending_panics.entry(goid).or_default();
        // Bounded: a goroutine's nested panics are few; keep the latest ones.
        if pending.len() >= 16 {
            pending.remove(0);
        }
        pending.push(function);
    }

    /// The panics of goroutine `goid` were recovered (`true`) or kill the process.
    pub fn panics_resolved(&mut self, m: &GoRuntimeMetrics, goid: u64, recovered: bool) {
        let Some(functions) = self.pending_panics.remove(&goid) else {
            return;
        };
        for function in functions {
            self.count_panic(m, &function, recovered);
        }
    }

    /// The process exited: panics still pending did not recover.
    pub fn exited(&mut self, m: &GoRuntimeMetrics) {
        for (_, functions) in std::mem::take(&mut self.pending_panics) {
            for function in functions {
                self.count_panic(m, &function, false);
            }
        }
    }

    fn count_panic(&self, m: &GoRuntimeMetrics, function: &str, recovered: bool) {
        let labels = self.labels();
        let function = m.panic_function(&labels.service_name, function);
        m.panics
            .get_or_create(&GoPanicLabels {
                service_name: labels.service_name,
                function,
                recovered: if recovered { "true" } else { "false" },
                k8s: labels.k8s,
            })
            .inc();
    }

    /// Removes the process's series (it exited); panics stay, counted per service.
    pub fn remove_series(&self, m: &GoRuntimeMetrics) {
        let labels = self.labels();
        m.goroutines.remove(&labels);
        m.exited.remove(&labels);
        m.gc_cycles.remove(&labels);
        m.gc_pauses.remove(&labels);
        m.heap_goal.remove(&labels);
        m.heap_live.remove(&labels);
        m.gogc.remove(&labels);
        m.memory_limit.remove(&labels);
        for function in self.exported_created.keys() {
            m.created.remove(&GoStartLabels {
                service_name: labels.service_name.clone(),
                pid: labels.pid,
                function: function.to_owned(),
                k8s: labels.k8s.clone(),
            });
        }
    }
}

/// Moves a counter forward to `now` (never back).
fn advance(
    family: &Family<GoProcessLabels, Counter>,
    labels: &GoProcessLabels,
    exported: &mut u64,
    now: u64,
) {
    let counter = family.get_or_create(labels);
    if now > *exported {
        counter.inc_by(now - *exported);
        *exported = now;
    }
}

/// The function a panic is attributed to: the innermost of the named frames that is not the
/// runtime's (runtime helpers like `panicIndex` or `sigpanic` stand between a faulting
/// function and `gopanic`), else the innermost.
pub fn panicking_function(frames: &[Option<String>]) -> String {
    frames
        .iter()
        .flatten()
        .find(|f| !f.starts_with("runtime."))
        .or_else(|| frames.iter().flatten().next())
        .cloned()
        .unwrap_or_else(|| "_UNKNOWN".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_histogram_is_exact_at_power_of_two_bounds() {
        let scheme = PauseScheme::Go120;
        let mut counts = vec![0; scheme.buckets()];
        // Bucket 0 sub 3: [192, 256) ns; bucket 2 sub 0: [512, 640) ns; the bucket starting
        // at 2^20 ns (~1 ms): bucket 13, sub 0.
        counts[3] = 2;
        counts[8] = 1;
        counts[13 * 4] = 5;
        let s = Snapshot {
            pause_counts: counts,
            pause_total_ns: 3_000_000,
            pause_overflow: 1,
            ..Snapshot::default()
        };
        let h = pause_histogram(scheme, &s);
        assert_eq!(h.count, 9);
        assert_eq!(h.sum, 0.003);
        // 2^10 ns holds the first three; 2^20 ns exactly bounds the next bucket from below,
        // so those five fall in (2^20, 2^22].
        assert_eq!(h.buckets[0], ((1u64 << 10) as f64 / 1e9, 3));
        assert_eq!(h.buckets[5].1, 0);
        assert_eq!(h.buckets[6], ((1u64 << 22) as f64 / 1e9, 5));
        assert_eq!(h.buckets.last().unwrap(), &(f64::INFINITY, 1));
    }

    #[test]
    fn panics_are_counted_when_resolved() {
        let m = GoRuntimeMetrics::register(&mut Registry::default());
        let mut p = ProcessRuntime::new(&Service::new("svc", K8sLabels::default()), 7);
        p.panic_started(3, "main.a".into());
        p.panic_started(4, "main.b".into());
        p.panics_resolved(&m, 3, true);
        p.panics_resolved(&m, 99, true);
        let get = |f: &str, r| {
            m.panics
                .get_or_create(&GoPanicLabels {
                    service_name: "svc".into(),
                    function: f.into(),
                    recovered: r,
                    k8s: K8sLabels::default(),
                })
                .get()
        };
        assert_eq!(get("main.a", "true"), 1);
        assert_eq!(get("main.b", "false"), 0);
        p.exited(&m);
        assert_eq!(get("main.b", "false"), 1);
    }

    #[test]
    fn panicking_function_skips_runtime_helpers() {
        let f = |names: &[&str]| {
            panicking_function(
                &names
                    .iter()
                    .map(|n| Some(n.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(f(&["main.handler", "net/http.x"]), "main.handler");
        assert_eq!(
            f(&["runtime.goPanicIndex", "main.index", "main.main"]),
            "main.index"
        );
        assert_eq!(
            f(&["runtime.panicmem", "runtime.sigpanic"]),
            "runtime.panicmem"
        );
        assert_eq!(panicking_function(&[]), "_UNKNOWN");
    }
}
