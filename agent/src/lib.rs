//! obs-agent: watches unmodified processes through eBPF and exports what their services do as
//! Prometheus metrics.
//!
//! Data flows one way: `probes` (kernel) → `events` (ring buffer) → `connections` (sockets,
//! with one `protocols` decoder each) → `spans` (identities and links) → `metrics` and traces
//! → `export` (which only reads what they hold). `target` and `symbols` decide what `probes`
//! attaches where; `agent` ties the stages together; `inspect` shows what `symbols` makes of
//! a binary.

pub mod agent;
pub mod cli;
pub mod connections;
pub mod events;
pub mod export;
pub mod https;
pub mod inspect;
pub mod metrics;
pub mod probes;
pub mod protocols;
pub mod spans;
pub mod symbols;
pub mod target;
