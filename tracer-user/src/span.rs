//! Our own span record: what the span-assembly stage produces and the exporters consume.
//! Conversion to OpenTelemetry's wire types happens only in `export::otlp`.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use compact_str::CompactString;

/// An attribute value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    /// Inline up to 24 bytes, a reference for a constant (`tcp`, `1.1`, a link method): no
    /// allocation for most paths, routes, hosts and methods.
    Str(CompactString),
    /// A string attribute holding an IPv4 address, kept as the address and written as text
    /// on export: no allocation per span for the peer and server addresses. (An IPv6 address
    /// would make the enum larger; those are `Str`.)
    Ipv4(Ipv4Addr),
    Int(i64),
    Bool(bool),
    Double(f64),
}

// Every span holds about twenty attributes: a variant must not make the value larger than a
// string's.
const _: () = assert!(std::mem::size_of::<AttrValue>() == 24);

/// A span or resource attribute with an OpenTelemetry semantic-convention key.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub key: &'static str,
    pub value: AttrValue,
}

impl Attribute {
    pub fn str(key: &'static str, value: impl Into<CompactString>) -> Self {
        Self {
            key,
            value: AttrValue::Str(value.into()),
        }
    }
    /// A constant string value, held without allocating.
    pub fn fixed(key: &'static str, value: &'static str) -> Self {
        Self {
            key,
            value: AttrValue::Str(CompactString::const_new(value)),
        }
    }
    /// An address attribute (`network.peer.address`, ...): its text on the wire.
    pub fn ip(key: &'static str, ip: IpAddr) -> Self {
        let value = match ip {
            IpAddr::V4(v4) => AttrValue::Ipv4(v4),
            IpAddr::V6(v6) => AttrValue::Str(compact_str::format_compact!("{v6}")),
        };
        Self { key, value }
    }
    pub fn int(key: &'static str, value: i64) -> Self {
        Self {
            key,
            value: AttrValue::Int(value),
        }
    }
    pub fn bool(key: &'static str, value: bool) -> Self {
        Self {
            key,
            value: AttrValue::Bool(value),
        }
    }
    pub fn double(key: &'static str, value: f64) -> Self {
        Self {
            key,
            value: AttrValue::Double(value),
        }
    }
}

/// Finds an attribute by key.
pub fn find<'a>(attributes: &'a [Attribute], key: &str) -> Option<&'a AttrValue> {
    attributes.iter().find(|a| a.key == key).map(|a| &a.value)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SpanKind {
    Server,
    Client,
}

#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum SpanStatus {
    #[default]
    Unset,
    /// With a description where one is known (an exception type or message).
    Error(Option<String>),
}

/// A link from a span to another span (used when the parent could not be decided).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanLink {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub attributes: Vec<Attribute>,
}

/// The resource of one traced process.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessResource {
    pub pid: u32,
    /// `service.name`.
    pub service_name: String,
    /// Every other resource attribute (`process.pid`, `host.name`, ...).
    pub attributes: Vec<Attribute>,
}

/// A finished span, ready to export.
#[derive(Clone, Debug)]
pub struct SpanRecord {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub parent_span_id: Option<[u8; 8]>,
    /// W3C `tracestate` carried over from propagated context: `Some` (possibly empty) exactly
    /// when the trace's context was propagated, `None` for a trace the agent started (head
    /// sampling tells the two apart by this; an empty string is no `tracestate` on the wire).
    pub tracestate: Option<String>,
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    pub name: CompactString,
    pub kind: SpanKind,
    /// Unix epoch nanoseconds.
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub attributes: Vec<Attribute>,
    pub status: SpanStatus,
    pub links: Vec<SpanLink>,
    pub resource: Arc<ProcessResource>,
}

/// Lower-case hex of an id, as OpenTelemetry and Jaeger print them.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}
