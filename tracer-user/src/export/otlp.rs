//! Conversion of our span records to OTLP wire types (span assembly -> exporter queue ->
//! **OTLP request** -> transport -> collector). The only place that knows both
//! [`crate::span`] and `opentelemetry_proto`.
//!
//! One request carries spans of many traced processes: spans are grouped into one
//! `ResourceSpans` per [`ProcessResource`], each with a single `ScopeSpans` for this agent.

use std::sync::Arc;

use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest,
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    resource::v1::Resource,
    trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span, status},
};

use crate::span::{
    AttrValue, Attribute, ProcessResource, SpanKind, SpanLink, SpanRecord, SpanStatus,
};

/// Instrumentation scope name reported for every span.
pub const SCOPE_NAME: &str = "tracer";

/// Builds one export request, grouping spans by their process resource (same `Arc` or equal
/// contents) in order of first appearance.
pub fn build_request(spans: Vec<SpanRecord>) -> ExportTraceServiceRequest {
    let mut groups: Vec<(Arc<ProcessResource>, Vec<Span>)> = Vec::new();
    for record in spans {
        let found = groups
            .iter()
            .position(|(r, _)| Arc::ptr_eq(r, &record.resource) || **r == *record.resource);
        let index = match found {
            Some(index) => index,
            None => {
                groups.push((record.resource.clone(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[index].1.push(span(record));
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, spans)| ResourceSpans {
                resource: Some(convert_resource(&resource)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            })
            .collect(),
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        ..Default::default()
    }
}

/// `service.name` followed by the process's other resource attributes.
pub fn convert_resource(resource: &ProcessResource) -> Resource {
    let mut attributes = Vec::with_capacity(resource.attributes.len() + 1);
    attributes.push(key_value(
        "service.name",
        any(AttrValue::Str(resource.service_name.clone())),
    ));
    attributes.extend(resource.attributes.iter().map(attribute));
    Resource {
        attributes,
        ..Default::default()
    }
}

/// Converts one span record (its resource is left to the caller).
pub fn span(record: SpanRecord) -> Span {
    let kind = match record.kind {
        SpanKind::Server => span::SpanKind::Server,
        SpanKind::Client => span::SpanKind::Client,
    };
    let status = match record.status {
        SpanStatus::Unset => Status {
            message: String::new(),
            code: status::StatusCode::Unset as i32,
        },
        SpanStatus::Error(message) => Status {
            message: message.unwrap_or_default(),
            code: status::StatusCode::Error as i32,
        },
    };
    Span {
        trace_id: record.trace_id.to_vec(),
        span_id: record.span_id.to_vec(),
        trace_state: record.tracestate.unwrap_or_default(),
        parent_span_id: record
            .parent_span_id
            .map(|id| id.to_vec())
            .unwrap_or_default(),
        flags: u32::from(record.flags),
        name: record.name,
        kind: kind as i32,
        start_time_unix_nano: record.start_unix_ns,
        end_time_unix_nano: record.end_unix_ns,
        attributes: record.attributes.into_iter().map(owned_attribute).collect(),
        links: record.links.iter().map(link).collect(),
        status: Some(status),
        ..Default::default()
    }
}

fn link(link: &SpanLink) -> span::Link {
    span::Link {
        trace_id: link.trace_id.to_vec(),
        span_id: link.span_id.to_vec(),
        attributes: link.attributes.iter().map(attribute).collect(),
        ..Default::default()
    }
}

fn attribute(a: &Attribute) -> KeyValue {
    key_value(a.key, any(a.value.clone()))
}

/// Moves the value instead of copying it (span attributes are consumed with their record).
fn owned_attribute(a: Attribute) -> KeyValue {
    key_value(a.key, any(a.value))
}

fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(value),
        ..Default::default()
    }
}

fn any(value: AttrValue) -> AnyValue {
    let value = match value {
        AttrValue::Str(s) => any_value::Value::StringValue(s),
        AttrValue::Int(i) => any_value::Value::IntValue(i),
        AttrValue::Bool(b) => any_value::Value::BoolValue(b),
        AttrValue::Double(d) => any_value::Value::DoubleValue(d),
    };
    AnyValue { value: Some(value) }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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
            name: format!("span {span_id}"),
            kind: SpanKind::Server,
            start_unix_ns: 1_000_000_000,
            end_unix_ns: 1_003_200_000,
            attributes: Vec::new(),
            status: SpanStatus::Unset,
            links: Vec::new(),
            resource: resource.clone(),
        }
    }

    fn value(kv: &KeyValue) -> Option<&any_value::Value> {
        kv.value.as_ref().and_then(|v| v.value.as_ref())
    }

    #[test]
    fn converts_every_field() {
        let res = resource(42, "fizzer");
        let mut r = record(&res, 0xab, 0x01, Some(0x02));
        r.kind = SpanKind::Client;
        r.tracestate = Some("vendor=1".to_owned());
        r.flags = 0x01;
        r.attributes = vec![
            Attribute::str("http.request.method", "POST"),
            Attribute::int("http.response.status_code", 500),
            Attribute::bool("tracer.partial", true),
            Attribute::double("tracer.ratio", 0.5),
        ];
        r.status = SpanStatus::Error(Some("boom".to_owned()));
        r.links = vec![SpanLink {
            trace_id: [7; 16],
            span_id: [8; 8],
            attributes: vec![Attribute::str("tracer.link.reason", "ambiguous")],
        }];
        let s = span(r);
        assert_eq!(s.trace_id, vec![0xab; 16]);
        assert_eq!(s.span_id, vec![0x01; 8]);
        assert_eq!(s.parent_span_id, vec![0x02; 8]);
        assert_eq!(s.trace_state, "vendor=1");
        assert_eq!(s.flags, 1);
        assert_eq!(s.kind, 3);
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
        assert_eq!(
            attrs,
            vec![
                (
                    "http.request.method",
                    Some(any_value::Value::StringValue("POST".to_owned()))
                ),
                (
                    "http.response.status_code",
                    Some(any_value::Value::IntValue(500))
                ),
                ("tracer.partial", Some(any_value::Value::BoolValue(true))),
                ("tracer.ratio", Some(any_value::Value::DoubleValue(0.5))),
            ]
        );
        let status = s.status.expect("status");
        assert_eq!((status.code, status.message.as_str()), (2, "boom"));
        assert_eq!(s.links.len(), 1);
        assert_eq!(s.links[0].trace_id, vec![7; 16]);
        assert_eq!(s.links[0].span_id, vec![8; 8]);
        assert_eq!(s.links[0].attributes[0].key, "tracer.link.reason");
    }

    #[test]
    fn root_server_span_has_empty_parent_and_unset_status() {
        let s = span(record(&resource(1, "a"), 1, 1, None));
        assert!(s.parent_span_id.is_empty());
        assert!(s.trace_state.is_empty());
        assert_eq!(s.kind, 2);
        let status = s.status.expect("status");
        assert_eq!((status.code, status.message.as_str()), (0, ""));
    }

    #[test]
    fn groups_spans_by_resource() {
        let a = resource(1, "alpha");
        let b = resource(2, "beta");
        // A distinct Arc with the same contents belongs to the same group.
        let a_again = resource(1, "alpha");
        let request = build_request(vec![
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
                let scope = rs.scope_spans[0].scope.as_ref().expect("scope");
                assert_eq!(
                    (scope.name.as_str(), scope.version.as_str()),
                    ("tracer", env!("CARGO_PKG_VERSION"))
                );
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
