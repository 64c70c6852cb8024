//! Thrift compact protocol: reads a message header (`0x82`, version and type, varint seqid,
//! name) and walks a body to its end (delta field ids, zigzag varints, bools in the field
//! type), keeping a summary. `ThriftParser` runs it on a direction's buffered bytes; the
//! summary goes to `message`, which builds the requests and responses for span assembly.

use super::wire::{
    Field, MessageHead, MessageType, Reader, Value, WireError, WireResult, check_depth, keep_field,
    keep_int, keep_str, keep_struct, length, read_name, require_elements,
};

pub(super) const PROTOCOL_ID: u8 = 0x82;
const VERSION: u8 = 1;

const STOP: u8 = 0;
const BOOL_TRUE: u8 = 1;
const BOOL_FALSE: u8 = 2;
const BYTE: u8 = 3;
const I16: u8 = 4;
const I32: u8 = 5;
const I64: u8 = 6;
const DOUBLE: u8 = 7;
const BINARY: u8 = 8;
const LIST: u8 = 9;
const SET: u8 = 10;
const MAP: u8 = 11;
const STRUCT: u8 = 12;
const UUID: u8 = 13;

/// Reads a message header.
pub(super) fn read_head(r: &mut Reader<'_>) -> WireResult<MessageHead> {
    if r.u8()? != PROTOCOL_ID {
        return Err(WireError::Invalid);
    }
    let version_and_type = r.u8()?;
    if version_and_type & 0x1f != VERSION {
        return Err(WireError::Invalid);
    }
    let kind = MessageType::from_wire(version_and_type >> 5)?;
    let seqid = r.varint32()? as i32;
    let name_len = r.varint32()?;
    let name = read_name(r, i64::from(name_len))?;
    Ok(MessageHead { name, kind, seqid })
}

fn zigzag(raw: u64) -> i64 {
    ((raw >> 1) as i64) ^ -((raw & 1) as i64)
}

fn read_int(r: &mut Reader<'_>) -> WireResult<i64> {
    Ok(zigzag(r.varint()?))
}

/// Walks a struct to its STOP, keeping its fields in `keep` when given.
pub(super) fn walk_struct(
    r: &mut Reader<'_>,
    depth: usize,
    mut keep: Option<&mut Vec<Field>>,
) -> WireResult<()> {
    check_depth(depth)?;
    let mut last_id: i16 = 0;
    loop {
        let header = r.u8()?;
        if header == STOP {
            return Ok(());
        }
        let ty = header & 0x0f;
        let delta = header >> 4;
        let id = if delta == 0 {
            i16::try_from(read_int(r)?).map_err(|_| WireError::Invalid)?
        } else {
            last_id.wrapping_add(i16::from(delta))
        };
        last_id = id;
        let slot = keep
            .as_deref_mut()
            .and_then(|fields| keep_field(fields, id));
        match ty {
            BOOL_TRUE => keep_int(slot, 1),
            BOOL_FALSE => keep_int(slot, 0),
            _ => walk_value(r, ty, depth, slot)?,
        }
    }
}

/// Smallest encoding of a container element of type `ty`.
fn min_size(ty: u8) -> WireResult<u64> {
    match ty {
        BOOL_TRUE | BOOL_FALSE | BYTE | I16 | I32 | I64 | BINARY | LIST | SET | MAP | STRUCT => {
            Ok(1)
        }
        DOUBLE => Ok(8),
        UUID => Ok(16),
        _ => Err(WireError::Invalid),
    }
}

fn walk_value(
    r: &mut Reader<'_>,
    ty: u8,
    depth: usize,
    slot: Option<&mut Value>,
) -> WireResult<()> {
    match ty {
        // Inside containers a bool takes one byte.
        BOOL_TRUE | BOOL_FALSE | BYTE => keep_int(slot, i64::from(r.u8()? as i8)),
        I16 | I32 | I64 => keep_int(slot, read_int(r)?),
        DOUBLE => {
            r.take(8)?;
        }
        UUID => {
            r.take(16)?;
        }
        BINARY => {
            let len = length(i64::from(r.varint32()?))?;
            keep_str(slot, r.take(len)?);
        }
        STRUCT => walk_struct(r, depth + 1, keep_struct(slot, depth))?,
        MAP => walk_map(r, depth + 1)?,
        LIST | SET => walk_list(r, depth + 1)?,
        _ => return Err(WireError::Invalid),
    }
    Ok(())
}

fn walk_list(r: &mut Reader<'_>, depth: usize) -> WireResult<()> {
    check_depth(depth)?;
    let header = r.u8()?;
    let elem = header & 0x0f;
    let short_count = header >> 4;
    let count = if short_count == 0x0f {
        length(i64::from(r.varint32()?))?
    } else {
        usize::from(short_count)
    };
    if count == 0 {
        return Ok(());
    }
    require_elements(r, count, min_size(elem)?)?;
    for _ in 0..count {
        walk_value(r, elem, depth, None)?;
    }
    Ok(())
}

fn walk_map(r: &mut Reader<'_>, depth: usize) -> WireResult<()> {
    check_depth(depth)?;
    let count = length(i64::from(r.varint32()?))?;
    if count == 0 {
        return Ok(());
    }
    let types = r.u8()?;
    let (key, value) = (types >> 4, types & 0x0f);
    require_elements(r, count, min_size(key)? + min_size(value)?)?;
    for _ in 0..count {
        walk_value(r, key, depth, None)?;
        walk_value(r, value, depth, None)?;
    }
    Ok(())
}
