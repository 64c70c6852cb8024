//! Unit tests of the Thrift decoder, with a small hand-written encoder for every protocol
//! and transport (chunks in as the connection table would feed them, messages out).

use super::framing::{Proto, Sniff, sniff};
use super::theader::parse_header;
use super::*;
use crate::protocol::{Request, Response};
use crate::span::{AttrValue, find};

// ---------------------------------------------------------------- encoder

#[derive(Clone, Copy, Debug, PartialEq)]
enum P {
    Strict,
    NonStrict,
    Compact,
}

#[derive(Clone, Copy)]
enum T {
    Bool,
    Byte,
    I16,
    I32,
    I64,
    Double,
    Str,
    Struct,
    Map,
    Set,
    List,
    Uuid,
}

const CALL: u8 = 1;
const REPLY: u8 = 2;
const EXCEPTION: u8 = 3;
const ONEWAY: u8 = 4;

struct Enc {
    p: P,
    out: Vec<u8>,
    last_id: i16,
    outer_ids: Vec<i16>,
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

impl Enc {
    fn message(p: P, name: &str, kind: u8, seqid: i32) -> Self {
        let mut e = Enc {
            p,
            out: Vec::new(),
            last_id: 0,
            outer_ids: Vec::new(),
        };
        match p {
            P::Strict => {
                e.out.extend_from_slice(&[0x80, 0x01, 0x00, kind]);
                e.out.extend_from_slice(&(name.len() as i32).to_be_bytes());
                e.out.extend_from_slice(name.as_bytes());
                e.out.extend_from_slice(&seqid.to_be_bytes());
            }
            P::NonStrict => {
                e.out.extend_from_slice(&(name.len() as i32).to_be_bytes());
                e.out.extend_from_slice(name.as_bytes());
                e.out.push(kind);
                e.out.extend_from_slice(&seqid.to_be_bytes());
            }
            P::Compact => {
                e.out.extend_from_slice(&[0x82, (kind << 5) | 1]);
                varint(&mut e.out, u64::from(seqid as u32));
                varint(&mut e.out, name.len() as u64);
                e.out.extend_from_slice(name.as_bytes());
            }
        }
        e
    }

    fn code(&self, t: T) -> u8 {
        let (binary, compact) = match t {
            T::Bool => (2, 1),
            T::Byte => (3, 3),
            T::I16 => (6, 4),
            T::I32 => (8, 5),
            T::I64 => (10, 6),
            T::Double => (4, 7),
            T::Str => (11, 8),
            T::Struct => (12, 12),
            T::Map => (13, 11),
            T::Set => (14, 10),
            T::List => (15, 9),
            T::Uuid => (16, 13),
        };
        if self.p == P::Compact {
            compact
        } else {
            binary
        }
    }

    fn field_header(&mut self, code: u8, id: i16) {
        if self.p == P::Compact {
            let delta = i32::from(id) - i32::from(self.last_id);
            if (1..=15).contains(&delta) {
                self.out.push(((delta as u8) << 4) | code);
            } else {
                self.out.push(code);
                varint(&mut self.out, zigzag(i64::from(id)));
            }
            self.last_id = id;
        } else {
            self.out.push(code);
            self.out.extend_from_slice(&id.to_be_bytes());
        }
    }

    fn field(&mut self, t: T, id: i16) -> &mut Self {
        let code = self.code(t);
        self.field_header(code, id);
        if matches!(t, T::Struct) {
            self.outer_ids.push(self.last_id);
            self.last_id = 0;
        }
        self
    }

    fn bool_field(&mut self, id: i16, v: bool) -> &mut Self {
        if self.p == P::Compact {
            self.field_header(if v { 1 } else { 2 }, id);
        } else {
            self.field_header(2, id);
            self.out.push(u8::from(v));
        }
        self
    }

    fn int(&mut self, v: i64, width: usize) -> &mut Self {
        if self.p == P::Compact {
            varint(&mut self.out, zigzag(v));
        } else {
            self.out.extend_from_slice(&v.to_be_bytes()[8 - width..]);
        }
        self
    }

    fn i32(&mut self, v: i32) -> &mut Self {
        self.int(i64::from(v), 4)
    }

    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.out.extend_from_slice(bytes);
        self
    }

    fn string(&mut self, s: &str) -> &mut Self {
        if self.p == P::Compact {
            varint(&mut self.out, s.len() as u64);
        } else {
            self.out.extend_from_slice(&(s.len() as i32).to_be_bytes());
        }
        self.raw(s.as_bytes())
    }

    fn list(&mut self, elem: T, n: usize) -> &mut Self {
        let code = self.code(elem);
        if self.p == P::Compact {
            if n < 15 {
                self.out.push(((n as u8) << 4) | code);
            } else {
                self.out.push(0xf0 | code);
                varint(&mut self.out, n as u64);
            }
        } else {
            self.out.push(code);
            self.out.extend_from_slice(&(n as i32).to_be_bytes());
        }
        self
    }

    fn map(&mut self, key: T, value: T, n: usize) -> &mut Self {
        let (k, v) = (self.code(key), self.code(value));
        if self.p == P::Compact {
            varint(&mut self.out, n as u64);
            if n > 0 {
                self.out.push((k << 4) | v);
            }
        } else {
            self.out.extend_from_slice(&[k, v]);
            self.out.extend_from_slice(&(n as i32).to_be_bytes());
        }
        self
    }

    /// Begins a struct that is a container element (no field header).
    fn begin_struct(&mut self) -> &mut Self {
        self.outer_ids.push(self.last_id);
        self.last_id = 0;
        self
    }

    /// Ends a struct (or, at the top, the message body).
    fn stop(&mut self) -> &mut Self {
        self.out.push(0);
        self.last_id = self.outer_ids.pop().unwrap_or(0);
        self
    }

    fn bytes(&self) -> Vec<u8> {
        self.out.clone()
    }
}

/// A call with one string argument and one i32.
fn call(p: P, name: &str, seqid: i32) -> Vec<u8> {
    Enc::message(p, name, CALL, seqid)
        .field(T::Str, 1)
        .string("hello")
        .field(T::I32, 2)
        .i32(42)
        .stop()
        .bytes()
}

/// A successful reply carrying an i64.
fn reply(p: P, name: &str, seqid: i32) -> Vec<u8> {
    Enc::message(p, name, REPLY, seqid)
        .field(T::I64, 0)
        .int(7, 8)
        .stop()
        .bytes()
}

/// A body with every type, nested, to exercise the walkers.
fn rich_call(p: P, seqid: i32) -> Vec<u8> {
    let mut e = Enc::message(p, "everything", CALL, seqid);
    e.bool_field(1, true).bool_field(2, false);
    e.field(T::Byte, 3).raw(&[0xfe]);
    e.field(T::I16, 4).int(-300, 2);
    e.field(T::I32, 5).i32(-70000);
    e.field(T::I64, 6).int(1 << 40, 8);
    e.field(T::Double, 7).raw(&1.5f64.to_be_bytes());
    e.field(T::Str, 8).string("text");
    e.field(T::Uuid, 9).raw(&[7; 16]);
    e.field(T::List, 10).list(T::I32, 20);
    for i in 0..20 {
        e.i32(i);
    }
    e.field(T::Set, 11).list(T::Str, 2).string("a").string("bc");
    e.field(T::Map, 12).map(T::Str, T::Struct, 2);
    for key in ["k1", "k2"] {
        e.string(key)
            .begin_struct()
            .field(T::I32, 1)
            .i32(5)
            .bool_field(2, true)
            .stop();
    }
    e.field(T::Map, 13).map(T::I32, T::I32, 0);
    e.field(T::List, 14).list(T::Bool, 3).raw(&[1, 2, 1]);
    // Field ids far apart (compact: absolute ids), negative too.
    e.field(T::Struct, 200)
        .field(T::Str, -5)
        .string("deep")
        .field(T::List, 300)
        .list(T::List, 1)
        .list(T::Double, 1);
    e.raw(&2.0f64.to_be_bytes()).stop();
    e.stop().bytes()
}

/// Puts a message in a transport.
type Wrap = fn(&[u8]) -> Vec<u8>;

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = (message.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(message);
    out
}

/// A THeader frame (protocol id 0 binary, 2 compact) with info headers around `payload`.
fn theader(
    protocol_id: u64,
    transforms: &[u64],
    headers: &[(&str, &str)],
    payload: &[u8],
) -> Vec<u8> {
    let mut section = Vec::new();
    varint(&mut section, protocol_id);
    varint(&mut section, transforms.len() as u64);
    for t in transforms {
        varint(&mut section, *t);
    }
    if !headers.is_empty() {
        varint(&mut section, 1);
        varint(&mut section, headers.len() as u64);
        for (k, v) in headers {
            varint(&mut section, k.len() as u64);
            section.extend_from_slice(k.as_bytes());
            varint(&mut section, v.len() as u64);
            section.extend_from_slice(v.as_bytes());
        }
    }
    while section.len() % 4 != 0 {
        section.push(0);
    }
    let mut frame = vec![0x0f, 0xff, 0, 0, 0, 0, 0, 1];
    frame.extend_from_slice(&((section.len() / 4) as u16).to_be_bytes());
    frame.extend_from_slice(&section);
    frame.extend_from_slice(payload);
    framed(&frame)
}

// ---------------------------------------------------------------- harness

fn timing(i: u64) -> Timing {
    Timing {
        not_before_ns: i * 10,
        exit_ns: i * 10 + 1,
        tid: 7,
    }
}

/// One connection: each `send` is one syscall with its own timing.
struct Conn {
    parser: ThriftParser,
    syscalls: u64,
    out: Vec<Message>,
}

impl Conn {
    fn new() -> Self {
        Conn {
            parser: ThriftParser::new(),
            syscalls: 0,
            out: Vec::new(),
        }
    }

    /// One syscall that moved `len` bytes of which `data` was captured; returns its timing.
    fn send_cut(&mut self, dir: Direction, data: &[u8], len: u64) -> Timing {
        self.syscalls += 1;
        let t = timing(self.syscalls);
        self.parser.feed(
            dir,
            &Chunk {
                data,
                len,
                timing: t,
            },
            &mut self.out,
        );
        t
    }

    fn send(&mut self, dir: Direction, data: &[u8]) -> Timing {
        self.send_cut(dir, data, data.len() as u64)
    }

    fn requests(&self) -> Vec<&Request> {
        self.out
            .iter()
            .filter_map(|m| match m {
                Message::Request(r) => Some(r),
                Message::Response(_) => None,
            })
            .collect()
    }

    fn responses(&self) -> Vec<&Response> {
        self.out
            .iter()
            .filter_map(|m| match m {
                Message::Response(r) => Some(r),
                Message::Request(_) => None,
            })
            .collect()
    }

    fn stats(&self) -> ParseStats {
        self.parser.stats()
    }
}

fn attr<'a>(r: &'a Request, key: &str) -> Option<&'a AttrValue> {
    find(&r.attributes, key)
}

fn str_attr<'a>(r: &'a Request, key: &str) -> Option<&'a str> {
    match attr(r, key) {
        Some(AttrValue::Str(v)) => Some(v),
        _ => None,
    }
}

/// Runs a call and its reply through a fresh connection in one chunk each.
fn exchange(request: &[u8], response: &[u8]) -> Conn {
    let mut conn = Conn::new();
    conn.send(Direction::Egress, request);
    conn.send(Direction::Ingress, response);
    conn
}

fn assert_clean(conn: &Conn) {
    assert_eq!(conn.stats(), ParseStats::default());
    assert!(!conn.parser.gave_up());
}

// ---------------------------------------------------------------- encodings

fn check_call_and_reply(p: P, wrap: Wrap, protocol: &str, transport: &str) {
    let conn = exchange(
        &wrap(&call(p, "getUser", 5)),
        &wrap(&reply(p, "getUser", 5)),
    );
    assert_clean(&conn);
    let req = conn.requests()[0];
    assert_eq!(
        (req.key, req.name.as_str(), req.expects_response),
        (5, "getUser", true)
    );
    assert_eq!(str_attr(req, "rpc.system"), Some("thrift"));
    assert_eq!(str_attr(req, "rpc.method"), Some("getUser"));
    assert_eq!(str_attr(req, "rpc.service"), None);
    assert_eq!(str_attr(req, "rpc.thrift.protocol"), Some(protocol));
    assert_eq!(str_attr(req, "rpc.thrift.transport"), Some(transport));
    assert_eq!((req.first, req.last), (timing(1), timing(1)));
    let resp = conn.responses()[0];
    assert_eq!(
        (resp.key, resp.error.as_deref(), resp.first, resp.last),
        (5, None, timing(2), timing(2))
    );
}

#[test]
fn binary_strict_buffered() {
    check_call_and_reply(P::Strict, <[u8]>::to_vec, "binary", "buffered");
}

#[test]
fn binary_non_strict_buffered() {
    check_call_and_reply(P::NonStrict, <[u8]>::to_vec, "binary", "buffered");
}

#[test]
fn compact_buffered() {
    check_call_and_reply(P::Compact, <[u8]>::to_vec, "compact", "buffered");
}

#[test]
fn binary_strict_framed() {
    check_call_and_reply(P::Strict, framed, "binary", "framed");
}

#[test]
fn binary_non_strict_framed() {
    check_call_and_reply(P::NonStrict, framed, "binary", "framed");
}

#[test]
fn compact_framed() {
    check_call_and_reply(P::Compact, framed, "compact", "framed");
}

#[test]
fn theader_binary_and_compact() {
    check_call_and_reply(P::Strict, |m| theader(0, &[], &[], m), "binary", "header");
    check_call_and_reply(P::Compact, |m| theader(2, &[], &[], m), "compact", "header");
}

#[test]
fn walks_every_type_to_the_message_end() {
    for p in [P::Strict, P::NonStrict, P::Compact] {
        // Two rich messages and a plain one back to back in one chunk: each end must be found.
        let mut stream = rich_call(p, 1);
        stream.extend(rich_call(p, 2));
        stream.extend(call(p, "after", 3));
        let mut conn = Conn::new();
        conn.send(Direction::Ingress, &stream);
        assert_clean(&conn);
        let keys: Vec<_> = conn
            .requests()
            .iter()
            .map(|r| (r.key, r.name.clone()))
            .collect();
        assert_eq!(
            keys,
            [
                (1, "everything".into()),
                (2, "everything".into()),
                (3, "after".into())
            ],
            "{p:?}"
        );
    }
}

#[test]
fn theader_info_headers_are_parsed() {
    let headers = [
        (
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        ),
        ("client", "web"),
    ];
    let frame = theader(0, &[], &headers, &call(P::Strict, "get", 1));
    let info = parse_header(&frame[4..]).expect("header");
    assert_eq!(info.protocol, Proto::Binary);
    assert!(!info.transformed);
    let pairs: Vec<(&str, &[u8])> = info
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    assert_eq!(
        pairs,
        [
            (headers[0].0, headers[0].1.as_bytes()),
            (headers[1].0, headers[1].1.as_bytes())
        ]
    );
}

#[test]
fn theader_without_trace_headers_decodes() {
    let conn = exchange(
        &theader(
            2,
            &[],
            &[("client", "web"), ("tenant", "x")],
            &call(P::Compact, "get", 9),
        ),
        &theader(2, &[], &[], &reply(P::Compact, "get", 9)),
    );
    assert_clean(&conn);
    assert_eq!(conn.requests()[0].context, None);
    assert_eq!((conn.requests()[0].key, conn.responses()[0].key), (9, 9));
}

#[test]
fn theader_transformed_payload_is_skipped_in_sync() {
    let mut stream = theader(0, &[1], &[], b"\x78\x9c compressed bytes");
    stream.extend(theader(0, &[], &[], &call(P::Strict, "next", 2)));
    let mut conn = Conn::new();
    conn.send(Direction::Egress, &stream);
    assert_eq!(conn.requests().len(), 1);
    assert_eq!(conn.requests()[0].key, 2);
    assert_eq!(
        conn.stats(),
        ParseStats {
            errors: 1,
            resyncs: 0
        }
    );
}

// ---------------------------------------------------------------- message semantics

#[test]
fn multiplexed_name() {
    let conn = exchange(
        &framed(&call(P::Strict, "Calculator:add", 1)),
        &framed(&reply(P::Strict, "Calculator:add", 1)),
    );
    let req = conn.requests()[0];
    assert_eq!(req.name, "Calculator/add");
    assert_eq!(str_attr(req, "rpc.service"), Some("Calculator"));
    assert_eq!(str_attr(req, "rpc.method"), Some("add"));
}

#[test]
fn out_of_order_replies_pair_by_seqid() {
    let mut conn = Conn::new();
    for seqid in [10, 11, 12] {
        conn.send(Direction::Egress, &framed(&call(P::Compact, "m", seqid)));
    }
    for seqid in [12, 10, 11] {
        conn.send(Direction::Ingress, &framed(&reply(P::Compact, "m", seqid)));
    }
    let keys: Vec<u64> = conn.responses().iter().map(|r| r.key).collect();
    assert_eq!(keys, [12, 10, 11]);
    assert_eq!(
        conn.requests().iter().map(|r| r.key).collect::<Vec<_>>(),
        [10, 11, 12]
    );
}

#[test]
fn negative_seqid_keys_stay_distinct() {
    let conn = exchange(&call(P::Strict, "m", -1), &reply(P::Strict, "m", -1));
    assert_eq!(conn.requests()[0].key, u64::from(u32::MAX));
    assert_eq!(conn.responses()[0].key, u64::from(u32::MAX));
}

#[test]
fn oneway_expects_no_response() {
    let msg = Enc::message(P::Strict, "log", ONEWAY, 3)
        .field(T::Str, 1)
        .string("line")
        .stop()
        .bytes();
    let mut conn = Conn::new();
    conn.send(Direction::Egress, &msg);
    assert!(!conn.requests()[0].expects_response);
}

fn app_exception(p: P, message: Option<&str>, kind: Option<i32>) -> Vec<u8> {
    let mut e = Enc::message(p, "get", EXCEPTION, 4);
    if let Some(message) = message {
        e.field(T::Str, 1).string(message);
    }
    if let Some(kind) = kind {
        e.field(T::I32, 2).i32(kind);
    }
    e.stop().bytes()
}

#[test]
fn exception_reply_reports_message_else_type() {
    for p in [P::Strict, P::Compact] {
        let conn = exchange(
            &call(p, "get", 4),
            &app_exception(p, Some("Invalid method name: 'get'"), Some(1)),
        );
        assert_eq!(
            conn.responses()[0].error.as_deref(),
            Some("Invalid method name: 'get'")
        );
        let conn = exchange(&call(p, "get", 4), &app_exception(p, None, Some(6)));
        assert_eq!(conn.responses()[0].error.as_deref(), Some("INTERNAL_ERROR"));
        let conn = exchange(&call(p, "get", 4), &app_exception(p, None, None));
        assert_eq!(conn.responses()[0].error.as_deref(), Some("UNKNOWN"));
    }
}

#[test]
fn declared_exception_is_an_error() {
    for p in [P::Strict, P::NonStrict, P::Compact] {
        let with_message = Enc::message(p, "get", REPLY, 8)
            .field(T::Struct, 2)
            .field(T::I32, 1)
            .i32(404)
            .field(T::Str, 2)
            .string("no such user")
            .stop()
            .stop()
            .bytes();
        let conn = exchange(&call(p, "get", 8), &with_message);
        let resp = conn.responses()[0];
        assert_eq!(resp.error.as_deref(), Some("no such user"), "{p:?}");
        assert_eq!(
            find(&resp.attributes, "rpc.thrift.exception_field"),
            Some(&AttrValue::Int(2))
        );

        let bare = Enc::message(p, "get", REPLY, 8)
            .field(T::Struct, 1)
            .field(T::I32, 1)
            .i32(3)
            .stop()
            .stop()
            .bytes();
        let conn = exchange(&call(p, "get", 8), &bare);
        assert_eq!(
            conn.responses()[0].error.as_deref(),
            Some("declared exception (field 1)")
        );
    }
}

#[test]
fn void_reply_is_success() {
    let void = Enc::message(P::Compact, "ping", REPLY, 1).stop().bytes();
    let conn = exchange(&call(P::Compact, "ping", 1), &void);
    assert_clean(&conn);
    assert_eq!(conn.responses()[0].error, None);
    assert!(conn.responses()[0].attributes.is_empty());
}

// ---------------------------------------------------------------- stream handling

#[test]
fn byte_at_a_time() {
    let encodings: [(P, Wrap); 5] = [
        (P::Strict, <[u8]>::to_vec),
        (P::NonStrict, <[u8]>::to_vec),
        (P::Compact, <[u8]>::to_vec),
        (P::Strict, framed),
        (P::Compact, |m| theader(2, &[], &[("k", "v")], m)),
    ];
    for (p, wrap) in encodings {
        let mut stream = wrap(&rich_call(p, 1));
        stream.extend(wrap(&call(p, "second", 2)));
        let mut conn = Conn::new();
        let mut timings = Vec::new();
        for byte in &stream {
            timings.push(conn.send(Direction::Egress, std::slice::from_ref(byte)));
        }
        assert_clean(&conn);
        let reqs = conn.requests();
        assert_eq!(reqs.len(), 2, "{p:?}");
        let first_len = wrap(&rich_call(p, 1)).len();
        assert_eq!(
            (reqs[0].first, reqs[0].last),
            (timings[0], timings[first_len - 1])
        );
        assert_eq!(
            (reqs[1].first, reqs[1].last),
            (timings[first_len], timings[stream.len() - 1])
        );
    }
}

#[test]
fn several_messages_per_chunk_and_split_across_chunks() {
    let mut stream = Vec::new();
    for seqid in 0..5 {
        stream.extend(call(P::Strict, "m", seqid));
    }
    // Split in the middle of the third message.
    let cut = stream.len() / 2;
    let mut conn = Conn::new();
    let a = conn.send(Direction::Egress, &stream[..cut]);
    let b = conn.send(Direction::Egress, &stream[cut..]);
    assert_clean(&conn);
    let reqs = conn.requests();
    assert_eq!(
        reqs.iter().map(|r| r.key).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!((reqs[1].first, reqs[1].last), (a, a));
    assert_eq!((reqs[2].first, reqs[2].last), (a, b));
    assert_eq!((reqs[3].first, reqs[3].last), (b, b));
}

#[test]
fn frame_larger_than_capture_is_skipped_and_pairing_goes_on() {
    let big = Enc::message(P::Strict, "upload", CALL, 1)
        .field(T::Str, 1)
        .string(&"x".repeat(10_000))
        .stop()
        .bytes();
    let big = framed(&big);
    let mut conn = Conn::new();
    // The kernel captured 64 bytes of the first syscall, then the rest came in two more.
    let first = conn.send_cut(Direction::Egress, &big[..64], 4_000);
    conn.send_cut(Direction::Egress, &big[4_000..4_064], 4_000);
    assert!(conn.requests().is_empty(), "emitted before its last byte");
    let rest = (big.len() - 8_000) as u64;
    let last = conn.send_cut(Direction::Egress, &big[8_000..8_064], rest);
    conn.send(Direction::Ingress, &framed(&reply(P::Strict, "upload", 1)));
    // A normal exchange afterwards still pairs.
    conn.send(Direction::Egress, &framed(&call(P::Strict, "small", 2)));
    conn.send(Direction::Ingress, &framed(&reply(P::Strict, "small", 2)));
    assert_clean(&conn);
    let reqs = conn.requests();
    assert_eq!(
        reqs.iter()
            .map(|r| (r.key, r.name.as_str()))
            .collect::<Vec<_>>(),
        [(1, "upload"), (2, "small")]
    );
    assert_eq!((reqs[0].first, reqs[0].last), (first, last));
    assert_eq!(
        attr(reqs[0], "rpc.thrift.truncated"),
        Some(&AttrValue::Bool(true))
    );
    assert_eq!(
        conn.responses().iter().map(|r| r.key).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn frame_cut_with_another_frame_after_it_in_the_syscall_loses_the_stream() {
    let mut stream = framed(
        &Enc::message(P::Compact, "a", CALL, 1)
            .field(T::Str, 1)
            .string(&"y".repeat(500))
            .stop()
            .bytes(),
    );
    assert!(stream.len() > 40);
    stream.extend(framed(&call(P::Compact, "b", 2)));
    let mut conn = Conn::new();
    // Capture ends inside the first frame; the syscall also carried the whole second frame,
    // whose start nobody saw: the stream is lost until the next syscall.
    conn.send_cut(Direction::Egress, &stream[..40], stream.len() as u64);
    conn.send(Direction::Egress, &framed(&call(P::Compact, "c", 3)));
    assert_eq!(
        conn.requests().iter().map(|r| r.key).collect::<Vec<_>>(),
        [1, 3]
    );
    assert_eq!(
        conn.stats(),
        ParseStats {
            errors: 1,
            resyncs: 1
        }
    );
}

#[test]
fn unframed_message_cut_by_capture_emits_head_then_resyncs() {
    let big = Enc::message(P::Compact, "put", CALL, 6)
        .field(T::Str, 1)
        .string(&"z".repeat(5_000))
        .stop()
        .bytes();
    let mut conn = Conn::new();
    let t = conn.send_cut(Direction::Egress, &big[..100], big.len() as u64);
    // The next syscall is a new message.
    conn.send(Direction::Egress, &call(P::Compact, "get", 7));
    let reqs = conn.requests();
    assert_eq!(reqs.iter().map(|r| r.key).collect::<Vec<_>>(), [6, 7]);
    assert_eq!(
        (reqs[0].name.as_str(), reqs[0].first, reqs[0].last),
        ("put", t, t)
    );
    assert_eq!(conn.stats().resyncs, 1);
    assert!(!conn.parser.gave_up());
}

#[test]
fn resync_drops_chunks_that_do_not_start_a_message() {
    let big = Enc::message(P::Strict, "put", CALL, 6)
        .field(T::Str, 1)
        .string(&"z".repeat(5_000))
        .stop()
        .bytes();
    let mut conn = Conn::new();
    conn.send_cut(Direction::Egress, &big[..100], 1_000);
    conn.send(Direction::Egress, &big[1_000..2_000]);
    conn.send(Direction::Egress, &big[2_000..]);
    conn.send(Direction::Egress, &call(P::Strict, "get", 7));
    assert_eq!(
        conn.requests().iter().map(|r| r.key).collect::<Vec<_>>(),
        [6, 7]
    );
    assert_eq!(
        conn.stats(),
        ParseStats {
            errors: 1,
            resyncs: 1
        }
    );
}

#[test]
fn garbage_is_counted_then_parser_gives_up() {
    let mut conn = Conn::new();
    conn.send(
        Direction::Egress,
        b"\x00\x00\x00\x03\x01\x02\x03 definitely not thrift",
    );
    assert_eq!(
        conn.stats(),
        ParseStats {
            errors: 1,
            resyncs: 1
        }
    );
    assert!(!conn.parser.gave_up());
    for i in 0..100u8 {
        conn.send(Direction::Egress, &[i; 17]);
    }
    assert!(conn.parser.gave_up());
}

#[test]
fn garbage_between_good_messages_recovers() {
    let mut conn = Conn::new();
    conn.send(Direction::Egress, &framed(&call(P::Strict, "a", 1)));
    conn.send(Direction::Egress, b"\xff\xff\xff\xffjunk");
    conn.send(Direction::Egress, &framed(&call(P::Strict, "b", 2)));
    assert_eq!(
        conn.requests().iter().map(|r| r.key).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        conn.stats(),
        ParseStats {
            errors: 1,
            resyncs: 1
        }
    );
}

#[test]
fn truncated_frame_is_counted_and_stream_stays_in_sync() {
    // The frame length cuts the message body short: its head is still reported.
    let msg = call(P::Strict, "short", 1);
    let mut frame = ((msg.len() - 3) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&msg[..msg.len() - 3]);
    frame.extend(framed(&call(P::Strict, "ok", 2)));
    let mut conn = Conn::new();
    conn.send(Direction::Egress, &frame);
    assert_eq!(
        conn.requests().iter().map(|r| r.key).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(
        conn.stats(),
        ParseStats {
            errors: 1,
            resyncs: 0
        }
    );
}

#[test]
fn connection_closing_mid_message_emits_nothing() {
    let msg = framed(&call(P::Strict, "m", 1));
    let mut conn = Conn::new();
    conn.send(Direction::Egress, &msg[..msg.len() - 1]);
    conn.parser.finish(&mut conn.out);
    assert!(conn.out.is_empty());
}

#[test]
fn buffer_is_capped_for_unframed_messages() {
    let huge = Enc::message(P::Strict, "put", CALL, 1)
        .field(T::Str, 1)
        .string(&"q".repeat(300_000))
        .stop()
        .bytes();
    let mut conn = Conn::new();
    for piece in huge.chunks(4096) {
        conn.send(Direction::Egress, piece);
    }
    assert!(conn.parser.egress.buf.len() <= BUFFER_CAP);
    // The head is still reported, the overflow counted, and the next message decodes.
    assert_eq!(conn.requests().len(), 1);
    assert_eq!(conn.stats().resyncs, 1);
    conn.send(Direction::Egress, &call(P::Strict, "next", 2));
    assert_eq!(
        conn.requests().iter().map(|r| r.key).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn large_frame_beyond_buffer_cap_is_skipped_by_length() {
    let huge = framed(
        &Enc::message(P::Strict, "put", CALL, 1)
            .field(T::Str, 1)
            .string(&"q".repeat(300_000))
            .stop()
            .bytes(),
    );
    let mut conn = Conn::new();
    for piece in huge.chunks(65536) {
        conn.send(Direction::Egress, piece);
    }
    conn.send(Direction::Egress, &framed(&call(P::Strict, "next", 2)));
    assert_clean(&conn);
    assert_eq!(
        conn.requests().iter().map(|r| r.key).collect::<Vec<_>>(),
        [1, 2]
    );
}

#[test]
fn deep_nesting_is_rejected_without_overflow() {
    for p in [P::Strict, P::Compact] {
        let mut e = Enc::message(p, "deep", CALL, 1);
        for _ in 0..10_000 {
            e.field(T::Struct, 1);
        }
        let mut conn = Conn::new();
        conn.send(Direction::Egress, &e.bytes());
        assert!(conn.requests().is_empty());
        assert_eq!(conn.stats().errors, 1);
    }
}

#[test]
fn huge_container_counts_wait_for_bytes_instead_of_looping() {
    let mut e = Enc::message(P::Strict, "m", CALL, 1);
    e.field(T::List, 1).list(T::I64, i32::MAX as usize);
    let mut conn = Conn::new();
    conn.send(Direction::Egress, &e.bytes());
    assert!(conn.requests().is_empty());
    assert_eq!(
        conn.parser.egress.want,
        e.bytes().len() + (i32::MAX as usize) * 8
    );
}

// ---------------------------------------------------------------- detection

#[test]
fn detects_every_encoding() {
    for p in [P::Strict, P::NonStrict, P::Compact] {
        assert!(looks_like_thrift(&call(p, "Svc:get_user2", 1)), "{p:?}");
        assert!(looks_like_thrift(&reply(p, "get", 1)), "{p:?}");
        assert!(looks_like_thrift(&framed(&call(p, "get", 1))), "{p:?}");
    }
    assert!(looks_like_thrift(&theader(
        0,
        &[],
        &[("a", "b")],
        &call(P::Strict, "get", 1)
    )));
    assert!(looks_like_thrift(&theader(
        2,
        &[],
        &[],
        &call(P::Compact, "get", 1)
    )));
    // Only the head is needed: a capture cut after the name and seqid still detects.
    let msg = call(P::Strict, "get", 1);
    assert!(looks_like_thrift(&msg[..15]));
    assert!(!looks_like_thrift(&msg[..14]));
}

#[test]
fn http_and_text_are_not_thrift() {
    assert!(!looks_like_thrift(b""));
    let samples: [&[u8]; 6] = [
        b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
        b"POST /api HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"*1\r\n$4\r\nPING\r\n",
    ];
    for sample in samples {
        assert!(
            !looks_like_thrift(sample),
            "{:?}",
            String::from_utf8_lossy(sample)
        );
        // Rejected outright, not kept waiting for more bytes.
        assert_ne!(
            sniff(sample),
            Sniff::NeedMore,
            "{:?}",
            String::from_utf8_lossy(sample)
        );
    }
}

/// xorshift64*: deterministic pseudo-random bytes for property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_bytes_are_not_thrift() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let hits = (0..100_000)
        .filter(|_| looks_like_thrift(&rng.bytes(64)))
        .count();
    assert_eq!(hits, 0);
}

#[test]
fn random_splits_give_the_same_messages() {
    let mut rng = Rng(42);
    let encodings: [(P, Wrap); 4] = [
        (P::Strict, <[u8]>::to_vec),
        (P::Compact, <[u8]>::to_vec),
        (P::NonStrict, framed),
        (P::Compact, |m| theader(2, &[], &[], m)),
    ];
    for (p, wrap) in encodings {
        let mut stream = Vec::new();
        for seqid in 0..20 {
            stream.extend(wrap(&if seqid % 3 == 0 {
                rich_call(p, seqid)
            } else {
                call(p, "m", seqid)
            }));
        }
        for _ in 0..50 {
            let mut conn = Conn::new();
            let mut rest = &stream[..];
            while !rest.is_empty() {
                let n = 1 + rng.below(rest.len().min(200));
                conn.send(Direction::Egress, &rest[..n]);
                rest = &rest[n..];
            }
            assert_clean(&conn);
            assert_eq!(
                conn.requests().iter().map(|r| r.key).collect::<Vec<_>>(),
                (0..20).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn arbitrary_chunks_never_panic() {
    // The same shape as the fuzz target, bounded, for machines without cargo-fuzz.
    let mut rng = Rng(7);
    let seeds: Vec<Vec<u8>> = vec![
        rich_call(P::Strict, 1),
        rich_call(P::Compact, 2),
        framed(&call(P::NonStrict, "m", 3)),
    ];
    for round in 0..2_000 {
        let mut data = seeds[round % seeds.len()].clone();
        for _ in 0..rng.below(8) {
            let at = rng.below(data.len());
            data[at] = rng.next() as u8;
        }
        let mut parser = ThriftParser::new();
        let mut out = Vec::new();
        let mut rest = &data[..];
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len());
            let extra = if rng.below(4) == 0 {
                rng.below(100_000) as u64
            } else {
                0
            };
            let dir = if rng.below(2) == 0 {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            let chunk = Chunk {
                data: &rest[..n],
                len: n as u64 + extra,
                timing: timing(0),
            };
            parser.feed(dir, &chunk, &mut out);
            rest = &rest[n..];
        }
        assert!(parser.egress.buf.len() <= BUFFER_CAP && parser.ingress.buf.len() <= BUFFER_CAP);
    }
}
