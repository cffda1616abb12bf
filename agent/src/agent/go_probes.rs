//! A Go process's goroutine probes: attaching them when it starts being watched, refreshing
//! its runtime figures, and pacing the goroutine-creation probe by its cost (each creation
//! is a uprobe hit, ~2 µs here): detached above `--goroutine-probe-max-rate` creations a
//! second, re-attached once the rate, read from the runtime's state, falls below half.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use obs_common::{
    go_runtime::GoStartKey,
    go_trace::{CREATION_WINDOW_NS, FOLLOW_PARENTS},
};

use crate::{
    metrics::go_runtime::GoRuntimeMetrics,
    probes::{error_chain, table::Probe, ProbeError},
    symbols::{go_binary::GoroutineTracking, go_runtime::PanicProbes},
    target::Process,
};

use super::{go_process::GoProcess, kernel::Kernel, lock, watched::Watched, Agent};

/// A goroutine-creation probe detached for its cost, in a process whose runtime state cannot
/// be read (so the rate is unknown while detached), is tried again after this long.
const CREATION_PROBE_RETRY: Duration = Duration::from_secs(60);

/// Follows the goroutines and panics of one process: its offsets for the kernel (with
/// `burst_limit`, see `GoOffsets`), then the goroutine-creation uprobe (unless
/// `creation_probe` is false: too costly for now), the panic uprobes the binary has and,
/// when `spans` are made, the transport uprobe. The creation and transport probes are
/// required (all or nothing); a panic probe that cannot be attached is logged and left out.
pub fn follow_goroutines(
    kernel: &mut impl Kernel,
    process: &Process,
    tracking: &GoroutineTracking,
    panics: &PanicProbes,
    spans: bool,
    creation_probe: bool,
    burst_limit: u64,
) -> Result<(), ProbeError> {
    let pid = process.pid;
    let mut offsets = tracking.offsets;
    // A program without net/http's client makes no call to link: its goroutines need not
    // be followed (no parentage, no goroutine read per socket event).
    let follow_parents = spans && tracking.round_trip.is_some();
    if follow_parents {
        offsets.flags |= FOLLOW_PARENTS;
    }
    offsets.burst_limit = burst_limit;
    kernel.set_go_offsets(pid, Some(offsets))?;
    if creation_probe {
        if let Err(e) = kernel.attach(process, Probe::GoNewproc, tracking.newproc) {
            let _ = kernel.set_go_offsets(pid, None);
            return Err(e);
        }
    }
    if let Some(point) = tracking.round_trip.filter(|_| follow_parents) {
        if let Err(e) = kernel.attach(process, Probe::GoRoundTrip, point) {
            kernel.detach(pid, Probe::GoNewproc);
            let _ = kernel.set_go_offsets(pid, None);
            return Err(e);
        }
    }
    for (probe, point) in [
        (Probe::GoPanic, panics.gopanic),
        (Probe::GoRecovery, panics.recovery),
        (Probe::GoFatalPanic, panics.fatalpanic),
    ] {
        let Some(point) = point else {
            continue;
        };
        if let Err(e) = kernel.attach(process, probe, point) {
            log::warn!("pid {pid}: panics not followed: {}", error_chain(&e));
        }
    }
    Ok(())
}

/// Whether the creation probe goes in when a process starts being watched: judged by its
/// average creation rate so far, from one read of its runtime's state (no waiting for a
/// second read, which would hold up watching every other process; the pacing then corrects
/// within `PACE_INTERVAL` a process busier, or calmer, now than on average).
pub fn creation_probe_affordable(
    go: &mut GoProcess,
    process: &Process,
    metrics: &GoRuntimeMetrics,
    max_rate: u64,
) -> bool {
    if !go.reads_state() {
        return true;
    }
    go.read_state(metrics);
    let rate = process.age().and_then(|age| go.lifetime_creation_rate(age));
    if max_rate > 0 && rate.is_some_and(|r| r > max_rate as f64) {
        go.probe_paused_at = Some(Instant::now());
        log::info!(
            "pid {}: {:.0} goroutines created per second on average (limit {max_rate}): \
             creation probe not attached for now",
            process.pid,
            rate.unwrap_or(0.0),
        );
        return false;
    }
    true
}

/// Creations within one kernel window (`CREATION_WINDOW_NS`) that make the creation probe
/// report a burst: four times the rate limit, so that a process far above it pays for the
/// probe a few milliseconds, not until the next rate check (`PACE_INTERVAL`). 0 (no
/// limit): never.
pub fn burst_limit(max_rate: u64) -> u64 {
    if max_rate == 0 {
        return 0;
    }
    let window = CREATION_WINDOW_NS as f64 / 1e9;
    ((4 * max_rate) as f64 * window).ceil().max(2.0) as u64
}

/// One process's goroutine creation counts, by runtime start address.
pub fn starts_of(starts: &HashMap<GoStartKey, u64>, pid: u32) -> HashMap<u64, u64> {
    starts
        .iter()
        .filter(|(k, _)| k.tgid == pid)
        .map(|(k, n)| (k.startpc, *n))
        .collect()
}

impl<K: Kernel> Agent<K> {
    /// Refreshes every Go process's runtime figures, then paces the creation probes.
    pub(super) fn pace_go_probes(&self) {
        self.refresh_go_processes();
        let now = Instant::now();
        let (mut pipeline, mut kernel) = self.lock_both();
        for (pid, w) in pipeline.watched.iter_mut() {
            pace_creation_probe(
                *pid,
                w,
                &mut kernel.kernel,
                now,
                self.goroutine_probe_max_rate,
            );
        }
    }

    /// Reads every Go process's runtime state, then the kernel's creation counts by start
    /// function. In that order: a process's creations not attributed to a function are the
    /// runtime's total minus the probe's counts, and must never include a creation the probe
    /// counts later (the counter could not take it back). The map is read entry by entry,
    /// without holding the pipeline (the event handler's lock).
    fn refresh_go_processes(&self) {
        for w in lock(&self.pipeline).watched.values_mut() {
            if let (None, Some(go)) = (w.exited_at, &mut w.go) {
                go.read_state(&self.metrics.go);
            }
        }
        let starts = lock(&self.kernel).kernel.goroutine_starts();
        for (pid, w) in lock(&self.pipeline).watched.iter_mut() {
            if let (None, Some(go)) = (w.exited_at, &mut w.go) {
                go.record_creations(&self.metrics.go, &starts_of(&starts, *pid));
            }
        }
    }
}

/// Detaches the goroutine-creation probe of a process creating goroutines faster than
/// `max_rate` per second, and re-attaches it once the rate, read from the runtime's state,
/// has fallen below half (or, when the state cannot be read, after a while).
fn pace_creation_probe(
    pid: u32,
    w: &mut Watched,
    kernel: &mut impl Kernel,
    now: Instant,
    max_rate: u64,
) {
    let (None, Some(go)) = (w.exited_at, &mut w.go) else {
        return;
    };
    let (Some(point), Some(rate)) = (go.newproc_point(), go.creation_rate()) else {
        return;
    };
    if max_rate == 0 {
        return;
    }
    let attached = kernel.is_attached(pid, Probe::GoNewproc);
    if attached && rate > max_rate as f64 {
        kernel.detach(pid, Probe::GoNewproc);
        go.probe_paused_at = Some(now);
        log::info!(
            "pid {pid}: {rate:.0} goroutines created per second (limit {max_rate}): creation \
             probe detached; creations by function and goroutine ancestry paused"
        );
    } else if !attached {
        let calm = if go.reads_state() {
            rate < max_rate as f64 / 2.0
        } else {
            go.probe_paused_at
                .is_some_and(|t| now.duration_since(t) >= CREATION_PROBE_RETRY)
        };
        if calm {
            match kernel.attach(&w.process, Probe::GoNewproc, point) {
                Ok(()) => {
                    go.probe_paused_at = None;
                    if !go.reads_state() {
                        go.reset_rate();
                    }
                    log::info!(
                        "pid {pid}: {rate:.0} goroutines created per second: creation probe \
                         re-attached"
                    );
                }
                Err(e) => log::debug!("pid {pid}: re-attaching the creation probe: {e}"),
            }
        }
    }
}
