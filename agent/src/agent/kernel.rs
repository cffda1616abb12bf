//! What the agent asks of the kernel side, as a trait: the real one is the loaded eBPF
//! object (`probes::Probes`); tests use a recording fake, so that discovery and event
//! dispatch run without BPF.

use std::collections::HashMap;

use obs_common::{go_runtime::GoStartKey, go_trace::GoOffsets, stats::STAT_COUNT};

use crate::{
    probes::{table::Probe, Detaching, ProbeError, Probes},
    symbols::go_binary::ProbePoint,
    target::Process,
};

pub trait Kernel: Send {
    /// Starts capturing the socket syscalls of `pid`.
    fn watch_sockets(&mut self, pid: u32) -> Result<(), ProbeError>;

    /// Gives the kernel the offsets it follows `pid`'s goroutines with (`None`: forget them).
    fn set_go_offsets(&mut self, pid: u32, offsets: Option<GoOffsets>) -> Result<(), ProbeError>;

    /// Attaches a uprobe of the table to one process; attached already is fine.
    fn attach(
        &mut self,
        process: &Process,
        probe: Probe,
        point: ProbePoint,
    ) -> Result<(), ProbeError>;

    /// Detaches `probe` from `pid`; whether it was attached.
    fn detach(&mut self, pid: u32, probe: Probe) -> bool;

    fn is_attached(&self, pid: u32, probe: Probe) -> bool;

    /// The process is gone: everything attached for it is detached and its kernel state
    /// forgotten.
    fn forget_process(&mut self, pid: u32);

    /// Detaches every uprobe; none is attached after this (at shutdown).
    fn detach_all(&mut self) -> Detaching;

    /// Goroutines created per (process, start function) since the creation probe attached.
    fn goroutine_starts(&self) -> HashMap<GoStartKey, u64>;

    /// The kernel programs' own counters, by `obs_common::stats::Stat`.
    fn counters(&self) -> [u64; STAT_COUNT as usize];

    /// Probes attached now, machine-wide and per process.
    fn attached_count(&self) -> usize;

    /// Uprobes let go of that the kernel is still detaching.
    fn detaching_count(&self) -> usize;
}

impl Kernel for Probes {
    fn watch_sockets(&mut self, pid: u32) -> Result<(), ProbeError> {
        self.set_watched(pid, true)
    }

    fn set_go_offsets(&mut self, pid: u32, offsets: Option<GoOffsets>) -> Result<(), ProbeError> {
        Probes::set_go_offsets(self, pid, offsets)
    }

    fn attach(
        &mut self,
        process: &Process,
        probe: Probe,
        point: ProbePoint,
    ) -> Result<(), ProbeError> {
        Probes::attach(self, process, probe, point)
    }

    fn detach(&mut self, pid: u32, probe: Probe) -> bool {
        Probes::detach(self, pid, probe)
    }

    fn is_attached(&self, pid: u32, probe: Probe) -> bool {
        Probes::is_attached(self, pid, probe)
    }

    fn forget_process(&mut self, pid: u32) {
        Probes::forget_process(self, pid)
    }

    fn detach_all(&mut self) -> Detaching {
        Probes::detach_all(self)
    }

    fn goroutine_starts(&self) -> HashMap<GoStartKey, u64> {
        Probes::goroutine_starts(self)
    }

    fn counters(&self) -> [u64; STAT_COUNT as usize] {
        self.kernel_stats()
    }

    fn attached_count(&self) -> usize {
        Probes::attached_count(self)
    }

    fn detaching_count(&self) -> usize {
        Probes::detaching_count(self)
    }
}
