//! HTTP/1.x stream parser. Sits in the protocol stage: the connection table feeds it one
//! connection's chunks (one syscall each, either direction, possibly truncated captures); it
//! emits complete `Request` / `Response` messages, keyed by the request's ordinal on the
//! connection, to span assembly.
//!
//! Each direction runs its own state machine (head → body → next head). The direction whose
//! first recognised message is a request line carries requests; the other carries responses,
//! which answer requests in FIFO order (pipelining). Uncaptured bytes are skipped by framing;
//! when framing cannot say where the gap ends, the direction resyncs at the start of a later
//! chunk that begins with a request or status line.

mod body;
mod head;
mod url;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;

use super::{
    Chunk, Direction, Message, ParseStats, ParserOptions, Request, Response, StreamParser, Timing,
    hints,
};
use crate::span::Attribute;
use body::{Body, Skip};
use compact_str::CompactString;
use head::{Framing, Parsed, RequestHead, ResponseHead, Role, Start};

/// Most head bytes buffered per direction before the head counts as invalid.
const MAX_HEAD: usize = 64 * 1024;
/// Consecutive errors without a valid head after which the connection is abandoned.
const MAX_CONSECUTIVE_ERRORS: u32 = 8;
/// Most requests awaiting a response; beyond it the oldest is forgotten.
const MAX_PENDING: usize = 256;
/// Request body bytes kept (until the body ends) for id hints.
const BODY_SAMPLE: usize = 512;

/// True when `first` begins with a known method and a space, or with `HTTP/1.` (a connection
/// picked up mid-stream may show a response first).
pub fn looks_like_http(first: &[u8]) -> bool {
    matches!(head::message_start(first, None), Start::Yes(_))
}

/// Parses one TCP connection's HTTP/1.x exchanges.
pub struct HttpParser {
    options: ParserOptions,
    egress: State,
    ingress: State,
    /// Decided by the first recognised message.
    request_dir: Option<Direction>,
    /// Requests whose heads were seen, oldest first, awaiting their responses.
    pending: VecDeque<Pending>,
    next_key: u64,
    stats: ParseStats,
    consecutive_errors: u32,
    gave_up: bool,
    /// The first [`BODY_SAMPLE`] bytes of the request body in flight, read for id hints when
    /// the body ends.
    body_sample: Vec<u8>,
}

/// A request awaiting its response: what the response's framing depends on.
#[derive(Debug)]
struct Pending {
    key: u64,
    head: bool,
    connect: bool,
    /// False when the request itself could not be reported (its line was not captured): its
    /// response is consumed to keep FIFO pairing, but not reported either.
    report: bool,
}

/// How a direction got to where it looks for a message start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Place {
    /// The previous message ended here: anything but a message start is an error.
    Aligned,
    /// After a capture gap or at a mid-stream pickup: non-message chunks are skipped quietly.
    Lost,
    /// After an error: each chunk that does not start a message is another error.
    Erring,
}

/// Head bytes gathered so far.
#[derive(Debug)]
struct HeadBuf {
    buf: Vec<u8>,
    first: Timing,
    place: Place,
}

/// A message whose head was parsed and whose body is in flight.
#[derive(Debug)]
enum Open {
    Request(Request),
    /// `None` for a response nobody will be told about (no matching request).
    Response(Option<Response>),
}

impl Open {
    fn touch(&mut self, timing: Timing) {
        match self {
            Open::Request(request) => request.last = timing,
            Open::Response(Some(response)) => response.last = timing,
            Open::Response(None) => {}
        }
    }

    fn emit(self, out: &mut Vec<Message>) {
        match self {
            Open::Request(request) => out.push(Message::Request(request)),
            Open::Response(Some(response)) => out.push(Message::Response(response)),
            Open::Response(None) => {}
        }
    }
}

/// One direction's parsing state.
#[derive(Debug)]
enum State {
    Head(HeadBuf),
    Body {
        open: Open,
        body: Body,
    },
    /// Waiting for a chunk that starts with a message.
    Seek(Place),
}

impl State {
    fn aligned() -> Self {
        State::Head(HeadBuf {
            buf: Vec::new(),
            first: Timing::default(),
            place: Place::Aligned,
        })
    }
}

impl HttpParser {
    pub fn new(options: &ParserOptions) -> Self {
        HttpParser {
            options: options.clone(),
            egress: State::Seek(Place::Lost),
            ingress: State::Seek(Place::Lost),
            request_dir: None,
            pending: VecDeque::new(),
            next_key: 0,
            stats: ParseStats::default(),
            consecutive_errors: 0,
            gave_up: false,
            body_sample: Vec::new(),
        }
    }

    fn state_mut(&mut self, dir: Direction) -> &mut State {
        match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        }
    }

    fn expected_role(&self, dir: Direction) -> Option<Role> {
        self.request_dir.map(|d| {
            if d == dir {
                Role::Request
            } else {
                Role::Response
            }
        })
    }

    fn set_role(&mut self, dir: Direction, role: Role) {
        if self.request_dir.is_none() {
            self.request_dir = Some(match (role, dir) {
                (Role::Request, d) => d,
                (Role::Response, Direction::Egress) => Direction::Ingress,
                (Role::Response, Direction::Ingress) => Direction::Egress,
            });
        }
    }

    fn error(&mut self) {
        self.stats.errors += 1;
        self.consecutive_errors += 1;
        if self.consecutive_errors >= MAX_CONSECUTIVE_ERRORS {
            self.gave_up = true;
        }
    }

    /// Counts an error and looks for the next message at a later chunk.
    fn error_seek(&mut self) -> State {
        self.error();
        State::Seek(Place::Erring)
    }

    /// Keeps the start of a request body.
    fn sample_body(&mut self, open: &Open, body: &[u8]) {
        if matches!(open, Open::Request(_)) {
            let take = body.len().min(BODY_SAMPLE - self.body_sample.len());
            self.body_sample.extend_from_slice(&body[..take]);
        }
    }

    /// Emits a message whose body ended (or was given up), a request with the id hints of
    /// its body sample.
    fn emit(&mut self, mut open: Open, out: &mut Vec<Message>) {
        if let Open::Request(request) = &mut open
            && !self.body_sample.is_empty()
        {
            hints::push_body(&self.body_sample, &mut request.id_hints);
            self.body_sample.clear();
        }
        open.emit(out);
    }

    /// Counts a resync and looks for the next message at a later chunk.
    fn resync(&mut self) -> State {
        self.stats.resyncs += 1;
        State::Seek(Place::Lost)
    }

    /// Runs the captured bytes of a chunk through the direction's state machine.
    fn step(
        &mut self,
        dir: Direction,
        state: State,
        data: &[u8],
        timing: Timing,
        out: &mut Vec<Message>,
    ) -> (State, usize) {
        match state {
            State::Head(head) => self.step_head(dir, head, data, timing, out),
            State::Body { mut open, mut body } => {
                open.touch(timing);
                match body.feed(data) {
                    Ok((used, true)) => {
                        self.sample_body(&open, &data[..used]);
                        self.emit(open, out);
                        (State::aligned(), used)
                    }
                    Ok((used, false)) => {
                        self.sample_body(&open, &data[..used]);
                        (State::Body { open, body }, used)
                    }
                    Err(_) => {
                        self.emit(open, out);
                        (self.error_seek(), data.len())
                    }
                }
            }
            State::Seek(_) => (state, data.len()),
        }
    }

    fn step_head(
        &mut self,
        dir: Direction,
        mut head: HeadBuf,
        data: &[u8],
        timing: Timing,
        out: &mut Vec<Message>,
    ) -> (State, usize) {
        if head.buf.is_empty() {
            head.first = timing;
        }
        let old = head.buf.len();
        let take = data.len().min(MAX_HEAD.saturating_sub(old));
        // A head that starts in this chunk is read from it in place, and copied only if it
        // continues in a later one.
        let in_place = old == 0;
        if !in_place {
            head.buf.extend_from_slice(&data[..take]);
        }
        let buf: &[u8] = if in_place { &data[..take] } else { &head.buf };
        let role = match head::message_start(buf, self.expected_role(dir)) {
            Start::Yes(role) => role,
            Start::Maybe => return (self.incomplete(head, in_place, &data[..take]), take),
            Start::No if head.place == Place::Lost => {
                return (State::Seek(Place::Lost), data.len());
            }
            Start::No => return (self.error_seek(), data.len()),
        };
        if !head::has_head_end(buf, old) {
            return (self.incomplete(head, in_place, &data[..take]), take);
        }
        let parsed = match role {
            Role::Request => head::parse_request(buf, &self.options.record_headers)
                .map(|p| self.on_request(dir, p, head.first, timing, out)),
            Role::Response => {
                head::parse_response(buf).map(|p| self.on_response(dir, p, head.first, timing, out))
            }
        };
        match parsed {
            Ok(Some((state, len))) => (state, len.saturating_sub(old)),
            Ok(None) => (self.incomplete(head, in_place, &data[..take]), take),
            Err(_) => (self.error_seek(), data.len()),
        }
    }

    /// Keeps buffering a head (with `bytes`, the chunk's part of it, when it was read in
    /// place), unless the buffer is full.
    fn incomplete(&mut self, mut head: HeadBuf, in_place: bool, bytes: &[u8]) -> State {
        if in_place {
            head.buf.extend_from_slice(bytes);
        }
        if head.buf.len() >= MAX_HEAD {
            self.error_seek()
        } else {
            State::Head(head)
        }
    }

    /// A parsed request head: its key, its pending entry, and its body state.
    fn on_request(
        &mut self,
        dir: Direction,
        parsed: Parsed<RequestHead>,
        first: Timing,
        timing: Timing,
        out: &mut Vec<Message>,
    ) -> Option<(State, usize)> {
        let Parsed::Complete(head, len) = parsed else {
            return None;
        };
        self.consecutive_errors = 0;
        self.set_role(dir, Role::Request);
        let framing = head.framing();
        let request = self.open_request(head, first, timing);
        Some((self.open_body(Open::Request(request), framing, out), len))
    }

    fn open_request(&mut self, head: RequestHead<'_>, first: Timing, last: Timing) -> Request {
        let key = self.push_pending(&head.method, true);
        self.body_sample.clear();
        let id_hints = url::split_target(&head.target)
            .query
            .map(hints::from_query)
            .unwrap_or_default();
        let context = head.context.clone();
        let (name, attributes) = request_attributes(head, &self.options);
        Request {
            key,
            name,
            attributes,
            context,
            first,
            last,
            expects_response: true,
            id_hints,
        }
    }

    /// Allocates the next request key and queues its response.
    fn push_pending(&mut self, method: &str, report: bool) -> u64 {
        let key = self.next_key;
        self.next_key += 1;
        if self.pending.len() >= MAX_PENDING {
            self.pending.pop_front();
        }
        self.pending.push_back(Pending {
            key,
            head: method == "HEAD",
            connect: method == "CONNECT",
            report,
        });
        key
    }

    /// A parsed status line: skipped when interim (1xx), else paired with the oldest pending
    /// request. A switch of protocols (101, or 2xx to CONNECT) ends HTTP on the connection.
    fn on_response(
        &mut self,
        dir: Direction,
        parsed: Parsed<ResponseHead>,
        first: Timing,
        timing: Timing,
        out: &mut Vec<Message>,
    ) -> Option<(State, usize)> {
        let Parsed::Complete(head, len) = parsed else {
            return None;
        };
        self.consecutive_errors = 0;
        self.set_role(dir, Role::Response);
        Some((self.open_response(&head, first, timing, out), len))
    }

    fn open_response(
        &mut self,
        head: &ResponseHead,
        first: Timing,
        last: Timing,
        out: &mut Vec<Message>,
    ) -> State {
        if (100..200).contains(&head.status) && head.status != 101 {
            return State::aligned();
        }
        let pending = self.pending.pop_front();
        let tunnel = head.status == 101
            || (pending.as_ref().is_some_and(|p| p.connect) && (200..300).contains(&head.status));
        let answers_head = pending.as_ref().is_some_and(|p| p.head);
        let response = pending.filter(|p| p.report).map(|p| Response {
            key: p.key,
            first,
            last,
            http_status: Some(head.status),
            error: None,
            attributes: Vec::new(),
        });
        if tunnel {
            Open::Response(response).emit(out);
            self.gave_up = true;
            return State::Seek(Place::Lost);
        }
        self.open_body(Open::Response(response), head.framing(answers_head), out)
    }

    /// Emits a message without body at once; otherwise waits for its body.
    fn open_body(
        &mut self,
        open: Open,
        framing: Result<Framing, head::HeadError>,
        out: &mut Vec<Message>,
    ) -> State {
        match framing.map(Body::new) {
            Ok(Some(body)) => State::Body { open, body },
            Ok(None) => {
                self.emit(open, out);
                State::aligned()
            }
            Err(_) => {
                self.emit(open, out);
                self.error_seek()
            }
        }
    }

    /// Accounts for `n` bytes that moved in `dir` but were not captured.
    fn skip(
        &mut self,
        dir: Direction,
        state: State,
        n: u64,
        timing: Timing,
        out: &mut Vec<Message>,
    ) -> State {
        match state {
            State::Seek(place) => State::Seek(place),
            State::Head(head) if head.buf.is_empty() && head.place == Place::Aligned => {
                self.uncaptured_message(self.expected_role(dir));
                self.resync()
            }
            State::Head(head) if head.buf.is_empty() => State::Seek(head.place),
            State::Head(head) => {
                self.cut_head(dir, &head, timing, out);
                self.resync()
            }
            State::Body { mut open, mut body } => {
                open.touch(timing);
                match body.skip(n) {
                    Skip::Inside => State::Body { open, body },
                    Skip::Done { leftover: 0 } => {
                        self.emit(open, out);
                        State::aligned()
                    }
                    Skip::Done { .. } => {
                        self.emit(open, out);
                        self.uncaptured_message(self.expected_role(dir));
                        self.resync()
                    }
                    Skip::Lost => {
                        self.emit(open, out);
                        self.resync()
                    }
                }
            }
        }
    }

    /// A message began where nothing of its first line was captured: it still takes a request
    /// key, or answers the oldest pending request, so later messages pair correctly.
    fn uncaptured_message(&mut self, role: Option<Role>) {
        match role {
            Some(Role::Request) => {
                self.push_pending("", false);
            }
            Some(Role::Response) => {
                self.pending.pop_front();
            }
            None => {}
        }
    }

    /// A head whose end was not captured: reports what its captured lines say, with no body,
    /// and keeps request/response pairing in step even when the first line itself was cut.
    fn cut_head(&mut self, dir: Direction, head: &HeadBuf, timing: Timing, out: &mut Vec<Message>) {
        let expected = self.expected_role(dir);
        let role = match head::message_start(&head.buf, expected) {
            Start::Yes(role) => role,
            Start::Maybe if head.place == Place::Aligned => {
                return self.uncaptured_message(expected);
            }
            Start::Maybe | Start::No => return,
        };
        self.set_role(dir, role);
        match role {
            Role::Request => match head::parse_cut(&head.buf, |b| {
                head::complete(head::parse_request(b, &self.options.record_headers))
                    .map(RequestHead::into_owned)
            }) {
                Some(parsed) => {
                    Open::Request(self.open_request(parsed, head.first, timing)).emit(out)
                }
                None => return self.uncaptured_message(Some(role)),
            },
            Role::Response => {
                match head::parse_cut(&head.buf, |b| head::complete(head::parse_response(b))) {
                    // Whatever body it has lies in the gap: report the response now.
                    Some(parsed) => {
                        if let State::Body { mut open, .. } =
                            self.open_response(&parsed, head.first, timing, out)
                        {
                            open.touch(timing);
                            self.emit(open, out);
                        }
                    }
                    None => return self.uncaptured_message(Some(role)),
                }
            }
        }
        self.consecutive_errors = 0;
    }
}

/// `http.request.method`, without allocating for the methods of RFC 9110 and PATCH.
fn method_attribute(method: &str) -> Attribute {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    ];
    match KNOWN.iter().find(|&&known| known == method) {
        Some(known) => Attribute::fixed("http.request.method", known),
        None => Attribute::str("http.request.method", method),
    }
}

/// Span name and attributes of a request (semantic conventions; no other header values, no
/// body bytes).
fn request_attributes(
    head: RequestHead<'_>,
    options: &ParserOptions,
) -> (CompactString, Vec<Attribute>) {
    // Method, path, route, query, version, user agent, host and port.
    let mut attributes = Vec::with_capacity(8 + head.recorded.len() + super::ASSEMBLY_ATTRIBUTES);
    attributes.push(method_attribute(&head.method));
    let target = url::split_target(&head.target);
    let name = match target.path {
        Some(path) => {
            let route = url::route(path);
            // Inline up to 24 bytes, else one allocation of the right size.
            let mut name = CompactString::with_capacity(head.method.len() + 1 + route.len());
            name.push_str(&head.method);
            name.push(' ');
            name.push_str(&route);
            attributes.push(Attribute::str("url.path", path));
            attributes.push(Attribute::str("http.route", route));
            name
        }
        None => CompactString::from(head.method.as_ref()),
    };
    if let Some(query) = target.query.filter(|_| options.record_query) {
        attributes.push(Attribute::str("url.query", query));
    }
    attributes.push(Attribute::fixed(
        "network.protocol.version",
        if head.version == 0 { "1.0" } else { "1.1" },
    ));
    if let Some(user_agent) = head.user_agent {
        attributes.push(Attribute::str("user_agent.original", user_agent));
    }
    for (key, value) in head.recorded {
        attributes.push(Attribute::str(key, value));
    }
    if let Some((address, port)) = head.host.as_deref().and_then(url::split_host) {
        attributes.push(Attribute::str("server.address", address));
        if let Some(port) = port {
            attributes.push(Attribute::int("server.port", i64::from(port)));
        }
    }
    (name, attributes)
}

impl StreamParser for HttpParser {
    fn feed(&mut self, dir: Direction, chunk: &Chunk<'_>, out: &mut Vec<Message>) {
        if self.gave_up {
            return;
        }
        let mut state = std::mem::replace(self.state_mut(dir), State::Seek(Place::Lost));
        if let State::Seek(place) = state
            && !chunk.data.is_empty()
        {
            state = State::Head(HeadBuf {
                buf: Vec::new(),
                first: chunk.timing,
                place,
            });
        }
        let mut data = chunk.data;
        while !data.is_empty() && !self.gave_up && !matches!(state, State::Seek(_)) {
            let (next, used) = self.step(dir, state, data, chunk.timing, out);
            state = next;
            data = data.get(used..).unwrap_or_default();
        }
        let missing = chunk.len.saturating_sub(chunk.data.len() as u64);
        if missing > 0 && !self.gave_up {
            state = self.skip(dir, state, missing, chunk.timing, out);
        }
        *self.state_mut(dir) = state;
    }

    fn stats(&self) -> ParseStats {
        self.stats
    }

    fn gave_up(&self) -> bool {
        self.gave_up
    }

    /// Completes a body delimited by the close; anything else still open is dropped.
    fn finish(&mut self, out: &mut Vec<Message>) {
        for dir in [Direction::Egress, Direction::Ingress] {
            if let State::Body {
                open,
                body: Body::UntilClose,
            } = std::mem::replace(self.state_mut(dir), State::Seek(Place::Lost))
            {
                self.emit(open, out);
            }
        }
    }
}
