//! Command line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

use crate::probes::DataPathChoice;

#[derive(Clone, Debug, Parser)]
#[command(
    name = "obs-agent",
    version,
    about = "Zero-instrumentation observability: HTTP request rate, errors and latency of \
             unmodified services in any language (Go, Python, Node, nginx, ...), from eBPF \
             (socket tracepoints; uprobes for Go routes), as Prometheus metrics and \
             traces.",
    after_help = "Examples:\n  \
        sudo obs-agent                      # every Go process and every process with a TCP socket\n  \
        sudo obs-agent --pid 4242 --pid 4243\n  \
        sudo obs-agent --listen 0.0.0.0:9464 --log-level debug\n  \
        sudo obs-agent --otlp-endpoint http://127.0.0.1:4317 --otlp-protocol grpc\n  \
        obs-agent inspect ./my-service      # what the agent makes of a binary (no root)\n\n\
        Then: curl -s 127.0.0.1:9464/metrics\n      \
        curl -s '127.0.0.1:9464/traces?min_duration_ms=100'   # recent slow traces\n      \
        curl -s 127.0.0.1:9464/traces/TRACE_ID/tree           # one trace as a tree\n\n\
        OTLP export also follows the standard variables: OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, \
        _PROTOCOL, _HEADERS, _TIMEOUT, _COMPRESSION, and OTEL_TRACES_EXPORTER=none.",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Without a command, the agent runs (as root) and watches processes.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Watch this process, in any language (repeatable). Without any --pid, the agent watches
    /// every Go process on the machine and every other process with a TCP socket listening
    /// or connected, including ones started later. Example: --pid 4242
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Address to serve /metrics, /traces and /healthz on. Example: --listen 0.0.0.0:9464
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,

    /// Log verbosity: error, warn, info, debug or trace (RUST_LOG overrides). Example:
    /// --log-level debug
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: log::LevelFilter,

    /// Most distinct http_route values per service; later routes are exported as `_OTHER`.
    /// Example: --max-routes 500
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub max_routes: usize,

    /// Most goroutine creations per second a process may make while the agent's creation
    /// probe stays attached to it (each creation then costs ~2 µs more). Above it the probe
    /// is detached until the rate falls below half: goroutine totals stay exact (read from
    /// the runtime), creations by start function and goroutine ancestry for spans pause.
    /// 0: no limit. Example: --goroutine-probe-max-rate 50000
    #[arg(long, value_name = "PER_SECOND", default_value_t = 10_000)]
    pub goroutine_probe_max_rate: u64,

    /// How often to look for new and exited processes, in milliseconds. Example:
    /// --rescan-ms 500
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub rescan_ms: u64,

    /// Send sampled spans to this OTLP collector (a base URL: /v1/traces is added for
    /// http/protobuf). Overrides OTEL_EXPORTER_OTLP_TRACES_ENDPOINT and
    /// OTEL_EXPORTER_OTLP_ENDPOINT; without any, traces stay in memory only (/traces).
    /// Example: --otlp-endpoint http://127.0.0.1:4318
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,

    /// OTLP transport: grpc or http/protobuf (the default, as OpenTelemetry specifies).
    /// Overrides OTEL_EXPORTER_OTLP_TRACES_PROTOCOL and OTEL_EXPORTER_OTLP_PROTOCOL. Example:
    /// --otlp-protocol grpc
    #[arg(long, value_name = "PROTOCOL", value_parser = ["grpc", "http/protobuf"])]
    pub otlp_protocol: Option<String>,

    /// Most spans kept in memory for /traces; the least recently updated traces go first.
    /// Past this many spans a second, only a share of new traces is stored (whole traces,
    /// chosen by id; error spans always). Example: --max-stored-spans 50000
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_stored_spans: usize,

    /// Share of new traces kept (parent-based: a request continuing a trace follows the
    /// caller's sampled flag), from 0.0 to 1.0. Example: --trace-sample-ratio 0.1
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = sample_ratio)]
    pub trace_sample_ratio: f64,

    /// This node's name: the `k8s_node_name` label of processes in Kubernetes pods, and which
    /// pods to ask the API server for (the Helm chart sets NODE_NAME from the downward API).
    /// Example: --node-name node-1
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// The Kubernetes API server, to name pods' services and owners from their labels,
    /// annotations and controllers (list and watch of this node's pods): `auto` (in a pod
    /// with a service account token, the cluster's), `off`, or a URL (e.g. kubectl proxy's).
    /// Without it, pods are named from kubelet's directories and their names alone.
    /// Example: --kubernetes-api http://127.0.0.1:8001
    #[arg(long, value_name = "auto|off|URL", default_value = "auto", value_parser = kubernetes_api)]
    pub kubernetes_api: KubernetesApi,

    /// kubelet's pod log directories (`<namespace>_<pod>_<uid>/<container>/`), whose names
    /// name the pods of watched processes (no log is read). Example: --pod-logs /host/var/log/pods
    #[arg(long, value_name = "DIR", default_value = "/var/log/pods")]
    pub pod_logs: PathBuf,

    /// kubelet's container log links (`<pod>_<namespace>_<container>-<id>.log`), whose names
    /// name the containers of watched processes. Example: --container-logs /host/var/log/containers
    #[arg(long, value_name = "DIR", default_value = "/var/log/containers")]
    pub container_logs: PathBuf,

    /// Where socket reads and writes are seen: `sockets` (the kernel's socket tracepoints,
    /// Linux 6.3+: only socket I/O pays), `syscalls` (the syscall tracepoints: every syscall
    /// of every process on the machine pays a little), or `auto` (sockets where the kernel
    /// has them). `obs_agent_data_path_info` says which is in use.
    #[arg(
        long,
        value_name = "PATH",
        value_enum,
        default_value = "auto",
        env = "OBS_DATA_PATH"
    )]
    pub data_path: DataPathChoice,

    /// Benchmarking only: the data path's programs return at once (nothing is seen), to
    /// measure what its hooks alone cost (`cargo xtask bench --floors`).
    #[arg(long, hide = true)]
    pub bench_empty_programs: bool,
}

/// Where `--kubernetes-api` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KubernetesApi {
    /// The cluster's, when the agent runs in a pod with a service account token.
    Auto,
    Off,
    Url(String),
}

fn kubernetes_api(s: &str) -> Result<KubernetesApi, String> {
    match s {
        "auto" => Ok(KubernetesApi::Auto),
        "off" => Ok(KubernetesApi::Off),
        url if url.starts_with("http://") || url.starts_with("https://") => {
            Ok(KubernetesApi::Url(url.to_owned()))
        }
        other => Err(format!("{other:?} is not auto, off or an http(s):// URL")),
    }
}

fn sample_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&r) {
        Ok(r)
    } else {
        Err(format!("{r} is not between 0.0 and 1.0"))
    }
}

#[derive(Clone, Debug, Subcommand)]
pub enum Command {
    /// Show what the agent makes of a binary (needs no root, loads no eBPF).
    ///
    /// Prints the Go version and main module, whether it is a net/http server, the probe
    /// sites, the struct offsets the agent would read its memory with and where they come from
    /// (the binary's DWARF, or the offsets table and which release of it), and why the agent
    /// would not watch it, if so. Example: obs-agent inspect ./my-service --json
    Inspect(InspectArgs),
    /// List every probe the agent has: where it attaches, when, whether the agent can run
    /// without it and what is lost then (a Markdown table, as the README shows it).
    Probes,
}

#[derive(Clone, Debug, clap::Args)]
pub struct InspectArgs {
    /// The executable to inspect.
    #[arg(value_name = "BINARY")]
    pub binary: PathBuf,

    /// Print JSON (one object; `dwarf_layouts` holds the offsets read from DWARF only).
    #[arg(long)]
    pub json: bool,
}
