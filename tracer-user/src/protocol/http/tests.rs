//! Stream-level tests of the HTTP parser: chunks in, messages and stats out.

use super::*;
use crate::context::ContextFormat;
use crate::span::{AttrValue, find};

/// The traced process is the server: it reads requests and writes responses.
const REQ: Direction = Direction::Ingress;
const RESP: Direction = Direction::Egress;

/// Feeds chunks with distinct timings (`exit_ns` = 1, 2, 3, ...).
struct Conn {
    parser: HttpParser,
    out: Vec<Message>,
    clock: u64,
}

impl Conn {
    fn new() -> Self {
        Self::with(ParserOptions::default())
    }

    fn with(options: ParserOptions) -> Self {
        Conn {
            parser: HttpParser::new(&options),
            out: Vec::new(),
            clock: 0,
        }
    }

    /// Feeds a fully captured chunk; returns its timing.
    fn send(&mut self, dir: Direction, data: &[u8]) -> Timing {
        self.send_cut(dir, data, data.len() as u64)
    }

    /// Feeds a chunk of which only `data` was captured out of `len` bytes.
    fn send_cut(&mut self, dir: Direction, data: &[u8], len: u64) -> Timing {
        self.clock += 1;
        let timing = Timing {
            not_before_ns: self.clock,
            exit_ns: self.clock,
            tid: 7,
        };
        self.parser
            .feed(dir, &Chunk { data, len, timing }, &mut self.out);
        timing
    }

    fn take(&mut self) -> Vec<Message> {
        std::mem::take(&mut self.out)
    }

    fn requests(messages: &[Message]) -> Vec<&Request> {
        messages
            .iter()
            .filter_map(|m| {
                if let Message::Request(r) = m {
                    Some(r)
                } else {
                    None
                }
            })
            .collect()
    }

    fn responses(messages: &[Message]) -> Vec<&Response> {
        messages
            .iter()
            .filter_map(|m| {
                if let Message::Response(r) = m {
                    Some(r)
                } else {
                    None
                }
            })
            .collect()
    }

    /// `(key, status)` of each message: status 0 for requests.
    fn summary(&mut self) -> Vec<(char, u64, u16)> {
        self.take()
            .iter()
            .map(|m| match m {
                Message::Request(r) => ('q', r.key, 0),
                Message::Response(r) => ('r', r.key, r.http_status.unwrap_or(0)),
            })
            .collect()
    }
}

fn attr<'a>(request: &'a Request, key: &str) -> Option<&'a AttrValue> {
    find(&request.attributes, key)
}

fn s(value: &str) -> Option<AttrValue> {
    Some(AttrValue::Str(value.to_string().into()))
}

const GET: &[u8] = b"GET /users/42?token=secret HTTP/1.1\r\nHost: api.example:8080\r\nUser-Agent: curl/8\r\nAuthorization: Bearer x\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n";
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[test]
fn detects_http_starts_only() {
    assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
    assert!(looks_like_http(b"OPTIONS * HTTP/1.1\r\n"));
    assert!(looks_like_http(b"HTTP/1.0 200 OK\r\n"));
    assert!(!looks_like_http(b"GET"));
    assert!(!looks_like_http(b"get / HTTP/1.1"));
    assert!(!looks_like_http(b"HTTP/2 200"));
    assert!(!looks_like_http(&[
        0x80, 0x01, 0x00, 0x01, 0, 0, 0, 4, b'p', b'i', b'n', b'g'
    ]));
    assert!(!looks_like_http(&[0, 0, 0, 0x1c, 0x80, 0x01, 0x00, 0x01]));
    assert!(!looks_like_http(&[
        0xde, 0xad, 0xbe, 0xef, 0x47, 0x45, 0x54, 0x20
    ]));
}

#[test]
fn request_and_response_attributes() {
    let mut conn = Conn::new();
    let t_req = conn.send(REQ, GET);
    let t_resp = conn.send(RESP, OK);
    let messages = conn.take();
    let [Message::Request(req), Message::Response(resp)] = messages.as_slice() else {
        panic!("{messages:?}")
    };
    assert_eq!(
        (req.key, req.first, req.last, req.expects_response),
        (0, t_req, t_req, true)
    );
    assert_eq!(req.name, "GET /users/{id}");
    assert_eq!(attr(req, "http.request.method"), s("GET").as_ref());
    assert_eq!(attr(req, "url.path"), s("/users/42").as_ref());
    assert_eq!(attr(req, "http.route"), s("/users/{id}").as_ref());
    assert_eq!(attr(req, "url.query"), None, "queries are off by default");
    assert_eq!(attr(req, "network.protocol.version"), s("1.1").as_ref());
    assert_eq!(attr(req, "user_agent.original"), s("curl/8").as_ref());
    assert_eq!(attr(req, "server.address"), s("api.example").as_ref());
    assert_eq!(attr(req, "server.port"), Some(&AttrValue::Int(8080)));
    assert_eq!(
        req.attributes.len(),
        7,
        "no other header values: {:?}",
        req.attributes
    );
    let context = req.context.as_ref().expect("traceparent");
    assert_eq!((context.format, context.flags), (ContextFormat::W3c, 1));
    assert_eq!(
        (
            resp.key,
            resp.first,
            resp.last,
            resp.http_status,
            &resp.error
        ),
        (0, t_resp, t_resp, Some(200), &None)
    );
    assert!(
        resp.attributes.is_empty(),
        "the status travels as http_status"
    );
    assert_eq!(conn.parser.stats(), ParseStats::default());
}

#[test]
fn query_recorded_when_enabled() {
    let mut conn = Conn::with(ParserOptions {
        record_query: true,
        ..Default::default()
    });
    conn.send(REQ, b"GET /search?q=x HTTP/1.0\r\n\r\n");
    let messages = conn.take();
    let [Message::Request(req)] = messages.as_slice() else {
        panic!("{messages:?}")
    };
    assert_eq!(attr(req, "url.query"), s("q=x").as_ref());
    assert_eq!(attr(req, "network.protocol.version"), s("1.0").as_ref());
    assert_eq!(req.context, None);
}

#[test]
fn keep_alive_exchanges_get_successive_keys() {
    let mut conn = Conn::new();
    for _ in 0..3 {
        conn.send(REQ, b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
        conn.send(RESP, OK);
    }
    assert_eq!(
        conn.summary(),
        [
            ('q', 0, 0),
            ('r', 0, 200),
            ('q', 1, 0),
            ('r', 1, 200),
            ('q', 2, 0),
            ('r', 2, 200)
        ]
    );
}

#[test]
fn pipelined_requests_in_one_chunk_pair_in_order() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET /a HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 2\r\n\r\nhiGET /c HTTP/1.1\r\n\r\n");
    conn.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
    conn.send(RESP, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
    let messages = conn.take();
    let names: Vec<_> = Conn::requests(&messages)
        .iter()
        .map(|r| (r.key, r.name.to_string()))
        .collect();
    assert_eq!(
        names,
        [
            (0, "GET /a".to_string()),
            (1, "POST /b".into()),
            (2, "GET /c".into())
        ]
    );
    let statuses: Vec<_> = Conn::responses(&messages)
        .iter()
        .map(|r| (r.key, r.http_status))
        .collect();
    assert_eq!(statuses, [(0, Some(200)), (1, Some(201)), (2, Some(404))]);
}

#[test]
fn chunked_bodies_with_extensions_and_trailers() {
    let mut conn = Conn::new();
    let t1 = conn.send(
        REQ,
        b"PUT /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n",
    );
    let t2 = conn.send(REQ, b"0\r\nChecksum: abc\r\n\r\n");
    conn.send(
        RESP,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    conn.send(REQ, b"GET /next HTTP/1.1\r\n\r\n");
    let messages = conn.take();
    let requests = Conn::requests(&messages);
    assert_eq!(
        (requests[0].first, requests[0].last),
        (t1, t2),
        "emitted once the body is complete"
    );
    assert_eq!(requests[1].key, 1);
    assert_eq!(Conn::responses(&messages)[0].key, 0);
    assert_eq!(conn.parser.stats(), ParseStats::default());
}

#[test]
fn head_and_no_content_responses_have_no_body() {
    let mut conn = Conn::new();
    conn.send(
        REQ,
        b"HEAD /h HTTP/1.1\r\n\r\nGET /n HTTP/1.1\r\n\r\nGET /m HTTP/1.1\r\n\r\n",
    );
    conn.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
    conn.send(
        RESP,
        b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
    );
    assert_eq!(
        conn.summary(),
        [
            ('q', 0, 0),
            ('q', 1, 0),
            ('q', 2, 0),
            ('r', 0, 200),
            ('r', 1, 204),
            ('r', 2, 304)
        ]
    );
    assert_eq!(conn.parser.stats(), ParseStats::default());
}

#[test]
fn continue_is_skipped_and_final_response_pairs() {
    let mut conn = Conn::new();
    conn.send(
        REQ,
        b"POST /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n",
    );
    conn.send(RESP, b"HTTP/1.1 100 Continue\r\n\r\n");
    conn.send(REQ, b"data");
    let t_final = conn.send(RESP, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    let messages = conn.take();
    assert_eq!(messages.len(), 2, "{messages:?}");
    let response = Conn::responses(&messages)[0];
    assert_eq!(
        (response.key, response.http_status, response.first),
        (0, Some(201), t_final)
    );
}

#[test]
fn switching_protocols_ends_parsing_after_pairing() {
    let mut conn = Conn::new();
    conn.send(
        REQ,
        b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    );
    conn.send(
        RESP,
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello",
    );
    assert!(conn.parser.gave_up());
    conn.send(REQ, b"\x81\x85garbage");
    assert_eq!(conn.summary(), [('q', 0, 0), ('r', 0, 101)]);
    assert_eq!(conn.parser.stats().errors, 0);
}

#[test]
fn connect_tunnel_ends_parsing() {
    let mut conn = Conn::new();
    conn.send(REQ, b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n");
    conn.send(RESP, b"HTTP/1.1 200 Connection Established\r\n\r\n");
    assert!(conn.parser.gave_up());
    let messages = conn.take();
    assert_eq!(Conn::requests(&messages)[0].name, "CONNECT");
    assert_eq!(Conn::responses(&messages)[0].key, 0);
}

#[test]
fn http10_body_until_close_completes_on_finish() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET /old HTTP/1.0\r\n\r\n");
    conn.send(
        RESP,
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\npart one",
    );
    let t_last = conn.send(RESP, b" part two");
    assert_eq!(conn.summary(), [('q', 0, 0)]);
    conn.parser.finish(&mut conn.out);
    let messages = conn.take();
    let [Message::Response(resp)] = messages.as_slice() else {
        panic!("{messages:?}")
    };
    assert_eq!((resp.key, resp.last), (0, t_last));
}

#[test]
fn garbage_counts_errors_and_gives_up() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET / HTTP/1.1\r\n\r\n");
    conn.send(REQ, b"\x00\x01\x02 not http");
    assert_eq!(conn.parser.stats().errors, 1);
    assert!(!conn.parser.gave_up());
    for _ in 0..7 {
        conn.send(REQ, b"\xff\xfe more garbage");
    }
    assert!(conn.parser.gave_up());
    assert_eq!(conn.parser.stats().errors, 8);
    assert_eq!(conn.summary(), [('q', 0, 0)]);
}

#[test]
fn invalid_head_is_an_error_and_a_valid_message_resets_the_count() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n");
    conn.send(REQ, b"POST / HTTP/1.1\r\nContent-Length: nope\r\n\r\n");
    assert_eq!(conn.parser.stats().errors, 2);
    conn.send(REQ, b"GET /ok HTTP/1.1\r\n\r\n");
    assert_eq!(
        conn.summary(),
        [('q', 0, 0), ('q', 1, 0)],
        "the bad Content-Length request still happened"
    );
    assert_eq!(conn.parser.consecutive_errors, 0);
}

#[test]
fn random_bytes_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut conn = Conn::new();
    conn.send(REQ, b"GET / HTTP/1.1\r\n");
    for round in 0..200 {
        let data: Vec<u8> = (0..(round % 37))
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                {
                    let alphabet = b"GET HTTP/1.1 \r\n:0a;";
                    alphabet[(seed % alphabet.len() as u64) as usize]
                }
            })
            .collect();
        let dir = if round % 3 == 0 { RESP } else { REQ };
        conn.send_cut(dir, &data, data.len() as u64 + seed % 3);
    }
    conn.parser.finish(&mut conn.out);
}

#[test]
fn head_without_end_is_capped() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET / HTTP/1.1\r\n");
    let filler = b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(800);
    conn.send(REQ, &filler);
    assert_eq!(conn.parser.stats().errors, 1);
    assert!(matches!(conn.parser.ingress, State::Seek(Place::Erring)));
}

#[test]
fn byte_at_a_time_matches_whole_chunks() {
    let request = b"POST /p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let response = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    let mut conn = Conn::new();
    for round in 0..2 {
        let first = conn.clock + 1;
        for b in request {
            conn.send(REQ, std::slice::from_ref(b));
        }
        let last = conn.clock;
        for b in response {
            conn.send(RESP, std::slice::from_ref(b));
        }
        let messages = conn.take();
        let [Message::Request(req), Message::Response(resp)] = messages.as_slice() else {
            panic!("{messages:?}")
        };
        assert_eq!(
            (req.key, req.first.exit_ns, req.last.exit_ns),
            (round, first, last)
        );
        assert_eq!(
            (resp.key, resp.http_status, resp.last.exit_ns),
            (round, Some(200), conn.clock)
        );
    }
    assert_eq!(conn.parser.stats(), ParseStats::default());
}

#[test]
fn mid_stream_pickup_starting_with_a_response() {
    let mut conn = Conn::new();
    conn.send(RESP, b"ody of a response we joined late");
    conn.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
    conn.send(REQ, b"GET /next HTTP/1.1\r\n\r\n");
    conn.send(RESP, b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        conn.summary(),
        [('q', 0, 0), ('r', 0, 202)],
        "the orphan response is framed but not reported"
    );
    assert_eq!(conn.parser.stats(), ParseStats::default());
    assert_eq!(conn.parser.request_dir, Some(REQ));
}

#[test]
fn response_body_larger_than_capture_then_keep_alive() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET /big HTTP/1.1\r\n\r\n");
    let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n";
    let captured = [head.as_slice(), &[b'x'; 200]].concat();
    conn.send_cut(RESP, &captured, 60_000 + head.len() as u64);
    let t_end = conn.send_cut(RESP, &[b'x'; 256], 40_000);
    conn.send(REQ, b"GET /small HTTP/1.1\r\n\r\n");
    conn.send(RESP, OK);
    let messages = conn.take();
    let statuses: Vec<_> = Conn::responses(&messages)
        .iter()
        .map(|r| (r.key, r.last))
        .collect();
    assert_eq!(statuses[0], (0, t_end));
    assert_eq!(statuses[1].0, 1);
    assert_eq!(conn.parser.stats(), ParseStats::default());
}

#[test]
fn capture_gap_ending_in_next_message_resyncs() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n");
    conn.send_cut(
        RESP,
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123",
        100,
    );
    conn.send(RESP, b"ders: cut\r\n\r\n");
    conn.send(REQ, b"GET /c HTTP/1.1\r\n\r\n");
    conn.send(RESP, b"HTTP/1.1 204 No Content\r\n\r\n");
    let messages = conn.take();
    let statuses: Vec<_> = Conn::responses(&messages)
        .iter()
        .map(|r| (r.key, r.http_status))
        .collect();
    assert_eq!(
        statuses,
        [(0, Some(200)), (2, Some(204))],
        "the response to /b began in the uncaptured bytes"
    );
    assert_eq!(
        conn.parser.stats(),
        ParseStats {
            errors: 0,
            resyncs: 1
        }
    );
}

#[test]
fn chunked_body_cut_by_capture_resyncs_at_next_chunk_start() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET /stream HTTP/1.1\r\n\r\n");
    let t_cut = conn.send_cut(
        RESP,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100\r\nxyz",
        5000,
    );
    conn.send(RESP, b"more chunk data\r\n10\r\n");
    conn.send(RESP, b"0\r\n\r\n");
    conn.send(REQ, b"GET /after HTTP/1.1\r\n\r\n");
    conn.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    let messages = conn.take();
    let responses: Vec<_> = Conn::responses(&messages)
        .iter()
        .map(|r| (r.key, r.last))
        .collect();
    assert_eq!(responses.len(), 2, "{messages:?}");
    assert_eq!(responses[0], (0, t_cut), "reported when framing was lost");
    assert_eq!(responses[1].0, 1);
    assert_eq!(
        conn.parser.stats(),
        ParseStats {
            errors: 0,
            resyncs: 1
        }
    );
}

#[test]
fn chunk_data_gap_is_skipped_by_chunk_framing() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET / HTTP/1.1\r\n\r\n");
    conn.send_cut(
        RESP,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n400\r\nab",
        45 + 6 + 1024,
    );
    conn.send(RESP, b"\r\n0\r\n\r\n");
    assert_eq!(conn.summary(), [('q', 0, 0), ('r', 0, 200)]);
    assert_eq!(conn.parser.stats(), ParseStats::default());
}

#[test]
fn cut_head_keeps_its_captured_lines() {
    let mut conn = Conn::new();
    let head = b"GET /orders/123e4567-e89b-12d3-a456-426614174000 HTTP/1.1\r\nHost: shop\r\nb3: 80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1\r\nUser-Agent: cut-he";
    let t = conn.send_cut(REQ, head, 4000);
    conn.send(REQ, b"rest of the headers\r\n\r\n");
    conn.send_cut(RESP, b"HTTP/1.1 503 Service Unavailable\r\nRetry-Af", 900);
    let messages = conn.take();
    let [Message::Request(req), Message::Response(resp)] = messages.as_slice() else {
        panic!("{messages:?}")
    };
    assert_eq!(
        (req.key, req.name.as_str(), req.first, req.last),
        (0, "GET /orders/{id}", t, t)
    );
    assert_eq!(attr(req, "server.address"), s("shop").as_ref());
    assert_eq!(attr(req, "user_agent.original"), None);
    assert_eq!(
        req.context.as_ref().map(|c| c.format),
        Some(ContextFormat::B3Single)
    );
    assert_eq!((resp.key, resp.http_status), (0, Some(503)));
    assert_eq!(
        conn.parser.stats(),
        ParseStats {
            errors: 0,
            resyncs: 2
        }
    );
}

#[test]
fn request_line_cut_keeps_pairing_in_step() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET /first HTTP/1.1\r\n\r\n");
    conn.send_cut(REQ, b"GET /a-very-long-pa", 9000);
    conn.send(REQ, b"GET /third HTTP/1.1\r\n\r\n");
    conn.send(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n");
    conn.send(RESP, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(
        conn.summary(),
        [('q', 0, 0), ('q', 2, 0), ('r', 0, 200), ('r', 2, 201)]
    );
}

#[test]
fn several_messages_and_split_heads_across_chunks() {
    let mut conn = Conn::new();
    let exchange = [GET, OK].concat();
    let t1 = conn.send(REQ, &GET[..10]);
    let t2 = conn.send(REQ, &GET[10..]);
    conn.send(RESP, &OK[..20]);
    conn.send(RESP, &[&OK[20..], &exchange[GET.len()..]].concat());
    conn.send(REQ, GET);
    let messages = conn.take();
    let requests = Conn::requests(&messages);
    assert_eq!((requests[0].first, requests[0].last), (t1, t2));
    let keys: Vec<_> = Conn::responses(&messages).iter().map(|r| r.key).collect();
    assert_eq!(keys, [0], "the second response has no request yet");
    assert_eq!(conn.parser.stats(), ParseStats::default());
}

#[test]
fn method_prefix_cut_at_message_boundary_still_takes_a_key() {
    let mut conn = Conn::new();
    conn.send(REQ, b"GET /first HTTP/1.1\r\n\r\nGE");
    conn.send_cut(REQ, b"", 500);
    conn.send(REQ, b"GET /third HTTP/1.1\r\n\r\n");
    assert_eq!(conn.summary(), [('q', 0, 0), ('q', 2, 0)]);
    assert_eq!(
        conn.parser.stats(),
        ParseStats {
            errors: 0,
            resyncs: 1
        }
    );
}

#[test]
fn id_hints_from_query_and_body() {
    let mut c = Conn::new();
    c.send(
        REQ,
        b"POST /fizz?order=A-991 HTTP/1.1\r\nContent-Length: 29\r\n\r\n{\"number\": 15,",
    );
    assert!(c.take().is_empty(), "the request waits for its body");
    c.send(REQ, b" \"user\": \"u-4\"}");
    // The next request on the connection starts with an empty sample.
    c.send(
        REQ,
        b"POST /fizz HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n8\r\n{\"n\":77}\r\n0\r\n\r\n",
    );
    c.send(REQ, b"GET /plain HTTP/1.1\r\n\r\n");
    let out = c.take();
    let hints: Vec<_> = Conn::requests(&out)
        .iter()
        .map(|r| r.id_hints.clone())
        .collect();
    assert_eq!(
        hints,
        vec![
            vec!["991", "A-991", "15", "u-4"],
            vec!["77"],
            Vec::<&str>::new()
        ]
    );
}
