//! What obs-agent needs from a Go binary to report its runtime's vital signs: where the
//! runtime keeps its own counts (global variables, from the symbol table or, in a stripped
//! binary, from the code that uses them, see `runtime_globals`; at struct offsets from DWARF
//! or the offsets table), where to probe panics (emulated instructions where there is a stack
//! check), and how to name the functions behind addresses read from the process (Go's
//! function table).
//!
//! The runtime's state read (see `target::go_runtime`), per Go release:
//! - live goroutines, as `runtime.gcount` computes them: `allglen` minus the free goroutines
//!   (`sched.gFree` and every P's `gFree`: a count `n` up to Go 1.24, the lists' `size`
//!   from 1.25) minus the system goroutines (`sched.ngsys`);
//! - goroutines created since the process started: every one gets the next id; ids are
//!   handed to the Ps in batches from `sched.goidgen`, so the count is `goidgen` minus the
//!   ids the Ps hold unused (`p.goidcacheend - p.goidcache`);
//! - completed GC cycles, `memstats.numgc`, and total stop-the-world pause time,
//!   `memstats.pause_total_ns` (`PauseTotalNs`);
//! - the runtime's own histogram of GC pauses (what `/gc/pauses:seconds` reports):
//!   `memstats.gcPauseDist` up to Go 1.21, `sched.stwTotalTimeGC` from 1.22, a
//!   `timeHistogram` whose bucket scheme follows from its size (see [`PauseScheme`]);
//! - `gcController.heapMarked` (live heap after the last cycle) and
//!   `gcController.gcPercentHeapGoal` (the heap goal GOGC sets);
//! - the GC settings: `gcController.gcPercent` (GOGC) and `gcController.memoryLimit`
//!   (GOMEMLIMIT), as set by the environment or `runtime/debug`.

use std::{collections::HashMap, sync::Arc};

use super::{
    disasm::{self, ProbeSite, SiteKind},
    dwarf::{offset_of, Layouts},
    elf::{ElfFile, FunctionSymbol},
    go_binary::ProbePoint,
    pclntab::Pclntab,
    runtime_globals::{self, GlobalsError, GlobalsSource, RuntimeGlobals},
    SymbolsError,
};

pub const SCHEDT: &str = runtime_globals::SCHEDT;
/// `schedt.gFree` up to Go 1.24 (anonymous struct; DWARF names it by its type).
pub const SCHED_GFREE_COUNTED: &str =
    "struct { runtime.lock runtime.mutex; runtime.stack runtime.gList; runtime.noStack runtime.gList; runtime.n int32 }";
/// `schedt.gFree` from Go 1.25 (the lists count themselves).
pub const SCHED_GFREE_LISTS: &str =
    "struct { runtime.lock runtime.mutex; runtime.stack runtime.gList; runtime.noStack runtime.gList }";
pub const G_LIST: &str = "runtime.gList";
pub const P: &str = "runtime.p";
/// `p.gFree` up to Go 1.24; from 1.25 it is a `gList`.
pub const P_GFREE_COUNTED: &str = "struct { runtime.gList; runtime.n int32 }";
pub const MSTATS: &str = runtime_globals::MSTATS;
pub const TIME_HISTOGRAM: &str = "runtime.timeHistogram";
pub const GC_CONTROLLER: &str = runtime_globals::GC_CONTROLLER_STATE;

pub const GOPANIC: &str = "runtime.gopanic";
pub const RECOVERY: &str = "runtime.recovery";
pub const FATALPANIC: &str = "runtime.fatalpanic";
pub const PANIC_FUNCTIONS: [&str; 3] = [GOPANIC, RECOVERY, FATALPANIC];

/// Where the runtime keeps the figures read, as link-time addresses (add the process's load
/// bias for PIE) and offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuntimeState {
    /// `runtime.allglen` (uintptr).
    pub allglen: u64,
    /// `runtime.allp` (a `[]*p`).
    pub allp: u64,
    /// `sched.ngsys` (int32).
    pub ngsys: u64,
    /// The free-goroutine counts (int32) in `sched`: one (`gFree.n`) or two (the lists' sizes).
    pub sched_free: [Option<u64>; 2],
    /// Offset of the free-goroutine count (int32) in a `p`.
    pub p_free: u64,
    /// `sched.goidgen` (uint64): the last goroutine id handed out, in batches to the Ps.
    pub goidgen: u64,
    /// Offsets of `p.goidcache` and `p.goidcacheend`: a P's ids not used yet.
    pub p_goidcache: u64,
    pub p_goidcacheend: u64,
    /// `memstats.numgc` (uint32) and `memstats.pause_total_ns` (uint64).
    pub numgc: u64,
    pub pause_total_ns: u64,
    pub pauses: PauseHistogram,
    /// `gcController.heapMarked` and `gcController.gcPercentHeapGoal` (uint64 each).
    pub heap_marked: u64,
    pub heap_goal: u64,
    /// `gcController.gcPercent` (GOGC; an `atomic.Int32`, -1 for off) and
    /// `gcController.memoryLimit` (GOMEMLIMIT; an `atomic.Int64`, `math.MaxInt64` unset):
    /// the settings, whether from the environment or `runtime/debug`.
    pub gc_percent: u64,
    pub memory_limit: u64,
    /// The globals the addresses above are in, and where they were found.
    pub globals: RuntimeGlobals,
    pub globals_source: GlobalsSource,
}

/// The runtime's `timeHistogram` of GC pauses: `counts` then `underflow` (then `overflow`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PauseHistogram {
    pub counts: u64,
    pub buckets: usize,
    pub underflow: u64,
    pub overflow: Option<u64>,
    pub scheme: PauseScheme,
}

/// How a release's `timeHistogram` splits durations into buckets (runtime/histogram.go).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseScheme {
    /// Go 1.19: 45 super-buckets of 16 sub-buckets; values under 16 ns in the first.
    Go119,
    /// Go 1.20+: buckets from 2^9 ns (the first holds everything below) to 2^48 ns, 4
    /// sub-buckets each.
    Go120,
}

impl PauseScheme {
    const GO119_BUCKETS: usize = 45 * 16;
    const GO120_BUCKETS: usize = (48 - 9 + 1) * 4;

    fn for_buckets(n: usize) -> Option<Self> {
        match n {
            Self::GO119_BUCKETS => Some(Self::Go119),
            Self::GO120_BUCKETS => Some(Self::Go120),
            _ => None,
        }
    }

    /// Smallest duration (ns) counted in bucket `i` of `counts`.
    pub fn lower_bound_ns(self, i: usize) -> u64 {
        match self {
            PauseScheme::Go119 => {
                let (superb, sub) = (i / 16, (i % 16) as u64);
                if superb == 0 {
                    sub
                } else {
                    (1 << (superb + 3)) + (sub << (superb - 1))
                }
            }
            PauseScheme::Go120 => {
                let (bucket, sub) = (i / 4, (i % 4) as u64);
                if bucket == 0 {
                    sub << 6
                } else {
                    let bit = bucket + 8;
                    (1 << (bit - 1)) + (sub << (bit - 3))
                }
            }
        }
    }

    /// Number of buckets in `counts`.
    pub fn buckets(self) -> usize {
        match self {
            PauseScheme::Go119 => Self::GO119_BUCKETS,
            PauseScheme::Go120 => Self::GO120_BUCKETS,
        }
    }
}

/// Why the runtime's own counts cannot be read.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum RuntimeStateError {
    /// No struct layouts for the binary, or they lack a field read.
    #[error(transparent)]
    StructOffsets(Arc<SymbolsError>),
    #[error(transparent)]
    Globals(#[from] GlobalsError),
    #[error("a GC pause histogram of {buckets} buckets (unknown scheme)")]
    UnknownPauseScheme { buckets: usize },
}

impl From<SymbolsError> for RuntimeStateError {
    fn from(e: SymbolsError) -> Self {
        Self::StructOffsets(Arc::new(e))
    }
}

/// Panic probes: `gopanic` (every panic), `recovery` (a deferred call recovered),
/// `fatalpanic` (the process dies of it). Each is optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PanicProbes {
    pub gopanic: Option<ProbePoint>,
    pub recovery: Option<ProbePoint>,
    pub fatalpanic: Option<ProbePoint>,
}

impl PanicProbes {
    pub fn points(&self) -> impl Iterator<Item = ProbePoint> {
        [self.gopanic, self.recovery, self.fatalpanic]
            .into_iter()
            .flatten()
    }
}

/// The runtime state's addresses: the globals from the symbol table, else (stripped) from
/// the code of the runtime functions in `functions` (see `runtime_globals`); an error when
/// they cannot be found without guessing.
pub fn runtime_state(
    elf: &ElfFile,
    functions: &HashMap<String, FunctionSymbol>,
    l: &Layouts,
) -> Result<RuntimeState, RuntimeStateError> {
    let (globals, globals_source) = runtime_globals::find(elf, functions, l)?;
    let off = |s: &str, m: &str| offset_of(l, s, m).map_err(RuntimeStateError::from);
    let sched = globals.sched;
    let sched_gfree = sched + off(SCHEDT, "gFree")?;
    let (sched_free, p_free) = if l.contains_key(SCHED_GFREE_COUNTED) {
        (
            [Some(sched_gfree + off(SCHED_GFREE_COUNTED, "n")?), None],
            off(P, "gFree")? + off(P_GFREE_COUNTED, "n")?,
        )
    } else {
        let size = off(G_LIST, "size")?;
        (
            [
                Some(sched_gfree + off(SCHED_GFREE_LISTS, "stack")? + size),
                Some(sched_gfree + off(SCHED_GFREE_LISTS, "noStack")? + size),
            ],
            off(P, "gFree")? + size,
        )
    };
    let memstats = globals.memstats;
    let histogram = match offset_of(l, MSTATS, "gcPauseDist") {
        Ok(o) => memstats + o,
        Err(_) => sched + off(SCHEDT, "stwTotalTimeGC")?,
    };
    let counts = off(TIME_HISTOGRAM, "counts")?;
    let underflow = off(TIME_HISTOGRAM, "underflow")?;
    let buckets = usize::try_from((underflow - counts) / 8).unwrap_or(0);
    let scheme = PauseScheme::for_buckets(buckets)
        .ok_or(RuntimeStateError::UnknownPauseScheme { buckets })?;
    let gc = globals.gc_controller;
    Ok(RuntimeState {
        allglen: globals.allglen,
        allp: globals.allp,
        ngsys: sched + off(SCHEDT, "ngsys")?,
        goidgen: sched + off(SCHEDT, "goidgen")?,
        p_goidcache: off(P, "goidcache")?,
        p_goidcacheend: off(P, "goidcacheend")?,
        sched_free,
        p_free,
        numgc: memstats + off(MSTATS, "numgc")?,
        pause_total_ns: memstats + off(MSTATS, "pause_total_ns")?,
        pauses: PauseHistogram {
            counts: histogram + counts,
            buckets,
            underflow: histogram + underflow,
            overflow: offset_of(l, TIME_HISTOGRAM, "overflow")
                .ok()
                .map(|o| histogram + o),
            scheme,
        },
        heap_marked: gc + off(GC_CONTROLLER, "heapMarked")?,
        heap_goal: gc + off(GC_CONTROLLER, "gcPercentHeapGoal")?,
        // The atomics' value is their first field (the others take no room).
        gc_percent: gc + off(GC_CONTROLLER, "gcPercent")?,
        memory_limit: gc + off(GC_CONTROLLER, "memoryLimit")?,
        globals,
        globals_source,
    })
}

/// Where to probe panics: the stack-check jump of `gopanic` and `recovery` (emulated),
/// the first instruction of `fatalpanic` (nosplit: no stack check; hit once, as the process
/// dies).
pub fn panic_probes(elf: &ElfFile, functions: &HashMap<String, FunctionSymbol>) -> PanicProbes {
    let point = |function: &'static str, stack_check: bool| -> Option<ProbePoint> {
        let f = functions.get(function)?;
        let site = if stack_check {
            let code = elf.bytes_at(f.address, f.size.clamp(1, 64))?;
            disasm::find_stack_check_jump(code, f.address)?
        } else {
            ProbeSite {
                offset: 0,
                kind: SiteKind::Entry,
            }
        };
        let address = f.address + site.offset;
        Some(ProbePoint {
            function,
            address,
            file_offset: elf.file_offset(address)?,
            site,
        })
    };
    PanicProbes {
        gopanic: point(GOPANIC, true),
        recovery: point(RECOVERY, true),
        fatalpanic: point(FATALPANIC, false),
    }
}

/// Names of the functions at addresses read from a process (goroutine start functions,
/// return addresses), from Go's function table, which stripped binaries keep too.
pub struct FunctionNames {
    elf: ElfFile,
}

impl std::fmt::Debug for FunctionNames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FunctionNames")
    }
}

impl FunctionNames {
    pub fn new(elf: ElfFile) -> Self {
        Self { elf }
    }

    /// Names for link-time addresses (`None` where the table has none).
    pub fn names(&self, pcs: &[u64]) -> Vec<Option<String>> {
        match Pclntab::parse(&self.elf) {
            Ok(table) => pcs.iter().map(|&pc| table.function_name_at(pc)).collect(),
            Err(e) => {
                log::debug!("function table: {e}");
                vec![None; pcs.len()]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_buckets_follow_the_runtime() {
        // Go 1.20+: bucket 0 sub 1 starts at 64 ns; bucket 1 at 2^8; bucket 2 at 2^9.
        let s = PauseScheme::Go120;
        assert_eq!(s.lower_bound_ns(1), 64);
        assert_eq!(s.lower_bound_ns(4), 256);
        assert_eq!(s.lower_bound_ns(5), 256 + 64);
        assert_eq!(s.lower_bound_ns(8), 512);
        assert_eq!(s.lower_bound_ns(9), 512 + 128);
        // Go 1.19: exact below 16 ns, then super-bucket 1 = [16, 32) in 1 ns steps.
        let s = PauseScheme::Go119;
        assert_eq!(s.lower_bound_ns(15), 15);
        assert_eq!(s.lower_bound_ns(16), 16);
        assert_eq!(s.lower_bound_ns(17), 17);
        assert_eq!(s.lower_bound_ns(32), 32);
        assert_eq!(s.lower_bound_ns(33), 34);
        for scheme in [PauseScheme::Go119, PauseScheme::Go120] {
            for i in 1..scheme.buckets() {
                assert!(scheme.lower_bound_ns(i) > scheme.lower_bound_ns(i - 1));
            }
        }
    }
}
