//! Gauges and the kernel programs' counters, brought up to date every `PACE_INTERVAL` (a
//! scrape only reads the registry): processes watched, probes attached and being detached
//! (one snapshot, so that they agree with each other), and what the kernel side counted
//! (lost events, read errors, full tables). Requests in flight are kept exact by the
//! dispatch itself (`Watched::sync_active`).

use obs_common::stats::{Stat, STAT_COUNT};

use crate::metrics::reasons::{KernelError, Lost};

use super::{kernel::Kernel, lock, Agent};

/// The kernel's counters as last exported: the registry's counters grow by the difference.
pub type CountersSeen = [u64; STAT_COUNT as usize];

impl<K: Kernel> Agent<K> {
    pub(super) fn refresh_gauges(&self) {
        self.refresh_own_process();
        let live = self.watched_count() as i64;
        let m = &self.metrics.agent;
        m.processes_watched.set(live);
        let mut side = lock(&self.kernel);
        m.probes_attached.set(side.kernel.attached_count() as i64);
        m.probes_detaching.set(side.kernel.detaching_count() as i64);
        let now = side.kernel.counters();
        for stat in Stat::ALL {
            let delta = now[stat as usize].saturating_sub(side.counters_seen[stat as usize]);
            if delta == 0 {
                continue;
            }
            match stat {
                Stat::EventsLostRingFull => {
                    m.lost(Lost::RingFull).inc_by(delta);
                }
                Stat::TargetReadErrors => m.kernel_error(KernelError::TargetRead, delta),
                Stat::GoStartsFull => m.kernel_error(KernelError::GoroutineStartTableFull, delta),
            }
        }
        side.counters_seen = now;
    }

    /// The agent's own `process_*` figures, at most once a second.
    fn refresh_own_process(&self) {
        let mut last = lock(&self.own_process_read_at);
        if last.is_some_and(|t| t.elapsed() < OWN_PROCESS_EVERY) {
            return;
        }
        *last = Some(std::time::Instant::now());
        self.metrics.process.refresh();
    }
}

/// How often the agent's own `process_*` figures are read.
const OWN_PROCESS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
