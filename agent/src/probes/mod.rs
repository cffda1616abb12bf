//! Owns the loaded eBPF object: loads the embedded programs once, attaches them per process
//! at the sites `symbols` found, keeps the per-process filter/config map in step, and reads
//! the kernel side's counters.

use std::{
    collections::HashMap,
    num::NonZeroU32,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
};

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
    go_trace::{GoOffsets, FOLLOW_PARENTS},
    names,
    sockets::SockOffsets,
    stats::{Stat, STAT_COUNT},
};

use self::btf::{Btf, BtfError};

use crate::{
    symbols::{
        go_http::{GoroutineTracking, ProbePoint, MUX_SERVE_HTTP, NEWPROC_CLOSURE, ROUND_TRIP},
        go_runtime::{PanicProbes, FATALPANIC, GOPANIC, RECOVERY},
    },
    target::Process,
};

pub mod btf;

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
    #[error("attaching to the tracepoint syscalls:sys_enter_close ({0})")]
    Tracepoint(String),
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
    #[error("the agent is shutting down")]
    ShuttingDown,
    #[error("pid {0} is beyond the kernel's pid limit (2^22)")]
    PidOutOfRange(u32),
}

/// One attached probe, to detach later.
struct Link {
    program: &'static str,
    id: UProbeLinkId,
}

pub struct Probes {
    ebpf: Ebpf,
    /// Mux discovery, attached and detached as discovery goes.
    links: HashMap<u32, Vec<Link>>,
    /// Goroutine and panic probes, attached for as long as the process is watched.
    goroutine_links: HashMap<u32, Vec<Link>>,
    /// The goroutine-creation probe, attached while the process's creation rate allows.
    newproc_links: HashMap<u32, Link>,
    /// Detached probes on their way out (see `Detacher`).
    detacher: Detacher,
    /// Programs attached once for the whole machine (the syscall programs, and the TCP
    /// state program when the kernel's BTF gives the socket's field offsets).
    shared: usize,
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
        let load = |e: aya::programs::ProgramError| ProbeError::Load(error_chain(&e));
        // Loaded once; attached per process (while discovering muxes; while tracing).
        for name in [
            names::PROG_GO_MUX_SERVE_HTTP,
            names::PROG_GO_NEWPROC,
            names::PROG_GO_ROUND_TRIP,
            names::PROG_GO_PANIC,
            names::PROG_GO_RECOVERY,
            names::PROG_GO_FATAL_PANIC,
        ] {
            program::<UProbe>(&mut ebpf, name)?.load().map_err(load)?;
        }
        // One program sees the socket syscalls of every watched process.
        let sys_exit = program::<RawTracePoint>(&mut ebpf, names::PROG_SYS_EXIT)?;
        sys_exit.load().map_err(load)?;
        sys_exit
            .attach("sys_exit")
            .map_err(|e| ProbeError::RawTracepoint(error_chain(&e)))?;
        ensure_tracefs()?;
        let close = program::<TracePoint>(&mut ebpf, names::PROG_SYS_ENTER_CLOSE)?;
        close.load().map_err(load)?;
        close
            .attach("syscalls", "sys_enter_close")
            .map_err(|e| ProbeError::Tracepoint(error_chain(&e)))?;
        let mut shared = 2;
        match attach_set_state(&mut ebpf) {
            Ok(()) => shared += 1,
            Err(why) => log::warn!(
                "not watching TCP handshakes ({why}): calls on short connections of processes \
                 that never ask for their own address (most but Go) will not be linked to the \
                 server span at the other end"
            ),
        }
        Ok(Self {
            ebpf,
            links: HashMap::new(),
            goroutine_links: HashMap::new(),
            newproc_links: HashMap::new(),
            detacher: Detacher::start(),
            shared,
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
        set_watched(map, pid, true)
    }

    fn unwatch_sockets(&mut self, pid: u32) {
        if let Some(map) = self.ebpf.map_mut(names::MAP_WATCHED) {
            if let Err(e) = set_watched(map, pid, false) {
                log::warn!(
                    "pid {pid}: cannot clear its watched bit: {}",
                    error_chain(&e)
                );
            }
        }
    }

    /// Attaches the ServeMux-discovery uprobe to one process (until `detach_uprobes`).
    pub fn attach_mux_discovery(
        &mut self,
        process: &Process,
        point: ProbePoint,
    ) -> Result<(), ProbeError> {
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(process.pid).expect("pids of user processes are never 0"),
        );
        let link = self.attach_one(point, process, scope)?;
        self.links.entry(process.pid).or_default().push(link);
        Ok(())
    }

    /// Follows the goroutines and panics of one process: its offsets into `GO_PROCS` (with
    /// `burst_limit`, see `GoOffsets`), then the goroutine-creation uprobe (unless
    /// `creation_probe` is false: too costly for now),
    /// the panic uprobes the binary has and, when `follow_parents` (spans), the transport
    /// uprobe. The creation probe is required (all or nothing); a panic probe that cannot be
    /// attached is logged and left out.
    pub fn attach_goroutine_tracking(
        &mut self,
        process: &Process,
        tracking: &GoroutineTracking,
        panics: &PanicProbes,
        follow_parents: bool,
        creation_probe: bool,
        burst_limit: u64,
    ) -> Result<(), ProbeError> {
        let pid = process.pid;
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(pid).expect("pids of user processes are never 0"),
        );
        let mut offsets = tracking.offsets;
        // A program without net/http's client makes no call to link: its goroutines need
        // not be followed (no parentage, no goroutine read per socket event).
        let follow_parents = follow_parents && tracking.round_trip.is_some();
        if follow_parents {
            offsets.flags |= FOLLOW_PARENTS;
        }
        offsets.burst_limit = burst_limit;
        {
            let map = self
                .ebpf
                .map_mut(names::MAP_GO_PROCS)
                .ok_or(ProbeError::Missing(names::MAP_GO_PROCS))?;
            aya::maps::HashMap::<_, u32, GoOffsets>::try_from(map)?.insert(pid, offsets, 0)?;
        }
        if creation_probe {
            let newproc = match self.attach_one(tracking.newproc, process, scope) {
                Ok(link) => link,
                Err(e) => {
                    self.forget_go_process(pid);
                    return Err(e);
                }
            };
            self.newproc_links.insert(pid, newproc);
        }
        let mut links = Vec::new();
        if let Some(point) = tracking.round_trip.filter(|_| follow_parents) {
            match self.attach_one(point, process, scope) {
                Ok(link) => links.push(link),
                Err(e) => {
                    self.detach_newproc(pid);
                    self.forget_go_process(pid);
                    return Err(e);
                }
            }
        }
        for point in panics.points() {
            match self.attach_one(point, process, scope) {
                Ok(link) => links.push(link),
                Err(e) => log::warn!("pid {pid}: panics not followed: {}", error_chain(&e)),
            }
        }
        self.goroutine_links.insert(pid, links);
        Ok(())
    }

    /// Detaches the goroutine-creation probe of `pid` (too costly at its creation rate).
    /// Returns whether it was attached.
    pub fn detach_newproc(&mut self, pid: u32) -> bool {
        let Some(link) = self.newproc_links.remove(&pid) else {
            return false;
        };
        self.detach_links(vec![link]);
        true
    }

    /// Hands every uprobe to the detaching thread and closes it: no probe is attached after
    /// this. Called at shutdown, so that the probes go while the agent still runs normally,
    /// not in its exit path (where the descriptors are closed by whichever thread exits last,
    /// possibly one the exit already killed). Detaching takes about 0.1 s per probe on a busy
    /// machine (see `Detacher`); wait for it with [`Detaching::wait`].
    pub fn detach_all(&mut self) -> Detaching {
        let links: Vec<Link> = self
            .links
            .drain()
            .chain(self.goroutine_links.drain())
            .flat_map(|(_, links)| links)
            .chain(self.newproc_links.drain().map(|(_, link)| link))
            .collect();
        let owned = self.take_links(links);
        self.detacher.close(owned)
    }

    /// Re-attaches the goroutine-creation probe of a process whose goroutines are followed.
    pub fn attach_newproc(
        &mut self,
        process: &Process,
        point: ProbePoint,
    ) -> Result<(), ProbeError> {
        if self.newproc_links.contains_key(&process.pid) {
            return Ok(());
        }
        let scope = UProbeScope::OneProcess(
            NonZeroU32::new(process.pid).expect("pids of user processes are never 0"),
        );
        let link = self.attach_one(point, process, scope)?;
        self.newproc_links.insert(process.pid, link);
        Ok(())
    }

    pub fn has_newproc(&self, pid: u32) -> bool {
        self.newproc_links.contains_key(&pid)
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

    fn forget_go_process(&mut self, pid: u32) {
        if let Some(map) = self.ebpf.map_mut(names::MAP_GO_PROCS) {
            if let Ok(mut procs) = aya::maps::HashMap::<_, u32, GoOffsets>::try_from(map) {
                let _ = procs.remove(&pid);
            }
        }
    }

    fn attach_one(
        &mut self,
        point: ProbePoint,
        process: &Process,
        scope: UProbeScope,
    ) -> Result<Link, ProbeError> {
        if self.detacher.closed() {
            return Err(ProbeError::ShuttingDown);
        }
        let program = match point.function {
            MUX_SERVE_HTTP => names::PROG_GO_MUX_SERVE_HTTP,
            NEWPROC_CLOSURE => names::PROG_GO_NEWPROC,
            ROUND_TRIP => names::PROG_GO_ROUND_TRIP,
            GOPANIC => names::PROG_GO_PANIC,
            RECOVERY => names::PROG_GO_RECOVERY,
            FATALPANIC => names::PROG_GO_FATAL_PANIC,
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

    /// Detaches the uprobes of `pid`, keeping its socket capture.
    pub fn detach_uprobes(&mut self, pid: u32) {
        if let Some(links) = self.links.remove(&pid) {
            self.detach_links(links);
        }
    }

    pub fn has_uprobes(&self, pid: u32) -> bool {
        self.links.get(&pid).is_some_and(|l| !l.is_empty())
    }

    /// Detaches everything attached for `pid` and forgets its kernel state.
    pub fn detach(&mut self, pid: u32) {
        self.unwatch_sockets(pid);
        self.detach_uprobes(pid);
        self.detach_newproc(pid);
        if let Some(links) = self.goroutine_links.remove(&pid) {
            self.detach_links(links);
        }
        self.forget_go_process(pid);
        self.forget_goroutine_starts(pid);
    }

    fn detach_links(&mut self, links: Vec<Link>) {
        let owned = self.take_links(links);
        self.detacher.detach(owned);
    }

    fn take_links(&mut self, links: Vec<Link>) -> Vec<UProbeLink> {
        let mut owned = Vec::with_capacity(links.len());
        for link in links {
            let Some(Ok(p)) = self
                .ebpf
                .program_mut(link.program)
                .map(<&mut UProbe>::try_from)
            else {
                continue;
            };
            match p.take_link(link.id) {
                Ok(l) => owned.push(l),
                Err(e) => log::debug!("detaching {}: {e}", link.program),
            }
        }
        owned
    }

    /// Probes attached now: the shared programs and the per-process uprobes.
    pub fn attached_count(&self) -> usize {
        self.shared
            + self.newproc_links.len()
            + self
                .links
                .values()
                .chain(self.goroutine_links.values())
                .map(Vec::len)
                .sum::<usize>()
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

/// A program of the object, by name, as its kind.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, ProbeError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(ProbeError::Missing(name))?
        .try_into()
        .map_err(|e| ProbeError::Load(error_chain(&e)))
}

/// Attaches `inet_sock_set_state` (a raw tracepoint) once the offsets of the socket's
/// address fields are known from the kernel's BTF. Failing is not fatal: only short
/// connections' local addresses are lost.
fn attach_set_state(ebpf: &mut Ebpf) -> Result<(), String> {
    let offsets = sock_offsets().map_err(|e| e.to_string())?;
    let map = ebpf
        .map_mut(names::MAP_SOCK_OFFSETS)
        .ok_or("the eBPF object has no SOCK_OFFSETS map")?;
    let mut array: Array<_, SockOffsets> = Array::try_from(map).map_err(|e| e.to_string())?;
    array.set(0, offsets, 0).map_err(|e| e.to_string())?;
    let program = program::<RawTracePoint>(ebpf, names::PROG_INET_SOCK_SET_STATE)
        .map_err(|e| e.to_string())?;
    program.load().map_err(|e| error_chain(&e))?;
    program
        .attach("inet_sock_set_state")
        .map_err(|e| error_chain(&e))?;
    Ok(())
}

/// `struct sock_common`'s address fields on this kernel; IPv6's may be missing.
fn sock_offsets() -> Result<SockOffsets, BtfError> {
    let data = std::fs::read(btf::VMLINUX).map_err(|e| BtfError::Unreadable(e.to_string()))?;
    let btf = Btf::parse(&data)?;
    let field = |name| btf.field_offset("sock_common", name);
    Ok(SockOffsets {
        family: field("skc_family")?,
        num: field("skc_num")?,
        rcv_saddr: field("skc_rcv_saddr")?,
        v6_rcv_saddr: field("skc_v6_rcv_saddr").unwrap_or(SockOffsets::NONE),
    })
}

/// Tracepoints are found through tracefs; mount it where aya looks if nothing has.
fn ensure_tracefs() -> Result<(), ProbeError> {
    const TRACEFS: &str = "/sys/kernel/tracing";
    for dir in [TRACEFS, "/sys/kernel/debug/tracing"] {
        if std::path::Path::new(dir).join("events").exists() {
            return Ok(());
        }
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    let source = std::ffi::CString::new("nodev").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(ProbeError::NoTracefs(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    log::info!("mounted tracefs at {TRACEFS}");
    Ok(())
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

/// Sets or clears `pid`'s bit in the watched bitmap. Only this thread writes the map, so the
/// read-modify-write of the word cannot lose another update.
fn set_watched(map: &mut aya::maps::Map, pid: u32, on: bool) -> Result<(), ProbeError> {
    if pid >= obs_common::PID_LIMIT {
        return Err(ProbeError::PidOutOfRange(pid));
    }
    let (slot, bit) = obs_common::watched_slot(pid);
    let mut words = aya::maps::Array::<_, u64>::try_from(map)?;
    let word = words.get(&slot, 0)?;
    let word = if on { word | bit } else { word & !bit };
    words.set(slot, word, 0)?;
    Ok(())
}

/// Detaches uprobes on a thread of its own, one after the other.
///
/// The kernel makes each detach wait for an RCU grace period, under a lock that all uprobe
/// perf events share: about 0.1 s per probe on a busy machine, measured (strace of `close`),
/// and no faster from several threads. Done where the probes are managed, a process's exit
/// would stall event handling for half a second. And a SIGKILL that lands while the kernel
/// restores a probe site makes it give up on that uprobe ("failed to unregister, leaking
/// uprobe": its breakpoint stays in the target), so every probe waiting on a thread of a
/// killed agent would leak; hence one thread, and one probe in flight.
struct Detacher {
    tx: Option<mpsc::Sender<Vec<UProbeLink>>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Probes handed over and not detached yet.
    pending: Arc<AtomicUsize>,
}

impl Detacher {
    fn start() -> Self {
        let (tx, rx) = mpsc::channel::<Vec<UProbeLink>>();
        let pending = Arc::new(AtomicUsize::new(0));
        let left = pending.clone();
        let thread = std::thread::Builder::new()
            .name("obs-detach".into())
            .spawn(move || {
                for links in rx {
                    for link in links {
                        drop(link);
                        left.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            });
        let (tx, thread) = match thread {
            Ok(thread) => (Some(tx), Some(thread)),
            Err(e) => {
                log::warn!("no thread to detach probes on ({e}); they are detached inline");
                (None, None)
            }
        };
        Self {
            tx,
            thread,
            pending,
        }
    }

    /// Hands `links` to the detaching thread (or detaches them here if there is none).
    fn detach(&self, links: Vec<UProbeLink>) {
        if links.is_empty() {
            return;
        }
        if let Some(tx) = &self.tx {
            let n = links.len();
            self.pending.fetch_add(n, Ordering::Relaxed);
            // The thread only ends when `tx` is dropped; if it died, the links come back in
            // the error and are dropped (detached) here.
            if tx.send(links).is_err() {
                self.pending.fetch_sub(n, Ordering::Relaxed);
            }
        }
    }

    fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    fn closed(&self) -> bool {
        self.tx.is_none()
    }

    /// Hands over `links`, the last ones, and lets the thread end when it has detached them
    /// and everything handed over before.
    fn close(&mut self, links: Vec<UProbeLink>) -> Detaching {
        if !links.is_empty() {
            log::info!("detaching {} uprobes", links.len());
        }
        self.detach(links);
        self.tx = None;
        Detaching(self.thread.take())
    }
}

/// Uprobes being detached at shutdown.
pub struct Detaching(Option<std::thread::JoinHandle<()>>);

impl Detaching {
    /// Returns when every uprobe is detached.
    pub fn wait(self) {
        if let Some(thread) = self.0 {
            let _ = thread.join();
        }
    }
}
