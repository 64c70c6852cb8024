//! Encoding of our span records as an OTLP `ExportTraceServiceRequest` (span assembly ->
//! exporter queue -> **OTLP request** -> transport -> collector). The only place that knows both
//! [`crate::span`] and the OTLP trace schema.
//!
//! Written by hand on purpose: building `opentelemetry_proto`'s message structs (a `String`
//! per attribute key and value, a `Vec` per id) and encoding them with prost took about a third
//! of the agent's CPU at nginx saturation. Here each span is written straight from its record
//! into one buffer in one pass: protobuf puts a message's length before it, so a nested
//! message is written after a reserved length that is filled in once its end is known
//! (`message`; a key-value's length, known from its parts, is written at once). prost's wire primitives (keys, varints) are used; the field
//! numbers are those of `opentelemetry/proto/trace/v1/trace.proto` and its imports, and the
//! tests decode the output with `opentelemetry_proto`'s prost types.
//!
//! One request carries spans of many traced processes: spans are grouped into one
//! `ResourceSpans` per [`ProcessResource`], each with a single `ScopeSpans` for this agent.

use std::{net::Ipv4Addr, sync::Arc};

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::span::{AttrValue, Attribute, ProcessResource, SpanKind, SpanRecord, SpanStatus};

/// Instrumentation scope name reported for every span.
pub const SCOPE_NAME: &str = "tracer";
const SCOPE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Field numbers of the OTLP messages written here.
mod field {
    pub const REQUEST_RESOURCE_SPANS: u32 = 1;
    pub const RESOURCE_SPANS_RESOURCE: u32 = 1;
    pub const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2;
    pub const RESOURCE_ATTRIBUTES: u32 = 1;
    pub const SCOPE_SPANS_SCOPE: u32 = 1;
    pub const SCOPE_SPANS_SPANS: u32 = 2;
    pub const SCOPE_NAME: u32 = 1;
    pub const SCOPE_VERSION: u32 = 2;
    pub const SPAN_TRACE_ID: u32 = 1;
    pub const SPAN_SPAN_ID: u32 = 2;
    pub const SPAN_TRACE_STATE: u32 = 3;
    pub const SPAN_PARENT_SPAN_ID: u32 = 4;
    pub const SPAN_NAME: u32 = 5;
    pub const SPAN_KIND: u32 = 6;
    pub const SPAN_START: u32 = 7;
    pub const SPAN_END: u32 = 8;
    pub const SPAN_ATTRIBUTES: u32 = 9;
    pub const SPAN_LINKS: u32 = 13;
    pub const SPAN_STATUS: u32 = 15;
    pub const SPAN_FLAGS: u32 = 16;
    pub const LINK_TRACE_ID: u32 = 1;
    pub const LINK_SPAN_ID: u32 = 2;
    pub const LINK_ATTRIBUTES: u32 = 4;
    pub const STATUS_MESSAGE: u32 = 2;
    pub const STATUS_CODE: u32 = 3;
    pub const KEY_VALUE_KEY: u32 = 1;
    pub const KEY_VALUE_VALUE: u32 = 2;
    pub const ANY_STRING: u32 = 1;
    pub const ANY_BOOL: u32 = 2;
    pub const ANY_INT: u32 = 3;
    pub const ANY_DOUBLE: u32 = 4;
}

/// `SpanKind` enum values of the OTLP schema.
const KIND_SERVER: u64 = 2;
const KIND_CLIENT: u64 = 3;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: u64 = 2;

/// Encodes one export request, grouping spans by their process resource (same `Arc` or equal
/// contents) in order of first appearance.
pub fn encode_request(spans: &[SpanRecord]) -> Vec<u8> {
    // Group index of every span, and each group's resource; batches hold a few processes.
    let mut resources: Vec<&Arc<ProcessResource>> = Vec::new();
    let mut group_of = Vec::with_capacity(spans.len());
    for record in spans {
        let found = resources
            .iter()
            .position(|r| Arc::ptr_eq(r, &record.resource) || ***r == *record.resource);
        group_of.push(found.unwrap_or_else(|| {
            resources.push(&record.resource);
            resources.len() - 1
        }));
    }
    // One group after the other (spans of a group in batch order).
    let mut order: Vec<usize> = (0..spans.len()).collect();
    order.sort_by_key(|&i| group_of[i]);
    let mut buf = Vec::with_capacity(spans.len() * SPAN_BYTES_GUESS + 256);
    let members = order.chunk_by(|&a, &b| group_of[a] == group_of[b]);
    for (resource, members) in resources.iter().zip(members) {
        message(field::REQUEST_RESOURCE_SPANS, 3, &mut buf, |buf| {
            // `service.name`, then the process's other resource attributes.
            message(field::RESOURCE_SPANS_RESOURCE, 2, buf, |buf| {
                let service = Wire::Text(resource.service_name.as_bytes());
                key_wire(field::RESOURCE_ATTRIBUTES, "service.name", service, buf);
                attributes(field::RESOURCE_ATTRIBUTES, &resource.attributes, buf);
            });
            message(field::RESOURCE_SPANS_SCOPE_SPANS, 3, buf, |buf| {
                message(field::SCOPE_SPANS_SCOPE, 1, buf, |buf| {
                    string_field(field::SCOPE_NAME, SCOPE_NAME, buf);
                    string_field(field::SCOPE_VERSION, SCOPE_VERSION, buf);
                });
                for &i in members {
                    message(field::SCOPE_SPANS_SPANS, 2, buf, |buf| {
                        encode_span(&spans[i], buf)
                    });
                }
            });
        });
    }
    buf
}

/// About what one of our spans takes encoded (the buffer's first reservation).
const SPAN_BYTES_GUESS: usize = 512;

fn encode_span(record: &SpanRecord, buf: &mut Vec<u8>) {
    bytes_field(field::SPAN_TRACE_ID, &record.trace_id, buf);
    bytes_field(field::SPAN_SPAN_ID, &record.span_id, buf);
    if let Some(tracestate) = &record.tracestate {
        string_field(field::SPAN_TRACE_STATE, tracestate, buf);
    }
    if let Some(parent) = &record.parent_span_id {
        bytes_field(field::SPAN_PARENT_SPAN_ID, parent, buf);
    }
    string_field(field::SPAN_NAME, &record.name, buf);
    let kind = match record.kind {
        SpanKind::Server => KIND_SERVER,
        SpanKind::Client => KIND_CLIENT,
    };
    encode_key(field::SPAN_KIND, WireType::Varint, buf);
    varint(kind, buf);
    fixed64_field(field::SPAN_START, record.start_unix_ns, buf);
    fixed64_field(field::SPAN_END, record.end_unix_ns, buf);
    attributes(field::SPAN_ATTRIBUTES, &record.attributes, buf);
    for link in &record.links {
        message(field::SPAN_LINKS, 1, buf, |buf| {
            bytes_field(field::LINK_TRACE_ID, &link.trace_id, buf);
            bytes_field(field::LINK_SPAN_ID, &link.span_id, buf);
            attributes(field::LINK_ATTRIBUTES, &link.attributes, buf);
        });
    }
    message(field::SPAN_STATUS, 1, buf, |buf| {
        if let SpanStatus::Error(message) = &record.status {
            string_field(field::STATUS_MESSAGE, message.as_deref().unwrap_or(""), buf);
            encode_key(field::STATUS_CODE, WireType::Varint, buf);
            varint(STATUS_CODE_ERROR, buf);
        }
    });
    if record.flags != 0 {
        encode_key(field::SPAN_FLAGS, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&u32::from(record.flags).to_le_bytes());
    }
}

fn attributes(tag: u32, attributes: &[Attribute], buf: &mut Vec<u8>) {
    for a in attributes {
        key_value(tag, a.key, &a.value, buf);
    }
}

/// What a `KeyValue`'s `AnyValue` holds on the wire.
#[derive(Clone, Copy)]
enum Wire<'a> {
    Text(&'a [u8]),
    Int(u64),
    Double(f64),
    Bool(bool),
}

/// An attribute as a `KeyValue` (an address's text is made here, once).
fn key_value(tag: u32, key: &str, value: &AttrValue, buf: &mut Vec<u8>) {
    let address;
    let wire = match value {
        AttrValue::Str(s) => Wire::Text(s.as_bytes()),
        AttrValue::Ipv4(ip) => {
            address = ipv4_text(*ip);
            Wire::Text(&address.0[..address.1])
        }
        AttrValue::Int(i) => Wire::Int(*i as u64),
        AttrValue::Double(d) => Wire::Double(*d),
        AttrValue::Bool(b) => Wire::Bool(*b),
    };
    key_wire(tag, key, wire, buf);
}

/// A `KeyValue` whose `AnyValue` holds exactly one of its variants (encoded even when it is
/// the type's default, as a set `oneof` is). Its length is known from its parts, so it is
/// written at once.
fn key_wire(tag: u32, key: &str, wire: Wire<'_>, buf: &mut Vec<u8>) {
    let any_value_len = match wire {
        Wire::Text(text) => {
            key_len(field::ANY_STRING) + encoded_len_varint(text.len() as u64) + text.len()
        }
        Wire::Int(i) => key_len(field::ANY_INT) + encoded_len_varint(i),
        Wire::Double(_) => key_len(field::ANY_DOUBLE) + 8,
        Wire::Bool(_) => key_len(field::ANY_BOOL) + 1,
    };
    let len = string_field_len(field::KEY_VALUE_KEY, key)
        + message_field_len(field::KEY_VALUE_VALUE, any_value_len);
    message_header(tag, len, buf);
    string_field(field::KEY_VALUE_KEY, key, buf);
    message_header(field::KEY_VALUE_VALUE, any_value_len, buf);
    match wire {
        // Written even when empty (a set `oneof`), unlike `bytes_field`.
        Wire::Text(text) => {
            message_header(field::ANY_STRING, text.len(), buf);
            buf.extend_from_slice(text);
        }
        Wire::Int(i) => {
            encode_key(field::ANY_INT, WireType::Varint, buf);
            varint(i, buf);
        }
        Wire::Double(d) => {
            encode_key(field::ANY_DOUBLE, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&d.to_le_bytes());
        }
        Wire::Bool(b) => {
            encode_key(field::ANY_BOOL, WireType::Varint, buf);
            buf.push(u8::from(b));
        }
    }
}

/// Dotted-quad text of an address in a stack buffer, and its length (what `Display` writes,
/// without a formatter or an allocation).
fn ipv4_text(ip: Ipv4Addr) -> ([u8; 15], usize) {
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        if octet >= 100 {
            text[len] = b'0' + octet / 100;
            len += 1;
        }
        if octet >= 10 {
            text[len] = b'0' + octet / 10 % 10;
            len += 1;
        }
        text[len] = b'0' + octet % 10;
        len += 1;
    }
    (text, len)
}

// Wire primitives. proto3 leaves out a scalar field holding its default (empty string, zero);
// a message field that is present is written even when empty.

/// Writes field `tag` holding the message that `body` writes, in one pass: the key, `guess`
/// bytes reserved for the length, the body, then the length in its place (the body moved
/// when its length takes another number of bytes than guessed, so the varint stays minimal).
fn message(tag: u32, guess: usize, buf: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, buf);
    let at = buf.len();
    buf.resize(at + guess, 0);
    body(buf);
    let len = buf.len() - at - guess;
    let needed = encoded_len_varint(len as u64);
    if needed > guess {
        buf.resize(buf.len() + needed - guess, 0);
        buf.copy_within(at + guess..at + guess + len, at + needed);
    } else if needed < guess {
        buf.copy_within(at + guess.., at + needed);
        buf.truncate(at + needed + len);
    }
    encode_varint(len as u64, &mut &mut buf[at..at + needed]);
}

fn message_field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn message_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    varint(len as u64, buf);
}

/// prost's varint with the one-byte case first: most lengths and values written here are
/// below 128.
#[inline]
fn varint(value: u64, buf: &mut Vec<u8>) {
    if value < 0x80 {
        buf.push(value as u8);
    } else {
        encode_varint(value, buf);
    }
}

fn bytes_field_len(tag: u32, bytes: &[u8]) -> usize {
    if bytes.is_empty() {
        0
    } else {
        message_field_len(tag, bytes.len())
    }
}

fn bytes_field(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    if !bytes.is_empty() {
        message_header(tag, bytes.len(), buf);
        buf.extend_from_slice(bytes);
    }
}

fn string_field_len(tag: u32, s: &str) -> usize {
    bytes_field_len(tag, s.as_bytes())
}

fn string_field(tag: u32, s: &str, buf: &mut Vec<u8>) {
    bytes_field(tag, s.as_bytes(), buf);
}

fn fixed64_field(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{KeyValue, any_value},
        trace::v1::{Span, span, status},
    };
    use prost::Message as _;

    use crate::span::SpanLink;

    pub(crate) fn resource(pid: u32, service: &str) -> Arc<ProcessResource> {
        Arc::new(ProcessResource {
            pid,
            service_name: service.to_owned(),
            attributes: vec![Attribute::int("process.pid", i64::from(pid))],
        })
    }

    pub(crate) fn record(
        resource: &Arc<ProcessResource>,
        trace: u8,
        span_id: u8,
        parent: Option<u8>,
    ) -> SpanRecord {
        SpanRecord {
            trace_id: [trace; 16],
            span_id: [span_id; 8],
            parent_span_id: parent.map(|p| [p; 8]),
            tracestate: None,
            flags: 1,
            name: compact_str::format_compact!("span {span_id}"),
            kind: SpanKind::Server,
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_003_200_000,
            attributes: Vec::new(),
            status: SpanStatus::Unset,
            links: Vec::new(),
            resource: resource.clone(),
        }
    }

    /// The encoder's output as prost reads it, checked to be exactly what prost itself writes
    /// for that message (field order, lengths, defaults left out).
    fn decode(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
        let bytes = encode_request(spans);
        let request = ExportTraceServiceRequest::decode(bytes.as_slice()).expect("decodes");
        assert_eq!(request.encode_to_vec(), bytes, "same bytes as prost writes");
        request
    }

    fn only_span(request: &ExportTraceServiceRequest) -> &Span {
        assert_eq!(request.resource_spans.len(), 1);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 1);
        &spans[0]
    }

    fn value(kv: &KeyValue) -> Option<&any_value::Value> {
        kv.value.as_ref().and_then(|v| v.value.as_ref())
    }

    #[test]
    fn ipv4_text_is_what_display_writes() {
        for octets in [
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [127, 0, 0, 1],
            [9, 10, 99, 100],
        ] {
            let ip = Ipv4Addr::from(octets);
            let (text, len) = ipv4_text(ip);
            assert_eq!(
                std::str::from_utf8(&text[..len]),
                Ok(ip.to_string().as_str())
            );
        }
    }

    /// Every nested message is written after a length guessed in advance: bodies on either
    /// side of each varint size (1, 2, 3 and 4 bytes) must come out with minimal lengths.
    #[test]
    fn lengths_are_right_whatever_the_size_of_a_message() {
        let res = resource(7, "sizes");
        for size in [0, 100, 127, 128, 16_383, 16_384, 2_097_152] {
            let text = "y".repeat(size);
            let mut r = record(&res, 1, 2, None);
            r.attributes = vec![Attribute::str("tracer.big", text.as_str())];
            r.status = SpanStatus::Error(Some(text.clone()));
            r.links = vec![SpanLink {
                trace_id: [3; 16],
                span_id: [4; 8],
                attributes: vec![Attribute::str("tracer.big", text.as_str())],
            }];
            let request = decode(&[r]);
            let s = only_span(&request);
            assert_eq!(
                value(&s.attributes[0]),
                Some(&any_value::Value::StringValue(text.clone()))
            );
            assert_eq!(s.status.as_ref().map(|st| st.message.len()), Some(size));
            assert_eq!(
                value(&s.links[0].attributes[0]),
                Some(&any_value::Value::StringValue(text))
            );
        }
        // Batches from one span to more than 16 KiB and 2 MiB of spans per process.
        for count in [1, 40, 5_000] {
            let spans: Vec<SpanRecord> = (0..count)
                .map(|i| record(&res, 5, (i % 250) as u8, Some(9)))
                .collect();
            let request = decode(&spans);
            assert_eq!(request.resource_spans[0].scope_spans[0].spans.len(), count);
        }
    }

    #[test]
    fn encodes_every_field() {
        let res = resource(42, "fizzer");
        let mut r = record(&res, 0xab, 0x01, Some(0x02));
        r.kind = SpanKind::Client;
        r.tracestate = Some("vendor=1".to_owned());
        r.flags = 0x01;
        r.attributes = vec![
            Attribute::str("http.request.method", "POST"),
            Attribute::str("url.query", ""),
            Attribute::int("http.response.status_code", 500),
            Attribute::int("tracer.negative", -3),
            Attribute::bool("tracer.partial", true),
            Attribute::bool("tracer.false", false),
            Attribute::double("tracer.ratio", 0.5),
            Attribute::str("tracer.long", "x".repeat(300)),
            Attribute::ip("network.peer.address", "10.0.200.7".parse().unwrap()),
            Attribute::ip("server.address", "fd00::1".parse().unwrap()),
        ];
        r.status = SpanStatus::Error(Some("boom".to_owned()));
        r.links = vec![SpanLink {
            trace_id: [7; 16],
            span_id: [8; 8],
            attributes: vec![Attribute::str("tracer.link.reason", "ambiguous")],
        }];
        let request = decode(&[r]);
        let s = only_span(&request);
        assert_eq!(s.trace_id, vec![0xab; 16]);
        assert_eq!(s.span_id, vec![0x01; 8]);
        assert_eq!(s.parent_span_id, vec![0x02; 8]);
        assert_eq!(s.trace_state, "vendor=1");
        assert_eq!(s.flags, 1);
        assert_eq!(s.kind, span::SpanKind::Client as i32);
        assert_eq!(s.name, "span 1");
        assert_eq!(
            (s.start_time_unix_nano, s.end_time_unix_nano),
            (1_000_000_000, 1_003_200_000)
        );
        let attrs: Vec<_> = s
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), value(kv).cloned()))
            .collect();
        use any_value::Value::*;
        assert_eq!(
            attrs,
            vec![
                ("http.request.method", Some(StringValue("POST".to_owned()))),
                ("url.query", Some(StringValue(String::new()))),
                ("http.response.status_code", Some(IntValue(500))),
                ("tracer.negative", Some(IntValue(-3))),
                ("tracer.partial", Some(BoolValue(true))),
                ("tracer.false", Some(BoolValue(false))),
                ("tracer.ratio", Some(DoubleValue(0.5))),
                ("tracer.long", Some(StringValue("x".repeat(300)))),
                (
                    "network.peer.address",
                    Some(StringValue("10.0.200.7".to_owned()))
                ),
                ("server.address", Some(StringValue("fd00::1".to_owned()))),
            ]
        );
        let status = s.status.as_ref().expect("status");
        assert_eq!(
            (status.code, status.message.as_str()),
            (status::StatusCode::Error as i32, "boom")
        );
        assert_eq!(s.links.len(), 1);
        assert_eq!(s.links[0].trace_id, vec![7; 16]);
        assert_eq!(s.links[0].span_id, vec![8; 8]);
        assert_eq!(s.links[0].attributes[0].key, "tracer.link.reason");
        let scope = request.resource_spans[0].scope_spans[0]
            .scope
            .as_ref()
            .expect("scope");
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("tracer", env!("CARGO_PKG_VERSION"))
        );
    }

    #[test]
    fn root_server_span_has_empty_parent_and_unset_status() {
        let mut r = record(&resource(1, "a"), 1, 1, None);
        r.tracestate = Some(String::new());
        r.flags = 0;
        let request = decode(&[r]);
        let s = only_span(&request);
        assert!(s.parent_span_id.is_empty());
        assert!(s.trace_state.is_empty());
        assert_eq!((s.kind, s.flags), (span::SpanKind::Server as i32, 0));
        let status = s.status.as_ref().expect("status");
        assert_eq!((status.code, status.message.as_str()), (0, ""));
        let mut error = record(&resource(1, "a"), 1, 1, None);
        error.status = SpanStatus::Error(None);
        let request = decode(&[error]);
        let status = only_span(&request).status.clone().expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, ""));
    }

    #[test]
    fn empty_batch_is_an_empty_request() {
        assert!(encode_request(&[]).is_empty());
        assert_eq!(decode(&[]), ExportTraceServiceRequest::default());
    }

    #[test]
    fn groups_spans_by_resource() {
        let a = resource(1, "alpha");
        let b = resource(2, "beta");
        // A distinct Arc with the same contents belongs to the same group.
        let a_again = resource(1, "alpha");
        let request = decode(&[
            record(&a, 1, 1, None),
            record(&b, 1, 2, Some(1)),
            record(&a_again, 2, 3, None),
            record(&b, 2, 4, None),
        ]);
        assert_eq!(request.resource_spans.len(), 2);
        let names: Vec<_> = request
            .resource_spans
            .iter()
            .map(|rs| {
                let attrs = &rs.resource.as_ref().expect("resource").attributes;
                assert_eq!(attrs[0].key, "service.name");
                assert_eq!(attrs[1].key, "process.pid");
                let ids: Vec<u8> = rs.scope_spans[0]
                    .spans
                    .iter()
                    .map(|s| s.span_id[0])
                    .collect();
                (value(&attrs[0]).cloned(), ids)
            })
            .collect();
        assert_eq!(
            names,
            vec![
                (
                    Some(any_value::Value::StringValue("alpha".to_owned())),
                    vec![1, 3]
                ),
                (
                    Some(any_value::Value::StringValue("beta".to_owned())),
                    vec![2, 4]
                ),
            ]
        );
    }
}
