//! Assertion helpers over received spans, with messages that show what arrived.

use crate::receiver::{ReceivedSpan, dump};

/// The single span in `spans` matching `pred`; fails with a dump otherwise.
pub fn one<'a>(
    spans: &'a [ReceivedSpan],
    what: &str,
    pred: impl Fn(&ReceivedSpan) -> bool,
) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|s| pred(s)).collect();
    assert_eq!(
        found.len(),
        1,
        "expected exactly one span: {what}; found {}.\n  candidates:\n{}",
        found.len(),
        dump(spans)
    );
    found[0]
}

/// Asserts a string attribute.
pub fn attr_str(span: &ReceivedSpan, key: &str, expected: &str) {
    assert_eq!(
        span.attr_str(key),
        Some(expected),
        "attribute {key} of span\n    {span}"
    );
}

/// Asserts an integer attribute.
pub fn attr_int(span: &ReceivedSpan, key: &str, expected: i64) {
    assert_eq!(
        span.attr_int(key),
        Some(expected),
        "attribute {key} (int) of span\n    {span}"
    );
}

/// Asserts `child` is a direct child of `parent` in the same trace.
pub fn child_of(child: &ReceivedSpan, parent: &ReceivedSpan) {
    assert_eq!(
        child.trace_id, parent.trace_id,
        "child and parent must share the trace id\n  child:  {child}\n  parent: {parent}"
    );
    assert_eq!(
        child.parent_span_id.as_deref(),
        Some(parent.span_id.as_str()),
        "child's parent_span_id must be the parent's span id\n  child:  {child}\n  parent: {parent}"
    );
}

/// Asserts `inner` starts no earlier and ends no later than `outer`, and that
/// both have sane timestamps (start <= end, non-zero).
pub fn within(inner: &ReceivedSpan, outer: &ReceivedSpan) {
    for s in [inner, outer] {
        assert!(
            s.start_ns > 0 && s.start_ns <= s.end_ns,
            "bad timestamps on span\n    {s}"
        );
    }
    assert!(
        outer.start_ns <= inner.start_ns && inner.end_ns <= outer.end_ns,
        "span times not nested: inner [{}, {}] outer [{}, {}]\n  inner: {inner}\n  outer: {outer}",
        inner.start_ns,
        inner.end_ns,
        outer.start_ns,
        outer.end_ns
    );
}

/// Asserts the span has no parent (a trace root).
pub fn root(span: &ReceivedSpan) {
    assert_eq!(
        span.parent_span_id, None,
        "expected a root span (no parent)\n    {span}"
    );
}

/// Asserts the trace and span ids are well-formed and non-zero.
pub fn ids_valid(span: &ReceivedSpan) {
    let ok = |id: &str, len: usize| id.len() == len && id.chars().any(|c| c != '0');
    assert!(
        ok(&span.trace_id, 32) && ok(&span.span_id, 16),
        "malformed ids on span\n    {span}"
    );
}
