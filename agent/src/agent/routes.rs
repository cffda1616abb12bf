//! A Go 1.22+ process's routes: which ServeMux instances it serves with (reported by the
//! mux-discovery uprobe, attached only while discovery goes on), and their patterns, read
//! from its memory.

use std::time::{Duration, Instant};

use crate::{
    probes::table::Probe,
    protocols::{
        go_mux::{Pattern, PatternSet},
        Exchange,
    },
    symbols::go_binary::{MuxLayout, ProbePoint},
    target::{self, memory::ProcessMemory},
};

use super::{kernel::Kernel, watched::Watched};

/// The mux-discovery uprobe is detached once no new mux has shown up for this long after the
/// last one: it costs a uprobe hit per request while attached.
const DISCOVERY_QUIET: Duration = Duration::from_secs(1);
/// And re-attached this long after, to find muxes a process starts using later.
const REDISCOVERY: Duration = Duration::from_secs(300);
/// Registered patterns are re-read this often (routes added after start).
const PATTERN_REFRESH: Duration = Duration::from_secs(10);

/// Discovering a process's ServeMux instances and reading their patterns.
pub struct Routes {
    /// Where the discovery probe goes and how a mux is laid out (Go 1.22+ with ServeMux).
    pub discovery: Option<(ProbePoint, MuxLayout)>,
    muxes: Vec<u64>,
    patterns: PatternSet,
    last_new_mux: Option<Instant>,
    detached_at: Option<Instant>,
    read_at: Option<Instant>,
}

impl Routes {
    pub fn new(discovery: Option<(ProbePoint, MuxLayout)>) -> Self {
        Self {
            discovery,
            muxes: Vec::new(),
            patterns: PatternSet::default(),
            last_new_mux: None,
            detached_at: None,
            read_at: None,
        }
    }

    /// The pattern the request matched, if the process's router is known.
    pub fn pattern(&self, exchange: &Exchange) -> Option<&str> {
        self.patterns.route_for(exchange.method, &exchange.path)
    }

    /// The discovery probe reported a mux of process `pid`: new ones have their patterns
    /// read at once.
    pub fn mux_seen(&mut self, pid: u32, mux: u64) {
        if !self.muxes.contains(&mux) {
            self.muxes.push(mux);
            self.last_new_mux = Some(Instant::now());
            self.read_patterns(pid);
        }
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

/// Detaches the mux-discovery uprobe once discovery has gone quiet, re-attaches it after a
/// while, and re-reads patterns now and then.
pub fn pace_discovery(pid: u32, w: &mut Watched, kernel: &mut impl Kernel, now: Instant) {
    let routes = &mut w.routes;
    let Some((point, _)) = routes.discovery else {
        return;
    };
    let quiet = routes
        .last_new_mux
        .is_some_and(|t| now.duration_since(t) >= DISCOVERY_QUIET);
    let attached = kernel.is_attached(pid, Probe::GoMuxServeHttp);
    if attached && quiet {
        kernel.detach(pid, Probe::GoMuxServeHttp);
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
        match kernel.attach(&w.process, Probe::GoMuxServeHttp, point) {
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
