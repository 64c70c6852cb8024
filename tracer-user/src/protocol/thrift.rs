//! Thrift parser (placeholder until the Thrift helper lands).
use super::*;
pub fn looks_like_thrift(_first: &[u8]) -> bool { false }
pub struct ThriftParser;
impl ThriftParser { pub fn new() -> Self { ThriftParser } }
impl StreamParser for ThriftParser {
    fn feed(&mut self, _dir: Direction, _chunk: &Chunk<'_>, _out: &mut Vec<Message>) {}
    fn stats(&self) -> ParseStats { ParseStats::default() }
    fn gave_up(&self) -> bool { true }
}
