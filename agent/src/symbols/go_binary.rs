//! What obs-agent needs from a Go binary: its build info; whether it is a net/http server;
//! where to probe `(*ServeMux).ServeHTTP` to discover its muxes (an emulated instruction,
//! found by disassembly), and where a mux keeps its registered patterns (Go 1.22+, from DWARF
//! or the offsets table, see `offsets`); the goroutine, transport and panic probe sites; where
//! the runtime keeps its own counts. No offset is hard-coded for any Go version. Functions
//! are found in stripped binaries too (Go's function table, see `pclntab`).

use std::{path::Path, sync::Arc};

use obs_common::go_trace::GoOffsets;

use super::{
    buildinfo::{self, BuildInfo},
    disasm::{self, ProbeSite, SiteKind},
    dwarf::{self, offset_of},
    elf::ElfFile,
    go_runtime,
    offsets::{self, LayoutSource},
    runtime_globals, NoSite, SymbolsError,
};

pub const SERVER_HANDLER: &str = "net/http.serverHandler.ServeHTTP";
pub const MUX_SERVE_HTTP: &str = "net/http.(*ServeMux).ServeHTTP";
/// Goroutine creation: the closure `newproc` runs on the system stack, which calls `runqput`
/// with the new goroutine.
pub const NEWPROC_CLOSURE: &str = "runtime.newproc.func1";
const RUNQPUT: &str = "runtime.runqput";
/// net/http's transport, called on the goroutine that made the request, per connection.
pub const ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";

const G: &str = "runtime.g";
const M: &str = "runtime.m";
const PERSIST_CONN: &str = "net/http.persistConn";
const NET_CONN: &str = "net.conn";
const NET_FD: &str = "net.netFD";
const POLL_FD: &str = "internal/poll.FD";

const SERVE_MUX: &str = "net/http.ServeMux";
const PATTERN: &str = "net/http.pattern";
const ROUTING_NODE: &str = "net/http.routingNode";
const MAPPING: &str = "net/http.mapping[string,*net/http.routingNode]";
const ENTRY: &str = "net/http.entry[string,*net/http.routingNode]";
// Swiss-table maps (Go 1.24+).
const SWISS_MAP: &str = "internal/runtime/maps.Map";
const SWISS_TABLE: &str = "internal/runtime/maps.table";
const SWISS_GROUPS: &str = "internal/runtime/maps.groupsReference";
const SWISS_GROUP: &str = "noalg.map.group[string]*net/http.routingNode";
// Bucket maps (Go 1.22, 1.23): DWARF describes them per map type, under these names.
const HMAP: &str = "hash<string,*net/http.routingNode>";
const BUCKET: &str = "bucket<string,*net/http.routingNode>";

/// Every struct member the agent reads, by struct: the one list that reading DWARF, the
/// offsets table (`agent/data/go-offsets.json`) and its generator (`cargo xtask go-offsets`,
/// through `obs-agent inspect --json`) share. A release holds the structs it has.
pub const WANTED_FIELDS: &[(&str, &[&str])] = &[
    (SERVE_MUX, &["tree"]),
    (PATTERN, &["str"]),
    (
        ROUTING_NODE,
        &["pattern", "children", "multiChild", "emptyChild"],
    ),
    (MAPPING, &["s", "m"]),
    (ENTRY, &["value"]),
    (SWISS_MAP, &["dirPtr", "dirLen"]),
    (SWISS_TABLE, &["groups"]),
    (SWISS_GROUPS, &["data", "lengthMask"]),
    (SWISS_GROUP, &["ctrl", "slots"]),
    (HMAP, &["B", "buckets", "oldbuckets"]),
    (BUCKET, &["tophash", "values", "elems", "overflow"]),
    (G, &["goid", "m", "startpc"]),
    (M, &["curg"]),
    (PERSIST_CONN, &["conn"]),
    (NET_CONN, &["fd"]),
    (NET_FD, &["pfd"]),
    (POLL_FD, &["Sysfd"]),
    (
        go_runtime::SCHEDT,
        &["gFree", "ngsys", "stwTotalTimeGC", "goidgen"],
    ),
    (go_runtime::SCHED_GFREE_COUNTED, &["n"]),
    (go_runtime::SCHED_GFREE_LISTS, &["stack", "noStack"]),
    (go_runtime::G_LIST, &["size"]),
    (go_runtime::P, &["gFree", "goidcache", "goidcacheend"]),
    (go_runtime::P_GFREE_COUNTED, &["n"]),
    (
        go_runtime::MSTATS,
        &["numgc", "pause_total_ns", "gcPauseDist"],
    ),
    (
        go_runtime::TIME_HISTOGRAM,
        &["counts", "underflow", "overflow"],
    ),
    // heapMarked, gcPercentHeapGoal, gcPercent and memoryLimit are read; memoryLimit and
    // lastHeapGoal locate `gcController` in stripped binaries (see `runtime_globals`).
    (
        go_runtime::GC_CONTROLLER,
        &[
            "heapMarked",
            "gcPercentHeapGoal",
            "gcPercent",
            "memoryLimit",
            "lastHeapGoal",
        ],
    ),
];

/// Where one probe goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbePoint {
    pub function: &'static str,
    /// Link-time virtual address of the probed instruction.
    pub address: u64,
    /// File offset of the probed instruction (what the uprobe API takes).
    pub file_offset: u64,
    pub site: ProbeSite,
}

/// Where a Go 1.22+ ServeMux keeps its patterns: in its routing tree, whose nodes hold a
/// `*pattern` (leaves) and children in a `mapping` (a slice of entries while small, a Go map
/// beyond that).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MuxLayout {
    /// `ServeMux.tree` (a routingNode, inline).
    pub tree: u64,
    pub node_pattern: u64,
    pub node_children: u64,
    /// `routingNode.multiChild` (Go 1.23+). In Go 1.22 the `{x...}` child is the `children`
    /// entry keyed "*", which the walk visits with the others.
    pub node_multi_child: Option<u64>,
    pub node_empty_child: u64,
    /// `mapping.s` ([]entry) and `mapping.m` (map[string]*routingNode).
    pub mapping_s: u64,
    pub mapping_m: u64,
    /// `entry.value` and the size of an entry.
    pub entry_value: u64,
    pub entry_size: u64,
    /// `pattern.str` (string): the pattern as registered.
    pub pattern_str: u64,
    pub map: GoMapLayout,
}

/// The runtime's map layout for `map[string]*routingNode` in this binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoMapLayout {
    /// Swiss tables (Go 1.24+): a directory of tables of groups of 8 slots with control bytes.
    Swiss {
        dir_ptr: u64,
        dir_len: u64,
        table_groups: u64,
        groups_data: u64,
        groups_mask: u64,
        group_ctrl: u64,
        group_slots: u64,
        /// Offset of the value in a slot, and a slot's size.
        slot_elem: u64,
        slot_size: u64,
    },
    /// Buckets of 8 (Go 1.22, 1.23), with overflow chains and old buckets while growing.
    Buckets {
        log2_buckets: u64,
        buckets: u64,
        old_buckets: u64,
        bucket_tophash: u64,
        bucket_elems: u64,
        bucket_overflow: u64,
    },
}

/// Size of a Go string header and of a pointer on amd64: the language's layout of
/// `struct { key string; elem *T }` follows from them.
const STRING_SIZE: u64 = 16;
const POINTER_SIZE: u64 = 8;

/// Following goroutines, so that an outgoing call is linked to the request it is made for
/// (see `obs_common::go_trace`): the two probe sites and the offsets the programs read with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoroutineTracking {
    /// The `call runtime.runqput` in `runtime.newproc.func1`.
    pub newproc: ProbePoint,
    /// The stack-check jump of `(*persistConn).roundTrip`, when the binary has an HTTP client.
    pub round_trip: Option<ProbePoint>,
    pub offsets: GoOffsets,
}

/// Why goroutines cannot be followed in a binary.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum GoroutineTrackingError {
    /// No struct layouts for the binary, or they lack a field read.
    #[error(transparent)]
    StructOffsets(Arc<SymbolsError>),
    #[error("{NEWPROC_CLOSURE} or {RUNQPUT} not found")]
    CreationFunctionsMissing,
    #[error("{function} is outside the file's segments")]
    OutsideSegments { function: &'static str },
    #[error("no call to {RUNQPUT} in {NEWPROC_CLOSURE}")]
    NoRunqputCall,
    #[error("no stack-check jump in {function}")]
    NoStackCheckJump { function: &'static str },
    #[error("{function}: no file offset for {address:#x}")]
    NoFileOffset {
        function: &'static str,
        address: u64,
    },
}

impl From<SymbolsError> for GoroutineTrackingError {
    fn from(e: SymbolsError) -> Self {
        Self::StructOffsets(Arc::new(e))
    }
}

#[derive(Clone, Debug)]
pub struct GoBinary {
    pub build: BuildInfo,
    /// Goroutine tracking, or why it is not possible for this binary (spans then fall back
    /// to linking a call to the process's sole request in flight).
    pub goroutines: Result<GoroutineTracking, GoroutineTrackingError>,
    /// The mux-discovery probe, when the binary has ServeMux with patterns (Go 1.22+).
    pub mux_discovery: Option<(ProbePoint, MuxLayout)>,
    /// Where the mux layout's offsets came from (with `mux_discovery`).
    pub layout_source: Option<LayoutSource>,
    /// Panic probes (where the functions were found).
    pub panics: go_runtime::PanicProbes,
    /// Where the runtime keeps its own counts, or why they cannot be read.
    pub runtime_state: Result<go_runtime::RuntimeState, go_runtime::RuntimeStateError>,
    /// The link-time address of the file's first loaded page (for a process's load bias).
    pub image_base: Option<u64>,
    /// Names of functions at addresses (set by whoever keeps the binary open).
    pub function_names: Option<std::sync::Arc<go_runtime::FunctionNames>>,
}

impl GoBinary {
    pub fn probe_points(&self) -> Vec<ProbePoint> {
        let goroutines = self
            .goroutines
            .iter()
            .flat_map(|g| [Some(g.newproc), g.round_trip]);
        self.mux_discovery
            .iter()
            .map(|(p, _)| *p)
            .chain(goroutines.flatten())
            .chain(self.panics.points())
            .collect()
    }
}

/// Whether the file is a Go program (has Go build info).
pub fn is_go(elf: &ElfFile) -> bool {
    elf.has_section(".go.buildinfo")
}

/// The mux layout from struct layouts (DWARF or the offsets table).
pub fn mux_layout(l: &dwarf::Layouts) -> Result<MuxLayout, SymbolsError> {
    let map = if l.contains_key(SWISS_MAP) {
        let slots = offset_of(l, SWISS_GROUP, "slots")?;
        GoMapLayout::Swiss {
            dir_ptr: offset_of(l, SWISS_MAP, "dirPtr")?,
            dir_len: offset_of(l, SWISS_MAP, "dirLen")?,
            table_groups: offset_of(l, SWISS_TABLE, "groups")?,
            groups_data: offset_of(l, SWISS_GROUPS, "data")?,
            groups_mask: offset_of(l, SWISS_GROUPS, "lengthMask")?,
            group_ctrl: offset_of(l, SWISS_GROUP, "ctrl")?,
            group_slots: slots,
            slot_elem: STRING_SIZE,
            slot_size: STRING_SIZE + POINTER_SIZE,
        }
    } else {
        GoMapLayout::Buckets {
            log2_buckets: offset_of(l, HMAP, "B")?,
            buckets: offset_of(l, HMAP, "buckets")?,
            old_buckets: offset_of(l, HMAP, "oldbuckets")?,
            bucket_tophash: offset_of(l, BUCKET, "tophash")?,
            bucket_elems: offset_of(l, BUCKET, "values")
                .or_else(|_| offset_of(l, BUCKET, "elems"))?,
            bucket_overflow: offset_of(l, BUCKET, "overflow")?,
        }
    };
    let entry_value = offset_of(l, ENTRY, "value")?;
    Ok(MuxLayout {
        tree: offset_of(l, SERVE_MUX, "tree")?,
        node_pattern: offset_of(l, ROUTING_NODE, "pattern")?,
        node_children: offset_of(l, ROUTING_NODE, "children")?,
        node_multi_child: offset_of(l, ROUTING_NODE, "multiChild").ok(),
        node_empty_child: offset_of(l, ROUTING_NODE, "emptyChild")?,
        mapping_s: offset_of(l, MAPPING, "s")?,
        mapping_m: offset_of(l, MAPPING, "m")?,
        entry_value,
        entry_size: entry_value + POINTER_SIZE,
        pattern_str: offset_of(l, PATTERN, "str")?,
        map,
    })
}

pub fn analyze_path(path: &Path) -> Result<GoBinary, SymbolsError> {
    analyze(&ElfFile::open(path)?)
}

pub fn analyze(elf: &ElfFile) -> Result<GoBinary, SymbolsError> {
    let build = elf
        .section(".go.buildinfo")
        .ok_or(SymbolsError::NotGo)
        .and_then(|s| buildinfo::parse(&s).map_err(SymbolsError::from))?;
    let mut wanted = vec![
        SERVER_HANDLER,
        MUX_SERVE_HTTP,
        NEWPROC_CLOSURE,
        RUNQPUT,
        ROUND_TRIP,
    ];
    wanted.extend(go_runtime::PANIC_FUNCTIONS);
    wanted.extend(runtime_globals::CODE_FUNCTIONS);
    let functions = elf.go_functions(&wanted)?;
    if !functions.contains_key(SERVER_HANDLER) {
        return Err(SymbolsError::NotHttpServer(SERVER_HANDLER));
    }
    // Before Go 1.22 a ServeMux has no routing tree: routes are collapsed paths, and no
    // layouts are needed.
    let release = offsets::GoRelease::from_go_version(&build.go_version);
    let layouts = match functions.get(MUX_SERVE_HTTP) {
        Some(_) if release.is_none_or(|r| r.has_routing_tree()) => {
            Some(offsets::layouts_for(elf, &build)?)
        }
        _ => None,
    };
    let layout = layouts.as_ref().and_then(|(l, _)| mux_layout(l).ok());
    let mux_discovery = match (layout, functions.get(MUX_SERVE_HTTP)) {
        (Some(layout), Some(sym)) => {
            let no_site = |reason| SymbolsError::NoProbeSite {
                function: MUX_SERVE_HTTP,
                reason,
            };
            let code = elf
                .bytes_at(sym.address, sym.size.clamp(1, 64))
                .ok_or_else(|| no_site(NoSite::OutsideSegments))?;
            let site = disasm::find_stack_check_jump(code, sym.address).unwrap_or(ProbeSite {
                offset: 0,
                kind: SiteKind::Entry,
            });
            let address = sym.address + site.offset;
            let file_offset = elf
                .file_offset(address)
                .ok_or_else(|| no_site(NoSite::NoFileOffset))?;
            Some((
                ProbePoint {
                    function: MUX_SERVE_HTTP,
                    address,
                    file_offset,
                    site,
                },
                layout,
            ))
        }
        _ => None,
    };
    let layout_source = mux_discovery.and(layouts).map(|(_, source)| source);
    let goroutines = goroutine_tracking(elf, &build, &functions);
    let runtime_state = offsets::layouts_for(elf, &build)
        .map_err(go_runtime::RuntimeStateError::from)
        .and_then(|(l, _)| go_runtime::runtime_state(elf, &functions, &l));
    Ok(GoBinary {
        build,
        goroutines,
        mux_discovery,
        layout_source,
        panics: go_runtime::panic_probes(elf, &functions),
        runtime_state,
        image_base: elf.image_base(),
        function_names: None,
    })
}

/// The offsets goroutine tracking reads with: the runtime's, always; the transport's (for
/// the `roundTrip` probe) when the binary has net/http's client, else zero (`transport`
/// false).
pub fn go_offsets(l: &dwarf::Layouts) -> Result<(GoOffsets, bool), SymbolsError> {
    let mut offsets = GoOffsets {
        g_goid: offset_of(l, G, "goid")?,
        g_m: offset_of(l, G, "m")?,
        m_curg: offset_of(l, M, "curg")?,
        g_startpc: offset_of(l, G, "startpc")?,
        ..GoOffsets::default()
    };
    let transport = (|| -> Result<(), SymbolsError> {
        offsets.pconn_conn = offset_of(l, PERSIST_CONN, "conn")?;
        offsets.conn_fd = offset_of(l, NET_CONN, "fd")?;
        offsets.netfd_sysfd = offset_of(l, NET_FD, "pfd")? + offset_of(l, POLL_FD, "Sysfd")?;
        Ok(())
    })()
    .is_ok();
    Ok((offsets, transport))
}

fn goroutine_tracking(
    elf: &ElfFile,
    build: &BuildInfo,
    functions: &std::collections::HashMap<String, super::elf::FunctionSymbol>,
) -> Result<GoroutineTracking, GoroutineTrackingError> {
    let (layouts, _) = offsets::layouts_for(elf, build)?;
    let (offsets, transport) = go_offsets(&layouts)?;
    let (Some(closure), Some(runqput)) = (functions.get(NEWPROC_CLOSURE), functions.get(RUNQPUT))
    else {
        return Err(GoroutineTrackingError::CreationFunctionsMissing);
    };
    let code = elf
        .bytes_at(closure.address, closure.size.clamp(1, 512))
        .ok_or(GoroutineTrackingError::OutsideSegments {
            function: NEWPROC_CLOSURE,
        })?;
    let call = disasm::find_call_to(code, closure.address, runqput.address)
        .ok_or(GoroutineTrackingError::NoRunqputCall)?;
    let newproc = point(elf, NEWPROC_CLOSURE, closure.address, call)?;
    let round_trip = match functions.get(ROUND_TRIP).filter(|_| transport) {
        Some(f) => {
            let code = elf.bytes_at(f.address, f.size.clamp(1, 64)).ok_or(
                GoroutineTrackingError::OutsideSegments {
                    function: ROUND_TRIP,
                },
            )?;
            let site = disasm::find_stack_check_jump(code, f.address).ok_or(
                GoroutineTrackingError::NoStackCheckJump {
                    function: ROUND_TRIP,
                },
            )?;
            Some(point(elf, ROUND_TRIP, f.address, site)?)
        }
        None => None,
    };
    Ok(GoroutineTracking {
        newproc,
        round_trip,
        offsets,
    })
}

/// The probe point at `site` of the function at `function_address`.
fn point(
    elf: &ElfFile,
    function: &'static str,
    function_address: u64,
    site: ProbeSite,
) -> Result<ProbePoint, GoroutineTrackingError> {
    let address = function_address + site.offset;
    let file_offset = elf
        .file_offset(address)
        .ok_or(GoroutineTrackingError::NoFileOffset { function, address })?;
    Ok(ProbePoint {
        function,
        address,
        file_offset,
        site,
    })
}
