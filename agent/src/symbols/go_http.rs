//! What obs-agent needs from a Go net/http binary: that it is an HTTP server, where to probe
//! `(*ServeMux).ServeHTTP` to discover its muxes (an emulated instruction, found by
//! disassembly), and where a mux keeps its registered patterns (Go 1.22+, from DWARF). No
//! offset is hard-coded for any Go version. Functions are found in stripped binaries too (Go's
//! function table); a stripped Go 1.22+ binary still lacks the patterns' layout.

use std::path::Path;

use super::{
    buildinfo::{self, BuildInfo},
    disasm::{self, ProbeSite, SiteKind},
    dwarf::{self, offset_of},
    elf::ElfFile,
    SymbolsError,
};

pub const SERVER_HANDLER: &str = "net/http.serverHandler.ServeHTTP";
pub const MUX_SERVE_HTTP: &str = "net/http.(*ServeMux).ServeHTTP";

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
    pub node_multi_child: u64,
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

#[derive(Clone, Debug)]
pub struct GoHttpBinary {
    pub build: BuildInfo,
    /// The mux-discovery probe, when the binary has ServeMux with patterns (Go 1.22+).
    pub mux_discovery: Option<(ProbePoint, MuxLayout)>,
}

impl GoHttpBinary {
    pub fn probe_points(&self) -> Vec<ProbePoint> {
        self.mux_discovery.iter().map(|(p, _)| *p).collect()
    }
}

/// Whether the file is a Go program (has Go build info).
pub fn is_go(elf: &ElfFile) -> bool {
    elf.has_section(".go.buildinfo")
}

/// Whether this Go's ServeMux keeps its patterns in a routing tree (Go 1.22+). A version that
/// cannot be read is assumed to.
fn mux_has_routing_tree(go_version: &str) -> bool {
    go_minor_version(go_version).is_none_or(|minor| minor >= 22)
}

/// 19 for "go1.19.8", 22 for "go1.22rc1", 24 for "devel go1.24-0a1b2c3 ...".
fn go_minor_version(go_version: &str) -> Option<u32> {
    let version = go_version.strip_prefix("devel ").unwrap_or(go_version);
    let rest = version.strip_prefix("go1.")?;
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn mux_layout(l: &dwarf::Layouts) -> Result<MuxLayout, SymbolsError> {
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
        node_multi_child: offset_of(l, ROUTING_NODE, "multiChild")?,
        node_empty_child: offset_of(l, ROUTING_NODE, "emptyChild")?,
        mapping_s: offset_of(l, MAPPING, "s")?,
        mapping_m: offset_of(l, MAPPING, "m")?,
        entry_value,
        entry_size: entry_value + POINTER_SIZE,
        pattern_str: offset_of(l, PATTERN, "str")?,
        map,
    })
}

pub fn analyze_path(path: &Path) -> Result<GoHttpBinary, SymbolsError> {
    analyze(&ElfFile::open(path)?)
}

pub fn analyze(elf: &ElfFile) -> Result<GoHttpBinary, SymbolsError> {
    let build = elf
        .section(".go.buildinfo")
        .ok_or(SymbolsError::NotGo)
        .and_then(|s| {
            buildinfo::parse(&s).map_err(|e| SymbolsError::BadElf(format!("Go build info: {e}")))
        })?;
    let functions = elf.go_functions(&[SERVER_HANDLER, MUX_SERVE_HTTP])?;
    if !functions.contains_key(SERVER_HANDLER) {
        return Err(SymbolsError::NotHttpServer(SERVER_HANDLER));
    }
    let layouts = dwarf::struct_layouts(
        elf,
        &[
            SERVE_MUX,
            PATTERN,
            ROUTING_NODE,
            MAPPING,
            ENTRY,
            SWISS_MAP,
            SWISS_TABLE,
            SWISS_GROUPS,
            SWISS_GROUP,
            HMAP,
            BUCKET,
        ],
    )?;
    let Some(layouts) = layouts else {
        // Before Go 1.22 a ServeMux has no routing tree: there is no layout to know.
        if !mux_has_routing_tree(&build.go_version) {
            return Ok(GoHttpBinary {
                build,
                mux_discovery: None,
            });
        }
        return Err(SymbolsError::NoDebugInfo {
            go_version: build.go_version,
        });
    };
    // Before Go 1.22 a ServeMux has no routing tree: routes are collapsed paths.
    let layout = mux_layout(&layouts).ok();
    let mux_discovery = match (layout, functions.get(MUX_SERVE_HTTP)) {
        (Some(layout), Some(sym)) => {
            let no_site = |reason: &str| SymbolsError::NoProbeSite {
                function: MUX_SERVE_HTTP,
                reason: reason.to_owned(),
            };
            let code = elf
                .bytes_at(sym.address, sym.size.clamp(1, 64))
                .ok_or_else(|| no_site("its address is outside the file's segments"))?;
            let site = disasm::find_stack_check_jump(code, sym.address).unwrap_or(ProbeSite {
                offset: 0,
                kind: SiteKind::Entry,
            });
            let address = sym.address + site.offset;
            let file_offset = elf
                .file_offset(address)
                .ok_or_else(|| no_site("no file offset"))?;
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
    Ok(GoHttpBinary {
        build,
        mux_discovery,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_versions_with_a_routing_tree() {
        assert_eq!(go_minor_version("go1.19.8"), Some(19));
        assert_eq!(go_minor_version("go1.22rc1"), Some(22));
        assert_eq!(go_minor_version("go1.23.9 X:boringcrypto"), Some(23));
        assert_eq!(go_minor_version("devel go1.24-0a1b2c3 Tue"), Some(24));
        assert_eq!(go_minor_version("gccgo"), None);
        assert!(!mux_has_routing_tree("go1.21.13"));
        assert!(mux_has_routing_tree("go1.22.0"));
        assert!(mux_has_routing_tree("unknown"));
    }
}
