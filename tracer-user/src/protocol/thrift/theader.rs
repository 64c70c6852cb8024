//! THeader transport (fbthrift / Apache Thrift `THeaderTransport`): after the frame length,
//! magic `0x0FFF`, flags, sequence id, header size in 4-byte words, then the header itself
//! (varint protocol id, transforms, info key/value headers) and the payload message.
//! `framing` calls it on each header frame a direction buffered; the info headers it returns
//! carry trace context, which `message` hands to `crate::context::from_headers`.

use super::framing::Proto;
use super::wire::{Reader, WireError, WireResult, length};

pub(super) const MAGIC: [u8; 2] = [0x0f, 0xff];
const PROTOCOL_BINARY: u64 = 0;
const PROTOCOL_COMPACT: u64 = 2;
const INFO_KEYVALUE: u64 = 1;
const INFO_PERSISTENT_KEYVALUE: u64 = 2;
/// More transforms than this is not a real header.
const MAX_TRANSFORMS: u64 = 16;
/// Info headers kept per frame.
const MAX_INFO_HEADERS: usize = 64;

/// Info headers, key and value, in wire order.
pub(super) type InfoHeaders = Vec<(String, Vec<u8>)>;

/// What a THeader frame's header says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct HeaderInfo {
    /// Protocol of the payload.
    pub protocol: Proto,
    /// The payload went through transforms (zlib, snappy, ...) and cannot be read as is.
    pub transformed: bool,
    pub headers: InfoHeaders,
    /// Where the payload starts in the frame.
    pub payload: usize,
}

/// Reads the header of a THeader frame (`frame` starts after the 4-byte length). `Short`
/// only when the header section itself is not all there.
pub(super) fn parse_header(frame: &[u8]) -> WireResult<HeaderInfo> {
    let mut r = Reader::new(frame);
    if r.take(2)? != MAGIC {
        return Err(WireError::Invalid);
    }
    r.take(2 + 4)?; // flags, sequence id (the payload message has its own)
    let words = usize::from(r.u16()?);
    let section = r.take(words * 4)?;
    let payload = r.pos();
    // The section is complete: running short inside it means it is malformed.
    let (protocol, transformed, headers) =
        parse_section(section).map_err(|_| WireError::Invalid)?;
    Ok(HeaderInfo {
        protocol,
        transformed,
        headers,
        payload,
    })
}

fn parse_section(section: &[u8]) -> WireResult<(Proto, bool, InfoHeaders)> {
    let mut r = Reader::new(section);
    let protocol = match r.varint()? {
        PROTOCOL_BINARY => Proto::Binary,
        PROTOCOL_COMPACT => Proto::Compact,
        _ => return Err(WireError::Invalid),
    };
    let transforms = r.varint()?;
    if transforms > MAX_TRANSFORMS {
        return Err(WireError::Invalid);
    }
    for _ in 0..transforms {
        r.varint()?;
    }
    let headers = read_info(&mut r)?;
    Ok((protocol, transforms > 0, headers))
}

/// Reads info sections until padding, an unknown info type, or the end of the header.
fn read_info(r: &mut Reader<'_>) -> WireResult<InfoHeaders> {
    let mut headers = Vec::new();
    while r.remaining() > 0 {
        match r.varint()? {
            INFO_KEYVALUE | INFO_PERSISTENT_KEYVALUE => read_pairs(r, &mut headers)?,
            // Padding, or an info type whose layout is unknown: nothing more can be read.
            _ => break,
        }
    }
    Ok(headers)
}

fn read_pairs(r: &mut Reader<'_>, headers: &mut InfoHeaders) -> WireResult<()> {
    let count = length(i64::from(r.varint32()?))?;
    // Each pair takes at least two bytes (two empty strings).
    r.require((count as u64).saturating_mul(2))?;
    for _ in 0..count {
        let key = read_string(r)?;
        let value = read_string(r)?;
        if headers.len() < MAX_INFO_HEADERS {
            headers.push((String::from_utf8_lossy(key).into_owned(), value.to_vec()));
        }
    }
    Ok(())
}

fn read_string<'a>(r: &mut Reader<'a>) -> WireResult<&'a [u8]> {
    let len = length(i64::from(r.varint32()?))?;
    r.take(len)
}
