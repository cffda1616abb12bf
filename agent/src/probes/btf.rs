//! The kernel's own type information (BTF, `/sys/kernel/btf/vmlinux`): where a field of a
//! kernel struct lies on the running kernel, for programs that read kernel memory without
//! CO-RE relocations. Only what that needs: the type section indexed by id, structs and
//! unions with their members (anonymous ones searched through), names from the string
//! section. Every length and offset in the data is checked; bad data is an error.

use std::ops::Range;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;
const TYPE_LEN: usize = 12;

/// BTF kinds whose records this reader looks inside (linux/btf.h).
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_TYPE_TAG: u32 = 18;
/// Anonymous members nest a few levels in practice; deeper is taken as a cycle.
const MAX_DEPTH: usize = 8;

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("{VMLINUX} cannot be read ({0}): the kernel has no BTF")]
    Unreadable(String),
    #[error("not BTF (magic {0:#06x})")]
    BadMagic(u16),
    #[error("truncated or inconsistent BTF ({0})")]
    Corrupt(&'static str),
    #[error("unknown BTF kind {kind} at type {id}")]
    UnknownKind { id: usize, kind: u32 },
    #[error("no struct {0} in the kernel's BTF")]
    NoStruct(String),
    #[error("struct {0} has no field {1} in the kernel's BTF")]
    NoField(String, String),
    #[error("field {0}.{1} is a bit-field")]
    BitField(String, String),
}

/// A parsed BTF blob: records by type id, and the string section.
pub struct Btf<'a> {
    types: &'a [u8],
    strings: &'a [u8],
    /// Where each type's record starts in `types`; index 0 stands for id 1 (id 0 is void).
    starts: Vec<u32>,
}

/// One type's record header.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kind_flag: bool,
    /// Size (structs, unions) or the referenced type (modifiers, typedefs).
    size_or_type: u32,
    /// Where its trailing data (members, ...) starts in `types`.
    data: usize,
}

impl<'a> Btf<'a> {
    pub fn parse(data: &'a [u8]) -> Result<Self, BtfError> {
        let u16_at = |at: usize| -> Result<u16, BtfError> {
            let b = data.get(at..at + 2).ok_or(BtfError::Corrupt("header"))?;
            Ok(u16::from_le_bytes([b[0], b[1]]))
        };
        let u32_at = |at: usize| read_u32(data, at).ok_or(BtfError::Corrupt("header"));
        let magic = u16_at(0)?;
        if magic != MAGIC {
            return Err(BtfError::BadMagic(magic));
        }
        let header_len = u32_at(4)? as usize;
        if header_len < HEADER_LEN {
            return Err(BtfError::Corrupt("header length"));
        }
        let section = |off: usize, len: usize| -> Result<&'a [u8], BtfError> {
            let start = header_len
                .checked_add(u32_at(off)? as usize)
                .ok_or(BtfError::Corrupt("section offset"))?;
            let end = start
                .checked_add(u32_at(len)? as usize)
                .ok_or(BtfError::Corrupt("section length"))?;
            data.get(start..end)
                .ok_or(BtfError::Corrupt("section beyond the data"))
        };
        let types = section(8, 12)?;
        let strings = section(16, 20)?;
        let mut btf = Btf {
            types,
            strings,
            starts: Vec::new(),
        };
        let mut at = 0;
        while at < types.len() {
            let id = btf.starts.len() + 1;
            let start = u32::try_from(at).map_err(|_| BtfError::Corrupt("type section size"))?;
            btf.starts.push(start);
            let t = btf.type_at(at).ok_or(BtfError::Corrupt("type record"))?;
            let extra = match t.kind {
                // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
                2 | 7..=12 | 16 | 18 => 0,
                // INT, VAR, DECL_TAG
                1 | 14 | 17 => 4,
                // ARRAY
                3 => 12,
                // STRUCT, UNION, DATASEC, ENUM64
                4 | 5 | 15 | 19 => 12 * t.vlen,
                // ENUM, FUNC_PROTO
                6 | 13 => 8 * t.vlen,
                kind => return Err(BtfError::UnknownKind { id, kind }),
            };
            at = t.data + extra;
        }
        if at != types.len() {
            return Err(BtfError::Corrupt("last type record"));
        }
        Ok(btf)
    }

    fn type_at(&self, at: usize) -> Option<Type> {
        let info = read_u32(self.types, at + 4)?;
        Some(Type {
            name_off: read_u32(self.types, at)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kind_flag: info >> 31 == 1,
            size_or_type: read_u32(self.types, at + 8)?,
            data: at + TYPE_LEN,
        })
    }

    fn type_by_id(&self, id: u32) -> Option<Type> {
        let start = *self.starts.get((id as usize).checked_sub(1)?)?;
        self.type_at(start as usize)
    }

    fn name(&self, off: u32) -> Option<&'a [u8]> {
        let rest = self.strings.get(off as usize..)?;
        let end = rest.iter().position(|&b| b == 0)?;
        Some(&rest[..end])
    }

    /// The byte offset of `field` in struct `name` (the first struct of that name), found
    /// through anonymous struct and union members.
    pub fn field_offset(&self, name: &str, field: &str) -> Result<u32, BtfError> {
        let no_field = || BtfError::NoField(name.into(), field.into());
        let t = (1..=self.starts.len() as u32)
            .filter_map(|id| self.type_by_id(id))
            .find(|t| t.kind == KIND_STRUCT && self.name(t.name_off) == Some(name.as_bytes()))
            .ok_or_else(|| BtfError::NoStruct(name.into()))?;
        match self.find_member(t, field.as_bytes(), 0) {
            Some(Some(bits)) if bits % 8 == 0 => Ok(bits / 8),
            Some(_) => Err(BtfError::BitField(name.into(), field.into())),
            None => Err(no_field()),
        }
    }

    /// Whether the BTF has a typedef named `name` (the kernel gives each raw tracepoint one,
    /// `btf_trace_<tracepoint>`).
    pub fn has_typedef(&self, name: &str) -> bool {
        (1..=self.starts.len() as u32)
            .filter_map(|id| self.type_by_id(id))
            .any(|t| t.kind == KIND_TYPEDEF && self.name(t.name_off) == Some(name.as_bytes()))
    }

    /// The bit offset of `field` in struct or union `t`: `Some(None)` for a bit-field.
    fn find_member(&self, t: Type, field: &[u8], depth: usize) -> Option<Option<u32>> {
        if depth > MAX_DEPTH || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for m in members(t) {
            let name_off = read_u32(self.types, m.start)?;
            let member_type = read_u32(self.types, m.start + 4)?;
            let raw = read_u32(self.types, m.start + 8)?;
            // With kind_flag, the top 8 bits are a bit-field's width.
            let (bits, bitfield) = if t.kind_flag {
                (raw & 0xff_ffff, raw >> 24 != 0)
            } else {
                (raw, false)
            };
            if name_off == 0 {
                let inner = self.resolve(member_type)?;
                if let Some(found) = self.find_member(inner, field, depth + 1) {
                    return Some(found.and_then(|b| b.checked_add(bits)));
                }
            } else if self.name(name_off) == Some(field) {
                return Some((!bitfield).then_some(bits));
            }
        }
        None
    }

    /// The type behind typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<Type> {
        for _ in 0..MAX_DEPTH {
            let t = self.type_by_id(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Some(t),
            }
        }
        None
    }
}

fn members(t: Type) -> impl Iterator<Item = Range<usize>> {
    (0..t.vlen).map(move |i| {
        let start = t.data + i * 12;
        start..start + 12
    })
}

fn read_u32(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BTF blob of `types` records and the string table `strings`.
    fn blob(types: &[u8], strings: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        for v in [HEADER_LEN, 0, types.len(), types.len(), strings.len()] {
            b.extend_from_slice(&(v as u32).to_le_bytes());
        }
        b.extend_from_slice(types);
        b.extend_from_slice(strings);
        b
    }

    fn record(name_off: u32, kind: u32, vlen: u32, kind_flag: bool, size: u32) -> Vec<u8> {
        let info = (u32::from(kind_flag) << 31) | (kind << 24) | vlen;
        [name_off, info, size]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    fn member(name_off: u32, ty: u32, offset: u32) -> Vec<u8> {
        [name_off, ty, offset]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    /// struct outer { int a; union { struct { int x; int num; }; long pair; }; u8 flags:4; }
    fn sample() -> Vec<u8> {
        // 1 outer, 7 a, 9 x, 11 num, 15 pair, 20 flags, 26 int
        let strings = b"\0outer\0a\0x\0num\0pair\0flags\0int\0";
        let mut types = Vec::new();
        // id 1: int
        types.extend(record(26, 1, 0, false, 4));
        types.extend(0x20u32.to_le_bytes());
        // id 2: anonymous struct { int x; int num; }
        types.extend(record(0, KIND_STRUCT, 2, false, 8));
        types.extend(member(9, 1, 0));
        types.extend(member(11, 1, 32));
        // id 3: const of id 2 (anonymous members may be qualified)
        types.extend(record(0, KIND_CONST, 0, false, 2));
        // id 4: anonymous union { struct {..}; long pair; }
        types.extend(record(0, KIND_UNION, 2, false, 8));
        types.extend(member(0, 3, 0));
        types.extend(member(15, 1, 0));
        // id 5: struct outer, with bit-field offsets (kind_flag)
        types.extend(record(1, KIND_STRUCT, 3, true, 24));
        types.extend(member(7, 1, 0));
        types.extend(member(0, 4, 64));
        types.extend(member(20, 1, (4 << 24) | 128));
        blob(&types, strings)
    }

    #[test]
    fn fields_are_found_through_anonymous_members() {
        let data = sample();
        let btf = Btf::parse(&data).unwrap();
        assert_eq!(btf.field_offset("outer", "a"), Ok(0));
        assert_eq!(btf.field_offset("outer", "x"), Ok(8));
        assert_eq!(btf.field_offset("outer", "num"), Ok(12));
        assert_eq!(btf.field_offset("outer", "pair"), Ok(8));
        assert_eq!(
            btf.field_offset("outer", "flags"),
            Err(BtfError::BitField("outer".into(), "flags".into()))
        );
        assert_eq!(
            btf.field_offset("outer", "nope"),
            Err(BtfError::NoField("outer".into(), "nope".into()))
        );
        assert_eq!(
            btf.field_offset("inner", "x"),
            Err(BtfError::NoStruct("inner".into()))
        );
    }

    #[test]
    fn bad_data_is_an_error_not_a_panic() {
        assert_eq!(Btf::parse(&[]).err(), Some(BtfError::Corrupt("header")));
        assert_eq!(
            Btf::parse(&[0x7f, b'E', b'L', b'F']).err(),
            Some(BtfError::BadMagic(0x457f))
        );
        let data = sample();
        // Every truncation, and every byte changed, fails cleanly or parses.
        for len in 0..data.len() {
            if let Ok(btf) = Btf::parse(&data[..len]) {
                let _ = btf.field_offset("outer", "num");
            }
        }
        for i in 0..data.len() {
            for v in [0u8, 0x1f, 0x80, 0xff] {
                let mut d = data.clone();
                d[i] = v;
                if let Ok(btf) = Btf::parse(&d) {
                    let _ = btf.field_offset("outer", "num");
                }
            }
        }
        // A union whose anonymous member is itself: a cycle, cut off.
        let mut types = record(0, KIND_UNION, 1, false, 4);
        types.extend(member(0, 1, 0));
        let cyclic = blob(&types, b"\0");
        let btf = Btf::parse(&cyclic).unwrap();
        assert!(btf
            .find_member(btf.type_by_id(1).unwrap(), b"x", 0)
            .is_none());
    }

    /// The running kernel's own BTF gives the layout its tracepoint code uses.
    #[test]
    fn the_running_kernels_sock_common() {
        let Ok(data) = std::fs::read(VMLINUX) else {
            panic!("{VMLINUX} is missing: this kernel has no BTF");
        };
        let btf = Btf::parse(&data).unwrap();
        // Fixed since long before any kernel the agent runs on.
        assert_eq!(btf.field_offset("sock_common", "skc_rcv_saddr"), Ok(4));
        assert_eq!(btf.field_offset("sock_common", "skc_num"), Ok(14));
        assert_eq!(btf.field_offset("sock_common", "skc_family"), Ok(16));
        let v6 = btf.field_offset("sock_common", "skc_v6_rcv_saddr").unwrap();
        assert!((24..128).contains(&v6), "{v6}");
    }
}
