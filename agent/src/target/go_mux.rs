//! Reading a Go 1.22+ ServeMux's registered patterns out of a process's memory: a bounded walk
//! of its routing tree, through child mappings that are slices while small and Go maps
//! (swiss tables or buckets, per the binary's layout) beyond that.

use std::collections::HashSet;

use super::memory::ProcessMemory;
use crate::symbols::go_binary::{GoMapLayout, MuxLayout};

/// Most tree nodes visited per mux (a mux with thousands of routes is still covered).
const MAX_NODES: usize = 20_000;
/// Most map groups or buckets read per map.
const MAX_GROUPS: u64 = 4096;

/// The pattern strings registered with the mux at `mux`.
pub fn patterns(mem: &ProcessMemory, layout: &MuxLayout, mux: u64) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    // The root node is inline in the ServeMux.
    let mut stack = vec![mux + layout.tree];
    while let Some(node) = stack.pop() {
        if node == 0 || !seen.insert(node) || seen.len() > MAX_NODES {
            continue;
        }
        let pattern = mem.u64(node + layout.node_pattern)?;
        if pattern != 0 {
            out.push(mem.go_string(pattern + layout.pattern_str)?);
        }
        if let Some(multi_child) = layout.node_multi_child {
            stack.push(mem.u64(node + multi_child)?);
        }
        stack.push(mem.u64(node + layout.node_empty_child)?);
        let mapping = node + layout.node_children;
        let (entries, n) = (
            mem.u64(mapping + layout.mapping_s)?,
            mem.u64(mapping + layout.mapping_s + 8)?,
        );
        for i in 0..n.min(super::memory::MAX_SLICE) {
            stack.push(mem.u64(entries + i * layout.entry_size + layout.entry_value)?);
        }
        let map = mem.u64(mapping + layout.mapping_m)?;
        if map != 0 {
            map_values(mem, &layout.map, map, &mut stack)?;
        }
    }
    Ok(out)
}

/// Appends the (pointer) values of the Go map at `map` to `out`.
fn map_values(
    mem: &ProcessMemory,
    layout: &GoMapLayout,
    map: u64,
    out: &mut Vec<u64>,
) -> std::io::Result<()> {
    match *layout {
        GoMapLayout::Swiss {
            dir_ptr,
            dir_len,
            table_groups,
            groups_data,
            groups_mask,
            group_ctrl,
            group_slots,
            slot_elem,
            slot_size,
        } => {
            let group_size = group_slots + 8 * slot_size;
            let dir = mem.u64(map + dir_ptr)?;
            let tables = mem.u64(map + dir_len)?;
            let mut groups = Vec::new();
            if tables == 0 {
                // A small map: the directory pointer is its only group.
                groups.push(dir);
            } else {
                let mut seen = HashSet::new();
                for i in 0..tables.min(MAX_GROUPS) {
                    let table = mem.u64(dir + i * 8)?;
                    if !seen.insert(table) {
                        continue; // directory entries share tables
                    }
                    let data = mem.u64(table + table_groups + groups_data)?;
                    let mask = mem.u64(table + table_groups + groups_mask)?;
                    for g in 0..(mask + 1).min(MAX_GROUPS) {
                        groups.push(data + g * group_size);
                    }
                }
            }
            for group in groups {
                let ctrl = mem.u64(group + group_ctrl)?;
                for slot in 0..8 {
                    // A full slot's control byte has its high bit clear.
                    if (ctrl >> (8 * slot)) & 0x80 == 0 {
                        out.push(mem.u64(group + group_slots + slot * slot_size + slot_elem)?);
                    }
                }
            }
        }
        GoMapLayout::Buckets {
            log2_buckets,
            buckets,
            old_buckets,
            bucket_tophash,
            bucket_elems,
            bucket_overflow,
        } => {
            const MIN_TOP_HASH: u8 = 5; // below: empty or evacuated
            let b = mem.u8(map + log2_buckets)?.min(12);
            let bucket_size = bucket_overflow + 8;
            let mut read_chain = |mut bucket: u64| -> std::io::Result<()> {
                for _ in 0..64 {
                    if bucket == 0 {
                        break;
                    }
                    let mut tophash = [0u8; 8];
                    mem.read(bucket + bucket_tophash, &mut tophash)?;
                    for (i, &t) in tophash.iter().enumerate() {
                        if t >= MIN_TOP_HASH {
                            out.push(mem.u64(bucket + bucket_elems + i as u64 * 8)?);
                        }
                    }
                    bucket = mem.u64(bucket + bucket_overflow)?;
                }
                Ok(())
            };
            let base = mem.u64(map + buckets)?;
            for i in 0..(1u64 << b) {
                read_chain(base + i * bucket_size)?;
            }
            // While growing, entries not yet moved are still in the old buckets.
            let old = mem.u64(map + old_buckets)?;
            if old != 0 {
                for i in 0..(1u64 << b.saturating_sub(1)) {
                    read_chain(old + i * bucket_size)?;
                }
            }
        }
    }
    Ok(())
}
