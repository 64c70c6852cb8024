//! Kernel struct layouts from BTF, for the loader.
//!
//! aya's Rust eBPF programs have no CO-RE relocations, so before loading them the agent reads
//! the running kernel's BTF (`/sys/kernel/btf/vmlinux`), computes the byte offsets of the
//! `struct sock_common` fields the programs read, and hands them over as the load-time global
//! [`SockOffsets`]. This module is that reader: a minimal, bounds-checked parser of the BTF
//! type section that never panics on malformed input.

use std::io;

use tracer_common::SockOffsets;

/// Where the running kernel exposes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
/// Nesting limit when descending into anonymous members (guards against cyclic input).
const MAX_DEPTH: u32 = 32;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Size of `struct btf_type` (name_off, info, size_or_type).
const TYPE_HEADER: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("{VMLINUX_BTF} not found: kernel built without CONFIG_DEBUG_INFO_BTF")]
    NotFound,
    #[error("cannot read {VMLINUX_BTF}: {0}")]
    Read(#[source] io::Error),
    #[error("malformed BTF: {0}")]
    Malformed(String),
    #[error("BTF has no struct {0}")]
    NoStruct(&'static str),
    #[error("struct {strct} has no member {member}")]
    NoMember {
        strct: &'static str,
        member: &'static str,
    },
}

fn malformed(msg: impl Into<String>) -> BtfError {
    BtfError::Malformed(msg.into())
}

/// Offsets of the `struct sock_common` fields the eBPF programs read, from the running
/// kernel's BTF.
pub fn sock_offsets() -> Result<SockOffsets, BtfError> {
    let bytes = std::fs::read(VMLINUX_BTF).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => BtfError::NotFound,
        _ => BtfError::Read(e),
    })?;
    sock_offsets_from(&bytes)
}

/// Same as [`sock_offsets`], from BTF bytes already in memory.
pub fn sock_offsets_from(bytes: &[u8]) -> Result<SockOffsets, BtfError> {
    const STRUCT: &str = "sock_common";
    let btf = Btf::parse(bytes)?;
    let id = btf.find_struct(STRUCT)?;
    let off = |member: &'static str| -> Result<u32, BtfError> {
        btf.member_offset(id, member, 0)?.ok_or(BtfError::NoMember {
            strct: STRUCT,
            member,
        })
    };
    Ok(SockOffsets {
        daddr: off("skc_daddr")?,
        rcv_saddr: off("skc_rcv_saddr")?,
        dport: off("skc_dport")?,
        num: off("skc_num")?,
        family: off("skc_family")?,
        v6_daddr: off("skc_v6_daddr")?,
        v6_rcv_saddr: off("skc_v6_rcv_saddr")?,
        _pad: 0,
    })
}

/// BTF is written in the producer's byte order; the magic tells which.
#[derive(Clone, Copy)]
enum Order {
    Little,
    Big,
}

/// One `struct btf_type` record.
struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    vlen: usize,
    size_or_type: u32,
    /// Offset in the type section of the kind-specific data following the record.
    data: usize,
}

struct Btf<'a> {
    order: Order,
    types: &'a [u8],
    strings: &'a [u8],
    /// Offset in `types` of each type record; index 0 stands for `void` (type id 0).
    index: Vec<usize>,
}

impl<'a> Btf<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, BtfError> {
        let magic = bytes
            .get(0..2)
            .ok_or_else(|| malformed("shorter than its header"))?;
        let order = match u16::from_le_bytes([magic[0], magic[1]]) {
            MAGIC => Order::Little,
            m if m.swap_bytes() == MAGIC => Order::Big,
            m => return Err(malformed(format!("bad magic {m:#06x}"))),
        };
        let hdr_len = read_u32(order, bytes, 4)? as usize;
        if hdr_len < 24 {
            return Err(malformed(format!("header length {hdr_len} < 24")));
        }
        let field = |at: usize| read_u32(order, bytes, at).map(|v| v as usize);
        let (type_off, type_len) = (field(8)?, field(12)?);
        let (str_off, str_len) = (field(16)?, field(20)?);
        let section = |off: usize, len: usize, what: &str| {
            hdr_len
                .checked_add(off)
                .and_then(|start| Some(start..start.checked_add(len)?))
                .and_then(|range| bytes.get(range))
                .ok_or_else(|| malformed(format!("{what} section out of bounds")))
        };
        let types = section(type_off, type_len, "type")?;
        let strings = section(str_off, str_len, "string")?;
        let mut btf = Btf {
            order,
            types,
            strings,
            index: vec![0],
        };
        let mut pos = 0;
        while pos < types.len() {
            btf.index.push(pos);
            let t = btf.type_at(pos)?;
            pos = t
                .data
                .checked_add(t.data_len()?)
                .filter(|&end| end <= types.len())
                .ok_or_else(|| {
                    malformed(format!(
                        "type {} overruns the type section",
                        btf.index.len() - 1
                    ))
                })?;
        }
        Ok(btf)
    }

    fn u32(&self, at: usize) -> Result<u32, BtfError> {
        read_u32(self.order, self.types, at)
    }

    fn type_at(&self, pos: usize) -> Result<Type, BtfError> {
        let info = self.u32(pos + 4)?;
        Ok(Type {
            name_off: self.u32(pos)?,
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 == 1,
            vlen: (info & 0xffff) as usize,
            size_or_type: self.u32(pos + 8)?,
            data: pos + TYPE_HEADER,
        })
    }

    fn by_id(&self, id: u32) -> Result<Type, BtfError> {
        match self.index.get(id as usize) {
            Some(&pos) if id != 0 => self.type_at(pos),
            _ => Err(malformed(format!("reference to missing type id {id}"))),
        }
    }

    /// The NUL-terminated string at `off` in the string section.
    fn name(&self, off: u32) -> Result<&'a [u8], BtfError> {
        let rest = self
            .strings
            .get(off as usize..)
            .ok_or_else(|| malformed(format!("string offset {off} out of bounds")))?;
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| malformed(format!("string at {off} is not NUL-terminated")))?;
        Ok(&rest[..end])
    }

    /// The id of the first complete struct called `name`.
    fn find_struct(&self, name: &'static str) -> Result<u32, BtfError> {
        for (id, &pos) in self.index.iter().enumerate().skip(1) {
            let t = self.type_at(pos)?;
            if t.kind == KIND_STRUCT && self.name(t.name_off)? == name.as_bytes() {
                return u32::try_from(id).map_err(|_| malformed("too many types"));
            }
        }
        Err(BtfError::NoStruct(name))
    }

    /// Byte offset of member `name` in the struct or union `id`, looking inside anonymous
    /// struct/union members. `None` when there is no such member.
    fn member_offset(&self, id: u32, name: &str, depth: u32) -> Result<Option<u32>, BtfError> {
        if depth > MAX_DEPTH {
            return Err(malformed("anonymous members nested too deeply (cycle?)"));
        }
        let t = self.by_id(id)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return Ok(None);
        }
        for i in 0..t.vlen {
            let at = t.data + i * 12;
            let (name_off, member_type, raw_offset) =
                (self.u32(at)?, self.u32(at + 4)?, self.u32(at + 8)?);
            // With kind_flag set, the top 8 bits hold a bitfield size.
            let bits = if t.kind_flag {
                raw_offset & 0x00ff_ffff
            } else {
                raw_offset
            };
            let member_name = self.name(name_off)?;
            if member_name == name.as_bytes() {
                if bits % 8 != 0 {
                    return Err(malformed(format!("member {name} is not byte aligned")));
                }
                return Ok(Some(bits / 8));
            }
            if member_name.is_empty() {
                let inner = self.strip_modifiers(member_type)?;
                if let Some(off) = self.member_offset(inner, name, depth + 1)? {
                    let total = (bits / 8).checked_add(off);
                    return total
                        .map(Some)
                        .ok_or_else(|| malformed(format!("offset of {name} overflows")));
                }
            }
        }
        Ok(None)
    }

    /// Follows typedef/const/volatile/restrict/type-tag links to the underlying type.
    fn strip_modifiers(&self, mut id: u32) -> Result<u32, BtfError> {
        for _ in 0..MAX_DEPTH {
            let t = self.by_id(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(id),
            }
        }
        Err(malformed("type modifier chain too long (cycle?)"))
    }
}

impl Type {
    /// Length of the kind-specific data that follows the record.
    fn data_len(&self) -> Result<usize, BtfError> {
        Ok(match self.kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * self.vlen,
            KIND_ENUM | KIND_FUNC_PROTO => 8 * self.vlen,
            KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
            | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
            k => return Err(malformed(format!("unknown type kind {k}"))),
        })
    }
}

fn read_u32(order: Order, bytes: &[u8], at: usize) -> Result<u32, BtfError> {
    let b: [u8; 4] = at
        .checked_add(4)
        .and_then(|end| bytes.get(at..end))
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| malformed(format!("read past the end at offset {at}")))?;
    Ok(match order {
        Order::Little => u32::from_le_bytes(b),
        Order::Big => u32::from_be_bytes(b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs for tests, little- or big-endian.
    struct Builder {
        big: bool,
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new(big: bool) -> Self {
            Builder {
                big,
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }
        fn put(&mut self, v: u32) {
            let b = if self.big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            };
            self.types.extend_from_slice(&b);
        }
        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }
        /// Emits a type record and its trailing words; returns its id.
        fn ty(
            &mut self,
            name: &str,
            kind: u32,
            kind_flag: bool,
            vlen: u32,
            size_or_type: u32,
            data: &[u32],
        ) -> u32 {
            let name_off = self.str(name);
            self.put(name_off);
            self.put((kind << 24) | (u32::from(kind_flag) << 31) | vlen);
            self.put(size_or_type);
            for &w in data {
                self.put(w);
            }
            self.next_id += 1;
            self.next_id - 1
        }
        /// A struct or union with `(name, type, offset in bits)` members.
        fn aggregate(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let mut data = Vec::new();
            for &(n, t, off) in members {
                data.extend([self.str(n), t, off]);
            }
            self.ty(name, kind, kind_flag, members.len() as u32, size, &data)
        }
        fn finish(self) -> Vec<u8> {
            let word = |v: u32| {
                if self.big {
                    v.to_be_bytes()
                } else {
                    v.to_le_bytes()
                }
            };
            let mut out = Vec::new();
            out.extend_from_slice(&if self.big {
                MAGIC.to_be_bytes()
            } else {
                MAGIC.to_le_bytes()
            });
            out.extend([1, 0]); // version, flags
            for v in [
                24,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&word(v));
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A `sock_common` shaped like the kernel's (fields inside anonymous unions of anonymous
    /// structs), preceded by one record of every kind with trailing data so that skipping is
    /// exercised.
    fn synthetic(big: bool) -> Vec<u8> {
        let mut b = Builder::new(big);
        let u32_t = b.ty("u32", KIND_INT, false, 0, 4, &[32]);
        let u16_t = b.ty("u16", KIND_INT, false, 0, 2, &[16]);
        let u8_t = b.ty("u8", KIND_INT, false, 0, 1, &[8]);
        let arr = b.ty("", KIND_ARRAY, false, 0, 0, &[u8_t, u32_t, 16]);
        let in6 = b.aggregate(KIND_STRUCT, "in6_addr", 16, false, &[("s6_addr", arr, 0)]);
        let (a, b_, c) = (b.str("A"), b.str("B"), b.str("C"));
        b.ty("e", KIND_ENUM, false, 2, 4, &[a, 0, b_, 1]);
        b.ty("e64", KIND_ENUM64, false, 1, 8, &[c, 1, 2]);
        let proto = b.ty("", KIND_FUNC_PROTO, false, 2, u32_t, &[0, u32_t, 0, u16_t]);
        b.ty("f", KIND_FUNC, false, 0, proto, &[]);
        let var = b.ty("v", KIND_VAR, false, 0, u32_t, &[1]);
        b.ty(".data", KIND_DATASEC, false, 1, 4, &[var, 0, 4]);
        b.ty("tag", KIND_DECL_TAG, false, 0, var, &[u32::MAX]);
        b.ty("fl", KIND_FLOAT, false, 0, 8, &[]);
        b.ty("sock_common", KIND_FWD, false, 0, 0, &[]);
        // A bitfield struct (kind_flag set) before the real one.
        b.aggregate(
            KIND_STRUCT,
            "bits",
            4,
            true,
            &[("lo", u32_t, 3 << 24), ("hi", u32_t, (5 << 24) | 3)],
        );
        let addrs = b.aggregate(
            KIND_STRUCT,
            "",
            8,
            false,
            &[("skc_daddr", u32_t, 0), ("skc_rcv_saddr", u32_t, 32)],
        );
        let addr_union = b.aggregate(
            KIND_UNION,
            "",
            8,
            false,
            &[("skc_addrpair", u32_t, 0), ("", addrs, 0)],
        );
        let ports = b.aggregate(
            KIND_STRUCT,
            "",
            4,
            false,
            &[("skc_dport", u16_t, 0), ("skc_num", u16_t, 16)],
        );
        let port_union = b.aggregate(
            KIND_UNION,
            "",
            4,
            false,
            &[("skc_portpair", u32_t, 0), ("", ports, 0)],
        );
        // Reached through a const typedef, as anonymous members sometimes are.
        let port_td = b.ty("", KIND_TYPEDEF, false, 0, port_union, &[]);
        let port_const = b.ty("", KIND_CONST, false, 0, port_td, &[]);
        b.aggregate(
            KIND_STRUCT,
            "sock_common",
            104,
            false,
            &[
                ("", addr_union, 0),
                ("skc_hash", u32_t, 64),
                ("", port_const, 96),
                ("skc_family", u16_t, 128),
                ("skc_v6_daddr", in6, 56 * 8),
                ("skc_v6_rcv_saddr", in6, 72 * 8),
            ],
        );
        b.finish()
    }

    const EXPECTED: SockOffsets = SockOffsets {
        daddr: 0,
        rcv_saddr: 4,
        dport: 12,
        num: 14,
        family: 16,
        v6_daddr: 56,
        v6_rcv_saddr: 72,
        _pad: 0,
    };

    #[test]
    fn synthetic_nested_anonymous_members() {
        assert_eq!(sock_offsets_from(&synthetic(false)).unwrap(), EXPECTED);
    }

    #[test]
    fn synthetic_big_endian() {
        assert_eq!(sock_offsets_from(&synthetic(true)).unwrap(), EXPECTED);
    }

    #[test]
    fn missing_member_is_named() {
        let mut b = Builder::new(false);
        let u32_t = b.ty("u32", KIND_INT, false, 0, 4, &[32]);
        b.aggregate(
            KIND_STRUCT,
            "sock_common",
            8,
            false,
            &[("skc_daddr", u32_t, 0), ("skc_rcv_saddr", u32_t, 32)],
        );
        let err = sock_offsets_from(&b.finish()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "struct sock_common has no member skc_dport"
        );
    }

    #[test]
    fn missing_struct() {
        let mut b = Builder::new(false);
        b.ty("u32", KIND_INT, false, 0, 4, &[32]);
        let err = sock_offsets_from(&b.finish()).unwrap_err();
        assert!(matches!(err, BtfError::NoStruct("sock_common")), "{err}");
    }

    #[test]
    fn cyclic_anonymous_member_is_an_error() {
        let mut b = Builder::new(false);
        // Type 1 is a struct whose anonymous member is itself.
        b.aggregate(KIND_STRUCT, "sock_common", 8, false, &[("", 1, 0)]);
        let err = sock_offsets_from(&b.finish()).unwrap_err();
        assert!(matches!(err, BtfError::Malformed(_)), "{err}");
    }

    #[test]
    fn unknown_kind_and_bad_magic() {
        let mut b = Builder::new(false);
        b.ty("x", 25, false, 0, 0, &[]);
        let err = sock_offsets_from(&b.finish()).unwrap_err();
        assert_eq!(err.to_string(), "malformed BTF: unknown type kind 25");
        let err = sock_offsets_from(b"\x00\x00garbage garbage garbage").unwrap_err();
        assert!(
            err.to_string().starts_with("malformed BTF: bad magic"),
            "{err}"
        );
    }

    #[test]
    fn truncated_input_is_an_error() {
        let full = synthetic(false);
        for len in 0..full.len() {
            assert!(
                sock_offsets_from(&full[..len]).is_err(),
                "prefix of {len} bytes accepted"
            );
        }
    }

    #[test]
    fn corrupted_input_never_panics() {
        let full = synthetic(false);
        for i in 0..full.len() {
            for v in [0x00, 0xff, 0x80, 0x13] {
                let mut bytes = full.clone();
                bytes[i] = v;
                let _ = sock_offsets_from(&bytes);
            }
        }
        // Pseudo-random garbage behind a valid magic and header.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..2000 {
            let mut bytes = full[..24].to_vec();
            for _ in 0..(seed % 300) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            let _ = sock_offsets_from(&bytes);
        }
    }

    #[test]
    fn running_kernel() {
        let offsets = match sock_offsets() {
            Ok(o) => o,
            Err(BtfError::NotFound) => {
                eprintln!("skipping: {VMLINUX_BTF} absent");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        eprintln!("running kernel: {offsets:?}");
        // skc_addrpair and skc_portpair pair their halves; family follows the ports.
        assert_eq!(offsets.rcv_saddr, offsets.daddr + 4);
        assert_eq!(offsets.num, offsets.dport + 2);
        assert_eq!(offsets.family, offsets.num + 2);
        assert_eq!(offsets.v6_rcv_saddr, offsets.v6_daddr + 16);
        assert!(offsets.v6_daddr > offsets.family);
        // These have not moved in any 6.x x86_64 kernel.
        if cfg!(target_arch = "x86_64") {
            assert_eq!((offsets.daddr, offsets.dport, offsets.family), (0, 12, 16));
        }
    }
}
