//! Protocol stage: detects what a connection speaks from its first bytes and parses each
//! direction's byte stream into request and response messages. Parsers are pure (no I/O, no
//! clock) and incremental: they take one syscall's worth of bytes at a time.
//!
//! Upstream: `conntable` feeds chunks. Downstream: `assemble` pairs messages into spans.

pub mod hints;
pub mod http;
pub mod thrift;

use crate::context::TraceContext;
use crate::span::Attribute;

/// Which way bytes moved, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process wrote them.
    Egress,
    /// The process read them.
    Ingress,
}

/// When and by which thread one syscall moved bytes (kernel `CLOCK_MONOTONIC` ns).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// The earliest the syscall can have begun: its entry where the kernel side knows it
    /// (`*mmsg`), otherwise the end of the connection's previous I/O (0 for its first). Only
    /// for ordering the two ends of a connection, never a span time.
    pub not_before_ns: u64,
    /// When the bytes had moved (the sock tracepoint; the syscall's exit for `*mmsg`).
    pub exit_ns: u64,
    pub tid: u32,
}

/// One syscall's worth of bytes in one direction of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    /// The captured prefix of the bytes.
    pub data: &'a [u8],
    /// How many bytes the syscall really moved (`>= data.len()`): the rest were not captured
    /// and must be skipped by framing, never guessed.
    pub len: u64,
    pub timing: Timing,
}

/// Protocols the agent decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Thrift,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http",
            Protocol::Thrift => "thrift",
        }
    }
}

/// Attributes span assembly adds to a request's (network: up to 8, response: 2, link: 2): the
/// parsers reserve room for them, so that a span's list is allocated once.
pub const ASSEMBLY_ATTRIBUTES: usize = 12;

/// A request seen on a connection (its head, and its end once the body is through).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// Pairs the request with its response on this connection: the request's ordinal for
    /// HTTP/1.x, the sequence id for Thrift.
    pub key: u64,
    /// Span name (`GET /path` style for HTTP, `Service/method` or `method` for Thrift).
    pub name: compact_str::CompactString,
    /// Span attributes known from the request alone, with room for
    /// [`ASSEMBLY_ATTRIBUTES`] more.
    pub attributes: Vec<Attribute>,
    /// Trace context propagated in the request, if any.
    pub context: Option<TraceContext>,
    /// The syscall that carried the request's first byte.
    pub first: Timing,
    /// The syscall that carried its last byte.
    pub last: Timing,
    /// False for messages that get no reply (Thrift oneway).
    pub expects_response: bool,
    /// Tokens of the request's values beyond its name and path (Thrift call arguments, HTTP
    /// query and body values; see `hints`), for content-based parent inference. Never
    /// exported.
    pub id_hints: Vec<String>,
}

/// A response, complete (last byte seen).
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The key of the request it answers.
    pub key: u64,
    pub first: Timing,
    pub last: Timing,
    /// HTTP status code, when HTTP (span assembly records it as `http.response.status_code`,
    /// which saves an attribute list per response).
    pub http_status: Option<u16>,
    /// Set when the response reports an error (Thrift exception): its type or message.
    pub error: Option<String>,
    /// Span attributes known from the response.
    pub attributes: Vec<Attribute>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

/// What a parser reports besides messages, so the caller can count it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Bytes or messages that could not be parsed (each occurrence counts once).
    pub errors: u64,
    /// Times the parser lost its place and looked for the next message start.
    pub resyncs: u64,
}

/// An incremental parser of one connection (both directions).
pub trait StreamParser: Send {
    /// Feeds one chunk that moved in `dir`; completed messages are pushed to `out`.
    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>);
    /// Counts so far.
    fn stats(&self) -> ParseStats;
    /// True once the parser has decided the stream is not its protocol (the connection is
    /// then ignored).
    fn gave_up(&self) -> bool;
    /// The connection closed: completes a message delimited by the close (an HTTP/1.0 body
    /// without length), if any.
    fn finish(&mut self, _out: &mut Vec<Message>) {}
}

/// Options that change what parsers record.
#[derive(Clone, Debug, Default)]
pub struct ParserOptions {
    /// Record `url.query` (off by default: queries often carry secrets).
    pub record_query: bool,
    /// Request headers recorded as `http.request.header.<name>`: lower-case name and the
    /// attribute key (default none; the configuration refuses trace-context and credential
    /// headers).
    pub record_headers: Vec<(String, &'static str)>,
}

impl ParserOptions {
    /// `record_headers` from lower-case header names (keys are leaked once, at start-up).
    pub fn with_headers(record_query: bool, names: &[String]) -> Self {
        let record_headers = names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    &*Box::leak(format!("http.request.header.{n}").into_boxed_str()),
                )
            })
            .collect();
        Self {
            record_query,
            record_headers,
        }
    }
}

/// Guesses the protocol from the first captured bytes of a connection (either direction).
pub fn detect(first: &[u8]) -> Option<Protocol> {
    if http::looks_like_http(first) {
        Some(Protocol::Http1)
    } else if thrift::looks_like_thrift(first) {
        Some(Protocol::Thrift)
    } else {
        None
    }
}

/// A fresh parser for a connection that speaks `protocol`.
pub fn parser_for(protocol: Protocol, options: &ParserOptions) -> Box<dyn StreamParser> {
    match protocol {
        Protocol::Http1 => Box::new(http::HttpParser::new(options)),
        Protocol::Thrift => Box::new(thrift::ThriftParser::new()),
    }
}
