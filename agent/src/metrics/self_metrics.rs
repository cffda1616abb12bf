//! The agent's own metrics (`obs_agent_*`): what it watches, what it received, and every
//! thing it dropped or failed to do, by reason. Nothing is lost silently.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{exponential_buckets, Histogram},
    },
    registry::Registry,
};

use super::{
    super::protocols::{recognise::Unrecognised, Role},
    reasons::{AttachFailure, DecodeFailure, K8sIdentityFailure, KernelError, Lost, SpanDrop},
    K8sLabels,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DataPathLabels {
    /// `sockets` or `syscalls`.
    pub path: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NonHttpLabels {
    pub service_name: String,
    /// `server` (accepted) or `client` (connected; connected UDP and Unix sockets too, e.g.
    /// DNS lookups).
    pub role: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    pub pid: u32,
    pub service_name: String,
    pub executable: String,
    pub go_version: String,
    /// The main module's path and version from the build info ("" when built outside
    /// module mode).
    pub module: String,
    pub module_version: String,
    /// The main package's import path (`github.com/x/y/cmd/server`), in any build mode.
    pub package: String,
    #[prometheus(flatten)]
    pub k8s: K8sLabels,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLabels {
    pub pid: u32,
    pub service_name: String,
    pub module: String,
    pub version: String,
}

/// At most this many dependency series per process.
pub const MAX_MODULE_SERIES: usize = 256;

#[derive(Clone)]
pub struct SelfMetrics {
    pub processes_watched: Gauge,
    /// 1 for the data path in use (`sockets`, `syscalls`).
    pub data_path_info: Family<DataPathLabels, Gauge>,
    pub probes_attached: Gauge,
    pub probes_detaching: Gauge,
    pub events_received: Counter,
    /// Events the kernel could not deliver (ring buffer full), and events user space could
    /// not use (unknown process, ...), by reason.
    pub events_lost: Family<ReasonLabels, Counter>,
    pub decode_errors: Family<ReasonLabels, Counter>,
    /// Problems the kernel programs met (reads of target memory that failed, ...).
    pub kernel_errors: Family<ReasonLabels, Counter>,
    pub attach_failures: Family<ReasonLabels, Counter>,
    pub routes_overflowed: Counter,
    pub target_info: Family<TargetLabels, Gauge>,
    pub target_module_info: Family<ModuleLabels, Gauge>,
    /// Time to analyse one binary (ELF, pclntab, DWARF, disassembly): one observation per
    /// distinct (device, inode), however many processes run it.
    pub binary_analysis: Histogram,
    /// Sampled spans finished (handed to the built-in store and, if configured, OTLP).
    pub spans: Counter,
    /// Sampled spans sent to the OTLP collector (acknowledged by it).
    pub spans_exported: Counter,
    /// Sampled spans never sent, by reason: `queue_full` (the export queue was at its bound,
    /// the collector being slow or down), `export_failed` (every attempt failed),
    /// `exporter_stopped` (the export task had ended).
    pub spans_dropped: Family<ReasonLabels, Counter>,
    /// Spans waiting in the export queue now.
    pub spans_queued: Gauge,
    /// Connections of watched processes that do not speak HTTP/1.x (seen from their first
    /// bytes), by service, end (`server`, `client`) and what they look like: `tls`, `http2`,
    /// `other`.
    pub non_http_connections: Family<NonHttpLabels, Counter>,
    /// Processes in a pod that got no Kubernetes labels, by reason.
    pub k8s_identity_failures: Family<ReasonLabels, Counter>,
    /// Failed requests to the Kubernetes API server (the pod list and watch).
    pub k8s_api_errors: Counter,
}

impl Default for SelfMetrics {
    fn default() -> Self {
        Self {
            processes_watched: Gauge::default(),
            data_path_info: Family::default(),
            probes_attached: Gauge::default(),
            probes_detaching: Gauge::default(),
            events_received: Counter::default(),
            events_lost: Family::default(),
            decode_errors: Family::default(),
            kernel_errors: Family::default(),
            attach_failures: Family::default(),
            routes_overflowed: Counter::default(),
            target_info: Family::default(),
            target_module_info: Family::default(),
            // 1 ms … ~4 s.
            binary_analysis: Histogram::new(exponential_buckets(0.001, 2.0, 13)),
            spans: Counter::default(),
            spans_exported: Counter::default(),
            spans_dropped: Family::default(),
            spans_queued: Gauge::default(),
            non_http_connections: Family::default(),
            k8s_identity_failures: Family::default(),
            k8s_api_errors: Counter::default(),
        }
    }
}

impl SelfMetrics {
    pub fn register(r: &mut Registry) -> Self {
        let m = Self::default();
        r.register(
            "processes_watched",
            "Processes the agent watches now",
            m.processes_watched.clone(),
        );
        r.register(
            "data_path_info",
            "1 for the data path the agent sees socket reads and writes with: sockets (the \
             socket tracepoints, Linux 6.3+) or syscalls (the syscall tracepoints)",
            m.data_path_info.clone(),
        );
        r.register(
            "probes_attached",
            "Probes attached now",
            m.probes_attached.clone(),
        );
        r.register(
            "probes_detaching",
            "Uprobes detached by the agent that the kernel is still detaching (one at a time, \
             ~0.1 s each on a busy machine)",
            m.probes_detaching.clone(),
        );
        r.register(
            "events_received",
            "Events read from the kernel",
            m.events_received.clone(),
        );
        r.register(
            "events_lost",
            "Events lost, by reason (kernel: ring_full; user space: unknown_process)",
            m.events_lost.clone(),
        );
        r.register(
            "decode_errors",
            "Events that could not be decoded, by reason",
            m.decode_errors.clone(),
        );
        r.register(
            "kernel_errors",
            "Problems met by the kernel programs, by reason",
            m.kernel_errors.clone(),
        );
        r.register(
            "attach_failures",
            "Processes the agent could not attach to, by reason",
            m.attach_failures.clone(),
        );
        r.register(
            "routes_overflowed",
            "Requests whose route was grouped under _OTHER by the per-service route cap",
            m.routes_overflowed.clone(),
        );
        r.register(
            "target_info",
            "One series per watched process: its service, Go version and main module",
            m.target_info.clone(),
        );
        r.register(
            "binary_analysis_seconds",
            "Time to analyse a binary, once per distinct executable file",
            m.binary_analysis.clone(),
        );
        r.register(
            "target_module_info",
            "One series per module linked into a watched process, with its version (from the \
             binary's build info; at most 256 per process)",
            m.target_module_info.clone(),
        );
        r.register(
            "spans",
            "Sampled spans finished, server and client",
            m.spans.clone(),
        );
        r.register(
            "spans_exported",
            "Spans the OTLP collector accepted",
            m.spans_exported.clone(),
        );
        r.register(
            "spans_dropped",
            "Sampled spans not exported, by reason (queue_full, export_failed, exporter_stopped)",
            m.spans_dropped.clone(),
        );
        r.register(
            "spans_queued",
            "Spans waiting in the OTLP export queue",
            m.spans_queued.clone(),
        );
        r.register(
            "non_http_connections",
            "Connections of watched processes that do not speak HTTP/1.x, by service, by which \
             end the process is (server, client) and by what they look like (tls, http2, \
             other); they make no request series",
            m.non_http_connections.clone(),
        );
        r.register(
            "k8s_identity_failures",
            "Processes in a Kubernetes pod that got no Kubernetes labels, by reason \
             (unrecognised_cgroup, unknown_pod)",
            m.k8s_identity_failures.clone(),
        );
        r.register(
            "k8s_api_errors",
            "Failed requests to the Kubernetes API server (this node's pod list and watch)",
            m.k8s_api_errors.clone(),
        );
        // Every reason known up front has its series from the start, at 0: a rate or an
        // alert on it has data before the first loss.
        for r in Lost::ALL {
            m.lost(*r);
        }
        for (family, reasons) in [
            (
                &m.decode_errors,
                DecodeFailure::ALL
                    .iter()
                    .map(|r| r.as_str())
                    .collect::<Vec<_>>(),
            ),
            (
                &m.kernel_errors,
                KernelError::ALL.iter().map(|r| r.as_str()).collect(),
            ),
            (
                &m.attach_failures,
                AttachFailure::ALL.iter().map(|r| r.as_str()).collect(),
            ),
            (
                &m.spans_dropped,
                SpanDrop::ALL.iter().map(|r| r.as_str()).collect(),
            ),
            (
                &m.k8s_identity_failures,
                K8sIdentityFailure::ALL.iter().map(|r| r.as_str()).collect(),
            ),
        ] {
            for reason in reasons {
                let _ = family.get_or_create(&labels::reason(reason));
            }
        }
        m
    }

    pub fn k8s_identity_failure(&self, reason: K8sIdentityFailure) {
        self.k8s_identity_failures
            .get_or_create(&labels::reason(reason.as_str()))
            .inc();
    }

    /// A watched service's `non_http_connections` series, every role and reason at 0.
    pub fn service_watched(&self, service_name: &str) {
        for role in [Role::Server, Role::Client] {
            for reason in Unrecognised::ALL {
                let _ = self.non_http_connections.get_or_create(&NonHttpLabels {
                    service_name: service_name.to_owned(),
                    role: role.as_str().to_owned(),
                    reason: reason.as_str().to_owned(),
                });
            }
        }
    }

    pub fn non_http_connection(&self, service_name: &str, role: &str, reason: &str) {
        self.non_http_connections
            .get_or_create(&NonHttpLabels {
                service_name: service_name.to_owned(),
                role: role.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    pub fn span_dropped(&self, reason: SpanDrop, count: u64) {
        self.spans_dropped
            .get_or_create(&labels::reason(reason.as_str()))
            .inc_by(count);
    }

    pub fn lost(&self, reason: Lost) -> Counter {
        self.events_lost
            .get_or_create(&labels::reason(reason.as_str()))
            .clone()
    }

    pub fn decode_error(&self, reason: DecodeFailure) {
        self.decode_errors
            .get_or_create(&labels::reason(reason.as_str()))
            .inc();
    }

    pub fn kernel_error(&self, reason: KernelError, n: u64) {
        self.kernel_errors
            .get_or_create(&labels::reason(reason.as_str()))
            .inc_by(n);
    }

    pub fn attach_failure(&self, reason: AttachFailure) {
        self.attach_failures
            .get_or_create(&labels::reason(reason.as_str()))
            .inc();
    }
}

/// Label sets built from agent types.
pub mod labels {
    use super::{ModuleLabels, ReasonLabels, TargetLabels, MAX_MODULE_SERIES};
    use crate::metrics::K8sLabels;
    use crate::{symbols::buildinfo::BuildInfo, target::Process};

    pub fn target_labels(p: &Process, build: &BuildInfo) -> TargetLabels {
        TargetLabels {
            pid: p.pid,
            service_name: p.service_name.clone(),
            executable: p.exe_name(),
            go_version: build.go_version.clone(),
            module: build.main_module.clone().unwrap_or_default(),
            module_version: build.main_version.clone().unwrap_or_default(),
            package: build.main_package.clone().unwrap_or_default(),
            k8s: K8sLabels(p.k8s.clone()),
        }
    }

    pub fn module_labels(p: &Process, build: &BuildInfo) -> Vec<ModuleLabels> {
        build
            .deps
            .iter()
            .take(MAX_MODULE_SERIES)
            .map(|m| ModuleLabels {
                pid: p.pid,
                service_name: p.service_name.clone(),
                module: m.path.clone(),
                version: m.version.clone(),
            })
            .collect()
    }

    pub fn reason(r: &str) -> ReasonLabels {
        ReasonLabels {
            reason: r.to_owned(),
        }
    }
}
