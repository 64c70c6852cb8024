//! HTTP/1.x parser (placeholder until the HTTP helper lands).
use super::*;
pub fn looks_like_http(_first: &[u8]) -> bool { false }
pub struct HttpParser;
impl HttpParser { pub fn new(_options: &ParserOptions) -> Self { HttpParser } }
impl StreamParser for HttpParser {
    fn feed(&mut self, _dir: Direction, _chunk: &Chunk<'_>, _out: &mut Vec<Message>) {}
    fn stats(&self) -> ParseStats { ParseStats::default() }
    fn gave_up(&self) -> bool { true }
}
