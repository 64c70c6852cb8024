//! Connection table: the pipeline's per-connection state. Takes decoded events from the
//! reader, keeps one entry per connection (keyed by the kernel's connection id, so a reused fd
//! is a new connection), applies the user's filters, detects the protocol from the first bytes
//! and feeds each direction's chunks to that protocol's parser. Emits parsed messages (and
//! closes) for span assembly, each saying whether its process serves (has read first on a
//! connection). Idle connections are evicted; the table is bounded.

use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use crate::{
    event::{ConnOp, ConnRecord, DataRecord, Endpoints, Event},
    metrics::{Metrics, add, inc},
    protocol::{
        self, Chunk, Direction, Message, ParseStats, ParserOptions, Protocol, StreamParser, Timing,
    },
    selection::Selection,
};

/// Which traffic the user asked for: include/exclude rules by port and by process (see
/// [`Selection`]; no rules means everything).
#[derive(Debug, Default)]
pub struct Filter {
    pub selection: Selection,
}

/// Identity of a connection as span assembly sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    pub conn_id: u64,
    pub pid: u32,
    pub fd: i32,
    pub endpoints: Endpoints,
    pub protocol: Protocol,
    /// The process has read from a connection of its own first, as a server does (or may
    /// have: a connection picked up mid-stream counts when its first bytes seen came in). A
    /// process that never has — a load generator, a batch job — cannot be serving the
    /// request behind a call it makes.
    pub process_serves: bool,
}

/// What the table hands to span assembly.
#[derive(Debug)]
pub enum ConnOutput {
    Message {
        meta: ConnMeta,
        direction: Direction,
        message: Message,
    },
    /// The connection is gone (closed or evicted); `at_ns` is the kernel time of the close
    /// or the last activity.
    Closed { meta: ConnMeta, at_ns: u64 },
}

/// How many chunks may fail protocol detection before a connection is ignored (a connection
/// picked up mid-message needs a few).
const DETECT_TRIES: u8 = 8;

/// Most bytes held back while detecting (see [`Held`]).
const DETECT_HOLD_BYTES: usize = 16 * 1024;

/// Chunks of one direction that did not reveal the protocol yet, kept to be joined with the
/// next chunk: a reader may take a message in pieces (framed Thrift reads the 4-byte frame
/// length, then the frame), and no piece alone says what it is.
#[derive(Default)]
struct Held {
    direction: Option<Direction>,
    bytes: Vec<u8>,
    chunks: Vec<(Vec<u8>, u64, Timing)>,
}

impl Held {
    fn clear(&mut self) {
        self.direction = None;
        self.bytes.clear();
        self.chunks.clear();
    }

    /// Keeps a chunk that did not detect. Only wholly captured chunks of one direction, in a
    /// row, can be joined: anything else starts over.
    fn hold(&mut self, direction: Direction, data: &[u8], len: u64, timing: Timing) {
        if self.direction != Some(direction) || self.bytes.len() + data.len() > DETECT_HOLD_BYTES {
            self.clear();
        }
        if len != data.len() as u64 || data.len() > DETECT_HOLD_BYTES {
            return;
        }
        self.direction = Some(direction);
        self.bytes.extend_from_slice(data);
        self.chunks.push((data.to_vec(), len, timing));
    }
}

enum ParseState {
    Detecting {
        tries: u8,
        held: Held,
    },
    Parsing {
        protocol: Protocol,
        parser: Box<dyn StreamParser>,
        reported: ParseStats,
    },
    Ignored,
}

struct Connection {
    pid: u32,
    fd: i32,
    endpoints: Endpoints,
    state: ParseState,
    last_seen_ns: u64,
}

impl Connection {
    fn meta(&self, conn_id: u64, process_serves: bool) -> Option<ConnMeta> {
        match &self.state {
            ParseState::Parsing { protocol, .. } => Some(ConnMeta {
                conn_id,
                pid: self.pid,
                fd: self.fd,
                endpoints: self.endpoints,
                protocol: *protocol,
                process_serves,
            }),
            _ => None,
        }
    }
}

/// Processes known to serve, at most this many; beyond it every process is taken to serve
/// (the safe answer: its calls wait for a request that might have caused them).
const MAX_SERVING_PIDS: usize = 65536;

/// The processes that have read first on a connection of theirs (see
/// [`ConnMeta::process_serves`]), until they exec or exit.
#[derive(Default)]
struct ServingPids(FxHashSet<u32>);

impl ServingPids {
    fn note(&mut self, pid: u32) {
        if self.0.len() < MAX_SERVING_PIDS {
            self.0.insert(pid);
        }
    }

    fn serves(&self, pid: u32) -> bool {
        self.0.len() >= MAX_SERVING_PIDS || self.0.contains(&pid)
    }

    /// The process execed or exited: another program, or soon another process.
    fn forget(&mut self, pid: u32) {
        self.0.remove(&pid);
    }
}

/// Processes and connections newly left untraced: the kernel side need not send them any
/// more (see [`ConnTable::take_mutes`]).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mutes {
    pub pids: Vec<u32>,
    pub conns: Vec<u64>,
}

/// Mutes held at most between two takes (beyond, the kernel keeps sending and this table
/// keeps dropping).
const MAX_MUTES: usize = 4096;

pub struct ConnTable {
    conns: FxHashMap<u64, Connection>,
    filter: Filter,
    /// Process selection decisions per pid, until the process execs or exits.
    name_allowed: FxHashMap<u32, bool>,
    serving: ServingPids,
    mutes: Mutes,
    options: ParserOptions,
    max_connections: usize,
    idle_ns: u64,
    metrics: Arc<Metrics>,
    messages: Vec<Message>,
}

impl ConnTable {
    pub fn new(
        filter: Filter,
        options: ParserOptions,
        max_connections: usize,
        idle_ns: u64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            conns: FxHashMap::default(),
            filter,
            name_allowed: FxHashMap::default(),
            serving: ServingPids::default(),
            mutes: Mutes::default(),
            options,
            max_connections,
            idle_ns,
            metrics,
            messages: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Processes one event, appending what it produced to `out`.
    pub fn on_event(&mut self, event: &Event<'_>, out: &mut Vec<ConnOutput>) {
        match event {
            Event::Data(rec) => self.on_data(rec, out),
            Event::Conn(rec) => self.on_conn(rec, out),
            // Another program now, or soon another process: decide again.
            Event::Process(rec) => {
                self.name_allowed.remove(&rec.pid);
                self.serving.forget(rec.pid);
            }
        }
    }

    /// The processes and connections left untraced since the last call.
    pub fn take_mutes(&mut self) -> Mutes {
        std::mem::take(&mut self.mutes)
    }

    /// Whether a new connection is traced. A process rejected by the rules, or a connection
    /// rejected by the port rules, is noted for muting in the kernel.
    fn allowed(&mut self, pid: u32, conn_id: u64, endpoints: &Endpoints) -> bool {
        let selection = &mut self.filter.selection;
        if !selection.ports_allowed(endpoints.local.port(), endpoints.remote.port()) {
            self.mute_conn(conn_id);
            return false;
        }
        if !selection.has_process_rules() {
            return true;
        }
        if let Some(&allowed) = self.name_allowed.get(&pid) {
            return allowed;
        }
        if self.name_allowed.len() > 65536 {
            self.name_allowed.clear();
        }
        let allowed = selection.process_allowed(pid);
        self.name_allowed.insert(pid, allowed);
        if !allowed && self.mutes.pids.len() < MAX_MUTES {
            self.mutes.pids.push(pid);
            inc(&self.metrics.processes_muted);
        }
        allowed
    }

    fn mute_conn(&mut self, conn_id: u64) {
        if self.mutes.conns.len() < MAX_MUTES {
            self.mutes.conns.push(conn_id);
        }
    }

    fn on_data(&mut self, rec: &DataRecord<'_>, out: &mut Vec<ConnOutput>) {
        if !self.conns.contains_key(&rec.conn_id) {
            let Some(endpoints) = rec.endpoints else {
                inc(&self.metrics.events_malformed);
                return;
            };
            let state = if self.allowed(rec.pid, rec.conn_id, &endpoints) {
                ParseState::Detecting {
                    tries: 0,
                    held: Held::default(),
                }
            } else {
                inc(&self.metrics.events_filtered);
                ParseState::Ignored
            };
            if self.conns.len() >= self.max_connections {
                inc(&self.metrics.connections_dropped);
                return;
            }
            inc(&self.metrics.connections_opened);
            // Whoever reads first on a connection serves it (HTTP and Thrift clients speak
            // first).
            if rec.direction == Direction::Ingress && !matches!(state, ParseState::Ignored) {
                self.serving.note(rec.pid);
            }
            self.conns.insert(
                rec.conn_id,
                Connection {
                    pid: rec.pid,
                    fd: rec.fd,
                    endpoints,
                    state,
                    last_seen_ns: rec.exit_ns,
                },
            );
        }
        let Some(conn) = self.conns.get_mut(&rec.conn_id) else {
            return;
        };
        // The kernel side knows a syscall's entry only for `*mmsg` (`enter_ns < exit_ns`);
        // otherwise it began after the connection's previous I/O ended.
        let not_before_ns = if rec.enter_ns < rec.exit_ns {
            rec.enter_ns
        } else if conn.last_seen_ns < rec.exit_ns {
            conn.last_seen_ns
        } else {
            0
        };
        conn.last_seen_ns = conn.last_seen_ns.max(rec.exit_ns);
        add(
            &self.metrics.bytes_uncaptured,
            rec.bytes.saturating_sub(rec.payload.len() as u64),
        );

        let timing = Timing {
            not_before_ns,
            exit_ns: rec.exit_ns,
            tid: rec.tid,
        };
        // Chunks held back during detection that belong before this one.
        let mut replay = Vec::new();
        if let ParseState::Detecting { tries, held } = &mut conn.state {
            if rec.payload.is_empty() {
                return;
            }
            // This chunk joined to the held ones first: a piece that detects on its own (a
            // frame body without its length) would otherwise be taken for the wrong format.
            let joined = if held.direction == Some(rec.direction) && !held.chunks.is_empty() {
                let mut joined = held.bytes.clone();
                joined.extend_from_slice(rec.payload);
                protocol::detect(&joined)
            } else {
                None
            };
            let detected = match joined {
                Some(protocol) => {
                    replay = std::mem::take(&mut held.chunks);
                    Some(protocol)
                }
                None => protocol::detect(rec.payload),
            };
            match detected {
                Some(protocol) => {
                    conn.state = ParseState::Parsing {
                        protocol,
                        parser: protocol::parser_for(protocol, &self.options),
                        reported: ParseStats::default(),
                    };
                }
                None => {
                    held.hold(rec.direction, rec.payload, rec.bytes, timing);
                    *tries += 1;
                    if *tries >= DETECT_TRIES {
                        inc(&self.metrics.unknown_protocol);
                        conn.state = ParseState::Ignored;
                        self.mute_conn(rec.conn_id);
                    }
                    return;
                }
            }
        }
        let ParseState::Parsing {
            protocol,
            parser,
            reported,
        } = &mut conn.state
        else {
            return;
        };
        self.messages.clear();
        for (data, len, timing) in &replay {
            parser.feed(
                rec.direction,
                &Chunk {
                    data,
                    len: *len,
                    timing: *timing,
                },
                &mut self.messages,
            );
        }
        let chunk = Chunk {
            data: rec.payload,
            len: rec.bytes,
            timing,
        };
        parser.feed(rec.direction, &chunk, &mut self.messages);
        count_stats(
            &self.metrics,
            *protocol,
            parser.stats(),
            reported,
            self.messages.len(),
        );
        let gave_up = parser.gave_up();
        let Some(meta) = conn.meta(rec.conn_id, self.serving.serves(conn.pid)) else {
            return;
        };
        // A connection picked up while its server was writing is known by its next request.
        if !meta.process_serves
            && rec.direction == Direction::Ingress
            && self
                .messages
                .iter()
                .any(|m| matches!(m, Message::Request(_)))
        {
            self.serving.note(conn.pid);
        }
        for message in self.messages.drain(..) {
            out.push(ConnOutput::Message {
                meta,
                direction: rec.direction,
                message,
            });
        }
        if gave_up {
            conn.state = ParseState::Ignored;
            self.mute_conn(rec.conn_id);
            out.push(ConnOutput::Closed {
                meta,
                at_ns: rec.exit_ns,
            });
        }
    }

    fn on_conn(&mut self, rec: &ConnRecord, out: &mut Vec<ConnOutput>) {
        if rec.op != ConnOp::Close {
            // connect/accept precede the first I/O, which creates the entry with the
            // socket's real endpoints; nothing to keep until then.
            return;
        }
        if let Some(conn) = self.conns.remove(&rec.conn_id) {
            self.close(rec.conn_id, conn, rec.ts_ns, out);
        }
    }

    fn close(&mut self, conn_id: u64, mut conn: Connection, at_ns: u64, out: &mut Vec<ConnOutput>) {
        let Some(meta) = conn.meta(conn_id, self.serving.serves(conn.pid)) else {
            return;
        };
        if let ParseState::Parsing { parser, .. } = &mut conn.state {
            self.messages.clear();
            parser.finish(&mut self.messages);
            for message in self.messages.drain(..) {
                // Only responses end at a close (HTTP/1.x bodies without length); span
                // assembly pairs responses by key, so their direction does not matter.
                out.push(ConnOutput::Message {
                    meta,
                    direction: Direction::Ingress,
                    message,
                });
            }
        }
        out.push(ConnOutput::Closed { meta, at_ns });
    }

    /// Evicts connections idle for longer than the idle timeout (kernel clock `now_ns`).
    pub fn evict_idle(&mut self, now_ns: u64, out: &mut Vec<ConnOutput>) {
        let idle: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| now_ns.saturating_sub(c.last_seen_ns) > self.idle_ns)
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if let Some(conn) = self.conns.remove(&id) {
                inc(&self.metrics.connections_evicted);
                let at = conn.last_seen_ns;
                self.close(id, conn, at, out);
            }
        }
    }

    /// Closes every connection (agent shutdown).
    pub fn close_all(&mut self, out: &mut Vec<ConnOutput>) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(conn) = self.conns.remove(&id) {
                let at = conn.last_seen_ns;
                self.close(id, conn, at, out);
            }
        }
    }
}

fn count_stats(
    metrics: &Metrics,
    protocol: Protocol,
    now: ParseStats,
    reported: &mut ParseStats,
    messages: usize,
) {
    let new_errors = now.errors.saturating_sub(reported.errors);
    *reported = now;
    let (msgs, errors) = match protocol {
        Protocol::Http1 => (&metrics.http_messages, &metrics.http_parse_errors),
        Protocol::Thrift => (&metrics.thrift_messages, &metrics.thrift_parse_errors),
    };
    add(msgs, messages as u64);
    add(errors, new_errors);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        protocol::{Direction, Message},
        selection::Rules,
    };

    fn record(direction: Direction, payload: &[u8], at: u64) -> Event<'_> {
        Event::Data(DataRecord {
            pid: 10,
            tid: 11,
            fd: 5,
            conn_id: 99,
            enter_ns: at,
            exit_ns: at + 1,
            bytes: payload.len() as u64,
            direction,
            syscall: 0,
            body_not_captured: false,
            endpoints: Some(Endpoints {
                local: "127.0.0.1:9090".parse().unwrap(),
                remote: "127.0.0.1:40000".parse().unwrap(),
            }),
            payload,
        })
    }

    /// A strict-binary CALL `ping`, seqid 7, empty args.
    fn binary_call() -> Vec<u8> {
        let mut m = vec![0x80, 0x01, 0x00, 0x01, 0, 0, 0, 4];
        m.extend_from_slice(b"ping");
        m.extend_from_slice(&7i32.to_be_bytes());
        m.push(0); // field stop
        m
    }

    fn requests(out: &[ConnOutput]) -> Vec<(&crate::protocol::Request, Direction)> {
        out.iter()
            .filter_map(|o| match o {
                ConnOutput::Message {
                    message: Message::Request(r),
                    direction,
                    ..
                } => Some((r, *direction)),
                _ => None,
            })
            .collect()
    }

    fn transport_of(req: &crate::protocol::Request) -> Option<String> {
        req.attributes
            .iter()
            .find(|a| a.key == "rpc.thrift.transport")
            .map(|a| format!("{:?}", a.value))
    }

    /// A framed server reads the 4-byte length, then the frame: neither piece alone says
    /// "framed Thrift", joined they do, and the request starts at the first piece.
    #[test]
    fn frame_length_read_apart_from_its_frame_is_detected_as_framed() {
        let mut table = ConnTable::new(
            Filter::default(),
            ParserOptions::default(),
            16,
            u64::MAX,
            Arc::default(),
        );
        let body = binary_call();
        let mut out = Vec::new();
        table.on_event(
            &record(Direction::Ingress, &(body.len() as u32).to_be_bytes(), 100),
            &mut out,
        );
        table.on_event(&record(Direction::Ingress, &body, 200), &mut out);
        let reqs = requests(&out);
        assert_eq!(reqs.len(), 1, "{out:?}");
        let (req, _) = reqs[0];
        assert_eq!(req.name, "ping");
        assert_eq!(req.key, 7);
        assert!(
            transport_of(req).is_some_and(|t| t.contains("framed")),
            "{:?}",
            req.attributes
        );
        assert_eq!(
            req.first.exit_ns, 101,
            "the request starts with the length read"
        );

        // The next request, read the same way, is decoded in sync.
        let mut out = Vec::new();
        table.on_event(
            &record(Direction::Ingress, &(body.len() as u32).to_be_bytes(), 300),
            &mut out,
        );
        table.on_event(&record(Direction::Ingress, &body, 400), &mut out);
        assert_eq!(requests(&out).len(), 1, "{out:?}");
    }

    /// Garbage before a whole message (a connection picked up mid-stream) does not stop the
    /// message from being detected on its own.
    #[test]
    fn held_garbage_does_not_hide_a_later_message() {
        let mut table = ConnTable::new(
            Filter::default(),
            ParserOptions::default(),
            16,
            u64::MAX,
            Arc::default(),
        );
        let mut out = Vec::new();
        table.on_event(
            &record(Direction::Ingress, b"\x13\x37garbage", 100),
            &mut out,
        );
        table.on_event(&record(Direction::Ingress, &binary_call(), 200), &mut out);
        let reqs = requests(&out);
        assert_eq!(reqs.len(), 1, "{out:?}");
        assert!(transport_of(reqs[0].0).is_some_and(|t| t.contains("buffered")));
    }

    fn table_with(exclude: Rules) -> ConnTable {
        ConnTable::new(
            Filter {
                selection: Selection::new(Rules::default(), exclude),
            },
            ParserOptions::default(),
            16,
            u64::MAX,
            Arc::default(),
        )
    }

    fn on_conn_id(event: Event<'_>, conn_id: u64) -> Event<'_> {
        match event {
            Event::Data(mut rec) => {
                rec.conn_id = conn_id;
                Event::Data(rec)
            }
            other => other,
        }
    }

    /// A process the rules reject is muted once; after it execs (or exits) it is decided,
    /// and muted, again.
    #[test]
    fn rejected_process_is_muted_once_until_it_changes() {
        let mut table = table_with(Rules {
            pids: [10].into(),
            ..Rules::default()
        });
        let mut out = Vec::new();
        table.on_event(
            &record(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 1),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            table.take_mutes(),
            Mutes {
                pids: vec![10],
                conns: vec![]
            }
        );
        let second = on_conn_id(
            record(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 2),
            100,
        );
        table.on_event(&second, &mut out);
        assert_eq!(table.take_mutes(), Mutes::default(), "decided once");

        table.on_event(
            &Event::Process(crate::event::ProcRecord {
                pid: 10,
                ts_ns: 3,
                op: crate::event::ProcOp::Exec,
            }),
            &mut out,
        );
        let third = on_conn_id(
            record(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 4),
            101,
        );
        table.on_event(&third, &mut out);
        assert_eq!(
            table.take_mutes().pids,
            vec![10],
            "decided again after exec"
        );
    }

    /// A process serves once it reads first on a connection (a client writes first), until
    /// it execs or exits; the flag travels with every message of its connections.
    #[test]
    fn a_process_serves_once_it_reads_first_on_a_connection() {
        let mut table = table_with(Rules::default());
        let call = |table: &mut ConnTable, at: u64| {
            let mut out = Vec::new();
            table.on_event(
                &on_conn_id(record(Direction::Egress, b"GET /c HTTP/1.1\r\n\r\n", at), 1),
                &mut out,
            );
            match out.as_slice() {
                [ConnOutput::Message { meta, .. }] => meta.process_serves,
                other => panic!("{other:?}"),
            }
        };
        assert!(!call(&mut table, 1), "pid 10 has only written first");
        let mut out = Vec::new();
        table.on_event(
            &on_conn_id(record(Direction::Ingress, b"GET /s HTTP/1.1\r\n", 2), 2),
            &mut out,
        );
        assert!(
            out.is_empty(),
            "the request's head is not whole yet: {out:?}"
        );
        assert!(call(&mut table, 3), "pid 10 read first on connection 2");
        table.on_event(
            &Event::Process(crate::event::ProcRecord {
                pid: 10,
                ts_ns: 4,
                op: crate::event::ProcOp::Exit,
            }),
            &mut out,
        );
        assert!(!call(&mut table, 5), "forgotten at exit");
    }

    /// A connection whose protocol is never recognised, or whose port the rules exclude, is
    /// muted on its own; its process is not.
    #[test]
    fn unknown_protocol_and_excluded_port_mute_the_connection() {
        let mut table = table_with(Rules::default());
        let mut out = Vec::new();
        for at in 0..u64::from(DETECT_TRIES) - 1 {
            table.on_event(
                &record(Direction::Ingress, b"\x13\x37 not a protocol", at),
                &mut out,
            );
        }
        assert_eq!(table.take_mutes(), Mutes::default(), "still detecting");
        table.on_event(
            &record(Direction::Ingress, b"\x13\x37 not a protocol", 9),
            &mut out,
        );
        assert_eq!(
            table.take_mutes(),
            Mutes {
                pids: vec![],
                conns: vec![99]
            }
        );

        let mut table = table_with(Rules {
            ports: [9090].into(),
            ..Rules::default()
        });
        table.on_event(
            &record(Direction::Ingress, b"GET / HTTP/1.1\r\n\r\n", 1),
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            table.take_mutes(),
            Mutes {
                pids: vec![],
                conns: vec![99]
            }
        );
    }
}
