//! Command line.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Parser, Subcommand};

#[derive(Clone, Debug, Parser)]
#[command(
    name = "obs-agent",
    version,
    about = "Zero-instrumentation observability: HTTP request rate, errors and latency of \
             unmodified Go services, from eBPF (socket-syscall tracepoints and uprobes), as \
             Prometheus metrics.",
    after_help = "Examples:\n  \
        sudo obs-agent                      # every Go process on this machine\n  \
        sudo obs-agent --pid 4242 --pid 4243\n  \
        sudo obs-agent --listen 0.0.0.0:9464 --log-level debug\n  \
        obs-agent inspect ./my-service      # what the agent makes of a binary (no root)\n\n\
        Then: curl -s 127.0.0.1:9464/metrics",
    args_conflicts_with_subcommands = true
)]
pub struct Args {
    /// Without a command, the agent runs (as root) and watches processes.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Watch this process (repeatable). Without any --pid, the agent watches every Go process
    /// on the machine, including ones started later. Example: --pid 4242
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Address to serve /metrics and /healthz on. Example: --listen 0.0.0.0:9464
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

    /// How often to look for new and exited processes, in milliseconds. Example:
    /// --rescan-ms 500
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub rescan_ms: u64,
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
