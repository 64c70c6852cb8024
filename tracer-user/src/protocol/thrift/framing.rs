//! Transports and protocols: detects them from a direction's first bytes, and cuts one
//! message off the front of a direction's buffer (a whole frame, or an unframed message walked
//! to its end). `ThriftParser` calls it on the bytes the connection table fed it; the decoded
//! messages go to `message`, then to span assembly.

use super::wire::{Field, MessageHead, Reader, WireError, WireResult};
use super::{binary, compact, theader};

/// Largest frame accepted (Thrift servers default to 16 MiB; some raise it).
const MAX_FRAME: u32 = 256 << 20;
/// Smallest frame that can hold a message header.
const MIN_FRAME: u32 = 4;
/// Size of the frame length prefix.
const LENGTH_PREFIX: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Proto {
    Binary,
    Compact,
}

impl Proto {
    pub(super) fn name(self) -> &'static str {
        match self {
            Proto::Binary => "binary",
            Proto::Compact => "compact",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transport {
    /// Unframed: messages back to back.
    Buffered,
    /// Each message behind a 4-byte big-endian length.
    Framed,
    /// THeader: a frame with a header before the message.
    Header,
}

impl Transport {
    pub(super) fn name(self) -> &'static str {
        match self {
            Transport::Buffered => "buffered",
            Transport::Framed => "framed",
            Transport::Header => "header",
        }
    }
}

/// How one direction of a connection is encoded (for THeader the protocol of each frame is
/// in its header; this one is the first frame's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Format {
    pub transport: Transport,
    pub protocol: Proto,
}

/// What the first bytes of a direction say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Sniff {
    Yes(Format),
    No,
    NeedMore,
}

/// Detects Thrift from the first bytes of a connection (either direction): a complete,
/// plausible message header (valid type, sane lengths, identifier-like method name), unframed,
/// framed, or THeader-framed.
pub fn looks_like_thrift(first: &[u8]) -> bool {
    matches!(sniff(first), Sniff::Yes(_))
}

/// Detects the format of the message at the start of `data`.
pub(super) fn sniff(data: &[u8]) -> Sniff {
    let verdicts = [
        sniff_unframed(Proto::Binary, data),
        sniff_unframed(Proto::Compact, data),
        sniff_framed(data),
    ];
    if let Some(yes) = verdicts.iter().find(|v| matches!(v, Sniff::Yes(_))) {
        *yes
    } else if verdicts.contains(&Sniff::NeedMore) {
        Sniff::NeedMore
    } else {
        Sniff::No
    }
}

fn verdict(transport: Transport, protocol: Proto, head: WireResult<MessageHead>) -> Sniff {
    match head {
        Ok(_) => Sniff::Yes(Format {
            transport,
            protocol,
        }),
        Err(WireError::Short { .. }) => Sniff::NeedMore,
        Err(WireError::Invalid) => Sniff::No,
    }
}

fn sniff_unframed(protocol: Proto, data: &[u8]) -> Sniff {
    verdict(
        Transport::Buffered,
        protocol,
        read_head(protocol, &mut Reader::new(data)),
    )
}

fn sniff_framed(data: &[u8]) -> Sniff {
    let total = match frame_total(data) {
        Ok(total) => total,
        Err(WireError::Short { .. }) => return Sniff::NeedMore,
        Err(WireError::Invalid) => return Sniff::No,
    };
    let frame = frame_body(data, total);
    let found = if frame.len() < theader::MAGIC.len() {
        Sniff::NeedMore
    } else if frame.starts_with(&theader::MAGIC) {
        sniff_header(frame)
    } else {
        let protocol = payload_protocol(frame);
        verdict(
            Transport::Framed,
            protocol,
            read_head(protocol, &mut Reader::new(frame)),
        )
    };
    let whole = frame.len() as u64 + LENGTH_PREFIX as u64 == total;
    if found == Sniff::NeedMore && whole {
        Sniff::No
    } else {
        found
    }
}

fn sniff_header(frame: &[u8]) -> Sniff {
    match theader::parse_header(frame) {
        Ok(info) if info.transformed => Sniff::Yes(Format {
            transport: Transport::Header,
            protocol: info.protocol,
        }),
        Ok(info) => {
            let mut r = Reader::new(frame.get(info.payload..).unwrap_or_default());
            verdict(
                Transport::Header,
                info.protocol,
                read_head(info.protocol, &mut r),
            )
        }
        Err(WireError::Short { .. }) => Sniff::NeedMore,
        Err(WireError::Invalid) => Sniff::No,
    }
}

/// Compact messages start with their protocol id; anything else is tried as binary.
fn payload_protocol(payload: &[u8]) -> Proto {
    if payload.first() == Some(&compact::PROTOCOL_ID) {
        Proto::Compact
    } else {
        Proto::Binary
    }
}

fn read_head(protocol: Proto, r: &mut Reader<'_>) -> WireResult<MessageHead> {
    match protocol {
        Proto::Binary => binary::read_head(r),
        Proto::Compact => compact::read_head(r),
    }
}

/// Total size (prefix included) of the frame starting at `data`.
fn frame_total(data: &[u8]) -> WireResult<u64> {
    let len = Reader::new(data).u32()?;
    if (MIN_FRAME..=MAX_FRAME).contains(&len) {
        Ok(u64::from(len) + LENGTH_PREFIX as u64)
    } else {
        Err(WireError::Invalid)
    }
}

/// The part of the frame (after its length) present in `data`.
fn frame_body(data: &[u8], total: u64) -> &[u8] {
    let end = usize::try_from(total).map_or(data.len(), |t| t.min(data.len()));
    data.get(LENGTH_PREFIX..end).unwrap_or_default()
}

/// A message read from the stream, possibly only in part.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Decoded {
    pub head: MessageHead,
    /// Fields of the body (of the result struct for replies), as far as they were read.
    pub body: Vec<Field>,
    /// False when the body was not read to its end (capture limit, buffer cap, short frame).
    pub complete: bool,
    pub protocol: Proto,
    pub transport: Transport,
    /// THeader info headers.
    pub headers: theader::InfoHeaders,
}

/// Reads a message header and walks its body. The body summary is kept even when the walk
/// stops early; the walk's own result comes alongside.
fn read_message(
    protocol: Proto,
    transport: Transport,
    r: &mut Reader<'_>,
) -> WireResult<(Decoded, WireResult<()>)> {
    let head = read_head(protocol, r)?;
    let mut body = Vec::new();
    let walked = match protocol {
        Proto::Binary => binary::walk_struct(r, 0, Some(&mut body)),
        Proto::Compact => compact::walk_struct(r, 0, Some(&mut body)),
    };
    let complete = walked.is_ok();
    let decoded = Decoded {
        head,
        body,
        complete,
        protocol,
        transport,
        headers: Vec::new(),
    };
    Ok((decoded, walked))
}

/// One attempt at the message at the front of a buffer.
#[derive(Debug)]
pub(super) enum Step {
    /// A whole message (or frame) of `len` bytes. `decoded` is `None` when a frame could not
    /// be decoded; `error` when something in it was wrong (the stream is still in sync).
    Done {
        len: usize,
        decoded: Option<Decoded>,
        error: bool,
    },
    /// The message goes on past the buffer: at least `need` more bytes.
    Partial { need: usize },
    /// Not a message: the stream is lost.
    Invalid,
}

/// Tries to cut the message at the front of `buf`.
pub(super) fn step(format: Format, buf: &[u8]) -> Step {
    match format.transport {
        Transport::Buffered => step_unframed(format.protocol, buf),
        Transport::Framed | Transport::Header => step_framed(format, buf),
    }
}

fn step_unframed(protocol: Proto, buf: &[u8]) -> Step {
    let mut r = Reader::new(buf);
    match read_message(protocol, Transport::Buffered, &mut r) {
        Ok((decoded, Ok(()))) => Step::Done {
            len: r.pos(),
            decoded: Some(decoded),
            error: false,
        },
        Ok((_, Err(WireError::Short { need }))) | Err(WireError::Short { need }) => {
            Step::Partial { need }
        }
        Ok((_, Err(WireError::Invalid))) | Err(WireError::Invalid) => Step::Invalid,
    }
}

fn step_framed(format: Format, buf: &[u8]) -> Step {
    let total = match frame_total(buf) {
        Ok(total) => total,
        Err(WireError::Short { need }) => return Step::Partial { need },
        Err(WireError::Invalid) => return Step::Invalid,
    };
    let have = buf.len() as u64;
    if have < total {
        let need = usize::try_from(total - have).unwrap_or(usize::MAX);
        return Step::Partial { need };
    }
    let decoded = decode_frame(format, frame_body(buf, total));
    let error = decoded.as_ref().is_none_or(|d| !d.complete);
    let len = usize::try_from(total).unwrap_or(buf.len());
    Step::Done {
        len,
        decoded,
        error,
    }
}

/// Decodes the message in a frame body (all of it, or the captured prefix).
fn decode_frame(format: Format, frame: &[u8]) -> Option<Decoded> {
    if frame.starts_with(&theader::MAGIC) && format.transport == Transport::Header {
        let info = theader::parse_header(frame)
            .ok()
            .filter(|info| !info.transformed)?;
        let payload = frame.get(info.payload..)?;
        let (mut decoded, _) =
            read_message(info.protocol, Transport::Header, &mut Reader::new(payload)).ok()?;
        decoded.headers = info.headers;
        Some(decoded)
    } else {
        let protocol = payload_protocol(frame);
        read_message(protocol, Transport::Framed, &mut Reader::new(frame))
            .ok()
            .map(|(decoded, _)| decoded)
    }
}

/// What can be read of a message whose end was not captured: its decoded start, and its
/// total length when the transport says it.
pub(super) fn cut_message(format: Format, buf: &[u8]) -> (Option<Decoded>, Option<u64>) {
    match format.transport {
        Transport::Buffered => {
            let decoded =
                read_message(format.protocol, Transport::Buffered, &mut Reader::new(buf)).ok();
            (
                decoded.map(|(mut d, _)| {
                    d.complete = false;
                    d
                }),
                None,
            )
        }
        Transport::Framed | Transport::Header => match frame_total(buf) {
            Ok(total) => {
                let decoded = decode_frame(format, frame_body(buf, total)).map(|mut d| {
                    d.complete = false;
                    d
                });
                (decoded, Some(total))
            }
            Err(_) => (None, None),
        },
    }
}
