//! Owns the loaded eBPF object: loads the embedded programs once, attaches them per process
//! at the sites `symbols` found, keeps the per-process filter/config map in step, and reads
//! the kernel side's counters.

use std::{collections::HashMap, num::NonZeroU32};

use aya::{
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLinkId, UProbeScope},
        RawTracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use obs_common::{
    go_http::GoProcState,
    names,
    stats::{Stat, STAT_COUNT},
};

use crate::{
    symbols::go_http::{GoHttpBinary, ProbePoint, FINISH_REQUEST, SERVE_HTTP},
    target::Process,
};

static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/obs-ebpf.o"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "this obs-agent was built without its eBPF programs (OBS_EBPF_OBJECT was not set); \
         build it with `cargo xtask build`"
    )]
    NoObject,
    #[error(
        "the kernel refused to load obs-agent's eBPF programs ({0}); obs-agent must run as root \
         (CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE) on a kernel with BPF, BTF and ring buffers"
    )]
    Load(String),
    #[error("the eBPF object lacks {0} (agent and eBPF object built from different sources?)")]
    Missing(&'static str),
    #[error(
        "this kernel has no uprobes (/sys/bus/event_source/devices/uprobe is missing: \
         CONFIG_UPROBE_EVENTS is not set); Go programs cannot be watched"
    )]
    NoUprobes,
    #[error("attaching to the raw tracepoint sys_exit ({0}); socket syscalls cannot be seen")]
    RawTracepoint(String),
    #[error("attaching to {function} in pid {pid}: {source}")]
    Attach {
        pid: u32,
        function: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("updating the kernel's map of watched processes: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error("counting CPUs: {0}")]
    Cpus(#[from] std::io::Error),
}

/// One attached probe, to detach later.
struct Link {
    program: &'static str,
    id: UProbeLinkId,
}

pub struct Probes {
    ebpf: Ebpf,
    links: HashMap<u32, Vec<Link>>,
    cpus: usize,
}

impl Probes {
    pub fn load() -> Result<Self, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        if !std::path::Path::new("/sys/bus/event_source/devices/uprobe").exists() {
            return Err(ProbeError::NoUprobes);
        }
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        for name in [names::PROG_GO_SERVE_HTTP, names::PROG_GO_FINISH_REQUEST] {
            let program: &mut UProbe = ebpf
                .program_mut(name)
                .ok_or(ProbeError::Missing(name))?
                .try_into()
                .map_err(|e| ProbeError::Load(error_chain(&e)))?;
            program
                .load()
                .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        }
        // One program sees the socket syscalls of every watched process.
        let sys_exit: &mut RawTracePoint = ebpf
            .program_mut(names::PROG_SYS_EXIT)
            .ok_or(ProbeError::Missing(names::PROG_SYS_EXIT))?
            .try_into()
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        sys_exit
            .load()
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        sys_exit
            .attach("sys_exit")
            .map_err(|e| ProbeError::RawTracepoint(error_chain(&e)))?;
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| ProbeError::Load(e.to_string()))?;
        Ok(Self {
            ebpf,
            links: HashMap::new(),
            cpus,
        })
    }

    /// The event ring buffer, for the reader task (taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(names::MAP_EVENTS)
            .ok_or(ProbeError::Missing(names::MAP_EVENTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Starts capturing the socket syscalls of `pid`.
    pub fn watch_sockets(&mut self, pid: u32) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(names::MAP_WATCHED)
            .ok_or(ProbeError::Missing(names::MAP_WATCHED))?;
        BpfHashMap::<_, u32, u32>::try_from(map)?.insert(pid, 0, 0)?;
        Ok(())
    }

    fn unwatch_sockets(&mut self, pid: u32) {
        if let Some(map) = self.ebpf.map_mut(names::MAP_WATCHED) {
            if let Ok(mut m) = BpfHashMap::<_, u32, u32>::try_from(map) {
                let _ = m.remove(&pid);
            }
        }
    }

    /// Attaches the net/http server probes to one process. On failure nothing stays attached.
    pub fn attach_go_http(
        &mut self,
        process: &Process,
        binary: &GoHttpBinary,
    ) -> Result<usize, ProbeError> {
        let state = GoProcState {
            offsets: binary.offsets,
            response_itab: binary.response_itab.unwrap_or(0),
            active: 0,
        };
        let values = PerCpuValues::try_from(vec![state; self.cpus])?;
        self.go_procs()?.insert(process.pid, values, 0)?;

        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(process.pid).expect("pids of user processes are never 0"),
        );
        let mut links = Vec::new();
        for point in binary.probe_points() {
            match self.attach_one(point, process, scope) {
                Ok(link) => links.push(link),
                Err(e) => {
                    self.detach_links(links);
                    let _ = self.go_procs().map(|mut m| m.remove(&process.pid));
                    return Err(e);
                }
            }
        }
        let n = links.len();
        self.links.insert(process.pid, links);
        Ok(n)
    }

    fn attach_one(
        &mut self,
        point: ProbePoint,
        process: &Process,
        scope: UProbeScope,
    ) -> Result<Link, ProbeError> {
        let program = match point.function {
            SERVE_HTTP => names::PROG_GO_SERVE_HTTP,
            FINISH_REQUEST => names::PROG_GO_FINISH_REQUEST,
            other => unreachable!("no program for {other}"),
        };
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(program)
            .ok_or(ProbeError::Missing(program))?
            .try_into()
            .map_err(|source| ProbeError::Attach {
                pid: process.pid,
                function: point.function,
                source,
            })?;
        let id = uprobe
            .attach(
                UProbeAttachLocation::AbsoluteOffset(point.file_offset),
                &process.exe_link,
                scope,
            )
            .map_err(|source| ProbeError::Attach {
                pid: process.pid,
                function: point.function,
                source,
            })?;
        Ok(Link { program, id })
    }

    /// Detaches everything attached for `pid` and forgets its kernel state.
    pub fn detach(&mut self, pid: u32) {
        self.unwatch_sockets(pid);
        if let Some(links) = self.links.remove(&pid) {
            self.detach_links(links);
        }
        if let Ok(mut procs) = self.go_procs() {
            let _ = procs.remove(&pid);
        }
    }

    fn detach_links(&mut self, links: Vec<Link>) {
        for link in links {
            if let Some(Ok(p)) = self
                .ebpf
                .program_mut(link.program)
                .map(<&mut UProbe>::try_from)
            {
                if let Err(e) = p.detach(link.id) {
                    log::debug!("detaching {}: {e}", link.program);
                }
            }
        }
    }

    /// Probes attached now: the shared sys_exit program and the per-process uprobes.
    pub fn attached_count(&self) -> usize {
        1 + self.links.values().map(Vec::len).sum::<usize>()
    }

    /// Requests in flight in `pid` (summed over CPUs).
    pub fn active_requests(&self, pid: u32) -> i64 {
        let Some(map) = self.ebpf.map(names::MAP_GO_PROCS) else {
            return 0;
        };
        let Ok(procs) = PerCpuHashMap::<_, u32, GoProcState>::try_from(map) else {
            return 0;
        };
        procs
            .get(&pid, 0)
            .map(|v| v.iter().map(|s| s.active).sum::<i64>().max(0))
            .unwrap_or(0)
    }

    /// The kernel programs' counters, summed over CPUs, indexed by `Stat`.
    pub fn kernel_stats(&self) -> [u64; STAT_COUNT as usize] {
        let mut out = [0; STAT_COUNT as usize];
        let Some(map) = self.ebpf.map(names::MAP_STATS) else {
            return out;
        };
        let Ok(stats) = PerCpuArray::<_, u64>::try_from(map) else {
            return out;
        };
        for stat in Stat::ALL {
            if let Ok(v) = stats.get(&(stat as u32), 0) {
                out[stat as usize] = v.iter().sum();
            }
        }
        out
    }

    fn go_procs(&mut self) -> Result<PerCpuHashMap<&mut MapData, u32, GoProcState>, ProbeError> {
        let map = self
            .ebpf
            .map_mut(names::MAP_GO_PROCS)
            .ok_or(ProbeError::Missing(names::MAP_GO_PROCS))?;
        Ok(PerCpuHashMap::try_from(map)?)
    }
}

/// An error with its sources, on one line (aya's errors keep the kernel's reason in sources).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}
