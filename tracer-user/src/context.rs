//! Trace context propagated by the traced applications themselves: W3C `traceparent` /
//! `tracestate`, B3 (multi-header `X-B3-*` and single `b3`), Jaeger `uber-trace-id`.
//! Pure functions over header names and values; used by the HTTP and Thrift (THeader) parsers.

/// Which header format the context came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContextFormat {
    W3c,
    B3Multi,
    B3Single,
    Jaeger,
}

impl ContextFormat {
    pub fn name(self) -> &'static str {
        match self {
            ContextFormat::W3c => "w3c",
            ContextFormat::B3Multi => "b3multi",
            ContextFormat::B3Single => "b3",
            ContextFormat::Jaeger => "jaeger",
        }
    }
}

/// The caller's position in a trace: the span that sent the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// 128-bit trace id (64-bit ids are left-padded with zeros).
    pub trace_id: [u8; 16],
    /// The sending span's id: the parent of spans for this request.
    pub span_id: [u8; 8],
    /// W3C-style flags; bit 0 is "sampled".
    pub flags: u8,
    /// W3C `tracestate`, kept verbatim.
    pub tracestate: Option<String>,
    pub format: ContextFormat,
}

/// Extracts trace context from request headers (names compared case-insensitively). When
/// several formats are present, W3C wins, then B3 single, B3 multi, Jaeger.
pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Option<TraceContext> {
    let _ = headers.into_iter();
    todo!("context helper")
}
