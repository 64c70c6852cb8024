//! Connection table: the pipeline's per-connection state. Takes decoded events from the
//! reader, keeps one entry per connection (keyed by the kernel's connection id, so a reused fd
//! is a new connection), applies the user's filters, detects the protocol from the first bytes
//! and feeds each direction's chunks to that protocol's parser. Emits parsed messages (and
//! closes) for span assembly. Idle connections are evicted; the table is bounded.

use std::{
    collections::HashMap,
    sync::Arc,
};

use crate::{
    event::{ConnOp, ConnRecord, DataRecord, Endpoints, Event},
    metrics::{Metrics, add, inc},
    protocol::{self, Chunk, Direction, Message, ParseStats, ParserOptions, Protocol, StreamParser, Timing},
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
}

/// What the table hands to span assembly.
#[derive(Debug)]
pub enum ConnOutput {
    Message { meta: ConnMeta, direction: Direction, message: Message },
    /// The connection is gone (closed or evicted); `at_ns` is the kernel time of the close
    /// or the last activity.
    Closed { meta: ConnMeta, at_ns: u64 },
}

/// How many chunks may fail protocol detection before a connection is ignored (a connection
/// picked up mid-message needs a few).
const DETECT_TRIES: u8 = 8;

enum ParseState {
    Detecting { tries: u8 },
    Parsing { protocol: Protocol, parser: Box<dyn StreamParser>, reported: ParseStats },
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
    fn meta(&self, conn_id: u64) -> Option<ConnMeta> {
        match &self.state {
            ParseState::Parsing { protocol, .. } => Some(ConnMeta {
                conn_id,
                pid: self.pid,
                fd: self.fd,
                endpoints: self.endpoints,
                protocol: *protocol,
            }),
            _ => None,
        }
    }
}

pub struct ConnTable {
    conns: HashMap<u64, Connection>,
    filter: Filter,
    /// Process selection decisions per pid.
    name_allowed: HashMap<u32, bool>,
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
            conns: HashMap::new(),
            filter,
            name_allowed: HashMap::new(),
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
    pub fn on_event(&mut self, event: &Event, out: &mut Vec<ConnOutput>) {
        match event {
            Event::Data(rec) => self.on_data(rec, out),
            Event::Conn(rec) => self.on_conn(rec, out),
        }
    }

    fn allowed(&mut self, pid: u32, endpoints: &Endpoints) -> bool {
        let selection = &mut self.filter.selection;
        if !selection.ports_allowed(endpoints.local.port(), endpoints.remote.port()) {
            return false;
        }
        if !selection.has_process_rules() {
            return true;
        }
        if self.name_allowed.len() > 65536 {
            self.name_allowed.clear();
        }
        *self.name_allowed.entry(pid).or_insert_with(|| selection.process_allowed(pid))
    }

    fn on_data(&mut self, rec: &DataRecord, out: &mut Vec<ConnOutput>) {
        if !self.conns.contains_key(&rec.conn_id) {
            let Some(endpoints) = rec.endpoints else {
                inc(&self.metrics.events_malformed);
                return;
            };
            let state = if self.allowed(rec.pid, &endpoints) {
                ParseState::Detecting { tries: 0 }
            } else {
                inc(&self.metrics.events_filtered);
                ParseState::Ignored
            };
            if self.conns.len() >= self.max_connections {
                inc(&self.metrics.connections_dropped);
                return;
            }
            inc(&self.metrics.connections_opened);
            self.conns.insert(
                rec.conn_id,
                Connection { pid: rec.pid, fd: rec.fd, endpoints, state, last_seen_ns: rec.exit_ns },
            );
        }
        let Some(conn) = self.conns.get_mut(&rec.conn_id) else { return };
        conn.last_seen_ns = conn.last_seen_ns.max(rec.exit_ns);
        add(&self.metrics.bytes_uncaptured, rec.bytes.saturating_sub(rec.payload.len() as u64));

        if let ParseState::Detecting { tries } = &mut conn.state {
            if rec.payload.is_empty() {
                return;
            }
            match protocol::detect(&rec.payload) {
                Some(protocol) => {
                    conn.state = ParseState::Parsing {
                        protocol,
                        parser: protocol::parser_for(protocol, &self.options),
                        reported: ParseStats::default(),
                    };
                }
                None => {
                    *tries += 1;
                    if *tries >= DETECT_TRIES {
                        inc(&self.metrics.unknown_protocol);
                        conn.state = ParseState::Ignored;
                    }
                    return;
                }
            }
        }
        let ParseState::Parsing { protocol, parser, reported } = &mut conn.state else { return };
        let chunk = Chunk {
            data: &rec.payload,
            len: rec.bytes,
            timing: Timing { enter_ns: rec.enter_ns, exit_ns: rec.exit_ns, tid: rec.tid },
        };
        self.messages.clear();
        parser.feed(rec.direction, &chunk, &mut self.messages);
        count_stats(&self.metrics, *protocol, parser.stats(), reported, self.messages.len());
        let gave_up = parser.gave_up();
        let meta = ConnMeta {
            conn_id: rec.conn_id,
            pid: conn.pid,
            fd: conn.fd,
            endpoints: conn.endpoints,
            protocol: *protocol,
        };
        for message in self.messages.drain(..) {
            out.push(ConnOutput::Message { meta, direction: rec.direction, message });
        }
        if gave_up {
            conn.state = ParseState::Ignored;
            out.push(ConnOutput::Closed { meta, at_ns: rec.exit_ns });
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
        let Some(meta) = conn.meta(conn_id) else { return };
        if let ParseState::Parsing { parser, .. } = &mut conn.state {
            self.messages.clear();
            parser.finish(&mut self.messages);
            for message in self.messages.drain(..) {
                // Only responses end at a close (HTTP/1.x bodies without length); span
                // assembly pairs responses by key, so their direction does not matter.
                out.push(ConnOutput::Message { meta, direction: Direction::Ingress, message });
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

fn count_stats(metrics: &Metrics, protocol: Protocol, now: ParseStats, reported: &mut ParseStats, messages: usize) {
    let new_errors = now.errors.saturating_sub(reported.errors);
    *reported = now;
    let (msgs, errors) = match protocol {
        Protocol::Http1 => (&metrics.http_messages, &metrics.http_parse_errors),
        Protocol::Thrift => (&metrics.thrift_messages, &metrics.thrift_parse_errors),
    };
    add(msgs, messages as u64);
    add(errors, new_errors);
}

