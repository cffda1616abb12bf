//! The walk of the function table: the wanted functions' addresses and code sizes, and the
//! function holding an address.

use std::collections::HashMap;

use super::{entry_off, read_i32, read_u32, Pclntab, FUNCTAB_ENTRY_LEN, FUNC_NAME_OFF, MIN_LC};
use crate::symbols::elf::FunctionSymbol;

const FUNC_PCSP: usize = 16;
pub(super) const FUNC_ID_NORMAL: u8 = 0;
pub(super) const FUNC_FLAG_ASM: u8 = 1 << 2;
/// Up to this many wanted names are compared one by one; more go through a hash map.
pub(super) const LINEAR_LOOKUP_MAX: usize = 8;

impl<'a> Pclntab<'a> {
    /// Link-time address and code size of the wanted functions that the table lists, in one
    /// pass that compares names in place.
    ///
    /// A name listed twice is a function and its ABI wrapper; as in the ELF symbol table, the
    /// name is the Go-callable one (ABIInternal): not the assembly body, not a wrapper the
    /// compiler made for assembly callers.
    pub fn functions(&self, wanted: &[&str]) -> HashMap<String, FunctionSymbol> {
        let by_name: Option<HashMap<&[u8], &str>> = (wanted.len() > LINEAR_LOOKUP_MAX)
            .then(|| wanted.iter().map(|w| (w.as_bytes(), *w)).collect());
        // Name -> (rank, symbol); a lower rank wins.
        let mut found: HashMap<&str, (u8, FunctionSymbol)> = HashMap::new();
        for i in 0..self.nfunc {
            let Some(func) = self.func(i) else { continue };
            let Some(name) = read_i32(func, FUNC_NAME_OFF)
                .and_then(|off| usize::try_from(off).ok())
                .and_then(|off| self.funcnametab.get(off..))
            else {
                continue;
            };
            let matched = match &by_name {
                Some(map) => name
                    .iter()
                    .position(|&b| b == 0)
                    .and_then(|end| map.get(&name[..end]).copied()),
                None => wanted
                    .iter()
                    .copied()
                    .find(|w| name.get(w.len()) == Some(&0) && name.starts_with(w.as_bytes())),
            };
            let Some(matched) = matched else { continue };
            let Some(symbol) = self.symbol(i, func) else {
                continue;
            };
            let flag = func.get(self.layout.func_id_offset() + 1).copied();
            let func_id = func.get(self.layout.func_id_offset()).copied();
            let rank = (u8::from(flag.is_some_and(|f| f & FUNC_FLAG_ASM != 0)) << 1)
                | u8::from(func_id != Some(FUNC_ID_NORMAL));
            match found.get(matched) {
                Some((best, _)) if *best <= rank => {}
                _ => {
                    found.insert(matched, (rank, symbol));
                }
            }
        }
        found
            .into_iter()
            .map(|(name, (_, symbol))| (name.to_owned(), symbol))
            .collect()
    }

    /// The name of the function whose code holds `pc` (a link-time address), for
    /// symbolizing addresses read from a process: a binary search of the entry column.
    pub fn function_name_at(&self, pc: u64) -> Option<String> {
        let off = u32::try_from(pc.checked_sub(self.text_start)?).ok()?;
        if off >= entry_off(self.pcln, self.nfunc)? {
            return None;
        }
        // The last function whose entry is at or before `off`.
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if entry_off(self.pcln, mid)? <= off {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if entry_off(self.pcln, lo)? > off {
            return None;
        }
        let func = self.func(lo)?;
        let name = read_i32(func, FUNC_NAME_OFF)
            .and_then(|off| usize::try_from(off).ok())
            .and_then(|off| self.funcnametab.get(off..))?;
        let end = name.iter().position(|&b| b == 0)?;
        Some(String::from_utf8_lossy(&name[..end]).into_owned())
    }

    /// The `_func` record of function `i`.
    fn func(&self, i: usize) -> Option<&'a [u8]> {
        let off = read_u32(self.pcln, i * FUNCTAB_ENTRY_LEN + 4)?;
        self.pcln.get(usize::try_from(off).ok()?..)
    }

    fn symbol(&self, i: usize, func: &[u8]) -> Option<FunctionSymbol> {
        let entry = entry_off(self.pcln, i)?;
        if read_u32(func, 0)? != entry {
            return None;
        }
        let gap = u64::from(entry_off(self.pcln, i + 1)?.checked_sub(entry)?);
        // The pc-value tables span exactly the function's code; the next entry also counts
        // the alignment padding after it. C functions (cgo, internal linking) have no table.
        let size = read_u32(func, FUNC_PCSP)
            .filter(|&off| off != 0)
            .and_then(|off| self.pc_span(usize::try_from(off).ok()?, gap))
            .filter(|&size| size > 0)
            .unwrap_or(gap);
        Some(FunctionSymbol {
            address: self.text_start.checked_add(u64::from(entry))?,
            size,
        })
    }

    /// The code span of a pc-value table: the sum of its pc deltas, up to its terminating
    /// zero value delta. `None` if malformed or longer than `limit`.
    pub(super) fn pc_span(&self, off: usize, limit: u64) -> Option<u64> {
        let mut table = self.pctab.get(off..)?;
        let mut span: u64 = 0;
        let mut first = true;
        loop {
            let value_delta = read_uvarint(&mut table)?;
            if value_delta == 0 && !first {
                return Some(span);
            }
            first = false;
            let pc_delta = read_uvarint(&mut table)?;
            span = span.checked_add(pc_delta * u64::from(MIN_LC))?;
            if span > limit {
                return None;
            }
        }
    }
}

/// An unsigned LEB128 value of up to 32 bits, as the pc-value tables hold.
pub(super) fn read_uvarint(data: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let (&b, rest) = data.split_first()?;
        *data = rest;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}
