//! obs-agent: watches unmodified processes through eBPF and exports what their services do as
//! Prometheus metrics.
//!
//! Data flows one way: `probes` (kernel) → `events` (ring buffer) → `spans` (requests) →
//! `metrics` → `export`. `target` and `symbols` decide what `probes` attaches where;
//! `inspect` shows what `symbols` makes of a binary.

pub mod cli;
pub mod connections;
pub mod events;
pub mod export;
pub mod go_process;
pub mod inspect;
pub mod metrics;
pub mod probes;
pub mod protocols;
pub mod runtime;
pub mod spans;
pub mod symbols;
pub mod target;
