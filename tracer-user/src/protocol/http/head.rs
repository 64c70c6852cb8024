//! HTTP/1.x message heads for the HTTP parser: recognising where a message starts, and turning
//! a request line or status line plus headers (tokenised by `httparse`) into summaries. A
//! request head borrows its text from the buffer it was parsed from (one allocation fewer per
//! field on the hot path); the span's attributes copy what they keep.
//! Part of `protocol::http`: head bytes buffered from connection chunks in, `RequestHead` /
//! `ResponseHead` (framing, attributes' raw material, trace context) out.

use std::borrow::Cow;

use thiserror::Error;

use crate::context::{self, TraceContext};

/// Request-line starts we accept: a known method and its space.
const REQUEST_STARTS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];
const STATUS_START: &[u8] = b"HTTP/1.";
/// More headers than this make the head invalid.
const MAX_HEADERS: usize = 128;

/// Which kind of message a direction carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Request,
    Response,
}

/// Whether bytes begin a message.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Start {
    Yes(Role),
    /// Too few bytes to tell (a prefix of a method or of `HTTP/1.`).
    Maybe,
    No,
}

/// Checks the beginning of `buf` for a request line (known method) or a status line,
/// restricted to `expected` when the direction's role is known.
pub(super) fn message_start(buf: &[u8], expected: Option<Role>) -> Start {
    let request = REQUEST_STARTS.iter().map(|s| (Role::Request, *s));
    let candidates = request.chain([(Role::Response, STATUS_START)]);
    let mut maybe = false;
    for (role, start) in candidates.filter(|(role, _)| expected.is_none_or(|e| e == *role)) {
        if buf.starts_with(start) {
            return Start::Yes(role);
        }
        maybe |= start.starts_with(buf);
    }
    if maybe { Start::Maybe } else { Start::No }
}

/// True when the bytes from `from` on (with 3 bytes of look-behind) contain the blank line
/// that ends a head, so a full parse is worth trying.
pub(super) fn has_head_end(buf: &[u8], from: usize) -> bool {
    let tail = &buf[from.saturating_sub(3).min(buf.len())..];
    // One pass over the line ends (a captured response prefix holds its body too).
    memchr::memchr_iter(b'\n', tail).any(|i| match tail.get(i + 1) {
        Some(b'\n') => true,
        Some(b'\r') => tail.get(i + 2) == Some(&b'\n'),
        _ => false,
    })
}

#[derive(Debug, Error, PartialEq, Eq)]
pub(super) enum HeadError {
    #[error("malformed head: {0}")]
    Syntax(httparse::Error),
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("request Transfer-Encoding does not end in chunked")]
    TransferEncoding,
}

/// How a message's body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    Length(u64),
    Chunked,
    UntilClose,
}

/// The framing headers as sent, judged once the message kind is known.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FramingHeaders {
    /// `Err` for an unparsable or conflicting Content-Length.
    length: Option<Result<u64, ()>>,
    /// `Some(true)` when Transfer-Encoding is present and its last coding is chunked.
    chunked: Option<bool>,
}

impl FramingHeaders {
    fn from_headers(headers: &[httparse::Header<'_>]) -> Self {
        let mut framing = FramingHeaders::default();
        for header in headers {
            if header.name.eq_ignore_ascii_case("content-length") {
                framing.length = Some(merge_length(framing.length, header.value));
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                let mut codings = header.value.split(|&b| b == b',').map(<[u8]>::trim_ascii);
                if let Some(last) = codings.rfind(|c| !c.is_empty()) {
                    framing.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
                }
            }
        }
        framing
    }

    /// Transfer-Encoding overrides Content-Length (RFC 9112 §6.3).
    fn length(&self) -> Result<Option<u64>, HeadError> {
        match self.length {
            None => Ok(None),
            Some(Ok(n)) => Ok(Some(n)),
            Some(Err(())) => Err(HeadError::ContentLength),
        }
    }
}

/// Folds one Content-Length value (possibly a list of identical values) into what was seen.
fn merge_length(seen: Option<Result<u64, ()>>, value: &[u8]) -> Result<u64, ()> {
    let mut merged = seen.transpose()?;
    for item in value.split(|&b| b == b',') {
        let n = parse_length(item)?;
        if merged.is_some_and(|m| m != n) {
            return Err(());
        }
        merged = Some(n);
    }
    merged.ok_or(())
}

fn parse_length(value: &[u8]) -> Result<u64, ()> {
    let value = value.trim_ascii();
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return Err(());
    }
    std::str::from_utf8(value)
        .map_err(drop)?
        .parse()
        .map_err(drop)
}

/// What the parser keeps of a request head; text borrowed from the head's bytes (owned only
/// where a header value is not UTF-8 and was repaired).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct RequestHead<'a> {
    pub method: Cow<'a, str>,
    pub target: Cow<'a, str>,
    /// Minor version: 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version: u8,
    pub host: Option<Cow<'a, str>>,
    pub user_agent: Option<Cow<'a, str>>,
    pub context: Option<TraceContext>,
    /// Headers the user asked to record: attribute key and value (first occurrence).
    pub recorded: Vec<(&'static str, Cow<'a, str>)>,
    framing: FramingHeaders,
}

impl RequestHead<'_> {
    /// The same head with its text copied, for heads parsed out of a temporary buffer.
    pub fn into_owned(self) -> RequestHead<'static> {
        let own = |text: Cow<'_, str>| Cow::Owned(text.into_owned());
        RequestHead {
            method: own(self.method),
            target: own(self.target),
            version: self.version,
            host: self.host.map(own),
            user_agent: self.user_agent.map(own),
            context: self.context,
            recorded: self
                .recorded
                .into_iter()
                .map(|(key, value)| (key, own(value)))
                .collect(),
            framing: self.framing,
        }
    }

    /// Requests without Content-Length or Transfer-Encoding have no body.
    pub fn framing(&self) -> Result<Framing, HeadError> {
        match self.framing.chunked {
            Some(true) => Ok(Framing::Chunked),
            Some(false) => Err(HeadError::TransferEncoding),
            None => Ok(Framing::Length(self.framing.length()?.unwrap_or(0))),
        }
    }
}

/// What the parser keeps of a response head.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct ResponseHead {
    pub status: u16,
    framing: FramingHeaders,
}

impl ResponseHead {
    /// RFC 9112 §6.3: no body after HEAD or for 1xx/204/304; otherwise chunked, length, or
    /// until the connection closes.
    pub fn framing(&self, answers_head: bool) -> Result<Framing, HeadError> {
        if answers_head || self.status < 200 || self.status == 204 || self.status == 304 {
            return Ok(Framing::Length(0));
        }
        match self.framing.chunked {
            Some(true) => Ok(Framing::Chunked),
            Some(false) => Ok(Framing::UntilClose),
            None => Ok(self
                .framing
                .length()?
                .map_or(Framing::UntilClose, Framing::Length)),
        }
    }
}

/// A parse attempt over the buffered head bytes.
#[derive(Debug, PartialEq)]
pub(super) enum Parsed<T> {
    /// The head and its length in bytes.
    Complete(T, usize),
    Partial,
}

pub(super) fn parse_request<'a>(
    buf: &'a [u8],
    record: &[(String, &'static str)],
) -> Result<Parsed<RequestHead<'a>>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf).map_err(HeadError::Syntax)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Ok(Parsed::Partial);
    };
    let header = |name: &str| {
        request
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| match String::from_utf8_lossy(h.value) {
                Cow::Borrowed(text) => Cow::Borrowed(text.trim()),
                Cow::Owned(text) => Cow::Owned(text.trim().to_owned()),
            })
    };
    let head = RequestHead {
        method: Cow::Borrowed(method),
        target: Cow::Borrowed(target),
        version,
        host: header("host").filter(|h| !h.is_empty()),
        user_agent: header("user-agent").filter(|ua| !ua.is_empty()),
        context: context::from_headers(request.headers.iter().map(|h| (h.name, h.value))),
        recorded: record
            .iter()
            .filter_map(|(name, key)| Some((*key, header(name)?)))
            .collect(),
        framing: FramingHeaders::from_headers(request.headers),
    };
    Ok(Parsed::Complete(head, len))
}

pub(super) fn parse_response(buf: &[u8]) -> Result<Parsed<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf).map_err(HeadError::Syntax)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => return Ok(Parsed::Partial),
    };
    let Some(status) = response.code else {
        return Ok(Parsed::Partial);
    };
    Ok(Parsed::Complete(
        ResponseHead {
            status,
            framing: FramingHeaders::from_headers(response.headers),
        },
        len,
    ))
}

/// The head of a complete parse.
pub(super) fn complete<T>(parsed: Result<Parsed<T>, HeadError>) -> Option<T> {
    match parsed {
        Ok(Parsed::Complete(head, _)) => Some(head),
        _ => None,
    }
}

/// A head whose end was not captured: parses its complete lines (a cut header line is
/// dropped), or the first line alone when the captured headers do not parse.
///
/// The lines are parsed out of a temporary copy, so `parse` returns what it keeps of a
/// complete head as an owned value (`None` when the lines are not one).
pub(super) fn parse_cut<T>(buf: &[u8], parse: impl Fn(&[u8]) -> Option<T>) -> Option<T> {
    let complete = |lines: &[u8]| parse(&[lines, b"\r\n"].concat());
    let last_newline = buf.iter().rposition(|&b| b == b'\n')?;
    let first_newline = buf.iter().position(|&b| b == b'\n')?;
    complete(&buf[..=last_newline]).or_else(|| complete(&buf[..=first_newline]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts() {
        assert_eq!(
            message_start(b"GET / HTTP/1.1", None),
            Start::Yes(Role::Request)
        );
        assert_eq!(
            message_start(b"HTTP/1.1 200", None),
            Start::Yes(Role::Response)
        );
        assert_eq!(
            message_start(b"HTTP/1.1 200", Some(Role::Request)),
            Start::No
        );
        assert_eq!(message_start(b"GE", None), Start::Maybe);
        assert_eq!(message_start(b"", Some(Role::Response)), Start::Maybe);
        assert_eq!(message_start(b"GETX", None), Start::No);
        assert_eq!(message_start(b"HTTP/2 200", None), Start::No);
    }

    #[test]
    fn chosen_request_headers_are_recorded() {
        let buf = b"GET / HTTP/1.1\r\nX-Request-Id:  abc \r\nTraceparent: 00-x\r\n\r\n";
        let record = [
            (
                "x-request-id".to_owned(),
                "http.request.header.x-request-id",
            ),
            ("x-absent".to_owned(), "k"),
        ];
        let Ok(Parsed::Complete(head, _)) = parse_request(buf, &record) else {
            panic!("complete")
        };
        assert_eq!(
            head.recorded,
            vec![("http.request.header.x-request-id", Cow::Borrowed("abc"))]
        );
        let Ok(Parsed::Complete(head, _)) = parse_request(buf, &[]) else {
            panic!("complete")
        };
        assert!(head.recorded.is_empty());
    }

    #[test]
    fn request_head() {
        let buf = b"POST /x HTTP/1.0\r\nHost: h\r\nContent-Length: 3, 3\r\n\r\nabc";
        let Ok(Parsed::Complete(head, len)) = parse_request(buf, &[]) else {
            panic!("complete")
        };
        assert_eq!(len, buf.len() - 3);
        assert_eq!(
            (head.method.as_ref(), head.target.as_ref(), head.version),
            ("POST", "/x", 0)
        );
        assert_eq!(head.host.as_deref(), Some("h"));
        assert_eq!(head.framing(), Ok(Framing::Length(3)));
    }

    #[test]
    fn framing_rules() {
        let req =
            |h: &str| match parse_request(format!("GET / HTTP/1.1\r\n{h}\r\n").as_bytes(), &[]) {
                Ok(Parsed::Complete(head, _)) => head.framing(),
                other => panic!("{other:?}"),
            };
        assert_eq!(req(""), Ok(Framing::Length(0)));
        assert_eq!(
            req("Transfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            req("Transfer-Encoding: gzip\r\n"),
            Err(HeadError::TransferEncoding)
        );
        assert_eq!(
            req("Content-Length: 5\r\nContent-Length: 6\r\n"),
            Err(HeadError::ContentLength)
        );
        assert_eq!(req("Content-Length: -1\r\n"), Err(HeadError::ContentLength));
        let resp = |head: &str, answers_head: bool| match parse_response(head.as_bytes()) {
            Ok(Parsed::Complete(r, _)) => r.framing(answers_head),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true),
            Ok(Framing::Length(0))
        );
        assert_eq!(
            resp(
                "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
                false
            ),
            Ok(Framing::Length(0))
        );
        assert_eq!(
            resp("HTTP/1.0 200 OK\r\n\r\n", false),
            Ok(Framing::UntilClose)
        );
        assert_eq!(
            resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", false),
            Ok(Framing::UntilClose)
        );
    }

    #[test]
    fn cut_heads_keep_complete_lines() {
        let head = parse_cut(b"GET /a?b HTTP/1.1\r\nHost: h:81\r\nUser-Ag", |b| {
            complete(parse_request(b, &[])).map(RequestHead::into_owned)
        })
        .expect("line captured");
        assert_eq!(
            (head.target.as_ref(), head.host.as_deref(), head.user_agent),
            ("/a?b", Some("h:81"), None)
        );
        let bad_header = parse_cut(b"GET /a HTTP/1.1\r\n\x01bad\r\nX", |b| {
            complete(parse_request(b, &[])).map(RequestHead::into_owned)
        })
        .expect("first line");
        assert_eq!(bad_header.target, "/a");
        assert_eq!(
            parse_cut(b"HTTP/1.1 503 Unavail\r\nServer: x", |b| complete(
                parse_response(b)
            ))
            .map(|r| r.status),
            Some(503)
        );
        assert_eq!(
            parse_cut(b"GET /very/long/pa", |b| {
                complete(parse_request(b, &[])).map(RequestHead::into_owned)
            }),
            None
        );
    }

    #[test]
    fn head_end_detection() {
        assert!(has_head_end(b"GET / HTTP/1.1\r\n\r\n", 17));
        assert!(has_head_end(b"GET / HTTP/1.1\n\n", 15));
        assert!(!has_head_end(b"GET / HTTP/1.1\r\n", 0));
    }
}
