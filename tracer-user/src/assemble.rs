//! Span assembly: pairs requests with responses per connection, decides each span's place in
//! a trace and releases finished spans once that place is settled.
//!
//! Upstream: `conntable` hands over parsed messages with their connection. Downstream: the
//! exporter gets [`SpanRecord`]s from [`Assembler::tick`].
//!
//! Parent decision, in order of trust (each recorded as `tracer.link.method`):
//! 1. `context`: trace context found in the request (headers, THeader).
//! 2. `same_host`: both ends of the connection are traced here; the SERVER span is the child of
//!    the CLIENT span with the same endpoints and the same place on the connection (request
//!    order for HTTP, sequence id for Thrift).
//! 3. `thread`: a CLIENT request written by a thread that is serving exactly one SERVER span
//!    is that span's child.
//! 4. inference (`assemble/inference.rs`) when the thread serves none or several: thread-pool
//!    claims, shared id tokens, a single candidate, and otherwise an assignment of the
//!    process's waiting calls after a settling window, by timing; a link below the
//!    confidence threshold becomes a root with a span link to the candidate.
//!
//! Timeline of the same-host case (either record may reach the agent first, because the
//! reader's `read` can return before the writer's `write` syscall exits):
//!
//! ```text
//! caller  |--write req--|                         |--read resp--|      CLIENT span
//! callee        |--read req--|...handler...|--write resp--|            SERVER span
//! ```
//! A SERVER span with no context waits for its CLIENT span until the event stream (the latest
//! kernel time seen) is a reorder grace past its start (`settle / 5`, at most 50 ms), or
//! `settle` has passed. A span leaves once its own and its ancestors' positions are decided
//! and the stream is that grace past its end (`settle` at the latest); a SERVER span's
//! timing skeleton stays as an inference candidate (until `settle` at the latest) while a
//! call of its process that started before its end waits to be placed; the identity of a
//! span that left stays in `exported` while a span not yet built names it.

use std::{collections::VecDeque, net::SocketAddr, sync::Arc};

use rustc_hash::FxHashMap;

use crate::{
    conntable::{ConnMeta, ConnOutput},
    context::TraceContext,
    metrics::{Metrics, inc},
    protocol::{Direction, Message, Protocol, Request, Response},
    span::{Attribute, ProcessResource, SpanKind, SpanLink, SpanRecord, SpanStatus},
};

/// Where span assembly gets a process's resource from.
pub trait ResourceSource {
    fn resource(&mut self, pid: u32) -> Arc<ProcessResource>;
}

#[derive(Clone, Copy, Debug)]
pub struct AssemblerConfig {
    /// How long a finished span is held before export, and how long a SERVER span without
    /// context waits for its same-host CLIENT span.
    pub settle_ns: u64,
    /// Requests without a response after this long are closed as errors.
    pub request_timeout_ns: u64,
    /// Spans held at most; beyond, new spans are dropped and counted.
    pub max_pending: usize,
    /// `CLOCK_REALTIME - CLOCK_MONOTONIC`, to turn kernel times into Unix times.
    pub realtime_offset_ns: i128,
    /// Inferred parents with a lower confidence are not used: the span stays a root with a
    /// span link to the candidate.
    pub link_threshold: f64,
}

/// (client endpoint, server endpoint) of a connection.
type Tuple = (SocketAddr, SocketAddr);

#[derive(Clone, Debug)]
enum Parent {
    Root,
    Remote(TraceContext),
    Local(u64),
}

struct PendingSpan {
    kind: SpanKind,
    span_id: [u8; 8],
    /// The trace id used if this span turns out to be a root.
    own_trace_id: [u8; 16],
    parent: Parent,
    /// The parent decision is final.
    decided: bool,
    link_method: &'static str,
    confidence: f64,
    /// Spans that might have been the parent, linked rather than guessed.
    link_candidates: Vec<u64>,
    name: compact_str::CompactString,
    attributes: Vec<Attribute>,
    start_ns: u64,
    /// The earliest the request can have begun: a CLIENT span's first write can end after
    /// the callee's read did (loopback delivers inside the write), so same-host matching
    /// orders the two ends by this bound, not by `start_ns`.
    not_before_ns: u64,
    end_ns: Option<u64>,
    status: SpanStatus,
    resource: Arc<ProcessResource>,
    pid: u32,
    tid: u32,
    tuple: Tuple,
    protocol: Protocol,
    key: u64,
    /// Id-like tokens of the request, for content-based parent inference.
    tokens: Vec<String>,
    /// What both ends of a connection see alike in the request (name and path), so that a
    /// request seen on one side only cannot shift the same-host pairing of the next ones.
    fingerprint: u64,
    /// Hash of `name`: the endpoint, for learned delays and calls per request.
    name_key: u64,
    /// SERVER: calls linked to it so far, per call name.
    calls: Vec<CallsOfName>,
    /// Deferred CLIENT: the requests of its process in progress when it started.
    candidates: Vec<u64>,
    /// Deferred CLIENT: its thread served no request when it was deferred (a pool worker,
    /// not an event loop or a thread per connection).
    from_worker: bool,
    /// SERVER with propagated context whose CLIENT end is also traced here: its times are
    /// clamped into that CLIENT span's (the kernel race described at `build`).
    clamp_to: Option<u64>,
    /// Its record has left (`build` took name, attributes and status); what stays is what
    /// inference still needs while a waiting call may count it (`settle` after its end at
    /// the latest).
    sent: bool,
    /// Spans not yet built that name it (as parent, span link or clamp bound): while any
    /// does, its identity must outlive it in `exported`. Nothing new can name a span once it
    /// has left `spans` (every placement looks candidates up there), so the identity of one
    /// no waiting span names is dropped with it.
    named_by: u32,
}

/// The calls of one name linked to a SERVER span.
struct CallsOfName {
    name_key: u64,
    count: u16,
    /// Latest end of those linked by exact methods (0: none yet), learned as a gap before the
    /// request's end once it ends.
    exact_end_ns: u64,
}

/// Identity of a span already exported, for children that finish after it.
#[derive(Clone, Copy)]
struct Exported {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    flags: u8,
    at_ns: u64,
    /// Kernel times of an exported CLIENT span, which its same-host SERVER child (often
    /// exported later: its last write can return after the client's read) is clamped to.
    client_times: Option<(u64, u64)>,
    /// Spans not yet built that name it; the entry goes when the last of them is built.
    named_by: u32,
}

pub struct Assembler {
    config: AssemblerConfig,
    metrics: Arc<Metrics>,
    /// Boxed: tens of thousands are pending at high rates, and a table of 400-byte slots
    /// would carry up to half of them empty.
    spans: FxHashMap<u64, Box<PendingSpan>>,
    next_handle: u64,
    /// Requests awaiting their response: conn id -> request key -> span.
    open: FxHashMap<u64, FxHashMap<u64, u64>>,
    /// SERVER spans in progress per thread (pid, tid). A list that empties stays until the
    /// next tick, so that a thread serving one request after another does not allocate a
    /// list per request: use [`serves`], not `contains_key`.
    serving: FxHashMap<(u32, u32), Vec<u64>>,
    /// SERVER spans in progress per process (emptied lists stay until the next tick too).
    serving_by_pid: FxHashMap<u32, Vec<u64>>,
    /// Worker thread -> the request it is handling (thread pools) and the confidence of the
    /// link that showed it, and the reverse.
    claims: FxHashMap<(u32, u32), (u64, f64)>,
    claimed: FxHashMap<u64, (u32, u32)>,
    /// CLIENT spans per process still waiting for a request in progress to be placed under.
    unplaced: FxHashMap<u32, Vec<u64>>,
    /// Waiting calls of event loops that have ended among several requests, with their end:
    /// looked at again once the event stream is the reorder grace past it
    /// ([`Self::refuse_if_hopeless`]). Bounded by `max_pending`.
    ended_waiting: VecDeque<(u64, u64)>,
    /// Same-host matching queues per connection tuple.
    unmatched_clients: FxHashMap<Tuple, VecDeque<u64>>,
    unmatched_servers: FxHashMap<Tuple, VecDeque<u64>>,
    exported: FxHashMap<u64, Exported>,
    /// Latest kernel time seen in a message: how far the event stream has got.
    watermark_ns: u64,
    /// How many of the requests each process served lately carried each token, (pid, token
    /// hash) -> decaying count, and how many it served: a token in a large share of them
    /// names none.
    recent_tokens: FxHashMap<(u32, u64), inference::Recent>,
    recent_requests: FxHashMap<u32, inference::Recent>,
    /// Learned delay from a request's start to each call it makes, per endpoint pair.
    delays: inference::DelayModel,
}

/// Longest parent chain followed (guards against cycles from wrong guesses).
const MAX_DEPTH: usize = 64;
/// SERVER spans in progress indexed per thread and per process at most (the oldest leave the
/// index, not assembly): requests whose responses were lost stay "in progress" until the
/// request timeout, and every call scans these lists.
const MAX_SERVING_INDEX: usize = 256;
/// Unmatched same-host spans kept per connection tuple at most: on one connection requests
/// pair in order, so an older one still unmatched lost its other side.
const MAX_UNMATCHED_PER_TUPLE: usize = 64;

/// Longest the two ends' records of one same-host request are taken to arrive apart.
const MAX_REORDER_GRACE_NS: u64 = 50_000_000;

/// How far behind the latest event a moment must be for its records to be in: the writer's
/// record of a same-host request can follow the reader's (the reader's `read` can return
/// before the writer's `write` exits; a writer preempted in between delays its record by a
/// time slice, milliseconds). A fifth of the settle time, at most 50 ms: every span stays at
/// least this long, so it sets how many are held at a given rate.
fn reorder_grace(settle_ns: u64) -> u64 {
    (settle_ns / 5).min(MAX_REORDER_GRACE_NS)
}

/// Appends `handle` to a bounded index list, dropping the oldest entry when full.
fn push_bounded(list: &mut Vec<u64>, handle: u64, max: usize) {
    if list.len() >= max {
        list.remove(0);
    }
    list.push(handle);
}

/// Appends `handle` to a same-host matching queue, dropping the oldest entry when full.
fn queue_bounded(queue: &mut VecDeque<u64>, handle: u64) {
    if queue.len() >= MAX_UNMATCHED_PER_TUPLE {
        queue.pop_front();
    }
    queue.push_back(handle);
}

impl Assembler {
    pub fn new(config: AssemblerConfig, metrics: Arc<Metrics>) -> Self {
        Self {
            config,
            metrics,
            spans: FxHashMap::default(),
            next_handle: 1,
            open: FxHashMap::default(),
            serving: FxHashMap::default(),
            serving_by_pid: FxHashMap::default(),
            claims: FxHashMap::default(),
            claimed: FxHashMap::default(),
            unplaced: FxHashMap::default(),
            ended_waiting: VecDeque::new(),
            unmatched_clients: FxHashMap::default(),
            unmatched_servers: FxHashMap::default(),
            exported: FxHashMap::default(),
            watermark_ns: 0,
            recent_tokens: FxHashMap::default(),
            recent_requests: FxHashMap::default(),
            delays: inference::DelayModel::default(),
        }
    }

    /// Spans held (pending export).
    pub fn pending(&self) -> usize {
        self.spans.len()
    }

    /// Takes one output of the connection table.
    pub fn on_output(&mut self, output: ConnOutput, resources: &mut dyn ResourceSource) {
        let seen = match &output {
            ConnOutput::Message {
                message: Message::Request(r),
                ..
            } => r.last.exit_ns,
            ConnOutput::Message {
                message: Message::Response(r),
                ..
            } => r.last.exit_ns,
            ConnOutput::Closed { at_ns, .. } => *at_ns,
        };
        self.watermark_ns = self.watermark_ns.max(seen);
        match output {
            ConnOutput::Message {
                meta,
                direction,
                message: Message::Request(req),
            } => self.on_request(&meta, direction, req, resources),
            ConnOutput::Message {
                meta,
                message: Message::Response(resp),
                ..
            } => self.on_response(&meta, resp),
            ConnOutput::Closed { meta, at_ns } => self.on_closed(&meta, at_ns),
        }
    }

    fn on_request(
        &mut self,
        meta: &ConnMeta,
        direction: Direction,
        req: Request,
        resources: &mut dyn ResourceSource,
    ) {
        if self.spans.len() >= self.config.max_pending {
            inc(&self.metrics.spans_dropped_pending);
            return;
        }
        let kind = match direction {
            Direction::Ingress => SpanKind::Server,
            Direction::Egress => SpanKind::Client,
        };
        let (local, remote) = (meta.endpoints.local, meta.endpoints.remote);
        let tuple = match kind {
            SpanKind::Client => (local, remote),
            SpanKind::Server => (remote, local),
        };
        // SERVER: from the end of the read that brought the first request bytes; CLIENT: from
        // the end of the write that sent them.
        let start_ns = req.first.exit_ns;
        let not_before_ns = match kind {
            SpanKind::Server => start_ns,
            SpanKind::Client => req.first.not_before_ns,
        };
        let print = fingerprint(&req.name, &req.attributes);
        let name_key = hash_of(&req.name);
        let path = match crate::span::find(&req.attributes, "url.path") {
            Some(crate::span::AttrValue::Str(p)) => Some(p.as_ref()),
            _ => None,
        };
        let mut tokens = inference::id_tokens(&req.name, path);
        if !req.id_hints.is_empty() {
            tokens.extend(req.id_hints);
            tokens.sort();
            tokens.dedup();
        }
        let mut attributes = req.attributes;
        add_network_attributes(&mut attributes, kind, local, remote);
        let handle = self.next_handle;
        self.next_handle += 1;
        let mut span = PendingSpan {
            kind,
            span_id: random_span_id(),
            own_trace_id: random_trace_id(),
            parent: Parent::Root,
            decided: true,
            link_method: "root",
            confidence: 1.0,
            link_candidates: Vec::new(),
            name: req.name,
            attributes,
            start_ns,
            not_before_ns,
            end_ns: None,
            status: SpanStatus::Unset,
            resource: resources.resource(meta.pid),
            pid: meta.pid,
            tid: req.first.tid,
            tuple,
            protocol: meta.protocol,
            key: req.key,
            tokens,
            fingerprint: print,
            name_key,
            calls: Vec::new(),
            candidates: Vec::new(),
            from_worker: false,
            clamp_to: None,
            sent: false,
            named_by: 0,
        };
        if !req.expects_response {
            span.end_ns = Some(req.last.exit_ns);
        }
        if let Some(ctx) = req.context {
            span.parent = Parent::Remote(ctx);
            span.link_method = "context";
        }
        inc(&self.metrics.spans_created);
        if kind == SpanKind::Server {
            self.note_tokens(meta.pid, start_ns, &span.tokens);
        }
        self.spans.insert(handle, Box::new(span));
        match kind {
            SpanKind::Server => self.place_server(handle),
            SpanKind::Client => self.place_client(handle, meta.process_serves),
        }
        if req.expects_response {
            let previous = self
                .open
                .entry(meta.conn_id)
                .or_default()
                .insert(req.key, handle);
            if let Some(stale) = previous {
                // The same key again before a response (a reused Thrift seqid): the older
                // request will never be answered.
                self.finish_unanswered(
                    stale,
                    start_ns,
                    "superseded by a request with the same key",
                );
            }
        }
    }

    /// Same-host link for a new SERVER span; otherwise it waits for its CLIENT span.
    fn place_server(&mut self, handle: u64) {
        let Some(span) = self.spans.get(&handle) else {
            return;
        };
        let (tuple, key, protocol, pid, tid, has_context, start, print) = (
            span.tuple,
            span.key,
            span.protocol,
            span.pid,
            span.tid,
            matches!(span.parent, Parent::Remote(_)),
            span.start_ns,
            span.fingerprint,
        );
        push_bounded(
            self.serving.entry((pid, tid)).or_default(),
            handle,
            MAX_SERVING_INDEX,
        );
        push_bounded(
            self.serving_by_pid.entry(pid).or_default(),
            handle,
            MAX_SERVING_INDEX,
        );
        self.retry_unplaced(pid, start, handle);
        let matched = take_match(
            &mut self.unmatched_clients,
            &self.spans,
            tuple,
            (key, print),
            protocol,
            |client| client.not_before_ns <= start,
        );
        if has_context {
            // Context decides the parent; the same-host CLIENT span still bounds the times.
            match matched {
                Some(client) => {
                    if let Some(span) = self.spans.get_mut(&handle) {
                        span.clamp_to = Some(client);
                    }
                    self.mark_referenced(client);
                }
                None => queue_bounded(self.unmatched_servers.entry(tuple).or_default(), handle),
            }
            return;
        }
        match matched {
            Some(client) => self.link(handle, client, "same_host", 1.0),
            None => {
                if let Some(span) = self.spans.get_mut(&handle) {
                    span.decided = false;
                }
                queue_bounded(self.unmatched_servers.entry(tuple).or_default(), handle);
            }
        }
    }

    /// Thread causality for a new CLIENT span, then same-host matching of a waiting SERVER span.
    fn place_client(&mut self, handle: u64, process_serves: bool) {
        let Some(span) = self.spans.get(&handle) else {
            return;
        };
        let (tuple, key, protocol, pid, tid, has_context, start, not_before, print) = (
            span.tuple,
            span.key,
            span.protocol,
            span.pid,
            span.tid,
            matches!(span.parent, Parent::Remote(_)),
            span.start_ns,
            span.not_before_ns,
            span.fingerprint,
        );
        if !has_context {
            let candidates: Vec<u64> = self
                .serving
                .get(&(pid, tid))
                .map(|list| {
                    list.iter()
                        .copied()
                        .filter(|h| {
                            self.spans
                                .get(h)
                                .is_some_and(|s| s.end_ns.is_none() && s.start_ns <= start)
                        })
                        .collect()
                })
                .unwrap_or_default();
            match candidates.as_slice() {
                [only] => self.link(handle, *only, "thread", 1.0),
                _ => self.infer_or_defer(handle, pid, process_serves),
            }
        }
        let waiting = take_match(
            &mut self.unmatched_servers,
            &self.spans,
            tuple,
            (key, print),
            protocol,
            // A SERVER span that left as a root keeps that place.
            |server| server.start_ns >= not_before && !server.sent,
        );
        if let Some(server) = waiting {
            match self.spans.get_mut(&server) {
                Some(s) if matches!(s.parent, Parent::Remote(_)) => {
                    s.clamp_to = Some(handle);
                    self.mark_referenced(handle);
                }
                _ => self.link(server, handle, "same_host", 1.0),
            }
        } else {
            queue_bounded(self.unmatched_clients.entry(tuple).or_default(), handle);
        }
    }

    /// Links by inference when one candidate stands out; otherwise the span waits for the
    /// settling window, where the calls of the process are assigned together.
    fn infer_or_defer(&mut self, handle: u64, pid: u32, process_serves: bool) {
        match self.infer_parent(handle) {
            Some(guess) if guess.at_once => self.commit_guess(handle, guess),
            // A process that has never served (a load generator, a batch job) makes its
            // calls as roots: they are decided at once, not held a settling window for a
            // request that is not coming. (A server's call can be seen before the request
            // that caused it completes: a worker calls on the request's head.)
            None if !process_serves => {}
            _ => self.defer_placement(handle, pid),
        }
    }

    /// Links when confident enough; otherwise keeps the span a root with a span link to the
    /// candidate (never a wrong child with a confident face).
    fn commit_guess(&mut self, handle: u64, guess: inference::Guess) {
        if guess.confidence >= self.config.link_threshold {
            self.link(handle, guess.parent, guess.method, guess.confidence);
        } else if let Some(span) = self.spans.get_mut(&handle) {
            span.decided = true;
            span.link_method = guess.method;
            span.confidence = guess.confidence;
            span.link_candidates.push(guess.parent);
            self.mark_referenced(guess.parent);
        }
    }

    fn mark_referenced(&mut self, handle: u64) {
        if let Some(span) = self.spans.get_mut(&handle) {
            span.named_by += 1;
        }
    }

    /// A span that named `handle` is built (or names another now): one fewer that needs its
    /// identity. An exported identity no span needs any more goes.
    fn release_reference(&mut self, handle: u64) {
        if let Some(span) = self.spans.get_mut(&handle) {
            span.named_by = span.named_by.saturating_sub(1);
        } else if let Some(e) = self.exported.get_mut(&handle) {
            e.named_by = e.named_by.saturating_sub(1);
            if e.named_by == 0 {
                self.exported.remove(&handle);
            }
        }
    }

    /// A CLIENT span of `pid` whose parent is not clear waits (undecided, at most a settling
    /// window): the request that caused it may still be arriving — a server dispatches a
    /// request to a worker on its head, while the request message completes with its body —
    /// or several requests are candidates, which [`Self::solve_deferred`] assigns together.
    fn defer_placement(&mut self, handle: u64, pid: u32) {
        let candidates = self.candidates_at(handle);
        let serving = &self.serving;
        if let Some(span) = self.spans.get_mut(&handle) {
            span.decided = false;
            span.candidates = candidates;
            span.from_worker = !serves(serving, (span.pid, span.tid));
        }
        self.unplaced.entry(pid).or_default().push(handle);
    }

    /// A new SERVER span `server` of `pid` that started at `start`: a candidate for the
    /// CLIENT spans of that process that started after it and are still waiting; those that
    /// now have a clear parent are placed.
    ///
    /// The waiting list is in arrival order, which follows the calls' start times up to how
    /// long a syscall takes; it is walked from the newest back to the first call that
    /// started well before the request (a busy event loop has thousands waiting, nearly all
    /// older than the request that just arrived). Decided calls are dropped at the next tick.
    fn retry_unplaced(&mut self, pid: u32, start: u64, server: u64) {
        /// How far a waiting list may be out of start order.
        const DISORDER_NS: u64 = 10_000_000;
        let Some(waiting) = self.unplaced.remove(&pid) else {
            return;
        };
        for &client in waiting.iter().rev() {
            let Some(span) = self.spans.get_mut(&client) else {
                continue;
            };
            if span.start_ns.saturating_add(DISORDER_NS) < start {
                break;
            }
            if span.decided || span.start_ns < start {
                continue;
            }
            span.candidates.push(server);
            match self.infer_parent(client) {
                Some(guess) if guess.at_once => self.commit_guess(client, guess),
                _ => {}
            }
        }
        self.unplaced.insert(pid, waiting);
    }

    fn link(&mut self, child: u64, parent: u64, method: &'static str, confidence: f64) {
        let Some(span) = self.spans.get_mut(&child) else {
            return;
        };
        let previous = std::mem::replace(&mut span.parent, Parent::Local(parent));
        // A span already built released what it named, and its record cannot change.
        let counts = !span.sent;
        span.decided = true;
        span.link_method = method;
        span.confidence = confidence;
        if span.kind == SpanKind::Client {
            let (start, end, name_key) = (span.start_ns, span.end_ns, span.name_key);
            self.count_call(parent, start, end, name_key, method);
        }
        if counts {
            self.mark_referenced(parent);
            if let Parent::Local(previous) = previous {
                self.release_reference(previous);
            }
        }
    }

    fn on_response(&mut self, meta: &ConnMeta, resp: Response) {
        let Some(handle) = self
            .open
            .get_mut(&meta.conn_id)
            .and_then(|m| m.remove(&resp.key))
        else {
            inc(&self.metrics.spans_unpaired);
            return;
        };
        let Some(span) = self.spans.get_mut(&handle) else {
            return;
        };
        let end = resp.last.exit_ns.max(span.start_ns);
        span.end_ns = Some(end);
        if let Some(code) = resp.http_status {
            span.attributes
                .push(Attribute::int("http.response.status_code", i64::from(code)));
        }
        span.attributes.extend(resp.attributes);
        span.status = status_of(span.kind, resp.http_status, resp.error);
        let key = (span.pid, span.tid);
        match (span.kind, &span.parent) {
            (SpanKind::Server, _) => {
                for calls in span.calls.iter().filter(|c| c.exact_end_ns > 0) {
                    let gap = end.saturating_sub(calls.exact_end_ns) as f64;
                    self.delays.learn_end((span.name_key, calls.name_key), gap);
                }
            }
            (SpanKind::Client, Parent::Local(parent))
                if span.decided && inference::teaches(span.link_method) =>
            {
                let (parent, name_key) = (*parent, span.name_key);
                self.note_call_end(parent, name_key, end);
            }
            (SpanKind::Client, _) if inference::refusable_at_end(span) => {
                if self.ended_waiting.len() >= self.config.max_pending {
                    self.ended_waiting.pop_front();
                }
                self.ended_waiting.push_back((end, handle));
            }
            _ => {}
        }
        self.stop_serving(key, handle);
    }

    fn stop_serving(&mut self, key: (u32, u32), handle: u64) {
        self.forget_server(key.0, handle);
        if let Some(list) = self.serving.get_mut(&key) {
            list.retain(|h| *h != handle);
        }
    }

    fn on_closed(&mut self, meta: &ConnMeta, at_ns: u64) {
        let Some(open) = self.open.remove(&meta.conn_id) else {
            return;
        };
        for (_, handle) in open {
            self.finish_unanswered(handle, at_ns, "connection closed before the response");
        }
    }

    fn finish_unanswered(&mut self, handle: u64, at_ns: u64, why: &str) {
        inc(&self.metrics.spans_unpaired);
        let Some(span) = self.spans.get_mut(&handle) else {
            return;
        };
        if span.end_ns.is_none() {
            span.end_ns = Some(at_ns.max(span.start_ns));
            span.status = SpanStatus::Error(Some(why.to_string()));
        }
        let key = (span.pid, span.tid);
        self.stop_serving(key, handle);
    }

    /// Settles decisions that timed out and returns the spans ready for export
    /// (`now_ns` on the kernel's monotonic clock).
    pub fn tick(&mut self, now_ns: u64) -> Vec<SpanRecord> {
        let settle = self.config.settle_ns;
        let grace = reorder_grace(settle);
        let seen = self.watermark_ns.min(now_ns);
        while let Some(&(end, handle)) = self.ended_waiting.front() {
            if seen.saturating_sub(end) < grace {
                break;
            }
            self.ended_waiting.pop_front();
            self.refuse_if_hopeless(handle);
        }
        self.solve_deferred(now_ns);
        // One pass over the table (it holds every span of the last `settle`, tens of
        // thousands at high rates, and is visited every tick): decisions that timed out,
        // requests that never got an answer, and the spans that may leave now.
        //
        // SERVER spans that waited long enough for a same-host CLIENT span become roots: once
        // the events `grace` past their start are in (the caller's write precedes them), or
        // `settle` after their start at the latest.
        //
        // A span leaves once its place is decided (its own and its ancestors'), it has ended
        // `grace` before the latest event seen and a same-host CLIENT span it is clamped into
        // has ended; at the latest `settle` after its end. What inference and its children
        // still need of it stays until then.
        let may_leave = |s: &PendingSpan| -> Option<(bool, bool)> {
            let end = s.end_ns?;
            let settled = now_ns.saturating_sub(end) >= settle;
            // (A span sent already is kept as an inference candidate; it may go now too.)
            let early_ok = s.decided && seen.saturating_sub(end) >= grace;
            (settled || early_ok).then_some((settled, s.sent))
        };
        let timeout = self.config.request_timeout_ns;
        let mut stale = Vec::new();
        // (handle, settled, sent already)
        let mut ready: Vec<(u64, bool, bool)> = Vec::new();
        for (&handle, span) in self.spans.iter_mut() {
            if !span.decided
                && (now_ns.saturating_sub(span.start_ns) > settle
                    || (span.kind == SpanKind::Server
                        && seen.saturating_sub(span.start_ns) > grace))
            {
                span.decided = true;
            }
            if span.end_ns.is_none() && now_ns.saturating_sub(span.start_ns) > timeout {
                stale.push(handle);
            } else if let Some((settled, sent)) = may_leave(span) {
                ready.push((handle, settled, sent));
            }
        }
        let spans = &self.spans;
        let keep = |h: &u64| {
            spans
                .get(h)
                .is_some_and(|s| !s.decided || now_ns.saturating_sub(s.start_ns) <= settle)
        };
        self.unmatched_servers.retain(|_, q| {
            q.retain(&keep);
            !q.is_empty()
        });
        self.unmatched_clients.retain(|_, q| {
            q.retain(|h| {
                spans
                    .get(h)
                    .is_some_and(|s| now_ns.saturating_sub(s.start_ns) <= settle)
            });
            !q.is_empty()
        });
        // Per process, the earliest start of a call still waiting to be placed: only a
        // request in progress then can be among its candidates.
        let spans = &self.spans;
        let mut oldest_waiting: FxHashMap<u32, u64> = FxHashMap::default();
        self.unplaced.retain(|&pid, list| {
            let mut oldest = u64::MAX;
            list.retain(|h| {
                spans.get(h).is_some_and(|s| {
                    if !s.decided {
                        oldest = oldest.min(s.start_ns);
                    }
                    !s.decided
                })
            });
            if !list.is_empty() {
                oldest_waiting.insert(pid, oldest);
            }
            !list.is_empty()
        });
        // Requests that never got an answer end now (and may leave at once if settle is 0).
        for handle in stale {
            for requests in self.open.values_mut() {
                requests.retain(|_, h| *h != handle);
            }
            self.finish_unanswered(handle, now_ns, "no response before the request timeout");
            if let Some((settled, sent)) = self.spans.get(&handle).and_then(|s| may_leave(s)) {
                ready.push((handle, settled, sent));
            }
        }
        self.open.retain(|_, m| !m.is_empty());
        self.serving.retain(|_, list| !list.is_empty());
        self.serving_by_pid.retain(|_, list| !list.is_empty());
        // A span sent already passed these when it was built (decisions and ends are final);
        // kept as a candidate, it is back here every tick until it goes.
        ready.retain(|&(h, settled, sent)| {
            sent || (self.ancestors_decided(h) && (settled || self.clamp_parent_ended(h)))
        });
        let mut out = Vec::with_capacity(ready.len());
        for (handle, settled, _) in ready {
            // A CLIENT span is no inference candidate: once out, only its identity (in
            // `exported`) is needed. A SERVER span stays a candidate (until `settle` at the
            // latest) while a call of its process that started before its end waits to be
            // placed: every call it could have caused has been seen (the stream is past its
            // end), and a call that started after its end never counts it.
            let leaves = {
                let candidate = |s: &PendingSpan| {
                    s.kind == SpanKind::Server
                        && oldest_waiting
                            .get(&s.pid)
                            .is_some_and(|&oldest| s.end_ns.is_none_or(|end| oldest <= end))
                };
                settled || self.spans.get(&handle).is_some_and(|s| !candidate(s))
            };
            // Children exported later find its identity in `exported`: needed while it stays
            // (it can still be named) or while a span not yet built names it.
            let keep_identity = !leaves || self.spans.get(&handle).is_some_and(|s| s.named_by > 0);
            if let Some(record) = self.build(handle, now_ns, keep_identity) {
                out.push(record);
            }
            if leaves {
                // The identity goes with it unless a span not yet built names it.
                match self.spans.remove(&handle).map(|s| s.named_by) {
                    Some(0) => {
                        self.exported.remove(&handle);
                    }
                    Some(named_by) => {
                        if let Some(e) = self.exported.get_mut(&handle) {
                            e.named_by = named_by;
                        }
                    }
                    None => {}
                }
            }
        }
        // Identities leave with their last naming span's record; this bounds what a span that
        // is never built (or renamed) leaves behind. Children start before their parent ends
        // (a same-host SERVER span ends at most a little after its CLIENT span) and are
        // decided within `settle` of their start: two settle times suffice.
        self.exported.retain(|_, e| {
            now_ns.saturating_sub(e.at_ns) <= settle.saturating_mul(2).max(1_000_000_000)
        });
        // After ten settle times a count has decayed below 1/20000 of itself.
        let forgotten = settle.saturating_mul(10);
        self.recent_tokens
            .retain(|_, seen| now_ns.saturating_sub(seen.at_ns) <= forgotten);
        self.recent_requests
            .retain(|_, seen| now_ns.saturating_sub(seen.at_ns) <= forgotten);
        out
    }

    /// Releases every span now, deciding what is undecided (agent shutdown).
    pub fn flush(&mut self, now_ns: u64) -> Vec<SpanRecord> {
        for span in self.spans.values_mut() {
            span.decided = true;
            if span.end_ns.is_none() {
                span.end_ns = Some(now_ns.max(span.start_ns));
                span.status = SpanStatus::Error(Some("agent stopped before the response".into()));
            }
        }
        self.open.clear();
        self.serving.clear();
        self.serving_by_pid.clear();
        self.claims.clear();
        self.claimed.clear();
        self.unplaced.clear();
        let far_future = now_ns
            .saturating_add(self.config.settle_ns)
            .saturating_add(1);
        let mut out = Vec::new();
        // Parents before children is not required; a few rounds release every chain.
        for _ in 0..MAX_DEPTH {
            let batch = self.tick(far_future);
            if batch.is_empty() {
                break;
            }
            out.extend(batch);
        }
        out
    }

    fn ancestors_decided(&self, handle: u64) -> bool {
        let mut current = handle;
        for _ in 0..MAX_DEPTH {
            let Some(span) = self.spans.get(&current) else {
                return true;
            };
            if !span.decided {
                return false;
            }
            match span.parent {
                Parent::Local(parent) => current = parent,
                _ => return true,
            }
        }
        true
    }

    /// Trace id, parent span id and flags of a span, following local parents.
    fn identity(&self, handle: u64) -> ([u8; 16], Option<[u8; 8]>, u8, Option<String>) {
        let Some(span) = self.spans.get(&handle) else {
            return (random_trace_id(), None, 1, None);
        };
        match &span.parent {
            Parent::Root => (span.own_trace_id, None, 1, None),
            Parent::Remote(ctx) => (
                ctx.trace_id,
                Some(ctx.span_id),
                ctx.flags,
                Some(ctx.tracestate.clone().unwrap_or_default()),
            ),
            Parent::Local(parent) => {
                let (trace, flags, state) = self.trace_of(*parent, 0);
                let parent_span = self
                    .spans
                    .get(parent)
                    .map(|p| p.span_id)
                    .or_else(|| self.exported.get(parent).map(|e| e.span_id));
                match parent_span {
                    Some(id) => (trace, Some(id), flags, state),
                    None => (span.own_trace_id, None, 1, None),
                }
            }
        }
    }

    fn trace_of(&self, handle: u64, depth: usize) -> ([u8; 16], u8, Option<String>) {
        if let Some(e) = self.exported.get(&handle) {
            return (e.trace_id, e.flags, None);
        }
        let Some(span) = self.spans.get(&handle) else {
            return (random_trace_id(), 1, None);
        };
        match &span.parent {
            Parent::Local(parent) if depth < MAX_DEPTH => self.trace_of(*parent, depth + 1),
            Parent::Remote(ctx) => (
                ctx.trace_id,
                ctx.flags,
                Some(ctx.tracestate.clone().unwrap_or_default()),
            ),
            _ => (span.own_trace_id, 1, None),
        }
    }

    /// The CLIENT span a same-host SERVER span's times are clamped into has ended (or there
    /// is none, or it has left already).
    fn clamp_parent_ended(&self, handle: u64) -> bool {
        match self.clamp_bound(handle).and_then(|p| self.spans.get(&p)) {
            Some(parent) => parent.kind != SpanKind::Client || parent.end_ns.is_some(),
            None => true,
        }
    }

    /// The span whose times bound a same-host SERVER span's: its CLIENT end.
    fn clamp_bound(&self, handle: u64) -> Option<u64> {
        self.spans
            .get(&handle)
            .and_then(|s| match (&s.parent, s.clamp_to) {
                (_, Some(client)) => Some(client),
                (Parent::Local(p), None) if s.link_method == "same_host" => Some(*p),
                _ => None,
            })
    }

    /// Makes the span's record, once (`None` when it was sent already): takes its name,
    /// attributes and status and marks it `sent`; with `keep_identity` its identity goes to
    /// `exported` for children that finish later.
    fn build(&mut self, handle: u64, now_ns: u64, keep_identity: bool) -> Option<SpanRecord> {
        if self.spans.get(&handle)?.sent {
            return None;
        }
        let (trace_id, parent_span_id, flags, tracestate) = self.identity(handle);
        // Clamp into a same-host CLIENT parent: loopback delivers inside the sender's write,
        // so the reader's first read can end before that write does, and its last write
        // after the parent's read ended; the true times are within the parent's span.
        let bound = self.clamp_bound(handle);
        let parent_times = match bound {
            Some(p) => match self.spans.get(&p) {
                Some(parent) => {
                    (parent.kind == SpanKind::Client).then_some((parent.start_ns, parent.end_ns))
                }
                None => self
                    .exported
                    .get(&p)
                    .and_then(|e| e.client_times)
                    .map(|(s, e)| (s, Some(e))),
            },
            None => None,
        };
        let links: Vec<SpanLink> = {
            let span = self.spans.get(&handle)?;
            span.link_candidates
                .iter()
                .filter_map(|c| {
                    let span_id = self
                        .spans
                        .get(c)
                        .map(|s| s.span_id)
                        .or_else(|| self.exported.get(c).map(|e| e.span_id))?;
                    let (trace, _, _) = self.trace_of(*c, 0);
                    Some(SpanLink {
                        trace_id: trace,
                        span_id,
                        attributes: vec![
                            Attribute::fixed("tracer.link.method", span.link_method),
                            Attribute::double("tracer.link.confidence", span.confidence),
                        ],
                    })
                })
                .collect()
        };
        let span = self.spans.get_mut(&handle)?;
        let mut start = span.start_ns;
        let mut end = span.end_ns?;
        span.sent = true;
        if let Some((parent_start, parent_end)) = parent_times {
            start = start.max(parent_start);
            if let Some(parent_end) = parent_end {
                end = end.min(parent_end);
            }
            end = end.max(start);
        }
        let mut attributes = std::mem::take(&mut span.attributes);
        if span.link_method != "root" || !span.link_candidates.is_empty() {
            attributes.push(Attribute::fixed("tracer.link.method", span.link_method));
            attributes.push(Attribute::double("tracer.link.confidence", span.confidence));
        }
        let record = SpanRecord {
            trace_id,
            span_id: span.span_id,
            parent_span_id,
            tracestate,
            flags,
            name: std::mem::take(&mut span.name),
            kind: span.kind,
            start_unix_ns: to_unix(start, self.config.realtime_offset_ns),
            end_unix_ns: to_unix(end, self.config.realtime_offset_ns),
            attributes,
            status: std::mem::take(&mut span.status),
            links,
            resource: span.resource.clone(),
        };
        if keep_identity {
            self.exported.insert(
                handle,
                Exported {
                    trace_id,
                    span_id: span.span_id,
                    flags,
                    at_ns: now_ns,
                    client_times: (span.kind == SpanKind::Client).then_some((start, end)),
                    named_by: span.named_by,
                },
            );
        }
        // What it named needs its identity one span less.
        let parent = match span.parent {
            Parent::Local(parent) => Some(parent),
            _ => None,
        };
        let clamp = span.clamp_to;
        let candidates = std::mem::take(&mut span.link_candidates);
        for named in parent.into_iter().chain(clamp).chain(candidates) {
            self.release_reference(named);
        }
        Some(record)
    }
}

/// Takes the span in `queues[tuple]` that pairs with (`key`, `fingerprint`): the same request
/// (name and path) always, and for Thrift the same sequence id; the oldest such one (requests
/// on a connection are ordered).
/// The thread serves a request now (see `Assembler::serving`).
fn serves(serving: &FxHashMap<(u32, u32), Vec<u64>>, thread: (u32, u32)) -> bool {
    serving.get(&thread).is_some_and(|list| !list.is_empty())
}

fn take_match(
    queues: &mut FxHashMap<Tuple, VecDeque<u64>>,
    spans: &FxHashMap<u64, Box<PendingSpan>>,
    tuple: Tuple,
    (key, print): (u64, u64),
    protocol: Protocol,
    acceptable: impl Fn(&PendingSpan) -> bool,
) -> Option<u64> {
    let queue = queues.get_mut(&tuple)?;
    let position = queue.iter().position(|h| {
        spans.get(h).is_some_and(|s| {
            s.protocol == protocol
                && s.fingerprint == print
                && (protocol != Protocol::Thrift || s.key == key)
                && acceptable(s)
        })
    })?;
    let handle = queue.remove(position);
    if queue.is_empty() {
        queues.remove(&tuple);
    }
    handle
}

fn hash_of(name: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<rustc_hash::FxHasher>::default().hash_one(name)
}

fn fingerprint(name: &str, attributes: &[Attribute]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut hasher);
    if let Some(crate::span::AttrValue::Str(path)) = crate::span::find(attributes, "url.path") {
        path.hash(&mut hasher);
    }
    hasher.finish()
}

fn status_of(kind: SpanKind, http_status: Option<u16>, error: Option<String>) -> SpanStatus {
    if let Some(error) = error {
        return SpanStatus::Error(Some(error));
    }
    match (kind, http_status) {
        (SpanKind::Server, Some(code)) if code >= 500 => SpanStatus::Error(None),
        (SpanKind::Client, Some(code)) if code >= 400 => SpanStatus::Error(None),
        _ => SpanStatus::Unset,
    }
}

fn add_network_attributes(
    attributes: &mut Vec<Attribute>,
    kind: SpanKind,
    local: SocketAddr,
    remote: SocketAddr,
) {
    let has = |attributes: &[Attribute], key: &str| attributes.iter().any(|a| a.key == key);
    // The parsers left room for these, the response's attributes and the link's.
    attributes.reserve(crate::protocol::ASSEMBLY_ATTRIBUTES);
    attributes.push(Attribute::fixed("network.transport", "tcp"));
    attributes.push(Attribute::fixed(
        "network.type",
        if remote.is_ipv4() { "ipv4" } else { "ipv6" },
    ));
    attributes.push(Attribute::ip("network.peer.address", remote.ip()));
    attributes.push(Attribute::int(
        "network.peer.port",
        i64::from(remote.port()),
    ));
    match kind {
        SpanKind::Server => {
            attributes.push(Attribute::ip("client.address", remote.ip()));
            attributes.push(Attribute::int("client.port", i64::from(remote.port())));
            if !has(attributes, "server.address") {
                attributes.push(Attribute::ip("server.address", local.ip()));
            }
            if !has(attributes, "server.port") {
                attributes.push(Attribute::int("server.port", i64::from(local.port())));
            }
        }
        SpanKind::Client => {
            if !has(attributes, "server.address") {
                attributes.push(Attribute::ip("server.address", remote.ip()));
            }
            if !has(attributes, "server.port") {
                attributes.push(Attribute::int("server.port", i64::from(remote.port())));
            }
        }
    }
}

fn to_unix(mono_ns: u64, offset: i128) -> u64 {
    (mono_ns as i128 + offset).clamp(0, u64::MAX as i128) as u64
}

fn random_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

fn random_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

mod inference;
#[cfg(test)]
mod tests;
