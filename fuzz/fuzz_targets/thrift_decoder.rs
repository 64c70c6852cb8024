//! Fuzzes the Thrift stream decoder the way the connection table drives it: arbitrary bytes
//! cut into chunks of arbitrary size and direction, each possibly longer (`len`) than what was
//! captured. The decoder must not panic, hang or grow its buffers without bound, whatever the
//! chunks; detection runs on every chunk too.
//!
//! Input layout, repeated: a control byte (bit 0 direction; bits 1..7 pick how many bytes the
//! syscall moved beyond the captured ones: none, a few, or a power of two), a length byte,
//! then that many captured bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tracer::protocol::thrift::{ThriftParser, looks_like_thrift};
use tracer::protocol::{Chunk, Direction, StreamParser, Timing};

/// Bytes the syscall moved but the capture did not keep.
fn uncaptured(control: u8) -> u64 {
    let selector = control >> 1;
    match selector {
        0..64 => 0,
        64..96 => u64::from(selector - 64),
        _ => 1 << (selector - 96),
    }
}

fuzz_target!(|input: &[u8]| {
    let _ = looks_like_thrift(input);
    let mut parser = ThriftParser::new();
    let mut out = Vec::new();
    let mut rest = input;
    let mut syscall = 0u64;
    while let [control, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (data, next) = tail.split_at(n);
        rest = next;
        syscall += 1;
        let dir = if control & 1 == 0 { Direction::Egress } else { Direction::Ingress };
        let timing = Timing { not_before_ns: syscall, exit_ns: syscall, tid: 1 };
        let chunk = Chunk { data, len: data.len() as u64 + uncaptured(*control), timing };
        let _ = looks_like_thrift(data);
        parser.feed(dir, &chunk, &mut out);
        if parser.gave_up() {
            break;
        }
    }
    let _ = parser.stats();
});
