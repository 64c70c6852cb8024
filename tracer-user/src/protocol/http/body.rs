//! Body framing for the HTTP parser: follows a message body by Content-Length, chunked
//! encoding (extensions, trailers) or until the connection closes, over captured bytes and
//! over uncaptured gaps. Part of `protocol::http`: body bytes of one direction in, "the body
//! ended here" (or "framing lost") out. Body bytes are not kept here (the parser keeps a
//! request body's first bytes for id hints).

use thiserror::Error;

use super::head::Framing;

/// Longest chunk-size, chunk-end or trailer line we buffer.
const MAX_LINE: usize = 4096;
/// Most trailer bytes we accept after the last chunk.
const MAX_TRAILERS: usize = 64 * 1024;

#[derive(Debug, Error, PartialEq, Eq)]
pub(super) enum BodyError {
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("chunk framing line or trailers too long")]
    TooLong,
}

/// Where a body stands.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Body {
    /// Bytes still expected.
    Fixed(u64),
    Chunked(Chunked),
    UntilClose,
}

/// Outcome of skipping uncaptured bytes.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Skip {
    /// The gap ended inside the body; framing continues.
    Inside,
    /// The body ended inside the gap; `leftover` bytes of the gap follow it.
    Done { leftover: u64 },
    /// The gap covered framing bytes we needed (chunk-size lines): position unknown.
    Lost,
}

impl Body {
    /// The body state for `framing`, or `None` when the message has no body.
    pub fn new(framing: Framing) -> Option<Body> {
        match framing {
            Framing::Length(0) => None,
            Framing::Length(n) => Some(Body::Fixed(n)),
            Framing::Chunked => Some(Body::Chunked(Chunked::default())),
            Framing::UntilClose => Some(Body::UntilClose),
        }
    }

    /// Consumes body bytes from the start of `data`: how many, and whether the body ended.
    pub fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), BodyError> {
        match self {
            Body::Fixed(remaining) => {
                let take = take(*remaining, data.len());
                *remaining -= take as u64;
                Ok((take, *remaining == 0))
            }
            Body::Chunked(chunked) => chunked.feed(data),
            Body::UntilClose => Ok((data.len(), false)),
        }
    }

    /// Skips `n` bytes that moved but were not captured.
    pub fn skip(&mut self, n: u64) -> Skip {
        match self {
            Body::Fixed(remaining) if n < *remaining => {
                *remaining -= n;
                Skip::Inside
            }
            Body::Fixed(remaining) => Skip::Done {
                leftover: n - *remaining,
            },
            Body::Chunked(chunked) => chunked.skip(n),
            Body::UntilClose => Skip::Inside,
        }
    }
}

/// `min(remaining, available)` as a slice length.
fn take(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |r| r.min(available))
}

/// Chunked transfer coding (RFC 9112 §7.1).
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Chunked {
    state: ChunkState,
    /// The framing line read so far.
    line: Vec<u8>,
    trailer_bytes: usize,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    /// Reading `size[;ext]CRLF`.
    #[default]
    Size,
    /// Data bytes still expected in this chunk.
    Data(u64),
    /// Reading the CRLF after chunk data.
    DataEnd,
    /// Reading trailer fields up to the blank line.
    Trailers,
}

impl Chunked {
    fn feed(&mut self, data: &[u8]) -> Result<(usize, bool), BodyError> {
        let mut used = 0;
        while used < data.len() {
            let rest = &data[used..];
            if let ChunkState::Data(remaining) = self.state {
                let n = take(remaining, rest.len());
                used += n;
                self.state = if n as u64 == remaining {
                    ChunkState::DataEnd
                } else {
                    ChunkState::Data(remaining - n as u64)
                };
                continue;
            }
            let Some(line_end) = rest.iter().position(|&b| b == b'\n') else {
                self.buffer(rest)?;
                return Ok((data.len(), false));
            };
            self.buffer(&rest[..line_end])?;
            used += line_end + 1;
            if self.end_of_line()? {
                return Ok((used, true));
            }
        }
        Ok((used, false))
    }

    fn buffer(&mut self, bytes: &[u8]) -> Result<(), BodyError> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(BodyError::TooLong);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Acts on a complete framing line; true when it ended the body.
    fn end_of_line(&mut self) -> Result<bool, BodyError> {
        let line = std::mem::take(&mut self.line);
        let line = line.strip_suffix(b"\r").unwrap_or(&line);
        match self.state {
            ChunkState::Size => {
                self.state = match chunk_size(line)? {
                    0 => ChunkState::Trailers,
                    n => ChunkState::Data(n),
                };
            }
            ChunkState::DataEnd if line.is_empty() => self.state = ChunkState::Size,
            ChunkState::DataEnd => return Err(BodyError::ChunkEnd),
            ChunkState::Trailers if line.is_empty() => return Ok(true),
            ChunkState::Trailers => {
                self.trailer_bytes += line.len();
                if self.trailer_bytes > MAX_TRAILERS {
                    return Err(BodyError::TooLong);
                }
            }
            ChunkState::Data(_) => {}
        }
        Ok(false)
    }

    /// Only a gap that stays inside chunk data keeps our place.
    fn skip(&mut self, n: u64) -> Skip {
        match self.state {
            ChunkState::Data(remaining) if n < remaining => {
                self.state = ChunkState::Data(remaining - n)
            }
            ChunkState::Data(remaining) if n == remaining => self.state = ChunkState::DataEnd,
            _ => return Skip::Lost,
        }
        Skip::Inside
    }
}

/// The hex size before any `;extension`, with optional whitespace around it.
fn chunk_size(line: &[u8]) -> Result<u64, BodyError> {
    let size = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    if size.is_empty() || size.len() > 15 {
        return Err(BodyError::ChunkSize);
    }
    size.iter().try_fold(0u64, |acc, &b| {
        let digit = (b as char).to_digit(16).ok_or(BodyError::ChunkSize)?;
        Ok(acc << 4 | u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked() -> Body {
        Body::new(Framing::Chunked).expect("body")
    }

    #[test]
    fn fixed_length() {
        assert_eq!(Body::new(Framing::Length(0)), None);
        let mut body = Body::new(Framing::Length(5)).expect("body");
        assert_eq!(body.feed(b"abc"), Ok((3, false)));
        assert_eq!(body.feed(b"defgh"), Ok((2, true)));
        let mut body = Body::new(Framing::Length(10)).expect("body");
        assert_eq!(body.skip(4), Skip::Inside);
        assert_eq!(body.skip(9), Skip::Done { leftover: 3 });
    }

    #[test]
    fn chunked_with_extensions_and_trailers() {
        let data = b"4;name=val\r\nWiki\r\n5 ; x\r\npedia\r\n0\r\nExpires: never\r\n\r\nNEXT";
        assert_eq!(chunked().feed(data), Ok((data.len() - 4, true)));
        let mut body = chunked();
        let mut ended = false;
        for b in data[..data.len() - 4].iter() {
            assert!(!ended);
            let (used, done) = body.feed(std::slice::from_ref(b)).expect("valid");
            assert_eq!(used, 1);
            ended = done;
        }
        assert!(ended);
    }

    #[test]
    fn chunked_errors() {
        assert_eq!(chunked().feed(b"zz\r\n"), Err(BodyError::ChunkSize));
        assert_eq!(chunked().feed(b"\r\n"), Err(BodyError::ChunkSize));
        assert_eq!(chunked().feed(b"1\r\nab\r\n"), Err(BodyError::ChunkEnd));
        assert_eq!(
            chunked().feed(&[b'1'; MAX_LINE + 1]),
            Err(BodyError::TooLong)
        );
        assert_eq!(
            chunked().feed(b"ffffffffffffffff\r\n"),
            Err(BodyError::ChunkSize)
        );
    }

    #[test]
    fn chunked_gaps() {
        let mut body = chunked();
        assert_eq!(body.feed(b"10\r\nabc"), Ok((7, false)));
        assert_eq!(body.skip(13), Skip::Inside);
        assert_eq!(body.feed(b"\r\n0\r\n\r\n"), Ok((7, true)));
        let mut body = chunked();
        assert_eq!(body.feed(b"10\r\nabc"), Ok((7, false)));
        assert_eq!(body.skip(20), Skip::Lost);
        assert_eq!(chunked().skip(1), Skip::Lost);
    }
}
