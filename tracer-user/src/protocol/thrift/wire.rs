//! Byte-level pieces shared by the Thrift decoders: a bounds-checked reader over one
//! direction's buffered bytes, the message header, and the summary the struct walkers keep of
//! a message body. `binary` and `compact` build on it; `ThriftParser` feeds it the bytes the
//! connection table delivered and hands what it reads to `message`, then span assembly.

/// Why a read stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WireError {
    /// The bytes end before the value does; at least `need` more would let reading go on.
    Short { need: usize },
    /// The bytes cannot be Thrift (bad type, negative length, too deep, bad name).
    Invalid,
}

pub(super) type WireResult<T> = Result<T, WireError>;

/// Longest method name accepted (multiplexed `Service:method` included).
pub(super) const MAX_NAME: usize = 512;
/// Deepest nesting of structs and containers walked.
pub(super) const MAX_DEPTH: usize = 64;
/// Fields kept per struct in a body summary.
const KEPT_FIELDS: usize = 16;
/// Bytes kept of a string in a body summary.
const KEPT_STRING: usize = 256;
/// Nesting levels whose fields are kept: the body and the structs directly in it (enough for
/// a result struct's exception and a `TApplicationException`).
const KEPT_LEVELS: usize = 2;

/// A cursor over bytes that never reads past their end.
pub(super) struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(super) fn new(data: &'a [u8]) -> Self {
        Self { data, pos: 0 }
    }

    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    /// Fails unless `n` more bytes are available (does not consume them).
    pub(super) fn require(&self, n: u64) -> WireResult<()> {
        let have = self.remaining() as u64;
        if n <= have {
            Ok(())
        } else {
            let need = usize::try_from(n - have).unwrap_or(usize::MAX);
            Err(WireError::Short { need })
        }
    }

    pub(super) fn take(&mut self, n: usize) -> WireResult<&'a [u8]> {
        self.require(n as u64)?;
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    /// The bytes not read yet, without consuming them.
    pub(super) fn rest(&self) -> &'a [u8] {
        &self.data[self.pos..]
    }

    fn array<const N: usize>(&mut self) -> WireResult<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self) -> WireResult<u8> {
        Ok(self.array::<1>()?[0])
    }

    pub(super) fn i16(&mut self) -> WireResult<i16> {
        Ok(i16::from_be_bytes(self.array()?))
    }

    pub(super) fn u16(&mut self) -> WireResult<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub(super) fn i32(&mut self) -> WireResult<i32> {
        Ok(i32::from_be_bytes(self.array()?))
    }

    pub(super) fn u32(&mut self) -> WireResult<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub(super) fn i64(&mut self) -> WireResult<i64> {
        Ok(i64::from_be_bytes(self.array()?))
    }

    /// An unsigned LEB128 varint of at most 10 bytes.
    pub(super) fn varint(&mut self) -> WireResult<u64> {
        let mut value = 0u64;
        for i in 0..10 {
            let byte = self.u8()?;
            let bits = u64::from(byte & 0x7f);
            if i == 9 && bits > 1 {
                return Err(WireError::Invalid);
            }
            value |= bits << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Invalid)
    }

    /// A varint that must fit 32 bits (sizes, sequence ids).
    pub(super) fn varint32(&mut self) -> WireResult<u32> {
        u32::try_from(self.varint()?).map_err(|_| WireError::Invalid)
    }
}

/// A length read from the wire as a signed or unsigned integer: must be `0..=i32::MAX`.
pub(super) fn length(raw: i64) -> WireResult<usize> {
    if (0..=i64::from(i32::MAX)).contains(&raw) {
        usize::try_from(raw).map_err(|_| WireError::Invalid)
    } else {
        Err(WireError::Invalid)
    }
}

/// Thrift message types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MessageType {
    Call,
    Reply,
    Exception,
    Oneway,
}

impl MessageType {
    pub(super) fn from_wire(value: u8) -> WireResult<Self> {
        match value {
            1 => Ok(Self::Call),
            2 => Ok(Self::Reply),
            3 => Ok(Self::Exception),
            4 => Ok(Self::Oneway),
            _ => Err(WireError::Invalid),
        }
    }
}

/// What precedes every message body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct MessageHead {
    pub name: String,
    pub kind: MessageType,
    pub seqid: i32,
}

/// Reads a method name of `len` bytes: identifier characters (letters, digits, `_ . : - $`),
/// starting with a letter or `_`. A bad prefix is rejected before the whole name is there.
pub(super) fn read_name(r: &mut Reader<'_>, len: i64) -> WireResult<String> {
    let len = length(len)?;
    if len == 0 || len > MAX_NAME {
        return Err(WireError::Invalid);
    }
    let available = &r.rest()[..len.min(r.remaining())];
    if !name_prefix_ok(available) {
        return Err(WireError::Invalid);
    }
    let bytes = r.take(len)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| WireError::Invalid)
}

fn name_prefix_ok(bytes: &[u8]) -> bool {
    let first_ok = bytes
        .first()
        .is_none_or(|b| b.is_ascii_alphabetic() || *b == b'_');
    first_ok
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-' | b'$'))
}

/// One field kept from a struct.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Field {
    pub id: i16,
    pub value: Value,
}

/// What is kept of a field's value.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Value {
    Str(String),
    Int(i64),
    Struct(Vec<Field>),
    /// Not kept (containers, doubles, deeper structs) or not read yet.
    Other,
}

/// Appends a field to a kept struct (while there is room) and returns its value slot.
pub(super) fn keep_field(fields: &mut Vec<Field>, id: i16) -> Option<&mut Value> {
    if fields.len() >= KEPT_FIELDS {
        return None;
    }
    fields.push(Field {
        id,
        value: Value::Other,
    });
    fields.last_mut().map(|f| &mut f.value)
}

pub(super) fn keep_int(slot: Option<&mut Value>, value: i64) {
    if let Some(slot) = slot {
        *slot = Value::Int(value);
    }
}

pub(super) fn keep_str(slot: Option<&mut Value>, bytes: &[u8]) {
    if let Some(slot) = slot {
        let cut = &bytes[..bytes.len().min(KEPT_STRING)];
        *slot = Value::Str(String::from_utf8_lossy(cut).into_owned());
    }
}

/// The field list to fill for a nested struct at `depth`, when that level is kept.
pub(super) fn keep_struct(slot: Option<&mut Value>, depth: usize) -> Option<&mut Vec<Field>> {
    let slot = slot?;
    if depth + 1 >= KEPT_LEVELS {
        return None;
    }
    *slot = Value::Struct(Vec::new());
    match slot {
        Value::Struct(fields) => Some(fields),
        _ => None,
    }
}

/// Fails unless `count` elements of at least `min_size` bytes each can still follow.
pub(super) fn require_elements(r: &Reader<'_>, count: usize, min_size: u64) -> WireResult<()> {
    r.require((count as u64).saturating_mul(min_size))
}

/// Fails when nesting goes deeper than `MAX_DEPTH`.
pub(super) fn check_depth(depth: usize) -> WireResult<()> {
    if depth >= MAX_DEPTH {
        Err(WireError::Invalid)
    } else {
        Ok(())
    }
}
