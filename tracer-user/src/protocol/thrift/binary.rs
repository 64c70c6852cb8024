//! Thrift binary protocol, strict (version word `0x8001`) and old non-strict (name first):
//! reads a message header and walks a body to its end, keeping a summary. `ThriftParser` runs
//! it on the bytes a direction buffered (whole frames, or the unframed stream); the summary
//! goes to `message`, which builds the requests and responses for span assembly.

use super::wire::{
    Field, MessageHead, MessageType, Reader, Value, WireError, WireResult, check_depth, keep_field,
    keep_int, keep_str, keep_struct, length, read_name, require_elements,
};

const STOP: u8 = 0;
const BOOL: u8 = 2;
const BYTE: u8 = 3;
const DOUBLE: u8 = 4;
const I16: u8 = 6;
const I32: u8 = 8;
const I64: u8 = 10;
const STRING: u8 = 11;
const STRUCT: u8 = 12;
const MAP: u8 = 13;
const SET: u8 = 14;
const LIST: u8 = 15;
const UUID: u8 = 16;

const VERSION_MASK: u32 = 0xffff_ff00;
const VERSION_1: u32 = 0x8001_0000;

/// Reads a message header, strict or non-strict (told apart by the sign of the first word).
pub(super) fn read_head(r: &mut Reader<'_>) -> WireResult<MessageHead> {
    let first = r.i32()?;
    if first < 0 {
        let word = first as u32;
        if word & VERSION_MASK != VERSION_1 {
            return Err(WireError::Invalid);
        }
        let kind = MessageType::from_wire((word & 0xff) as u8)?;
        let name_len = r.i32()?;
        let name = read_name(r, i64::from(name_len))?;
        let seqid = r.i32()?;
        Ok(MessageHead { name, kind, seqid })
    } else {
        let name = read_name(r, i64::from(first))?;
        let kind = MessageType::from_wire(r.u8()?)?;
        let seqid = r.i32()?;
        Ok(MessageHead { name, kind, seqid })
    }
}

/// Walks a struct to its STOP, keeping its fields in `keep` when given.
pub(super) fn walk_struct(
    r: &mut Reader<'_>,
    depth: usize,
    mut keep: Option<&mut Vec<Field>>,
) -> WireResult<()> {
    check_depth(depth)?;
    loop {
        let ty = r.u8()?;
        if ty == STOP {
            return Ok(());
        }
        let id = r.i16()?;
        let slot = keep
            .as_deref_mut()
            .and_then(|fields| keep_field(fields, id));
        walk_value(r, ty, depth, slot)?;
    }
}

/// Smallest encoding of a value of type `ty` (bounds container sizes by the bytes present).
fn min_size(ty: u8) -> WireResult<u64> {
    match ty {
        BOOL | BYTE | STRUCT => Ok(1),
        I16 => Ok(2),
        I32 | STRING => Ok(4),
        DOUBLE | I64 => Ok(8),
        MAP => Ok(6),
        SET | LIST => Ok(5),
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
        BOOL | BYTE => keep_int(slot, i64::from(r.u8()? as i8)),
        I16 => keep_int(slot, i64::from(r.i16()?)),
        I32 => keep_int(slot, i64::from(r.i32()?)),
        I64 => keep_int(slot, r.i64()?),
        DOUBLE => {
            r.take(8)?;
        }
        UUID => {
            r.take(16)?;
        }
        STRING => {
            let len = length(i64::from(r.i32()?))?;
            keep_str(slot, r.take(len)?);
        }
        STRUCT => walk_struct(r, depth + 1, keep_struct(slot, depth))?,
        MAP => walk_map(r, depth + 1)?,
        SET | LIST => walk_list(r, depth + 1)?,
        _ => return Err(WireError::Invalid),
    }
    Ok(())
}

fn walk_list(r: &mut Reader<'_>, depth: usize) -> WireResult<()> {
    check_depth(depth)?;
    let elem = r.u8()?;
    let count = length(i64::from(r.i32()?))?;
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
    let key = r.u8()?;
    let value = r.u8()?;
    let count = length(i64::from(r.i32()?))?;
    if count == 0 {
        return Ok(());
    }
    require_elements(r, count, min_size(key)? + min_size(value)?)?;
    for _ in 0..count {
        walk_value(r, key, depth, None)?;
        walk_value(r, value, depth, None)?;
    }
    Ok(())
}
