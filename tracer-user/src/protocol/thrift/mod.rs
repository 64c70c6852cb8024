//! Apache Thrift stream decoder. In the protocol stage: the connection table feeds it each
//! syscall's chunk of one connection (both directions); it emits CALL/ONEWAY messages as
//! requests and REPLY/EXCEPTION messages as responses, keyed by sequence id, to span assembly.
//!
//! Each direction detects its transport (buffered, framed, THeader) and protocol (binary
//! strict or not, compact) from its first message (`framing`), buffers bytes until a message
//! is whole (`binary`, `compact` walk unframed bodies to their end), skips the uncaptured rest
//! of frames by their length, and after losing its place waits for the start of a later chunk
//! to look for a message again. `message` builds the output.

mod binary;
mod compact;
mod framing;
mod message;
mod theader;
mod wire;

#[cfg(test)]
mod tests;

pub use framing::looks_like_thrift;

use super::{Chunk, Direction, Message, ParseStats, StreamParser, Timing};
use framing::{Decoded, Format, Sniff, Step};

/// Most bytes buffered per direction; bytes past it are handled as if not captured.
const BUFFER_CAP: usize = 256 * 1024;
/// Errors in a row (no message decoded in between) after which the parser gives up.
const MAX_ERRORS_IN_A_ROW: u32 = 8;
/// Chunks in a row that did not bring a direction back in sync after which it gives up.
const MAX_UNSYNCED_CHUNKS: u32 = 64;

/// Decodes Thrift on one TCP connection, both directions.
#[derive(Default)]
pub struct ThriftParser {
    egress: Side,
    ingress: Side,
    health: Health,
}

impl ThriftParser {
    pub fn new() -> Self {
        Self::default()
    }
}

impl StreamParser for ThriftParser {
    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        if self.health.gave_up {
            return;
        }
        let side = match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        };
        let uncaptured = chunk.len.saturating_sub(chunk.data.len() as u64);
        side.feed(chunk.data, uncaptured, chunk.timing, &mut self.health, out);
        self.health.check();
    }

    fn stats(&self) -> ParseStats {
        self.health.stats
    }

    fn gave_up(&self) -> bool {
        self.health.gave_up
    }
}

/// Counts, and the decision to give up.
#[derive(Default)]
struct Health {
    stats: ParseStats,
    errors_in_a_row: u32,
    unsynced_chunks: u32,
    gave_up: bool,
}

impl Health {
    fn decoded(&mut self) {
        self.errors_in_a_row = 0;
        self.unsynced_chunks = 0;
    }

    fn error(&mut self) {
        self.stats.errors += 1;
        self.errors_in_a_row = self.errors_in_a_row.saturating_add(1);
    }

    /// An error that lost the stream's place.
    fn lost(&mut self) {
        self.error();
        self.stats.resyncs += 1;
    }

    fn unsynced_chunk(&mut self) {
        self.unsynced_chunks = self.unsynced_chunks.saturating_add(1);
    }

    fn check(&mut self) {
        if self.errors_in_a_row >= MAX_ERRORS_IN_A_ROW
            || self.unsynced_chunks >= MAX_UNSYNCED_CHUNKS
        {
            self.gave_up = true;
        }
    }
}

/// Where a direction stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Mode {
    /// Detecting the format of the message at the front of the buffer.
    #[default]
    Probe,
    /// Like `Probe`, after a loss: bytes that do not start a message are dropped without
    /// counting another error.
    Resync,
    Synced(Format),
    /// Lost: waiting for the start of the next chunk.
    Lost,
}

/// A message whose frame's rest (not captured) is being skipped.
struct Pending {
    decoded: Decoded,
    first: Timing,
}

/// One direction of the connection.
#[derive(Default)]
struct Side {
    mode: Mode,
    /// Bytes of the stream not yet consumed; starts at a message start.
    buf: Vec<u8>,
    /// The chunk that carried `buf[0]`.
    start: Timing,
    /// Do not try again before `buf` holds this many bytes (the walker needs them).
    want: usize,
    /// Stream bytes still to pass over: the uncaptured rest of a frame.
    skip: u64,
    pending: Option<Pending>,
}

impl Side {
    /// Takes one chunk: `data` was captured, `uncaptured` more bytes followed it.
    fn feed(
        &mut self,
        data: &[u8],
        uncaptured: u64,
        timing: Timing,
        health: &mut Health,
        out: &mut Vec<Message>,
    ) {
        let Some((data, uncaptured)) = self.pass_skipped(data, uncaptured, timing, health, out)
        else {
            return;
        };
        if self.mode == Mode::Lost {
            // A new syscall: it may start a message.
            self.mode = Mode::Resync;
            self.clear();
        }
        let uncaptured = self.take_in(data, uncaptured, timing, health, out);
        if uncaptured > 0 {
            self.cut(uncaptured, timing, health, out);
        }
        if matches!(self.mode, Mode::Lost | Mode::Resync) {
            health.unsynced_chunk();
        }
    }

    /// Passes over what remains of a frame; returns the rest of the chunk, if any is left.
    fn pass_skipped<'a>(
        &mut self,
        data: &'a [u8],
        uncaptured: u64,
        timing: Timing,
        health: &mut Health,
        out: &mut Vec<Message>,
    ) -> Option<(&'a [u8], u64)> {
        if self.skip == 0 {
            return Some((data, uncaptured));
        }
        let from_data = usize::try_from(self.skip).map_or(data.len(), |skip| skip.min(data.len()));
        self.skip -= from_data as u64;
        let from_uncaptured = self.skip.min(uncaptured);
        self.skip -= from_uncaptured;
        if self.skip > 0 {
            return None;
        }
        if let Some(pending) = self.pending.take() {
            emit(pending.decoded, pending.first, timing, health, out);
        }
        Some((&data[from_data..], uncaptured - from_uncaptured))
    }

    /// Buffers captured bytes and cuts messages off the buffer. Bytes that do not fit under
    /// the cap are returned as uncaptured, added to `uncaptured`.
    fn take_in(
        &mut self,
        mut data: &[u8],
        uncaptured: u64,
        timing: Timing,
        health: &mut Health,
        out: &mut Vec<Message>,
    ) -> u64 {
        while !data.is_empty() && self.mode != Mode::Lost {
            let room = BUFFER_CAP - self.buf.len();
            if room == 0 {
                return uncaptured.saturating_add(data.len() as u64);
            }
            if self.buf.is_empty() {
                self.start = timing;
            }
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            self.drain(timing, health, out);
        }
        if self.mode == Mode::Lost {
            0
        } else {
            uncaptured
        }
    }

    /// Cuts every whole message off the front of the buffer.
    fn drain(&mut self, timing: Timing, health: &mut Health, out: &mut Vec<Message>) {
        while !self.buf.is_empty() && self.buf.len() >= self.want {
            let Some(format) = self.format(health) else {
                return;
            };
            match framing::step(format, &self.buf) {
                Step::Done {
                    len,
                    decoded,
                    error,
                } => {
                    if let Some(decoded) = decoded {
                        emit(decoded, self.start, timing, health, out);
                    }
                    if error {
                        health.error();
                    }
                    self.buf.drain(..len.min(self.buf.len()));
                    self.start = timing;
                    self.want = 0;
                }
                Step::Partial { need } => {
                    self.want = self.buf.len().saturating_add(need);
                    return;
                }
                Step::Invalid => {
                    self.lose(health);
                    return;
                }
            }
        }
    }

    /// The direction's format, detecting it from the buffer if not known yet.
    fn format(&mut self, health: &mut Health) -> Option<Format> {
        match self.mode {
            Mode::Synced(format) => Some(format),
            Mode::Lost => None,
            Mode::Probe | Mode::Resync => match framing::sniff(&self.buf) {
                Sniff::Yes(format) => {
                    self.mode = Mode::Synced(format);
                    Some(format)
                }
                Sniff::NeedMore => None,
                Sniff::No => {
                    self.lose_quietly_if_resyncing(health);
                    None
                }
            },
        }
    }

    /// The chunk moved `uncaptured` bytes more than the buffer got: emit what can be read of
    /// the message they belong to, then skip its rest by its length or lose the stream.
    fn cut(
        &mut self,
        uncaptured: u64,
        timing: Timing,
        health: &mut Health,
        out: &mut Vec<Message>,
    ) {
        let format = match self.mode {
            Mode::Synced(format) if !self.buf.is_empty() => format,
            Mode::Lost => return,
            _ => return self.lose_quietly_if_resyncing(health),
        };
        let (decoded, total) = framing::cut_message(format, &self.buf);
        let have = self.buf.len() as u64;
        let first = self.start;
        self.clear();
        match total {
            Some(total) => {
                if decoded.is_none() {
                    health.error();
                }
                let rest = total.saturating_sub(have);
                if rest <= uncaptured {
                    if let Some(decoded) = decoded {
                        emit(decoded, first, timing, health, out);
                    }
                    if rest < uncaptured {
                        // The next message starts in bytes nobody saw.
                        self.lose(health);
                    }
                } else {
                    self.skip = rest - uncaptured;
                    self.pending = decoded.map(|decoded| Pending { decoded, first });
                }
            }
            None => {
                if let Some(decoded) = decoded {
                    emit(decoded, first, timing, health, out);
                }
                self.lose(health);
            }
        }
    }

    /// Loses the stream's place, counting it unless already looking for it again.
    fn lose_quietly_if_resyncing(&mut self, health: &mut Health) {
        if self.mode == Mode::Resync {
            self.mode = Mode::Lost;
            self.clear();
        } else {
            self.lose(health);
        }
    }

    fn lose(&mut self, health: &mut Health) {
        health.lost();
        self.mode = Mode::Lost;
        self.clear();
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.want = 0;
    }
}

fn emit(
    decoded: Decoded,
    first: Timing,
    last: Timing,
    health: &mut Health,
    out: &mut Vec<Message>,
) {
    health.decoded();
    out.push(message::to_message(decoded, first, last));
}
