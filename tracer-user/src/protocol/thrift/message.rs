//! Turns a decoded Thrift message into the protocol stage's output: CALL and ONEWAY become
//! `Request`s, REPLY and EXCEPTION become `Response`s, keyed by sequence id, with span name,
//! attributes, propagated trace context (THeader info headers) and error. Fed by
//! `ThriftParser`; its output goes to span assembly.

use super::framing::Decoded;
use super::wire::{Field, MessageType, Value};
use crate::context::{TraceContext, from_headers};
use crate::protocol::{Message, Request, Response, Timing, hints};
use crate::span::Attribute;
use compact_str::CompactString;

/// Info header names that carry trace context (W3C, B3 single and multi, Jaeger).
const CONTEXT_HEADERS: [&str; 4] = ["traceparent", "b3", "x-b3-traceid", "uber-trace-id"];

/// Builds the request or response for a message whose bytes moved between `first` and `last`.
pub(super) fn to_message(decoded: Decoded, first: Timing, last: Timing) -> Message {
    let key = u64::from(decoded.head.seqid as u32);
    match decoded.head.kind {
        MessageType::Call | MessageType::Oneway => Message::Request(Request {
            key,
            name: span_name(&decoded.head.name),
            attributes: request_attributes(&decoded),
            context: context(&decoded.headers),
            first,
            last,
            expects_response: decoded.head.kind == MessageType::Call,
            id_hints: id_hints(&decoded.body),
        }),
        MessageType::Reply | MessageType::Exception => {
            let (error, exception_field) = response_error(&decoded);
            let mut attributes = Vec::new();
            if let Some(id) = exception_field {
                attributes.push(Attribute::int("rpc.thrift.exception_field", i64::from(id)));
            }
            if !decoded.complete {
                attributes.push(Attribute::bool("rpc.thrift.truncated", true));
            }
            Message::Response(Response {
                key,
                first,
                last,
                http_status: None,
                error,
                attributes,
            })
        }
    }
}

/// Integer and string arguments of a call (top level and one struct deep) that can be ids:
/// integers of two digits or more (small ones are mostly enums and flags), strings as
/// `hints::push_value` reads them. At most `hints::MAX_HINTS`.
fn id_hints(fields: &[Field]) -> Vec<String> {
    fn collect(fields: &[Field], out: &mut Vec<String>) {
        for field in fields {
            if out.len() >= hints::MAX_HINTS {
                return;
            }
            match &field.value {
                Value::Int(i) if i.unsigned_abs() >= 10 => hints::push_value(&i.to_string(), out),
                Value::Str(s) => hints::push_value(s, out),
                Value::Struct(inner) => collect(inner, out),
                _ => {}
            }
        }
    }
    let mut out = Vec::new();
    collect(fields, &mut out);
    out
}

/// Splits a multiplexed `Service:method` name.
fn split_name(name: &str) -> (Option<&str>, &str) {
    match name.split_once(':') {
        Some((service, method)) if !service.is_empty() && !method.is_empty() => {
            (Some(service), method)
        }
        _ => (None, name),
    }
}

fn span_name(name: &str) -> CompactString {
    match split_name(name) {
        (Some(service), method) => compact_str::format_compact!("{service}/{method}"),
        (None, method) => method.into(),
    }
}

fn request_attributes(decoded: &Decoded) -> Vec<Attribute> {
    let (service, method) = split_name(&decoded.head.name);
    let mut attributes = Vec::with_capacity(5 + crate::protocol::ASSEMBLY_ATTRIBUTES);
    attributes.push(Attribute::fixed("rpc.system", "thrift"));
    if let Some(service) = service {
        attributes.push(Attribute::str("rpc.service", service));
    }
    attributes.push(Attribute::str("rpc.method", method));
    attributes.push(Attribute::fixed(
        "rpc.thrift.protocol",
        decoded.protocol.name(),
    ));
    attributes.push(Attribute::fixed(
        "rpc.thrift.transport",
        decoded.transport.name(),
    ));
    if !decoded.complete {
        attributes.push(Attribute::bool("rpc.thrift.truncated", true));
    }
    attributes
}

/// Trace context from THeader info headers, when one of them can carry it.
fn context(headers: &[(String, Vec<u8>)]) -> Option<TraceContext> {
    let relevant = headers
        .iter()
        .any(|(key, _)| CONTEXT_HEADERS.iter().any(|c| key.eq_ignore_ascii_case(c)));
    if !relevant {
        return None;
    }
    from_headers(
        headers
            .iter()
            .map(|(key, value)| (key.as_str(), value.as_slice())),
    )
}

/// The error a response reports, and the result-struct field of a declared exception.
fn response_error(decoded: &Decoded) -> (Option<String>, Option<i16>) {
    match decoded.head.kind {
        MessageType::Exception => (Some(application_exception(&decoded.body)), None),
        _ => match decoded.body.iter().find(|field| field.id != 0) {
            Some(field) => (Some(declared_exception(field)), Some(field.id)),
            None => (None, None),
        },
    }
}

/// A `TApplicationException`: its message (field 1), else its type (field 2).
fn application_exception(fields: &[Field]) -> String {
    let message = fields.iter().find_map(|field| match &field.value {
        Value::Str(text) if field.id == 1 && !text.is_empty() => Some(text.clone()),
        _ => None,
    });
    let kind = fields.iter().find_map(|field| match field.value {
        Value::Int(kind) if field.id == 2 => Some(kind),
        _ => None,
    });
    message.unwrap_or_else(|| application_exception_type(kind.unwrap_or(0)))
}

fn application_exception_type(kind: i64) -> String {
    let name = match kind {
        0 => "UNKNOWN",
        1 => "UNKNOWN_METHOD",
        2 => "INVALID_MESSAGE_TYPE",
        3 => "WRONG_METHOD_NAME",
        4 => "BAD_SEQUENCE_ID",
        5 => "MISSING_RESULT",
        6 => "INTERNAL_ERROR",
        7 => "PROTOCOL_ERROR",
        8 => "INVALID_TRANSFORM",
        9 => "INVALID_PROTOCOL",
        10 => "UNSUPPORTED_CLIENT_TYPE",
        other => return format!("TApplicationException type {other}"),
    };
    name.to_string()
}

/// A declared exception (result-struct field other than 0): the first non-empty string in
/// the exception struct, else which field it was.
fn declared_exception(field: &Field) -> String {
    let text = match &field.value {
        Value::Struct(fields) => fields.iter().find_map(|f| match &f.value {
            Value::Str(text) if !text.is_empty() => Some(text.clone()),
            _ => None,
        }),
        _ => None,
    };
    text.unwrap_or_else(|| format!("declared exception (field {})", field.id))
}

#[cfg(test)]
mod id_hint_tests {
    use super::*;

    #[test]
    fn id_like_arguments_become_hints() {
        let field = |id, value| Field { id, value };
        let body = vec![
            field(1, Value::Int(1_000_123)),
            field(2, Value::Int(3)),
            field(3, Value::Str("order-77".into())),
            field(4, Value::Str("plain".into())),
            field(5, Value::Struct(vec![field(1, Value::Int(-42))])),
            field(6, Value::Other),
        ];
        assert_eq!(
            id_hints(&body),
            vec!["1000123", "77", "order-77", "plain", "42"]
        );
    }
}
