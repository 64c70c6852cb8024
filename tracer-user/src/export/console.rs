//! Console output, used when no OTLP endpoint is set (span assembly -> exporter queue ->
//! **trace buffer -> stdout**): spans are held per trace until the trace has been quiet for a
//! moment, then printed as an indented tree, children under their parents.
//!
//! ```text
//! trace 4bf92f3577b34da6a3ce929d0e0e4736  2 spans  3.2ms
//!   SERVER  fizzer  POST /fizz  200  3.2ms
//!     CLIENT  fizzer  GET /buzz  -> buzzer:8080  200  1.1ms
//! ```

use std::{
    collections::{HashMap, HashSet},
    fmt::Write,
    time::Duration,
};

use tokio::time::Instant;

use crate::span::{AttrValue, SpanKind, SpanRecord, SpanStatus, find, hex};

/// A trace is printed once no span of it arrived for this long...
pub const QUIET: Duration = Duration::from_secs(1);
/// ...or once its first span is this old, whatever keeps arriving.
pub const MAX_AGE: Duration = Duration::from_secs(10);
/// Spans buffered at most over all traces; further ones are dropped.
pub const MAX_BUFFERED: usize = 10_000;

struct PendingTrace {
    spans: Vec<SpanRecord>,
    first: Instant,
    last: Instant,
}

/// Spans waiting to be printed, grouped by trace, bounded in total.
pub struct TraceBuffer {
    traces: HashMap<[u8; 16], PendingTrace>,
    buffered: usize,
    quiet: Duration,
    max_age: Duration,
    cap: usize,
}

impl Default for TraceBuffer {
    fn default() -> Self {
        Self::new(QUIET, MAX_AGE, MAX_BUFFERED)
    }
}

impl TraceBuffer {
    pub fn new(quiet: Duration, max_age: Duration, cap: usize) -> Self {
        Self {
            traces: HashMap::new(),
            buffered: 0,
            quiet,
            max_age,
            cap,
        }
    }

    /// Buffers a span; `false` when the buffer is full and the span was dropped.
    pub fn push(&mut self, span: SpanRecord, now: Instant) -> bool {
        if self.buffered >= self.cap {
            return false;
        }
        self.buffered += 1;
        let trace = self
            .traces
            .entry(span.trace_id)
            .or_insert_with(|| PendingTrace {
                spans: Vec::new(),
                first: now,
                last: now,
            });
        trace.last = now;
        trace.spans.push(span);
        true
    }

    /// Removes the traces that are quiet or old enough, oldest first.
    pub fn take_ready(&mut self, now: Instant) -> Vec<Vec<SpanRecord>> {
        let ready: Vec<[u8; 16]> = self
            .traces
            .iter()
            .filter(|(_, t)| {
                now.duration_since(t.last) >= self.quiet
                    || now.duration_since(t.first) >= self.max_age
            })
            .map(|(id, _)| *id)
            .collect();
        self.take(ready)
    }

    /// Removes every trace, oldest first.
    pub fn take_all(&mut self) -> Vec<Vec<SpanRecord>> {
        let all: Vec<[u8; 16]> = self.traces.keys().copied().collect();
        self.take(all)
    }

    fn take(&mut self, ids: Vec<[u8; 16]>) -> Vec<Vec<SpanRecord>> {
        let mut taken: Vec<PendingTrace> =
            ids.iter().filter_map(|id| self.traces.remove(id)).collect();
        taken.sort_by_key(|t| t.first);
        self.buffered -= taken.iter().map(|t| t.spans.len()).sum::<usize>();
        taken.into_iter().map(|t| t.spans).collect()
    }
}

/// Renders one trace: a header line, then one line per span, each child indented under its
/// parent, siblings by start time. Spans whose parent is not in `spans` are top-level.
pub fn render_trace(spans: &[SpanRecord]) -> String {
    let mut out = String::new();
    let Some(first) = spans.first() else {
        return out;
    };
    let start = spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
    let end = spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(0);
    let _ = writeln!(
        out,
        "trace {}  {} span{}  {}",
        hex(&first.trace_id),
        spans.len(),
        if spans.len() == 1 { "" } else { "s" },
        duration(end.saturating_sub(start))
    );

    let ids: HashSet<[u8; 8]> = spans.iter().map(|s| s.span_id).collect();
    let mut children: HashMap<[u8; 8], Vec<usize>> = HashMap::new();
    let mut roots = Vec::new();
    for (i, span) in spans.iter().enumerate() {
        match span.parent_span_id {
            Some(parent) if parent != span.span_id && ids.contains(&parent) => {
                children.entry(parent).or_default().push(i)
            }
            _ => roots.push(i),
        }
    }
    let by_start =
        |v: &mut Vec<usize>| v.sort_by_key(|&i| (spans[i].start_unix_ns, spans[i].span_id));
    by_start(&mut roots);
    children.values_mut().for_each(by_start);

    let mut printed = vec![false; spans.len()];
    // Depth-first, with an explicit stack so deep or cyclic parent chains cannot overflow.
    let mut stack: Vec<(usize, usize)> = roots.iter().rev().map(|&i| (i, 1)).collect();
    let mut walk = |stack: &mut Vec<(usize, usize)>, out: &mut String| {
        while let Some((i, depth)) = stack.pop() {
            if std::mem::replace(&mut printed[i], true) {
                continue;
            }
            span_line(out, &spans[i], depth);
            if let Some(kids) = children.get(&spans[i].span_id) {
                stack.extend(kids.iter().rev().map(|&k| (k, depth + 1)));
            }
        }
    };
    walk(&mut stack, &mut out);
    // Spans only reachable through a parent cycle: show them at the top level too.
    for i in 0..spans.len() {
        stack.push((i, 1));
        walk(&mut stack, &mut out);
    }
    out
}

fn span_line(out: &mut String, span: &SpanRecord, depth: usize) {
    let kind = match span.kind {
        SpanKind::Server => "SERVER",
        SpanKind::Client => "CLIENT",
    };
    let _ = write!(
        out,
        "{:width$}{kind}  {}  {}",
        "",
        printable(&span.resource.service_name),
        printable(&span.name),
        width = depth * 2
    );
    if span.kind == SpanKind::Client
        && let Some(host) = find(&span.attributes, "server.address").and_then(|v| match v {
            AttrValue::Str(host) => Some(printable(host)),
            AttrValue::Ipv4(ip) => Some(ip.to_string()),
            _ => None,
        })
    {
        let _ = write!(out, "  -> {host}");
        if let Some(AttrValue::Int(port)) = find(&span.attributes, "server.port") {
            let _ = write!(out, ":{port}");
        }
    }
    match &span.status {
        SpanStatus::Error(None) => out.push_str("  ERROR"),
        SpanStatus::Error(Some(message)) => {
            let _ = write!(out, "  ERROR ({})", printable(message));
        }
        SpanStatus::Unset => {}
    }
    if let Some(AttrValue::Int(code)) = find(&span.attributes, "http.response.status_code") {
        let _ = write!(out, "  {code}");
    }
    let _ = writeln!(
        out,
        "  {}",
        duration(span.end_unix_ns.saturating_sub(span.start_unix_ns))
    );
}

/// Captured names come from the traced programs' traffic: keep control characters (terminal
/// escapes, newlines) out of the output.
fn printable(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn duration(ns: u64) -> String {
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.1}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", ns as f64 / 1e9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        export::otlp::tests::{record, resource},
        span::Attribute,
    };

    #[test]
    fn renders_tree_with_children_under_parents() {
        let fizzer = resource(10, "fizzer");
        let buzzer = resource(11, "buzzer");
        let mut root = record(&fizzer, 0x4b, 1, None);
        root.name = "POST /fizz".into();
        root.attributes = vec![Attribute::int("http.response.status_code", 200)];
        let mut call = record(&fizzer, 0x4b, 2, Some(1));
        call.kind = SpanKind::Client;
        call.name = "GET /buzz".into();
        call.start_unix_ns = 1_000_500_000;
        call.end_unix_ns = 1_001_600_000;
        call.attributes = vec![
            Attribute::str("server.address", "buzzer"),
            Attribute::int("server.port", 8080),
            Attribute::int("http.response.status_code", 503),
        ];
        call.status = SpanStatus::Error(None);
        let mut served = record(&buzzer, 0x4b, 3, Some(2));
        served.name = "GET /buzz".into();
        served.start_unix_ns = 1_000_600_000;
        served.end_unix_ns = 1_001_500_000;
        served.status = SpanStatus::Error(Some("overloaded".to_owned()));
        let mut orphan = record(&buzzer, 0x4b, 4, Some(9));
        orphan.name = "GET /health\x1b[2J".into();
        orphan.start_unix_ns = 1_000_100_000;
        orphan.end_unix_ns = 1_000_100_800;

        // Arrival order differs from tree order.
        let text = render_trace(&[served, orphan, call, root]);
        let expected = "\
trace 4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b4b  4 spans  3.2ms
  SERVER  fizzer  POST /fizz  200  3.2ms
    CLIENT  fizzer  GET /buzz  -> buzzer:8080  ERROR  503  1.1ms
      SERVER  buzzer  GET /buzz  ERROR (overloaded)  900.0µs
  SERVER  buzzer  GET /health\\u{1b}[2J  800ns
";
        assert_eq!(text, expected);
    }

    #[test]
    fn parent_cycles_are_still_printed_once() {
        let r = resource(1, "a");
        let a = record(&r, 1, 1, Some(2));
        let b = record(&r, 1, 2, Some(1));
        let text = render_trace(&[a, b]);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert_eq!(
            text.lines().filter(|l| l.starts_with("  SERVER")).count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.lines().filter(|l| l.starts_with("    SERVER")).count(),
            1,
            "{text}"
        );
    }

    #[test]
    fn buffer_releases_quiet_traces_and_bounds_memory() {
        let r = resource(1, "a");
        let t0 = Instant::now();
        let mut buffer = TraceBuffer::new(Duration::from_secs(1), Duration::from_secs(10), 3);
        assert!(buffer.push(record(&r, 1, 1, None), t0));
        assert!(buffer.push(record(&r, 2, 2, None), t0 + Duration::from_millis(500)));
        assert!(buffer.push(record(&r, 1, 3, Some(1)), t0 + Duration::from_millis(600)));
        assert!(
            !buffer.push(record(&r, 3, 4, None), t0 + Duration::from_millis(700)),
            "cap reached"
        );
        assert!(
            buffer
                .take_ready(t0 + Duration::from_millis(1200))
                .is_empty()
        );
        let ready = buffer.take_ready(t0 + Duration::from_millis(1550));
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0][0].trace_id, [2; 16]);
        // Room again after printing.
        assert!(buffer.push(record(&r, 3, 4, None), t0 + Duration::from_millis(1600)));
        let all = buffer.take_all();
        assert_eq!(
            all.iter()
                .map(|t| (t[0].trace_id[0], t.len()))
                .collect::<Vec<_>>(),
            vec![(1, 2), (3, 1)]
        );
    }

    #[test]
    fn busy_trace_is_printed_after_max_age() {
        let r = resource(1, "a");
        let t0 = Instant::now();
        let mut buffer = TraceBuffer::new(Duration::from_secs(1), Duration::from_secs(2), 100);
        for i in 0..5u8 {
            buffer.push(
                record(&r, 1, i, None),
                t0 + Duration::from_millis(500 * u64::from(i)),
            );
        }
        assert_eq!(buffer.take_ready(t0 + Duration::from_millis(2000)).len(), 1);
    }
}
