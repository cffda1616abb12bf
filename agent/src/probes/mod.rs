//! Owns the loaded eBPF object: loads the embedded programs once, attaches the machine-wide
//! ones and, per process, the uprobes at the sites `symbols` found, as the probe table
//! (`table`) describes each; keeps the per-process maps in step (watched processes, Go
//! offsets); reads the kernel side's counters. Detaching is done on a thread of its own
//! (`detacher`).

pub mod btf;
mod detacher;
pub mod table;
mod tracefs;

use std::{collections::HashMap, num::NonZeroU32};

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    programs::{
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeLinkId, UProbeScope},
        RawTracePoint, TracePoint, UProbe,
    },
    Ebpf, EbpfLoader,
};
use obs_common::{
    go_runtime::GoStartKey,
    go_trace::GoOffsets,
    names,
    sockets::SockOffsets,
    stats::{Stat, STAT_COUNT},
};

pub use self::detacher::Detaching;
use self::{
    btf::{Btf, BtfError},
    detacher::Detacher,
    table::{Attach, DataPath, Probe, ProbeSpec, PROBES},
};
use crate::{symbols::go_binary::ProbePoint, target::Process};

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
    #[error("attaching {program} to the {target} ({reason}); {without}")]
    AttachShared {
        program: &'static str,
        target: String,
        reason: String,
        without: &'static str,
    },
    #[error(
        "tracefs is not mounted at /sys/kernel/tracing and mounting it failed ({0}); \
         mount it (mount -t tracefs nodev /sys/kernel/tracing) or run obs-agent with CAP_SYS_ADMIN"
    )]
    NoTracefs(String),
    #[error("attaching to {function} in pid {pid}: {source}")]
    Attach {
        pid: u32,
        function: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("updating the kernel's map of watched processes: {0}")]
    Map(#[from] aya::maps::MapError),
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error("the socket data path cannot be used: {0}; use --data-path auto or syscalls")]
    NoSocketPath(String),
    #[error("pid {0} is beyond the kernel's pid limit (2^22)")]
    PidOutOfRange(u32),
}

pub struct Probes {
    ebpf: Ebpf,
    /// The uprobes attached, by process and probe.
    uprobes: HashMap<(u32, Probe), UProbeLinkId>,
    /// Detached probes on their way out.
    detacher: Detacher,
    /// Machine-wide probes attached.
    shared: usize,
    data_path: DataPath,
}

/// Which data path the agent is to use (`--data-path`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPathChoice {
    /// The socket path where the kernel has it (Linux 6.3+, with BTF), else the syscalls.
    Auto,
    /// The socket path, or an error.
    Sockets,
    /// The syscall path (the only one before Linux 6.3).
    Syscalls,
}

/// How the eBPF object is loaded.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub data_path: DataPathChoice,
    /// The data path's programs return at once (`--bench-empty-programs`: what the hooks
    /// alone cost, for `cargo xtask bench --floors`).
    pub empty_programs: bool,
}

impl Probes {
    /// Loads every program of the table and attaches the machine-wide ones of the data path
    /// chosen: a required one that cannot be attached is an error (or, with
    /// `DataPathChoice::Auto` on the socket path, a fall back to the syscalls); an optional
    /// one is left out with a warning that says what is lost.
    pub fn load(options: LoadOptions) -> Result<Self, ProbeError> {
        if EBPF_OBJECT.is_empty() {
            return Err(ProbeError::NoObject);
        }
        if !std::path::Path::new("/sys/bus/event_source/devices/uprobe").exists() {
            return Err(ProbeError::NoUprobes);
        }
        let kernel = KernelFacts::read();
        match options.data_path {
            DataPathChoice::Syscalls => Self::load_path(DataPath::Syscalls, &kernel, options),
            DataPathChoice::Sockets => Self::load_path(DataPath::Sockets, &kernel, options),
            DataPathChoice::Auto => match kernel.socket_path_missing() {
                Some(why) => {
                    log::info!("using the syscall data path: {why}");
                    Self::load_path(DataPath::Syscalls, &kernel, options)
                }
                None => Self::load_path(DataPath::Sockets, &kernel, options).or_else(|e| {
                    log::warn!(
                        "the socket data path failed ({}); using the syscall data path",
                        error_chain(&e)
                    );
                    Self::load_path(DataPath::Syscalls, &kernel, options)
                }),
            },
        }
    }

    fn load_path(
        path: DataPath,
        kernel: &KernelFacts,
        options: LoadOptions,
    ) -> Result<Self, ProbeError> {
        if path == DataPath::Sockets {
            if let Some(why) = kernel.socket_path_missing() {
                return Err(ProbeError::NoSocketPath(why));
            }
        }
        let data_path: u32 = match path {
            DataPath::Sockets => obs_common::DATA_PATH_SOCKETS,
            DataPath::Syscalls => 0,
        };
        let empty = u32::from(options.empty_programs);
        let mut ebpf = EbpfLoader::new()
            .override_global(names::GLOBAL_DATA_PATH, &data_path, true)
            .override_global(names::GLOBAL_EMPTY_PROGRAMS, &empty, true)
            .load(EBPF_OBJECT)
            .map_err(|e| ProbeError::Load(error_chain(&e)))?;
        if let Ok(offsets) = &kernel.sock_offsets {
            let map = ebpf
                .map_mut(names::MAP_SOCK_OFFSETS)
                .ok_or(ProbeError::Missing(names::MAP_SOCK_OFFSETS))?;
            let mut array: Array<_, SockOffsets> = Array::try_from(map)?;
            array.set(0, offsets, 0)?;
        }
        let mut shared = 0;
        for spec in &PROBES {
            if spec.path.is_some_and(|p| p != path) {
                continue;
            }
            let attached = match spec.attach {
                // Loaded once; attached per process.
                Attach::Uprobe { .. } => {
                    program::<UProbe>(&mut ebpf, spec.program)?
                        .load()
                        .map_err(load_error)?;
                    continue;
                }
                Attach::RawTracepoint(name) => {
                    prepare(kernel, spec).and_then(|()| attach_raw(&mut ebpf, spec, name))
                }
                Attach::Tracepoint(category, name) => prepare(kernel, spec)
                    .and_then(|()| attach_tracepoint(&mut ebpf, spec, category, name)),
            };
            match attached {
                Ok(()) => shared += 1,
                Err(e) if spec.need.required(path) => return Err(e),
                Err(e) => log::warn!(
                    "not watching {} ({}): {}",
                    spec.sees,
                    error_chain(&e),
                    spec.without
                ),
            }
        }
        log::info!("data path: {}", path.as_str());
        Ok(Self {
            ebpf,
            uprobes: HashMap::new(),
            detacher: Detacher::start(),
            shared,
            data_path: path,
        })
    }

    /// The data path in use.
    pub fn data_path(&self) -> DataPath {
        self.data_path
    }

    /// The event ring buffer, for the reader task (taken once).
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        let map = self
            .ebpf
            .take_map(names::MAP_EVENTS)
            .ok_or(ProbeError::Missing(names::MAP_EVENTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// Starts (`on`) or stops capturing the socket syscalls of `pid`.
    pub fn set_watched(&mut self, pid: u32, on: bool) -> Result<(), ProbeError> {
        if pid >= obs_common::PID_LIMIT {
            return Err(ProbeError::PidOutOfRange(pid));
        }
        let map = self
            .ebpf
            .map_mut(names::MAP_WATCHED)
            .ok_or(ProbeError::Missing(names::MAP_WATCHED))?;
        // Only this thread writes the map, so the read-modify-write of the word cannot lose
        // another update.
        let (slot, bit) = obs_common::watched_slot(pid);
        let mut words = Array::<_, u64>::try_from(map)?;
        let word = words.get(&slot, 0)?;
        let word = if on { word | bit } else { word & !bit };
        words.set(slot, word, 0)?;
        Ok(())
    }

    /// Gives the kernel the offsets it follows `pid`'s goroutines with (`GO_PROCS`), or
    /// forgets them (`None`).
    pub fn set_go_offsets(
        &mut self,
        pid: u32,
        offsets: Option<GoOffsets>,
    ) -> Result<(), ProbeError> {
        let map = self
            .ebpf
            .map_mut(names::MAP_GO_PROCS)
            .ok_or(ProbeError::Missing(names::MAP_GO_PROCS))?;
        let mut procs = aya::maps::HashMap::<_, u32, GoOffsets>::try_from(map)?;
        match offsets {
            Some(offsets) => procs.insert(pid, offsets, 0)?,
            None => {
                let _ = procs.remove(&pid);
            }
        }
        Ok(())
    }

    /// Attaches `probe` (a uprobe of the table) to one process at `point`; attached already
    /// is fine.
    pub fn attach(
        &mut self,
        process: &Process,
        probe: Probe,
        point: ProbePoint,
    ) -> Result<(), ProbeError> {
        if self.detacher.closed() {
            return Err(ProbeError::ShuttingDown);
        }
        if self.uprobes.contains_key(&(process.pid, probe)) {
            return Ok(());
        }
        let error = |source| ProbeError::Attach {
            pid: process.pid,
            function: point.function,
            source,
        };
        let spec = probe.spec();
        debug_assert!(
            matches!(spec.attach, Attach::Uprobe { function, .. } if function == point.function),
            "{probe:?} does not attach to {}",
            point.function
        );
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(process.pid).expect("pids of user processes are never 0"),
        );
        let uprobe: &mut UProbe = self
            .ebpf
            .program_mut(spec.program)
            .ok_or(ProbeError::Missing(spec.program))?
            .try_into()
            .map_err(error)?;
        let id = uprobe
            .attach(
                UProbeAttachLocation::AbsoluteOffset(point.file_offset),
                &process.exe_link,
                scope,
            )
            .map_err(error)?;
        self.uprobes.insert((process.pid, probe), id);
        Ok(())
    }

    /// Detaches `probe` from `pid` (on the detaching thread); whether it was attached.
    pub fn detach(&mut self, pid: u32, probe: Probe) -> bool {
        let Some(id) = self.uprobes.remove(&(pid, probe)) else {
            return false;
        };
        let links = self.take_links([(probe, id)]);
        self.detacher.detach(links);
        true
    }

    pub fn is_attached(&self, pid: u32, probe: Probe) -> bool {
        self.uprobes.contains_key(&(pid, probe))
    }

    /// Detaches everything attached for `pid` and forgets its kernel state.
    pub fn forget_process(&mut self, pid: u32) {
        if let Err(e) = self.set_watched(pid, false) {
            log::warn!(
                "pid {pid}: cannot clear its watched bit: {}",
                error_chain(&e)
            );
        }
        let mine: Vec<(Probe, UProbeLinkId)> = self
            .uprobes
            .extract_if(|(p, _), _| *p == pid)
            .map(|((_, probe), id)| (probe, id))
            .collect();
        let links = self.take_links(mine);
        self.detacher.detach(links);
        let _ = self.set_go_offsets(pid, None);
        self.forget_goroutine_starts(pid);
    }

    /// Hands every uprobe to the detaching thread and closes it: no probe is attached after
    /// this. Called at shutdown, so that the probes go while the agent still runs normally,
    /// not in its exit path (where the descriptors are closed by whichever thread exits last,
    /// possibly one the exit already killed). Detaching takes about 0.1 s per probe on a busy
    /// machine (see `Detacher`); wait for it with [`Detaching::wait`].
    pub fn detach_all(&mut self) -> Detaching {
        let all: Vec<(Probe, UProbeLinkId)> = self
            .uprobes
            .drain()
            .map(|((_, probe), id)| (probe, id))
            .collect();
        let links = self.take_links(all);
        self.detacher.close(links)
    }

    /// Goroutines created per (process, start function) since the probe was attached.
    pub fn goroutine_starts(&self) -> HashMap<GoStartKey, u64> {
        let Some(map) = self.ebpf.map(names::MAP_GO_STARTS) else {
            return HashMap::new();
        };
        let Ok(starts) = aya::maps::PerCpuHashMap::<_, GoStartKey, u64>::try_from(map) else {
            return HashMap::new();
        };
        starts
            .iter()
            .filter_map(Result::ok)
            .map(|(key, per_cpu)| (key, per_cpu.iter().sum()))
            .collect()
    }

    /// Forgets a process's creation counters (it exited).
    fn forget_goroutine_starts(&mut self, pid: u32) {
        let Some(map) = self.ebpf.map_mut(names::MAP_GO_STARTS) else {
            return;
        };
        let Ok(mut starts) = aya::maps::PerCpuHashMap::<_, GoStartKey, u64>::try_from(map) else {
            return;
        };
        let keys: Vec<GoStartKey> = starts
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.tgid == pid)
            .collect();
        for key in keys {
            let _ = starts.remove(&key);
        }
    }

    /// The links of detached uprobes, owned, for the detaching thread to drop.
    fn take_links(
        &mut self,
        ids: impl IntoIterator<Item = (Probe, UProbeLinkId)>,
    ) -> Vec<UProbeLink> {
        let mut owned = Vec::new();
        for (probe, id) in ids {
            let program = probe.spec().program;
            let Some(Ok(p)) = self.ebpf.program_mut(program).map(<&mut UProbe>::try_from) else {
                continue;
            };
            match p.take_link(id) {
                Ok(l) => owned.push(l),
                Err(e) => log::debug!("detaching {program}: {e}"),
            }
        }
        owned
    }

    /// Probes attached now: the machine-wide programs and the per-process uprobes.
    pub fn attached_count(&self) -> usize {
        self.shared + self.uprobes.len()
    }

    /// Probes detached by the agent that the kernel has not finished detaching.
    pub fn detaching_count(&self) -> usize {
        self.detacher.pending()
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
}

fn load_error(e: aya::programs::ProgramError) -> ProbeError {
    ProbeError::Load(error_chain(&e))
}

/// A program of the object, by name, as its kind.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, ProbeError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing(name))?
        .try_into()
        .map_err(load_error)
}

/// What a machine-wide probe needs before it can run: for the TCP-state program, the
/// socket's field offsets from the kernel's BTF.
fn prepare(kernel: &KernelFacts, spec: &ProbeSpec) -> Result<(), ProbeError> {
    if spec.probe == Probe::InetSockSetState {
        if let Err(e) = &kernel.sock_offsets {
            return Err(e.clone().into());
        }
    }
    Ok(())
}

/// The data path `--data-path auto` takes on this machine, and why not the socket path if
/// not (what `obs-agent inspect` says; no root needed: the kernel's BTF is readable by all).
pub fn data_path_here() -> (DataPath, Option<String>) {
    match KernelFacts::read().socket_path_missing() {
        None => (DataPath::Sockets, None),
        Some(why) => (DataPath::Syscalls, Some(why)),
    }
}

/// The tracepoints the socket data path needs (the first two since Linux 6.3).
const SOCKET_PATH_TRACEPOINTS: [&str; 4] = [
    "sock_recv_length",
    "sock_send_length",
    "inet_sock_set_state",
    "tcp_destroy_sock",
];

/// What the running kernel offers the data paths, from its BTF.
struct KernelFacts {
    sock_offsets: Result<SockOffsets, BtfError>,
    /// Every tracepoint of `SOCKET_PATH_TRACEPOINTS` exists (its BTF typedef `btf_trace_*`).
    sock_tracepoints: Result<bool, BtfError>,
}

impl KernelFacts {
    fn read() -> Self {
        let btf = std::fs::read(btf::VMLINUX).map_err(|e| BtfError::Unreadable(e.to_string()));
        let parsed = btf
            .as_ref()
            .map_err(Clone::clone)
            .and_then(|data| Btf::parse(data));
        match parsed {
            Ok(btf) => Self {
                sock_offsets: sock_offsets(&btf),
                sock_tracepoints: Ok(SOCKET_PATH_TRACEPOINTS
                    .iter()
                    .all(|tp| btf.has_typedef(&format!("btf_trace_{tp}")))),
            },
            Err(e) => Self {
                sock_offsets: Err(e.clone()),
                sock_tracepoints: Err(e),
            },
        }
    }

    /// Why the socket data path cannot be used here, if it cannot.
    fn socket_path_missing(&self) -> Option<String> {
        match (&self.sock_tracepoints, &self.sock_offsets) {
            (Err(e), _) => Some(format!("the kernel's BTF is needed ({e})")),
            (Ok(false), _) => Some(
                "the kernel lacks the socket tracepoints (sock_recv_length and sock_send_length \
                 are Linux 6.3+)"
                    .to_owned(),
            ),
            (Ok(true), Err(e)) => Some(format!("the kernel's socket layout is unknown ({e})")),
            (Ok(true), Ok(_)) => None,
        }
    }
}
fn attach_raw(ebpf: &mut Ebpf, spec: &ProbeSpec, name: &str) -> Result<(), ProbeError> {
    let p = program::<RawTracePoint>(ebpf, spec.program)?;
    p.load().map_err(load_error)?;
    p.attach(name)
        .map_err(|e| attach_failed(spec, format!("raw tracepoint {name}"), &e))?;
    Ok(())
}

fn attach_tracepoint(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    category: &str,
    name: &str,
) -> Result<(), ProbeError> {
    tracefs::ensure_mounted()?;
    let p = program::<TracePoint>(ebpf, spec.program)?;
    p.load().map_err(load_error)?;
    p.attach(category, name)
        .map_err(|e| attach_failed(spec, format!("tracepoint {category}:{name}"), &e))?;
    Ok(())
}

fn attach_failed(spec: &ProbeSpec, target: String, e: &dyn std::error::Error) -> ProbeError {
    ProbeError::AttachShared {
        program: spec.program,
        target,
        reason: error_chain(e),
        without: spec.without,
    }
}

/// `struct sock_common`'s address fields and `struct sock`'s protocol on this kernel; IPv6's
/// may be missing.
fn sock_offsets(btf: &Btf<'_>) -> Result<SockOffsets, BtfError> {
    let field = |name| btf.field_offset("sock_common", name);
    let optional = |name| field(name).unwrap_or(SockOffsets::NONE);
    Ok(SockOffsets {
        family: field("skc_family")?,
        num: field("skc_num")?,
        rcv_saddr: field("skc_rcv_saddr")?,
        v6_rcv_saddr: optional("skc_v6_rcv_saddr"),
        daddr: field("skc_daddr")?,
        dport: field("skc_dport")?,
        v6_daddr: optional("skc_v6_daddr"),
        protocol: btf.field_offset("sock", "sk_protocol")?,
    })
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
