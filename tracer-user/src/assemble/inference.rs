//! Parent inference for a CLIENT span when neither propagated context nor its own thread
//! says which request caused it: thread pools (the request is read by one thread and
//! handled by a worker) and event loops (one thread serves many requests at once).
//!
//! Candidates are the SERVER spans of the same process in progress when the CLIENT request
//! starts. In order:
//! 1. `content` (0.95): the outbound request's distinctive id-like tokens (something with a
//!    digit: ids copied from the inbound path or body into the outbound one's path, body or
//!    Thrift arguments) point to exactly one candidate. A token is distinctive unless it is in
//!    more than a tenth of the process's recent requests (decaying counts over the settle
//!    time: a constant body field, an API version). When several candidates hold it (a value
//!    drawn from a small range repeats), those that already made every call of this name
//!    their kind makes are left out; if more than one remains, the settling window below
//!    assigns the call among them only.
//! 2. `thread_pool` (0.9, or less when the link that made the claim was less sure): this
//!    worker thread already made a call for a request that is still in progress and, when an
//!    unclaimed request could have made the call, has not made all the calls of this name
//!    its kind makes: a pool worker handles one request at a time. (Content goes first, and
//!    the call count check second: a worker can pick up its next request before another
//!    thread has written the previous response.)
//! 3. `process` (0.8): exactly one request is in progress in the process.
//! 4. `thread_pool` (0.7): exactly one candidate is not yet claimed by another worker thread.
//! 5. otherwise `ambiguous`: the oldest unclaimed candidate with confidence 0.8/n (n >= 2).
//!
//! A worker thread's `content` link, and a call the settling window assigns to it, claim the
//! request for that thread; threads that serve requests themselves (event loops) never
//! claim. The caller turns a guess below the confidence threshold into a root with a span
//! link to the candidate.
//!
//! Steps 3 to 5 are not decided greedily: the CLIENT span
//! waits a settling window (a fifth of the settle time) and then every waiting call of the
//! process is assigned at once ([`Assembler::solve_deferred`], method `timing`), as a maximum-
//! likelihood matching of calls to the requests in progress when each call started:
//! - a call must end before its request ends (timing containment);
//! - a request takes as many calls of one endpoint as requests of its kind were seen to make
//!   (learned; one until learned), minus those already linked to it — except the only
//!   request in progress in the process, which takes every call (`process`);
//! - the delay from the request's start to the call's start is scored against a per-endpoint-
//!   pair distribution learned online from links made by exact methods (`thread`, `content`,
//!   `process`, `thread_pool`), as TraceWeaver does; until enough are learned, a mild
//!   preference for first-come-first-served order;
//! - for a pool worker's call (its thread served no request) whose request has ended, the gap
//!   from the call's end to the request's end is scored the same way, when requests of that
//!   kind make one such call: a worker hands its request back when its call returns and the
//!   response follows, in the order the workers finish, while the delays after the starts
//!   stretch by queueing (an event loop ends a request whenever it gets to it: not scored);
//! - a pool worker's call cannot belong to a request another worker has claimed.
//!
//! The confidence of an assigned call is the likelihood share of its request among its
//! feasible candidates (0.95 x share when learned; 0.8 / candidates when not), so that
//! indistinguishable candidates stay below the threshold and give roots with span links. A
//! learned share is further divided by one plus the number of requests that started before
//! the chosen one and are left still owed such a call: the delays were learned where nothing
//! queued (mostly `process` links, one request at a time), and under first-come-first-served
//! service each older request waiting for its call is at least as likely a parent. The
//! share itself is taken with every learned spread widened by the solve's dispersion (per
//! measure, the root mean square of the standard scores of its learned links, at least 1), so
//! that delays stretched by queueing make concurrent requests harder to tell apart, as they
//! are. A call with one feasible request gets 0.8 (`process` when it was the only one in
//! progress), or 0.9 (`content`) when tokens narrowed several candidates down to it.
//!
//! The solver takes at most `SOLVE_BUDGET` calls of a process per tick (in assignments of
//! `MAX_SOLVE`); due calls beyond it are decided alone: linked when one request in progress
//! could contain them, otherwise roots with a span link (an event-loop proxy without ids at
//! tens of thousands of calls a second gets nothing from an assignment it cannot afford).
//!
//! An event loop's call without an id is refused before its window ends when its own end
//! settles that no assignment could state enough for it ([`Assembler::refuse_if_hopeless`]).
//!
//! Only `content` and an existing claim decide at once: a single candidate (3) or a single
//! unclaimed one (4) also waits for the window, since the request that caused the call may be
//! registered after it (its record can reach the agent later).

use pathfinding::{kuhn_munkres::kuhn_munkres, matrix::Matrix};
use rustc_hash::FxHashMap;

use super::{Assembler, CallsOfName, PendingSpan, SpanKind, serves};

/// Delays learned before they are trusted.
const MIN_LEARNED: u32 = 10;
/// Endpoint pairs remembered at most (the table is cleared when full).
const MAX_PAIRS: usize = 4096;
/// Calls assigned in one solve at most.
const MAX_SOLVE: usize = 64;
/// Calls the solver assigns per process and tick at most. Due calls beyond it are decided
/// one by one by containment alone (an event-loop proxy at tens of thousands of calls a
/// second would otherwise queue without end, holding memory and falling further behind).
const SOLVE_BUDGET: usize = 4 * MAX_SOLVE;

/// Online statistics per (request name, call name).
#[derive(Default)]
pub(super) struct DelayModel {
    /// Delay from the request's start to the call's start.
    pairs: FxHashMap<(u64, u64), DelayStats>,
    /// Gap from the call's end to the request's end.
    ends: FxHashMap<(u64, u64), DelayStats>,
}

#[derive(Default, Clone, Copy)]
struct DelayStats {
    n: u32,
    mean: f64,
    m2: f64,
    /// Most calls of this name seen linked to one request of this name.
    max_calls: u16,
}

impl DelayStats {
    /// Welford's online mean and variance.
    fn add(&mut self, value: f64) {
        self.n = self.n.saturating_add(1);
        let d = value - self.mean;
        self.mean += d / f64::from(self.n);
        self.m2 += d * (value - self.mean);
    }

    /// Standard score of `value` and the spread used, once enough are learned.
    fn z(&self, value: f64) -> Option<(f64, f64)> {
        if self.n < MIN_LEARNED {
            return None;
        }
        // Delays learned at low load stretch under queueing: a wide floor keeps a misfit
        // from producing confident picks among requests it cannot tell apart.
        let sd = (self.m2 / f64::from(self.n - 1))
            .sqrt()
            .max(0.25 * self.mean.abs())
            .max(1_000_000.0);
        Some(((value - self.mean) / sd, sd))
    }
}

/// Adds `value` to the statistics of `pair` in a bounded table (cleared when full).
fn learn_into(table: &mut FxHashMap<(u64, u64), DelayStats>, pair: (u64, u64), value: f64) {
    if table.len() >= MAX_PAIRS && !table.contains_key(&pair) {
        table.clear();
    }
    table.entry(pair).or_default().add(value);
}

impl DelayModel {
    fn learn(&mut self, pair: (u64, u64), delay_ns: f64) {
        learn_into(&mut self.pairs, pair, delay_ns);
    }

    /// Learns the gap between the end of a call and the end of the request that made it.
    pub(super) fn learn_end(&mut self, pair: (u64, u64), gap_ns: f64) {
        learn_into(&mut self.ends, pair, gap_ns);
    }

    fn note_calls(&mut self, pair: (u64, u64), calls: u16) {
        if let Some(s) = self.pairs.get_mut(&pair) {
            s.max_calls = s.max_calls.max(calls);
        }
    }

    /// Calls of one name a request may make.
    fn capacity(&self, pair: (u64, u64)) -> u16 {
        self.pairs.get(&pair).map_or(1, |s| s.max_calls.max(1))
    }

    /// Standard score of `delay_ns` after the request's start and the spread used, once the
    /// pair's delays are learned.
    fn z(&self, pair: (u64, u64), delay_ns: f64) -> Option<(f64, f64)> {
        self.pairs.get(&pair)?.z(delay_ns)
    }

    /// The same for the gap from the call's end to the request's end, for pairs whose requests
    /// make one such call (the last of several ends closer to the request's end than the
    /// first: one distribution would describe neither).
    fn z_end(&self, pair: (u64, u64), gap_ns: f64) -> Option<(f64, f64)> {
        if self.capacity(pair) != 1 {
            return None;
        }
        self.ends.get(&pair)?.z(gap_ns)
    }
}

/// Whether links made by `method` are exact enough to learn delays from.
pub(super) fn teaches(method: &str) -> bool {
    matches!(method, "thread" | "content" | "process" | "thread_pool")
}

/// A waiting call that [`Assembler::refuse_if_hopeless`] may decide at its end: undecided,
/// of a thread that serves requests itself (no pool worker, whose claims could still narrow
/// it), with no id to narrow its candidates, and more than one of them.
pub(super) fn refusable_at_end(call: &PendingSpan) -> bool {
    !call.decided && !call.from_worker && call.tokens.is_empty() && call.candidates.len() >= 2
}

/// Whether request `server` can contain call `client` (timing containment): it started no
/// later, and it has not ended before the call did.
fn can_contain(server: &PendingSpan, client: &PendingSpan) -> bool {
    server.start_ns <= client.start_ns
        && match (server.end_ns, client.end_ns) {
            (Some(server_end), Some(client_end)) => client_end <= server_end,
            _ => true,
        }
}

/// Most (process, token) pairs remembered; beyond it the memory starts over.
const MAX_RECENT_TOKENS: usize = 65_536;

/// A token is no id when it is in more than this share of a process's recent requests (a
/// constant body field, an API version in every path); a value drawn from a small range
/// (`{"number": 1..100}`) repeats now and then but stays in a small share.
const COMMON_SHARE: f64 = 0.1;

/// A count of occurrences that decays with time constant `settle`: how often something was
/// seen lately, without windows.
#[derive(Default, Clone, Copy)]
pub(super) struct Recent {
    count: f64,
    pub(super) at_ns: u64,
}

impl Recent {
    fn at(&self, now_ns: u64, settle_ns: u64) -> f64 {
        let age = now_ns.saturating_sub(self.at_ns) as f64;
        self.count * (-age / settle_ns.max(1) as f64).exp()
    }

    fn add(&mut self, now_ns: u64, settle_ns: u64) {
        self.count = self.at(now_ns, settle_ns) + 1.0;
        self.at_ns = self.at_ns.max(now_ns);
    }
}

/// A feasible parent of a call in one assignment.
struct Candidate {
    request: u64,
    /// Log-likelihood of the call's times (the learned model, or the first-come-first-served
    /// prior until the delay after the request's start is learned).
    ll: f64,
    /// Standard score and spread used of each learned measure (see [`START`], [`END`]).
    fits: [Option<(f64, f64)>; 2],
}

/// Index in [`Candidate::fits`] of the delay from the request's start to the call's start.
const START: usize = 0;
/// Index of the gap from the call's end to the request's end, scored for pool workers'
/// calls: under load a worker's last call ends just before its request's response is
/// written, in the order the workers finish, while the delays after the requests' starts
/// stretch by queueing.
const END: usize = 1;

/// Log-likelihood of a standard score `z` with spread `sd` (ns) widened by `dispersion`.
fn normal_ll((z, sd): (f64, f64), dispersion: f64) -> f64 {
    -0.5 * (z / dispersion).powi(2) - (sd / 1e6).ln()
}

impl Candidate {
    /// A candidate for a call that started `delay_ns` after it and, when both have ended,
    /// ended `end_gap_ns` before it, scored by `delays`.
    fn new(
        request: u64,
        delays: &DelayModel,
        pair: (u64, u64),
        delay_ns: f64,
        end_gap_ns: Option<f64>,
    ) -> Self {
        let start = delays.z(pair, delay_ns);
        let end = start
            .and(end_gap_ns)
            .and_then(|gap| delays.z_end(pair, gap));
        let mut fits = [None; 2];
        fits[START] = start;
        fits[END] = end;
        let ll = match start {
            Some(_) => learned_ll(&fits, [1.0; 2]),
            // First come, first served, mildly: convex in the delay, so that a matching keeps
            // the order in which requests and calls started.
            None => -(delay_ns / 100e6).powi(2),
        };
        Self {
            request,
            ll: ll.clamp(-100_000.0, 100.0),
            fits,
        }
    }

    /// The learned distribution describes the delay after the request's start (within 3
    /// spreads of its mean); far outside it (queueing the model never saw) a likelihood
    /// share says nothing.
    fn plausible(&self) -> bool {
        self.fits[START].is_some_and(|(z, _)| z.abs() <= 3.0)
    }

    /// Log-likelihood with each measure's spread widened by its dispersion in the solve.
    fn weight(&self, dispersion: [f64; 2]) -> f64 {
        match self.fits[START] {
            Some(_) => learned_ll(&self.fits, dispersion),
            None => self.ll,
        }
    }
}

/// Log-likelihood of the learned measures in `fits`, each spread widened by its dispersion.
fn learned_ll(fits: &[Option<(f64, f64)>; 2], dispersion: [f64; 2]) -> f64 {
    fits.iter()
        .zip(dispersion)
        .filter_map(|(fit, d)| fit.map(|fit| normal_ll(fit, d)))
        .sum()
}

/// How much more the times of a solve's learned links scatter than the learned spreads say,
/// per measure (root mean square of their standard scores, at least 1): Pearson's
/// dispersion estimate, as quasi-likelihood models widen a variance the data overrun.
/// Delays learned one request at a time stretch when requests queue; a share computed with
/// the learned spread alone then calls a permutation of concurrent requests certain.
fn dispersion(options: &[Vec<Candidate>], slots: &[(u64, u64)], assignment: &[usize]) -> [f64; 2] {
    let mut sum = [0.0; 2];
    let mut n = [0u32; 2];
    for (candidates, column) in options.iter().zip(assignment) {
        let Some(&(parent, _)) = slots.get(*column) else {
            continue;
        };
        let Some(chosen) = candidates.iter().find(|o| o.request == parent) else {
            continue;
        };
        for (measure, fit) in chosen.fits.iter().enumerate() {
            if let Some((z, _)) = fit {
                sum[measure] += z * z;
                n[measure] += 1;
            }
        }
    }
    std::array::from_fn(|m| {
        if n[m] == 0 {
            1.0
        } else {
            (sum[m] / f64::from(n[m])).sqrt().max(1.0)
        }
    })
}

/// A proposed parent.
pub(super) struct Guess {
    pub parent: u64,
    pub method: &'static str,
    pub confidence: f64,
    /// Decided without the settling window: `content`, or a worker's existing claim.
    pub at_once: bool,
}

impl Assembler {
    /// Proposes a parent for the CLIENT span `handle`, or `None` when its process serves
    /// nothing at that time.
    pub(super) fn infer_parent(&mut self, handle: u64) -> Option<Guess> {
        let span = self.spans.get(&handle)?;
        let (pid, tid, start, name_key) = (span.pid, span.tid, span.start_ns, span.name_key);
        let tokens = span.tokens.clone();
        let thread = (pid, tid);
        let is_worker = !serves(&self.serving, thread);

        let candidates = self.candidates_at(handle);
        if candidates.is_empty() {
            return None;
        }
        // Content first: a pool worker may pick up its next request before the previous one's
        // response is written by another thread, so its claim can be stale.
        if let Some([parent]) = self
            .content_holders(pid, start, &tokens, name_key, &candidates)
            .as_deref()
        {
            let parent = *parent;
            if is_worker {
                self.claim(thread, parent, 0.95);
            }
            return Some(Guess {
                parent,
                method: "content",
                confidence: 0.95,
                at_once: true,
            });
        }
        if let Some(&(claimed, shown_with)) = self.claims.get(&thread) {
            // A worker may pick up its next request before another thread has written the
            // previous response: while an unclaimed request could have made this call, a
            // claimed one that already made all the calls of this name its kind makes is not
            // the one this call is for.
            let rival = candidates
                .iter()
                .any(|h| *h != claimed && !self.claimed.contains_key(h));
            if self.in_progress(claimed, start) && (!rival || self.has_room(claimed, name_key)) {
                return Some(Guess {
                    parent: claimed,
                    method: "thread_pool",
                    // No surer than the link that made the claim.
                    confidence: shown_with.min(0.9),
                    at_once: true,
                });
            }
            self.claims.remove(&thread);
            self.claimed.remove(&claimed);
        }

        let unclaimed: Vec<u64> = candidates
            .iter()
            .copied()
            .filter(|h| !self.claimed.contains_key(h))
            .collect();
        let guess = match (candidates.as_slice(), unclaimed.as_slice()) {
            ([one], _) => Guess {
                parent: *one,
                method: "process",
                confidence: 0.8,
                at_once: false,
            },
            (_, [one]) if is_worker => Guess {
                parent: *one,
                method: "thread_pool",
                confidence: 0.7,
                at_once: false,
            },
            _ => {
                let pool = if unclaimed.is_empty() {
                    &candidates
                } else {
                    &unclaimed
                };
                let oldest = pool
                    .iter()
                    .copied()
                    .min_by_key(|h| self.spans.get(h).map_or(u64::MAX, |s| s.start_ns))
                    .unwrap_or(candidates[0]);
                // Indistinguishable candidates: below any sensible threshold by design.
                Guess {
                    parent: oldest,
                    method: "ambiguous",
                    confidence: 0.8 / pool.len() as f64,
                    at_once: false,
                }
            }
        };
        Some(guess)
    }

    /// Remembers the tokens of a request `pid` serves (started at `at_ns`), and that it
    /// served one.
    pub(super) fn note_tokens(&mut self, pid: u32, at_ns: u64, tokens: &[String]) {
        let settle = self.config.settle_ns;
        if self.recent_requests.len() >= MAX_RECENT_TOKENS {
            self.recent_requests.clear();
        }
        self.recent_requests
            .entry(pid)
            .or_default()
            .add(at_ns, settle);
        for token in tokens {
            if self.recent_tokens.len() >= MAX_RECENT_TOKENS {
                self.recent_tokens.clear();
            }
            self.recent_tokens
                .entry((pid, super::hash_of(token)))
                .or_default()
                .add(at_ns, settle);
        }
    }

    /// Whether `token` is in so many of the process's recent requests that it names none.
    fn is_common(&self, pid: u32, token: &str, now_ns: u64) -> bool {
        let settle = self.config.settle_ns;
        let Some(seen) = self.recent_tokens.get(&(pid, super::hash_of(token))) else {
            return false;
        };
        let carried = seen.at(now_ns, settle);
        let served = self
            .recent_requests
            .get(&pid)
            .map_or(0.0, |r| r.at(now_ns, settle));
        // Twice at least: one request is not a pattern.
        carried >= 1.5 && carried > COMMON_SHARE * served
    }

    /// The candidates the call's distinctive tokens point to, or `None` when its tokens say
    /// nothing (none distinctive, none held by a candidate, or tokens that point to disjoint
    /// candidates). A token is distinctive when it is not common among the process's recent
    /// requests; the candidates it points to are those that carry it, and when several do,
    /// those that have not yet made every call named `name_key` their kind makes (a value
    /// drawn from a small range repeats: the request that already made its call is not this
    /// call's parent).
    fn content_holders(
        &self,
        pid: u32,
        at_ns: u64,
        tokens: &[String],
        name_key: u64,
        candidates: &[u64],
    ) -> Option<Vec<u64>> {
        let mut narrowed: Option<Vec<u64>> = None;
        for token in tokens {
            if self.is_common(pid, token, at_ns) {
                continue;
            }
            let mut holders: Vec<u64> = candidates
                .iter()
                .copied()
                .filter(|h| {
                    self.spans
                        .get(h)
                        .is_some_and(|s| s.tokens.iter().any(|t| t == token))
                })
                .collect();
            if holders.len() > 1 {
                let with_room: Vec<u64> = holders
                    .iter()
                    .copied()
                    .filter(|h| self.has_room(*h, name_key))
                    .collect();
                if !with_room.is_empty() {
                    holders = with_room;
                }
            }
            if holders.is_empty() {
                continue;
            }
            narrowed = Some(match narrowed {
                None => holders,
                Some(prev) => {
                    let both: Vec<u64> = prev.into_iter().filter(|h| holders.contains(h)).collect();
                    if both.is_empty() {
                        return None;
                    }
                    both
                }
            });
        }
        narrowed
    }

    /// Records that worker `thread` handles the request `parent`, as shown by a link of
    /// `confidence` (replacing its old claim).
    fn claim(&mut self, thread: (u32, u32), parent: u64, confidence: f64) {
        if let Some((old, _)) = self.claims.insert(thread, (parent, confidence)) {
            self.claimed.remove(&old);
        }
        self.claimed.insert(parent, thread);
    }

    /// Whether SERVER span `server` may still make a call named `name_key` (see
    /// [`Self::room`]).
    fn has_room(&self, server: u64, name_key: u64) -> bool {
        self.spans
            .get(&server)
            .is_some_and(|s| self.room(s, name_key) > 0)
    }

    /// How many more calls named `name_key` the SERVER span `server` may make: as many as
    /// requests of its kind were seen to make (one until learned), minus those linked to it.
    fn room(&self, server: &PendingSpan, name_key: u64) -> u16 {
        let taken = server
            .calls
            .iter()
            .find(|c| c.name_key == name_key)
            .map_or(0, |c| c.count);
        self.delays
            .capacity((server.name_key, name_key))
            .saturating_sub(taken)
    }

    /// Whether the span had started and not yet ended at kernel time `at`.
    fn in_progress(&self, handle: u64, at: u64) -> bool {
        self.spans
            .get(&handle)
            .is_some_and(|s| s.start_ns <= at && s.end_ns.is_none_or(|end| end >= at))
    }

    /// The SERVER spans of the process in progress when CLIENT span `handle` started.
    pub(super) fn candidates_at(&self, handle: u64) -> Vec<u64> {
        let Some(span) = self.spans.get(&handle) else {
            return Vec::new();
        };
        self.serving_by_pid
            .get(&span.pid)
            .map(|list| {
                list.iter()
                    .copied()
                    .filter(|h| self.in_progress(*h, span.start_ns))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Books a CLIENT span linked to SERVER span `parent`: the call count of the request,
    /// and, for links made by exact methods, the delay distribution of the endpoint pair and,
    /// once the call has ended (`end`), its gap before the request's end.
    pub(super) fn count_call(
        &mut self,
        parent: u64,
        start: u64,
        end: Option<u64>,
        name_key: u64,
        method: &str,
    ) {
        let Some(server) = self.spans.get_mut(&parent) else {
            return;
        };
        if server.kind != SpanKind::Server {
            return;
        }
        let pair = (server.name_key, name_key);
        let calls = match server.calls.iter_mut().find(|c| c.name_key == name_key) {
            Some(calls) => {
                calls.count = calls.count.saturating_add(1);
                calls.count
            }
            None => {
                server.calls.push(CallsOfName {
                    name_key,
                    count: 1,
                    exact_end_ns: 0,
                });
                1
            }
        };
        if teaches(method) {
            let delay = start.saturating_sub(server.start_ns) as f64;
            self.delays.learn(pair, delay);
            self.delays.note_calls(pair, calls);
            if let Some(end) = end {
                self.note_call_end(parent, name_key, end);
            }
        }
    }

    /// Books the end of a call exactly linked to SERVER span `parent` (already counted by
    /// `count_call`): its gap before the request's end is learned when the request ends.
    pub(super) fn note_call_end(&mut self, parent: u64, name_key: u64, end_ns: u64) {
        let Some(server) = self
            .spans
            .get_mut(&parent)
            .filter(|s| s.kind == SpanKind::Server)
        else {
            return;
        };
        if let Some(server_end) = server.end_ns {
            let pair = (server.name_key, name_key);
            self.delays
                .learn_end(pair, server_end.saturating_sub(end_ns) as f64);
        } else if let Some(calls) = server.calls.iter_mut().find(|c| c.name_key == name_key) {
            calls.exact_end_ns = calls.exact_end_ns.max(end_ns);
        }
    }

    /// Assigns the waiting CLIENT spans of every process whose oldest one has waited a
    /// settling window (see the module header).
    pub(super) fn solve_deferred(&mut self, now: u64) {
        let window = self.config.settle_ns / 5;
        let due: Vec<u32> = self
            .unplaced
            .iter()
            .filter(|(_, list)| {
                list.iter().any(|h| {
                    self.spans
                        .get(h)
                        .is_some_and(|s| !s.decided && now.saturating_sub(s.start_ns) >= window)
                })
            })
            .map(|(pid, _)| *pid)
            .collect();
        for pid in due {
            let Some(mut waiting) = self.unplaced.remove(&pid) else {
                continue;
            };
            // Decided ones leave. Calls no request of the process was in progress for, once
            // their window has passed, are roots: nothing to assign (a server's own calls
            // between requests come in bursts that the bounded solver below would fall
            // behind on).
            // The rest in start order (one lookup each: a busy event loop has thousands
            // waiting, and the list is nearly in that order already).
            let mut by_start: Vec<(u64, u64)> = Vec::with_capacity(waiting.len());
            for h in waiting.drain(..) {
                match self.spans.get_mut(&h) {
                    Some(s) if s.decided => {}
                    Some(s)
                        if s.candidates.is_empty() && now.saturating_sub(s.start_ns) >= window =>
                    {
                        s.decided = true;
                    }
                    Some(s) => by_start.push((s.start_ns, h)),
                    None => {}
                }
            }
            by_start.sort_unstable();
            let budget = by_start.len().min(SOLVE_BUDGET);
            waiting.extend(by_start[..budget].iter().map(|&(_, h)| h));
            for chunk in waiting.chunks(MAX_SOLVE) {
                self.assign(chunk);
            }
            // Over budget: the due ones are decided alone, the others wait their turn.
            waiting.clear();
            for &(start, h) in &by_start[budget..] {
                if now.saturating_sub(start) >= window {
                    self.decide_unsolved(h);
                } else {
                    waiting.push(h);
                }
            }
            if !waiting.is_empty() {
                self.unplaced.insert(pid, waiting);
            }
        }
    }

    /// A waiting call of a thread that serves requests itself (an event loop), once the event
    /// stream is the reorder grace past its end: every request that ended before the call did
    /// is known, so which of its candidates can still contain it is settled, and so is the
    /// most the settling window's solver could state for it — 0.8 / n until the delays
    /// between requests of that kind and the call are learned, and once they are (for one
    /// kind of request), 0.95 times the largest likelihood share among them (the solver
    /// widens the spreads by its dispersion, which only evens the shares out, and divides by
    /// the older requests still owed a call). When that is below the link threshold and the
    /// call carries no id to narrow them, it is decided now, a root with a span link to the
    /// likeliest (the oldest while nothing is learned), instead of being held with its
    /// callee's spans for the window: an event-loop proxy without ids makes tens of thousands
    /// of such calls a second. Forgone: the rare cases where a request that turns up later,
    /// or links made within the window that fill all but one of its requests, would have
    /// let the solver link it.
    pub(super) fn refuse_if_hopeless(&mut self, handle: u64) {
        let Some(client) = self.spans.get(&handle) else {
            return;
        };
        if client.end_ns.is_none() || !refusable_at_end(client) {
            return;
        }
        // The candidates that can still contain it, with their starts and scores (walked
        // twice rather than collected: this runs for every such call of a busy event loop).
        let feasible = || {
            client.candidates.iter().filter_map(|&s| {
                let server = self.spans.get(&s)?;
                if !can_contain(server, client) || self.room(server, client.name_key) == 0 {
                    return None;
                }
                let pair = (server.name_key, client.name_key);
                let delay = client.start_ns.saturating_sub(server.start_ns) as f64;
                Some((
                    server.start_ns,
                    pair,
                    Candidate::new(s, &self.delays, pair, delay, None),
                ))
            })
        };
        let (mut n, mut learned, mut mixed) = (0usize, 0usize, false);
        let mut first_pair = None;
        let mut oldest: Option<(u64, u64)> = None;
        let mut likeliest: Option<(f64, u64)> = None;
        for (start, pair, o) in feasible() {
            n += 1;
            learned += usize::from(o.fits[START].is_some());
            mixed |= *first_pair.get_or_insert(pair) != pair;
            if oldest.is_none_or(|(at, _)| start < at) {
                oldest = Some((start, o.request));
            }
            if likeliest.is_none_or(|(ll, _)| o.ll > ll) {
                likeliest = Some((o.ll, o.request));
            }
        }
        if n < 2 {
            return;
        }
        let (parent, confidence) = if learned == 0 {
            (oldest.map(|(_, h)| h), 0.8 / n as f64)
        } else if learned == n && !mixed {
            let best = likeliest.map_or(0.0, |(ll, _)| ll);
            let total: f64 = feasible().map(|(_, _, o)| (o.ll - best).exp()).sum();
            let share = 0.95 / total;
            (likeliest.map(|(_, h)| h), share.max(0.8 / n as f64))
        } else {
            // Some learned, some not: which ones stay feasible decides the measure.
            return;
        };
        let Some(parent) = parent else {
            return;
        };
        if confidence >= self.config.link_threshold {
            return;
        }
        self.commit_guess(
            handle,
            Guess {
                parent,
                method: "ambiguous",
                confidence,
                at_once: false,
            },
        );
    }

    /// A due call the solver had no budget for: linked only when one request in progress
    /// could contain it (as the solver would, with 0.8), else a root with a span link.
    fn decide_unsolved(&mut self, handle: u64) {
        let Some(client) = self.spans.get(&handle) else {
            return;
        };
        let feasible: Vec<u64> = client
            .candidates
            .iter()
            .copied()
            .filter(|s| {
                self.spans
                    .get(s)
                    .is_some_and(|server| can_contain(server, client))
            })
            .collect();
        let alone = client.candidates.len() == 1;
        let guess = match feasible.as_slice() {
            [] => {
                if let Some(span) = self.spans.get_mut(&handle) {
                    span.decided = true;
                }
                return;
            }
            [one] => Guess {
                parent: *one,
                method: if alone { "process" } else { "timing" },
                confidence: 0.8,
                at_once: false,
            },
            several => Guess {
                parent: several[0],
                method: "ambiguous",
                confidence: 0.8 / several.len() as f64,
                at_once: false,
            },
        };
        self.commit_guess(handle, guess);
    }

    /// One maximum-likelihood assignment of `clients` to their candidate requests.
    fn assign(&mut self, clients: &[u64]) {
        const INFEASIBLE: i64 = -1_000_000_000_000;
        const ROOT: i64 = -10_000_000_000;
        // Slots: (request, call name), repeated by the calls it may still take.
        let mut slots: Vec<(u64, u64)> = Vec::new();
        // Per client: its feasible candidates.
        let mut options: Vec<Vec<Candidate>> = Vec::with_capacity(clients.len());
        // Per client: whether its tokens narrowed the candidates.
        let mut by_content: Vec<bool> = Vec::with_capacity(clients.len());
        for &c in clients {
            let mut feasible = Vec::new();
            let mut narrowed = None;
            if let Some(client) = self.spans.get(&c) {
                // Candidates the call's distinctive tokens point to, when they point at all.
                narrowed = self.content_holders(
                    client.pid,
                    client.start_ns,
                    &client.tokens,
                    client.name_key,
                    &client.candidates,
                );
                // The only request in progress in the process takes the call even beyond
                // its learned count (which links like this one teach).
                let alone = client.candidates.len() == 1;
                for &s in &client.candidates {
                    if narrowed
                        .as_ref()
                        .is_some_and(|holders| !holders.contains(&s))
                    {
                        continue;
                    }
                    let Some(server) = self.spans.get(&s) else {
                        continue;
                    };
                    let pair = (server.name_key, client.name_key);
                    let room = if alone {
                        u16::MAX
                    } else {
                        self.room(server, client.name_key)
                    };
                    // A pool worker handles one request at a time: not one another worker has.
                    let thread = (client.pid, client.tid);
                    let other_workers = !serves(&self.serving, thread)
                        && self.claimed.get(&s).is_some_and(|owner| *owner != thread);
                    if !can_contain(server, client) || room == 0 || other_workers {
                        continue;
                    }
                    let delay = client.start_ns.saturating_sub(server.start_ns) as f64;
                    // A pool worker hands its request back when its last call returns, and
                    // the response follows; an event loop ends a request whenever it gets
                    // to it, with other requests' work in between: end gaps only for workers.
                    let end_gap = match (server.end_ns, client.end_ns) {
                        (Some(server_end), Some(client_end)) if client.from_worker => {
                            Some(server_end.saturating_sub(client_end) as f64)
                        }
                        _ => None,
                    };
                    feasible.push(Candidate::new(s, &self.delays, pair, delay, end_gap));
                    let have = slots
                        .iter()
                        .filter(|slot| **slot == (s, client.name_key))
                        .count();
                    for _ in have..usize::from(room).min(clients.len()) {
                        slots.push((s, client.name_key));
                    }
                }
            }
            options.push(feasible);
            by_content.push(narrowed.is_some());
        }
        let n = clients.len();
        let columns = slots.len() + n;
        let mut weights = Matrix::new(n, columns, INFEASIBLE);
        for (i, &c) in clients.iter().enumerate() {
            let name_key = self.spans.get(&c).map_or(0, |s| s.name_key);
            for (j, slot) in slots.iter().enumerate() {
                if slot.1 != name_key {
                    continue;
                }
                if let Some(o) = options[i].iter().find(|o| o.request == slot.0) {
                    weights[(i, j)] = (o.ll * 1000.0) as i64;
                }
            }
            weights[(i, slots.len() + i)] = ROOT;
        }
        let (_, assignment) = kuhn_munkres(&weights);
        // Calls each request may still make after this assignment, per (request, call name).
        let mut left: FxHashMap<(u64, u64), usize> = FxHashMap::default();
        for slot in &slots {
            *left.entry(*slot).or_default() += 1;
        }
        for &column in &assignment {
            if let Some(slot) = slots.get(column)
                && let Some(n) = left.get_mut(slot)
            {
                *n = n.saturating_sub(1);
            }
        }
        let dispersion = dispersion(&options, &slots, &assignment);
        for (i, &c) in clients.iter().enumerate() {
            let column = assignment[i];
            let Some(&(parent, _)) = slots.get(column) else {
                // No feasible request: a root.
                if let Some(span) = self.spans.get_mut(&c) {
                    span.decided = true;
                }
                continue;
            };
            let feasible = &options[i];
            let learned = feasible.iter().all(|o| o.fits[START].is_some());
            let plausible = feasible
                .iter()
                .any(|o| o.request == parent && o.plausible());
            // One request in progress at all: `process`; otherwise timing chose.
            let alone = self.spans.get(&c).is_some_and(|s| s.candidates.len() == 1);
            let method = if alone {
                "process"
            } else if by_content[i] && feasible.len() == 1 {
                // Tokens named several requests; all but this one had made their calls.
                "content"
            } else {
                "timing"
            };
            let confidence = if feasible.len() == 1 {
                if method == "content" { 0.9 } else { 0.8 }
            } else if learned && plausible {
                // The share under spreads widened by this solve's dispersion.
                let weight = |o: &Candidate| o.weight(dispersion);
                let best = feasible.iter().map(weight).fold(f64::MIN, f64::max);
                let total: f64 = feasible.iter().map(|o| (weight(o) - best).exp()).sum();
                let chosen = feasible
                    .iter()
                    .find(|o| o.request == parent)
                    .map_or(0.0, |o| (weight(o) - best).exp());
                // Requests that started before the chosen one and are left still owing such a
                // call are queued work the delay model (learned where nothing queued) cannot
                // see: under first-come-first-served service each is at least as likely.
                let parent_start = self.spans.get(&parent).map_or(0, |s| s.start_ns);
                let name_key = self.spans.get(&c).map_or(0, |s| s.name_key);
                let queued_before = feasible
                    .iter()
                    .filter(|o| {
                        o.request != parent
                            && self
                                .spans
                                .get(&o.request)
                                .is_some_and(|s| s.start_ns < parent_start)
                            && left.get(&(o.request, name_key)).is_some_and(|n| *n > 0)
                    })
                    .count();
                0.95 * chosen / total / (1 + queued_before) as f64
            } else {
                0.8 / feasible.len().max(1) as f64
            };
            let linked = confidence >= self.config.link_threshold;
            let method = if linked { method } else { "ambiguous" };
            self.commit_guess(
                c,
                Guess {
                    parent,
                    method,
                    at_once: false,
                    confidence,
                },
            );
            let thread = self.spans.get(&c).map(|s| (s.pid, s.tid));
            if let Some(thread) = thread
                && linked
                && !serves(&self.serving, thread)
            {
                self.claim(thread, parent, confidence);
            }
        }
    }

    /// Forgets a finished SERVER span in the process-wide and claim indexes.
    pub(super) fn forget_server(&mut self, pid: u32, handle: u64) {
        if let Some(list) = self.serving_by_pid.get_mut(&pid) {
            list.retain(|h| *h != handle);
        }
        if let Some(thread) = self.claimed.remove(&handle) {
            self.claims.remove(&thread);
        }
    }
}

/// Id-like tokens of a request (parts of its path or name that contain a digit), used to
/// match an outbound request to the inbound one it copies an id from.
pub(super) fn id_tokens(name: &str, path: Option<&str>) -> Vec<String> {
    let mut tokens: Vec<String> = name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .chain(
            path.into_iter()
                .flat_map(|p| p.split(|c: char| !c.is_ascii_alphanumeric())),
        )
        .filter(|t| t.len() >= 2 && t.bytes().any(|b| b.is_ascii_digit()))
        .map(str::to_owned)
        .collect();
    tokens.sort();
    tokens.dedup();
    tokens.truncate(8);
    tokens
}

#[cfg(test)]
mod tests {
    use super::id_tokens;

    #[test]
    fn tokens_are_the_id_like_parts() {
        assert_eq!(
            id_tokens("GET /fizz/{id}", Some("/fizz/12345")),
            vec!["12345"]
        );
        assert_eq!(id_tokens("req-17/echo", None), vec!["17"]);
        assert!(id_tokens("GET /api/users", Some("/api/users")).is_empty());
        assert_eq!(
            id_tokens("x", Some("/v2/orders/ab12cd")),
            vec!["ab12cd", "v2"]
        );
    }
}
