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
/// several formats are present, W3C wins, then B3 single, B3 multi, Jaeger. A malformed value
/// disqualifies only its own format; the next one is tried.
pub fn from_headers<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Option<TraceContext> {
    let found = Found::collect(headers);
    found
        .w3c()
        .or_else(|| found.b3_single())
        .or_else(|| found.b3_multi())
        .or_else(|| found.jaeger())
}

/// The raw values of the headers we care about (first occurrence wins, except `tracestate`
/// whose occurrences are joined with commas as HTTP list semantics require).
#[derive(Default)]
struct Found<'a> {
    traceparent: Option<&'a [u8]>,
    tracestate: Vec<&'a [u8]>,
    b3: Option<&'a [u8]>,
    b3_trace_id: Option<&'a [u8]>,
    b3_span_id: Option<&'a [u8]>,
    b3_sampled: Option<&'a [u8]>,
    b3_flags: Option<&'a [u8]>,
    uber_trace_id: Option<&'a [u8]>,
}

impl<'a> Found<'a> {
    fn collect(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut found = Found::default();
        for (name, value) in headers {
            let value = value.trim_ascii();
            // Compared in place: header names are case-insensitive, and lower-casing a copy
            // of each cost an allocation per header of every request.
            let is = |known: &str| name.eq_ignore_ascii_case(known);
            let slot = if is("traceparent") {
                &mut found.traceparent
            } else if is("tracestate") {
                found.tracestate.push(value);
                continue;
            } else if is("b3") {
                &mut found.b3
            } else if is("x-b3-traceid") {
                &mut found.b3_trace_id
            } else if is("x-b3-spanid") {
                &mut found.b3_span_id
            } else if is("x-b3-sampled") {
                &mut found.b3_sampled
            } else if is("x-b3-flags") {
                &mut found.b3_flags
            } else if is("uber-trace-id") {
                &mut found.uber_trace_id
            } else {
                continue;
            };
            slot.get_or_insert(value);
        }
        found
    }

    fn w3c(&self) -> Option<TraceContext> {
        let (trace_id, span_id, flags) = parse_traceparent(self.traceparent?)?;
        Some(TraceContext {
            trace_id,
            span_id,
            flags,
            tracestate: self.tracestate(),
            format: ContextFormat::W3c,
        })
    }

    /// `tracestate` verbatim; dropped when empty or not UTF-8.
    fn tracestate(&self) -> Option<String> {
        let parts: Vec<&str> = self
            .tracestate
            .iter()
            .filter(|v| !v.is_empty())
            .map(|v| std::str::from_utf8(v).ok())
            .collect::<Option<_>>()?;
        (!parts.is_empty()).then(|| parts.join(","))
    }

    fn b3_single(&self) -> Option<TraceContext> {
        let (trace_id, span_id, flags) = parse_b3_single(self.b3?)?;
        Some(context(trace_id, span_id, flags, ContextFormat::B3Single))
    }

    fn b3_multi(&self) -> Option<TraceContext> {
        let trace_id = b3_trace_id(self.b3_trace_id?)?;
        let span_id = fixed_hex::<8>(self.b3_span_id?)?;
        let sampled = match self.b3_sampled {
            None => 0,
            Some(b"1") | Some(b"true") => 1,
            Some(b"0") | Some(b"false") => 0,
            Some(_) => return None,
        };
        let debug = match self.b3_flags {
            None | Some(b"0") => 0,
            Some(b"1") => 1,
            Some(_) => return None,
        };
        Some(context(
            trace_id,
            span_id,
            sampled | debug,
            ContextFormat::B3Multi,
        ))
    }

    fn jaeger(&self) -> Option<TraceContext> {
        let (trace_id, span_id, flags) = parse_uber_trace_id(self.uber_trace_id?)?;
        Some(context(trace_id, span_id, flags, ContextFormat::Jaeger))
    }
}

fn context(trace_id: [u8; 16], span_id: [u8; 8], flags: u8, format: ContextFormat) -> TraceContext {
    TraceContext {
        trace_id,
        span_id,
        flags,
        tracestate: None,
        format,
    }
}

/// Length of a version-00 `traceparent`: `vv-{32}-{16}-ff`.
const TRACEPARENT_LEN: usize = 55;

/// W3C `traceparent`: lower-case hex only; version `ff` is invalid; version 00 must be exactly
/// 55 characters; later versions may append `-`-separated fields, which are ignored.
fn parse_traceparent(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let head = value.get(..TRACEPARENT_LEN)?;
    let rest = &value[TRACEPARENT_LEN..];
    if head.iter().any(u8::is_ascii_uppercase)
        || head[2] != b'-'
        || head[35] != b'-'
        || head[52] != b'-'
    {
        return None;
    }
    let [version] = fixed_hex::<1>(&head[..2])?;
    let tail_ok = match version {
        0xff => false,
        0 => rest.is_empty(),
        _ => rest.is_empty() || rest[0] == b'-',
    };
    if !tail_ok {
        return None;
    }
    let trace_id = nonzero(fixed_hex::<16>(&head[3..35])?)?;
    let span_id = nonzero(fixed_hex::<8>(&head[36..52])?)?;
    let [flags] = fixed_hex::<1>(&head[53..55])?;
    Some((trace_id, span_id, flags))
}

/// B3 single header: `{traceid}-{spanid}[-{sampled}[-{parentspanid}]]`. The sampling-only
/// forms (`0`, `1`, `d`) carry no ids and give `None`.
fn parse_b3_single(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let mut parts = value.split(|&b| b == b'-');
    let trace_id = b3_trace_id(parts.next()?)?;
    let span_id = fixed_hex::<8>(parts.next()?)?;
    let flags = match parts.next() {
        None => 0,
        Some(b"1") | Some(b"d") => 1,
        Some(b"0") => 0,
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        fixed_hex::<8>(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((trace_id, nonzero(span_id)?, flags))
}

/// B3 trace ids are 16 or 32 hex characters; 64-bit ones are left-padded to 128 bits.
fn b3_trace_id(value: &[u8]) -> Option<[u8; 16]> {
    match value.len() {
        16 | 32 => nonzero(padded_hex::<16>(value)?),
        _ => None,
    }
}

/// Jaeger `uber-trace-id: {trace-id}:{span-id}:{parent-span-id}:{flags}`, possibly
/// URL-encoded (`%3A`); ids may omit leading zeros. Flags bit 0 is sampled, bit 1 debug (which
/// implies sampled).
fn parse_uber_trace_id(value: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    let decoded = url_decode_colons(value);
    let mut parts = decoded.split(|&b| b == b':');
    let trace_id = nonzero(padded_hex::<16>(parts.next()?)?)?;
    let span_id = nonzero(padded_hex::<8>(parts.next()?)?)?;
    padded_hex::<8>(parts.next()?)?;
    let [flags] = padded_hex::<1>(parts.next()?)?;
    if parts.next().is_some() {
        return None;
    }
    let sampled = u8::from(flags & 0b11 != 0);
    Some((trace_id, span_id, sampled))
}

/// Replaces `%3A` / `%3a` with `:` (the only escape a Jaeger header legitimately carries).
fn url_decode_colons(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len());
    let mut rest = value;
    while !rest.is_empty() {
        if rest.len() >= 3
            && rest[0] == b'%'
            && rest[1] == b'3'
            && rest[2].eq_ignore_ascii_case(&b'a')
        {
            out.push(b':');
            rest = &rest[3..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Exactly `2 * N` hex digits.
fn fixed_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    padded_hex(s)
}

/// One to `2 * N` hex digits, left-padded with zeros.
fn padded_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.is_empty() || s.len() > 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, &c) in s.iter().rev().enumerate() {
        let digit = hex_digit(c)?;
        out[N - 1 - i / 2] |= if i % 2 == 0 { digit } else { digit << 4 };
    }
    Some(out)
}

fn nonzero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    id.iter().any(|&b| b != 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    fn ctx(headers: &[(&str, &str)]) -> Option<TraceContext> {
        from_headers(headers.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    fn bytes<const N: usize>(hex: &str) -> [u8; N] {
        padded_hex::<N>(hex.as_bytes()).expect("test hex")
    }

    #[test]
    fn w3c_traceparent_and_tracestate() {
        let c = ctx(&[
            ("TraceParent", &format!("00-{TRACE}-{SPAN}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("TRACESTATE", "rojo=00f067aa0ba902b7"),
        ])
        .expect("context");
        assert_eq!(c.format, ContextFormat::W3c);
        assert_eq!(c.trace_id, bytes::<16>(TRACE));
        assert_eq!(c.span_id, bytes::<8>(SPAN));
        assert_eq!(c.flags, 1);
        assert_eq!(
            c.tracestate.as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
    }

    #[test]
    fn w3c_flags_kept_and_future_versions_accepted() {
        assert_eq!(
            ctx(&[("traceparent", &format!("00-{TRACE}-{SPAN}-03"))]).map(|c| c.flags),
            Some(3)
        );
        assert_eq!(
            ctx(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]).map(|c| c.flags),
            Some(0)
        );
        let future = ctx(&[(
            "traceparent",
            &format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds"),
        )]);
        assert_eq!(future.map(|c| c.span_id), Some(bytes::<8>(SPAN)));
        assert!(ctx(&[("traceparent", &format!("01-{TRACE}-{SPAN}-01"))]).is_some());
    }

    #[test]
    fn w3c_malformed_rejected() {
        for bad in [
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("00-{}-{SPAN}-01", "0".repeat(32)),
            format!("00-{TRACE}-{}-01", "0".repeat(16)),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-0g"),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{TRACE}-{SPAN}01"),
            format!("cc-{TRACE}-{SPAN}-01x"),
            "00-".to_string(),
            String::new(),
        ] {
            assert_eq!(ctx(&[("traceparent", &bad)]), None, "{bad}");
        }
    }

    #[test]
    fn b3_single_forms() {
        let c = ctx(&[("b3", &format!("{TRACE}-{SPAN}-1-{SPAN}"))]).expect("context");
        assert_eq!(
            (c.format, c.trace_id, c.span_id, c.flags),
            (ContextFormat::B3Single, bytes(TRACE), bytes(SPAN), 1)
        );
        assert_eq!(
            ctx(&[("B3", &format!("{TRACE}-{SPAN}"))]).map(|c| c.flags),
            Some(0)
        );
        assert_eq!(
            ctx(&[("b3", &format!("{TRACE}-{SPAN}-d"))]).map(|c| c.flags),
            Some(1)
        );
        assert_eq!(
            ctx(&[("b3", &format!("{TRACE}-{SPAN}-0"))]).map(|c| c.flags),
            Some(0)
        );
        let short = ctx(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}-1"))]).expect("64-bit id");
        assert_eq!(
            short.trace_id,
            bytes::<16>("0000000000000000a3ce929d0e0e4736")
        );
    }

    #[test]
    fn b3_single_sampling_only_and_malformed() {
        for bad in [
            "0",
            "1",
            "d",
            "",
            &format!("{TRACE}-{SPAN}-x"),
            &format!("{TRACE}-{SPAN}-1-zz"),
            &format!("{TRACE}-{SPAN}-1-{SPAN}-more"),
            &format!("{}-{SPAN}", &TRACE[..20]),
            &format!("{TRACE}-{}", "0".repeat(16)),
        ] {
            assert_eq!(ctx(&[("b3", bad)]), None, "{bad}");
        }
    }

    #[test]
    fn b3_multi_headers() {
        let c = ctx(&[
            ("X-B3-TraceId", "a3ce929d0e0e4736"),
            ("x-b3-spanid", SPAN),
            ("X-B3-ParentSpanId", "05e3ac9a4f6e3b90"),
            ("X-B3-Sampled", "1"),
        ])
        .expect("context");
        assert_eq!(c.format, ContextFormat::B3Multi);
        assert_eq!(c.trace_id, bytes::<16>("a3ce929d0e0e4736"));
        assert_eq!(
            c.span_id,
            bytes::<8>(SPAN),
            "the parent is the sender's SpanId, not ParentSpanId"
        );
        assert_eq!(c.flags, 1);
        let debug = ctx(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Flags", "1"),
        ]);
        assert_eq!(debug.map(|c| c.flags), Some(1));
        let unsampled = ctx(&[
            ("X-B3-TraceId", TRACE),
            ("X-B3-SpanId", SPAN),
            ("X-B3-Sampled", "false"),
        ]);
        assert_eq!(unsampled.map(|c| c.flags), Some(0));
        assert_eq!(ctx(&[("X-B3-TraceId", TRACE)]), None);
        assert_eq!(
            ctx(&[
                ("X-B3-TraceId", TRACE),
                ("X-B3-SpanId", SPAN),
                ("X-B3-Sampled", "yes")
            ]),
            None
        );
        assert_eq!(ctx(&[("X-B3-TraceId", "abc"), ("X-B3-SpanId", SPAN)]), None);
    }

    #[test]
    fn jaeger_padding_and_url_encoding() {
        let c = ctx(&[("uber-trace-id", "a3ce929d0e0e4736:f067aa0ba902b7:0:1")]).expect("context");
        assert_eq!(c.format, ContextFormat::Jaeger);
        assert_eq!(c.trace_id, bytes::<16>("0000000000000000a3ce929d0e0e4736"));
        assert_eq!(c.span_id, bytes::<8>(SPAN));
        assert_eq!(c.flags, 1);
        let encoded =
            ctx(&[("Uber-Trace-Id", &format!("{TRACE}%3A{SPAN}%3a0%3A2"))]).expect("encoded");
        assert_eq!(
            (encoded.trace_id, encoded.flags),
            (bytes(TRACE), 1),
            "debug implies sampled"
        );
        assert_eq!(
            ctx(&[("uber-trace-id", "1:2:0:0")]).map(|c| c.flags),
            Some(0)
        );
    }

    #[test]
    fn jaeger_malformed() {
        for bad in [
            "",
            "1:2:0",
            "1:2:0:1:5",
            "0:2:0:1",
            "1:0:0:1",
            "xyz:2:0:1",
            "1:2:0:100",
            &format!("{TRACE}0:2:0:1"),
        ] {
            assert_eq!(ctx(&[("uber-trace-id", bad)]), None, "{bad}");
        }
    }

    #[test]
    fn precedence_and_fall_through() {
        let w3c = format!("00-{TRACE}-{SPAN}-01");
        let b3 = format!("{}-{}-1", "1".repeat(32), "2".repeat(16));
        let all = [
            ("uber-trace-id", "5:6:0:1"),
            ("X-B3-TraceId", "3333333333333333"),
            ("X-B3-SpanId", "4444444444444444"),
            ("b3", b3.as_str()),
            ("traceparent", w3c.as_str()),
        ];
        assert_eq!(ctx(&all).map(|c| c.format), Some(ContextFormat::W3c));
        assert_eq!(
            ctx(&all[..4]).map(|c| c.format),
            Some(ContextFormat::B3Single)
        );
        assert_eq!(
            ctx(&all[..3]).map(|c| c.format),
            Some(ContextFormat::B3Multi)
        );
        assert_eq!(
            ctx(&all[..1]).map(|c| c.format),
            Some(ContextFormat::Jaeger)
        );
        // A malformed higher-precedence header falls through to the next format.
        let fallback = ctx(&[
            ("traceparent", "garbage"),
            ("b3", "0"),
            ("uber-trace-id", "5:6:0:1"),
        ]);
        assert_eq!(fallback.map(|c| c.format), Some(ContextFormat::Jaeger));
        assert_eq!(ctx(&[("content-type", "text/plain")]), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let samples: [&[u8]; 5] = [b"\xff\xfe", b"-", b"%3", b"::::", b"00-\xe2\x82\xac"];
        for s in samples {
            for name in [
                "traceparent",
                "b3",
                "uber-trace-id",
                "x-b3-traceid",
                "tracestate",
            ] {
                let _ = from_headers([(name, s)]);
            }
        }
    }
}
