//! Scoring received spans against the expected trees (pure; no processes).
//!
//! Attribution: an HTTP span belongs to root request `rid` and to the node whose hop and span
//! kind match its `url.path` `/<hop>/<rid>`. In the `*-noid` scenarios a span whose path is
//! `/<hop>` (no id) belongs to the rid in its recorded `x-bench-rid` request header
//! ([`RID_ATTRIBUTE`]) and to the node of that hop and kind that expects no id; without the
//! attribute it names no root request (unattributed). The agent never links by recorded
//! header values (its content matching looks at the span name and `url.path` only), so this
//! ground truth is independent of what it infers. A Thrift span belongs to the call the Thrift front
//! logged on the same connection: every pooled connection goes to its own server port
//! (`server.port` of both the CLIENT and the SERVER span), a connection carries one call at a
//! time, and each logged call's window `[t_before, t_after]` (taken around the client call)
//! encloses both of its spans; the span is given to the logged call on its port whose window
//! overlaps it most (or, with clock noise, the nearest one within [`THRIFT_SLACK_NS`]).
//!
//! Expected parents: without propagation, the node's parent in the tree (same trace id and
//! `parent_span_id` = that span's id) and no parent for the root. With propagation (`w3c`,
//! `b3`) every span's expected parent is the context in the request it observes: the trace id
//! and the span id the calling service's own instrumentation sent (a span we do not see).

use std::collections::{BTreeMap, HashMap};

use serde_json::{Value, json};

use super::scenario::{Matcher, Node, Propagate, RID_ATTRIBUTE, header_context};
use crate::receiver::{AttrValue, ReceivedSpan};

/// Tolerated distance between a Thrift span and a logged call window that it does not overlap.
pub const THRIFT_SLACK_NS: u64 = 2_000_000;

/// One Thrift call as the front logged it (CLOCK_REALTIME, like exported span times).
#[derive(Clone, Copy, Debug)]
pub struct ThriftCall {
    pub rid: u64,
    pub port: u16,
    pub t0: u64,
    pub t1: u64,
}

/// Parses the front's log lines `rid port t0 t1`.
pub fn parse_thrift_log(text: &str) -> Vec<ThriftCall> {
    text.lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace().map(|w| w.parse::<u64>().ok());
            Some(ThriftCall {
                rid: it.next()??,
                port: u16::try_from(it.next()??).ok()?,
                t0: it.next()??,
                t1: it.next()??,
            })
        })
        .collect()
}

/// A concurrency level's load: rids `base+1 ..= base+count`.
#[derive(Clone, Debug)]
pub struct Level {
    pub concurrency: usize,
    pub base: u64,
    pub count: usize,
    /// Root requests the load generator saw fail.
    pub failed: usize,
    pub seconds: f64,
}

impl Level {
    fn contains(&self, rid: u64) -> bool {
        rid > self.base && rid <= self.base + self.count as u64
    }
}

#[derive(Clone, Debug, Default)]
pub struct MethodStat {
    /// Spans (of this level) carrying the method, duplicates and extras included.
    pub spans: usize,
    /// Of the expected spans chosen for scoring, how many carry it and have the right parent.
    pub scored: usize,
    pub parent_ok: usize,
}

#[derive(Clone, Debug, Default)]
pub struct LevelScore {
    pub concurrency: usize,
    pub roots: usize,
    pub failed_roots: usize,
    pub seconds: f64,
    pub expected_spans: usize,
    pub found_spans: usize,
    pub parent_ok: usize,
    pub trees_ok: usize,
    pub duplicates: usize,
    /// Spans with this level's rids that match no node.
    pub extra: usize,
    pub timing_checked: usize,
    pub timing_violations: usize,
    pub methods: BTreeMap<String, MethodStat>,
    pub confidence_sum: f64,
    pub confidence_n: usize,
    /// Inferred links by stated confidence, [`CONFIDENCE_BUCKETS`].
    pub calibration: [Calibrated; 4],
}

/// Lower edges of the confidence buckets of [`LevelScore::calibration`]: below 0.5 (the
/// default link threshold: a root with a span link), 0.5-0.7, 0.7-0.9, 0.9 and above.
pub const CONFIDENCE_BUCKETS: [f64; 4] = [0.0, 0.5, 0.7, 0.9];

/// Methods whose links are inferred rather than observed: their confidence is a claim the
/// benchmark can check.
const INFERRED: &[&str] = &["content", "thread_pool", "process", "timing", "ambiguous"];

/// Expected spans linked by inference with a confidence in one bucket, and how many of them
/// point to the right parent (as parent, or below the threshold as span link).
#[derive(Clone, Copy, Debug, Default)]
pub struct Calibrated {
    pub spans: usize,
    pub right: usize,
}

impl Calibrated {
    pub fn add(&mut self, other: Calibrated) {
        self.spans += other.spans;
        self.right += other.right;
    }
}

impl LevelScore {
    pub fn mean_confidence(&self) -> Option<f64> {
        (self.confidence_n > 0).then(|| self.confidence_sum / self.confidence_n as f64)
    }

    pub fn to_json(&self) -> Value {
        let methods: serde_json::Map<String, Value> = self
            .methods
            .iter()
            .map(|(m, s)| {
                (
                    m.clone(),
                    json!({"spans": s.spans, "scored": s.scored, "parent_ok": s.parent_ok}),
                )
            })
            .collect();
        json!({
            "concurrency": self.concurrency,
            "roots": self.roots,
            "failed_roots": self.failed_roots,
            "load_seconds": self.seconds,
            "expected_spans": self.expected_spans,
            "found_spans": self.found_spans,
            "parent_ok": self.parent_ok,
            "trees_ok": self.trees_ok,
            "duplicates": self.duplicates,
            "extra_spans": self.extra,
            "timing_checked": self.timing_checked,
            "timing_violations": self.timing_violations,
            "link_methods": methods,
            "mean_inferred_confidence": self.mean_confidence(),
            "calibration": CONFIDENCE_BUCKETS
                .iter()
                .zip(&self.calibration)
                .map(|(from, c)| json!({"from": from, "spans": c.spans, "right": c.right}))
                .collect::<Vec<_>>(),
        })
    }
}

/// The whole scenario's score.
#[derive(Clone, Debug, Default)]
pub struct ScenarioScore {
    pub levels: Vec<LevelScore>,
    /// Spans naming no rid of any level (should be none: the agent traces only the
    /// scenario's ports).
    pub unattributed: usize,
}

fn link_method(span: &ReceivedSpan) -> String {
    span.attr_str("tracer.link.method")
        .unwrap_or("(none)")
        .to_string()
}

/// Which (rid, node) a span is, or (rid, None) for a span of that rid matching no node.
fn attribute(
    span: &ReceivedSpan,
    nodes: &[Node],
    thrift: &HashMap<u16, Vec<ThriftCall>>,
) -> Option<(u64, Option<usize>)> {
    if span.attr_str("rpc.system") == Some("thrift") {
        let port = u16::try_from(span.attr_int("server.port")?).ok()?;
        let call = thrift_call(thrift.get(&port)?, span.start_ns, span.end_ns)?;
        let node = nodes
            .iter()
            .position(|n| n.matcher == Matcher::Thrift && n.kind == span.kind);
        return Some((call.rid, node));
    }
    let path = span.url_path()?.strip_prefix('/')?;
    let (hop, rid, in_path) = match path.split_once('/') {
        Some((hop, rid)) => (hop, rid, true),
        None => (path, span.attr_str(RID_ATTRIBUTE)?, false),
    };
    let rid: u64 = rid.parse().ok()?;
    let node = nodes.iter().position(|n| {
        n.kind == span.kind
            && match n.matcher {
                Matcher::Http(h) => in_path && h == hop,
                Matcher::HttpNoId(h) => !in_path && h == hop,
                Matcher::Thrift => false,
            }
    });
    Some((rid, node))
}

fn thrift_call(calls: &[ThriftCall], start: u64, end: u64) -> Option<&ThriftCall> {
    let overlap = |c: &ThriftCall| c.t1.min(end) as i128 - c.t0.max(start) as i128;
    let best = calls.iter().max_by_key(|c| overlap(c))?;
    (overlap(best) > -(THRIFT_SLACK_NS as i128)).then_some(best)
}

/// Scores every level of a scenario.
pub fn score(
    nodes: &[Node],
    propagate: Propagate,
    levels: &[Level],
    spans: &[ReceivedSpan],
    thrift_calls: &[ThriftCall],
) -> ScenarioScore {
    let mut thrift: HashMap<u16, Vec<ThriftCall>> = HashMap::new();
    for c in thrift_calls {
        thrift.entry(c.port).or_default().push(*c);
    }
    // rid -> spans per node, and extras.
    let mut by_rid: HashMap<u64, (Vec<Vec<&ReceivedSpan>>, Vec<&ReceivedSpan>)> = HashMap::new();
    let mut unattributed = 0;
    for span in spans {
        match attribute(span, nodes, &thrift) {
            Some((rid, node)) if levels.iter().any(|l| l.contains(rid)) => {
                let entry = by_rid
                    .entry(rid)
                    .or_insert_with(|| (vec![Vec::new(); nodes.len()], Vec::new()));
                match node {
                    Some(n) => entry.0[n].push(span),
                    None => entry.1.push(span),
                }
            }
            _ => unattributed += 1,
        }
    }

    let mut out = ScenarioScore {
        levels: Vec::new(),
        unattributed,
    };
    for level in levels {
        let mut s = LevelScore {
            concurrency: level.concurrency,
            roots: level.count,
            failed_roots: level.failed,
            seconds: level.seconds,
            expected_spans: level.count * nodes.len(),
            ..Default::default()
        };
        let empty = (vec![Vec::new(); nodes.len()], Vec::new());
        for rid in level.base + 1..=level.base + level.count as u64 {
            let (found, extras) = by_rid.get(&rid).unwrap_or(&empty);
            score_tree(nodes, propagate, rid, found, extras, &mut s);
        }
        out.levels.push(s);
    }
    out
}

fn score_tree(
    nodes: &[Node],
    propagate: Propagate,
    rid: u64,
    found: &[Vec<&ReceivedSpan>],
    extras: &[&ReceivedSpan],
    s: &mut LevelScore,
) {
    for span in found.iter().flatten().chain(extras.iter()) {
        let method = link_method(span);
        s.methods.entry(method.clone()).or_default().spans += 1;
        if method != "root"
            && method != "context"
            && method != "(none)"
            && let Some(AttrValue::Double(c)) = span.attr("tracer.link.confidence")
        {
            s.confidence_sum += c;
            s.confidence_n += 1;
        }
    }
    s.extra += extras.len();
    let is_right_parent = |i: usize, span: &ReceivedSpan| -> bool {
        if let Some(ctx) = header_context(propagate, hop_of(&nodes[i]), rid) {
            return span.trace_id == ctx.0
                && span.parent_span_id.as_deref() == Some(ctx.1.as_str());
        }
        match nodes[i].parent {
            None => span.parent_span_id.is_none(),
            Some(p) => found[p].iter().any(|parent| {
                parent.trace_id == span.trace_id
                    && span.parent_span_id.as_deref() == Some(parent.span_id.as_str())
            }),
        }
    };
    // The span scored for each node: one with the right parent if any, else the first.
    let mut chosen: Vec<Option<&ReceivedSpan>> = Vec::with_capacity(nodes.len());
    let mut tree_ok = true;
    for (i, spans) in found.iter().enumerate() {
        if spans.len() != 1 {
            tree_ok = false;
        }
        s.duplicates += spans.len().saturating_sub(1);
        let right = spans.iter().copied().find(|sp| is_right_parent(i, sp));
        let pick = right.or_else(|| spans.first().copied());
        if let Some(span) = pick {
            let parents = nodes[i].parent.map(|p| &found[p][..]);
            calibrate(span, right.is_some(), parents, s);
            s.found_spans += 1;
            let m = s.methods.entry(link_method(span)).or_default();
            m.scored += 1;
            if right.is_some() {
                m.parent_ok += 1;
                s.parent_ok += 1;
            } else {
                tree_ok = false;
            }
        } else {
            tree_ok = false;
        }
        chosen.push(pick);
    }
    if tree_ok && extras.is_empty() {
        s.trees_ok += 1;
    }
    for (i, node) in nodes.iter().enumerate() {
        let (Some(p), Some(child)) = (node.parent, chosen[i]) else {
            continue;
        };
        let Some(parent) = chosen[p] else { continue };
        s.timing_checked += 1;
        if child.start_ns < parent.start_ns || child.end_ns > parent.end_ns {
            s.timing_violations += 1;
        }
    }
}

/// Books an expected span's inferred link in its confidence bucket: right when the span has
/// the right parent or, refused below the threshold, a span link to one of `parents` (the
/// spans of the expected parent node).
fn calibrate(
    span: &ReceivedSpan,
    parent_right: bool,
    parents: Option<&[&ReceivedSpan]>,
    s: &mut LevelScore,
) {
    let method = link_method(span);
    let Some(AttrValue::Double(c)) = span.attr("tracer.link.confidence") else {
        return;
    };
    if !INFERRED.contains(&method.as_str()) {
        return;
    }
    let bucket = CONFIDENCE_BUCKETS
        .iter()
        .rposition(|from| *c >= *from)
        .unwrap_or(0);
    let linked_right = span.parent_span_id.is_none()
        && parents.is_some_and(|ps| {
            span.links
                .iter()
                .any(|(trace, id)| ps.iter().any(|p| p.trace_id == *trace && p.span_id == *id))
        });
    let b = &mut s.calibration[bucket];
    b.spans += 1;
    if parent_right || linked_right {
        b.right += 1;
    }
}

/// The hop whose request a node's span observes (its context headers).
fn hop_of(node: &Node) -> &'static str {
    match node.matcher {
        Matcher::Http(hop) | Matcher::HttpNoId(hop) => hop,
        Matcher::Thrift => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accuracy::scenario;
    use crate::receiver::{Kind, Status};

    fn span(kind: Kind, path: &str, id: &str, parent: Option<&str>, t: (u64, u64)) -> ReceivedSpan {
        let mut attributes = BTreeMap::new();
        attributes.insert("url.path".to_string(), AttrValue::Str(path.to_string()));
        ReceivedSpan {
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: parent.map(str::to_string),
            trace_state: String::new(),
            name: path.into(),
            kind,
            start_ns: t.0,
            end_ns: t.1,
            attributes,
            status: Status::Unset,
            status_message: String::new(),
            links: Vec::new(),
            resource: BTreeMap::new(),
            via: "grpc",
        }
    }

    fn hub_tree(rid: u64) -> Vec<ReceivedSpan> {
        let p = |hop: &str| format!("/{hop}/{rid}");
        vec![
            span(Kind::Client, &p("hub"), "a", None, (0, 100)),
            span(Kind::Server, &p("hub"), "b", Some("a"), (1, 99)),
            span(Kind::Client, &p("fizz"), "c", Some("b"), (2, 40)),
            span(Kind::Server, &p("fizz"), "d", Some("c"), (3, 39)),
            span(Kind::Client, &p("buzz"), "e", Some("b"), (41, 90)),
            span(Kind::Server, &p("buzz"), "f", Some("e"), (42, 89)),
        ]
    }

    fn level() -> Level {
        Level {
            concurrency: 1,
            base: 1000,
            count: 2,
            failed: 0,
            seconds: 0.0,
        }
    }

    #[test]
    fn perfect_and_broken_trees() {
        let nodes = scenario::get("sync").unwrap().nodes;
        let mut spans = hub_tree(1001);
        let mut broken = hub_tree(1002);
        broken[5].parent_span_id = Some("c".into()); // buzzer under the fizz call
        broken[3].end_ns = 41; // fizzer ends after its caller
        spans.extend(broken);
        spans.push(span(Kind::Server, "/nope", "z", None, (0, 1)));
        let s = score(&nodes, Propagate::None, &[level()], &spans, &[]);
        let l = &s.levels[0];
        assert_eq!(s.unattributed, 1);
        assert_eq!(
            (l.expected_spans, l.found_spans, l.parent_ok, l.trees_ok),
            (12, 12, 11, 1)
        );
        assert_eq!((l.timing_checked, l.timing_violations), (10, 1));
    }

    /// Inferred links land in their confidence bucket; a refused one counts as right when its
    /// span link names the right parent, a wrong parent never does.
    #[test]
    fn inferred_links_are_booked_by_stated_confidence() {
        let nodes = scenario::get("sync").unwrap().nodes;
        let inferred = |s: &mut ReceivedSpan, method: &str, confidence: f64| {
            s.attributes
                .insert("tracer.link.method".into(), AttrValue::Str(method.into()));
            s.attributes.insert(
                "tracer.link.confidence".into(),
                AttrValue::Double(confidence),
            );
        };
        let mut spans = hub_tree(1001);
        inferred(&mut spans[2], "timing", 0.8); // fizz call, right parent
        inferred(&mut spans[4], "timing", 0.75); // buzz call, wrong parent
        spans[4].parent_span_id = Some("d".into());
        let mut refused = hub_tree(1002);
        for (i, s) in refused.iter_mut().enumerate() {
            s.span_id = format!("{}2", s.span_id);
            s.parent_span_id = s.parent_span_id.as_ref().map(|p| format!("{p}2"));
            if i == 2 {
                inferred(s, "ambiguous", 0.4);
                s.parent_span_id = None;
                s.links = vec![("t1".into(), "b2".into())];
            }
        }
        spans.extend(refused);
        let s = score(&nodes, Propagate::None, &[level()], &spans, &[]);
        let c = &s.levels[0].calibration;
        assert_eq!((c[0].spans, c[0].right), (1, 1), "refused, linked right");
        assert_eq!((c[1].spans, c[2].spans, c[3].spans), (0, 2, 0));
        assert_eq!(c[2].right, 1, "one of the two 0.7-0.9 links is right");
    }

    #[test]
    fn noid_spans_are_attributed_by_the_recorded_header() {
        let nodes = scenario::get("sync-noid").unwrap().nodes;
        let with_rid = |mut s: ReceivedSpan, rid: &str| {
            s.attributes
                .insert(RID_ATTRIBUTE.into(), AttrValue::Str(rid.into()));
            s
        };
        let mut spans = Vec::new();
        for rid in ["1001", "1002"] {
            let r = rid;
            let id = |n: &str| format!("{n}{r}");
            let s = |kind, path: &str, n: &str, parent: Option<&str>, t| {
                span(kind, path, &id(n), parent.map(id).as_deref(), t)
            };
            spans.push(s(Kind::Client, &format!("/hub/{r}"), "a", None, (0, 100)));
            spans.push(s(
                Kind::Server,
                &format!("/hub/{r}"),
                "b",
                Some("a"),
                (1, 99),
            ));
            spans.push(with_rid(
                s(Kind::Client, "/fizz", "c", Some("b"), (2, 40)),
                r,
            ));
            spans.push(with_rid(
                s(Kind::Server, "/fizz", "d", Some("c"), (3, 39)),
                r,
            ));
            spans.push(with_rid(
                s(Kind::Client, "/buzz", "e", Some("b"), (41, 90)),
                r,
            ));
            spans.push(with_rid(
                s(Kind::Server, "/buzz", "f", Some("e"), (42, 89)),
                r,
            ));
        }
        // 1002's fizz call under 1001's hub span: a wrong parent, not a wrong attribution.
        spans[8].parent_span_id = Some("b1001".into());
        // An id in the path where none is expected: 1002's, but no node of the tree.
        spans.push(span(Kind::Client, "/fizz/1002", "x", None, (2, 3)));
        // The header not recorded: names no root request.
        spans.push(span(Kind::Server, "/buzz", "y", None, (2, 3)));
        let s = score(&nodes, Propagate::None, &[level()], &spans, &[]);
        let l = &s.levels[0];
        assert_eq!(s.unattributed, 1);
        assert_eq!(
            (
                l.found_spans,
                l.parent_ok,
                l.trees_ok,
                l.extra,
                l.duplicates
            ),
            (12, 11, 1, 1, 0)
        );
    }

    #[test]
    fn missing_duplicate_and_thrift_attribution() {
        let nodes = scenario::get("thrift").unwrap().nodes;
        let mut spans = vec![
            span(Kind::Client, "/tq/1001", "a", None, (0, 100)),
            span(Kind::Server, "/tq/1001", "b", Some("a"), (1, 99)),
            span(Kind::Server, "/tq/1001", "b2", None, (1, 99)),
        ];
        let mut thrift = |kind, id: &str, parent: &str, t| {
            let mut s = span(kind, "", id, Some(parent), t);
            s.attributes.clear();
            s.attributes
                .insert("rpc.system".into(), AttrValue::Str("thrift".into()));
            s.attributes
                .insert("server.port".into(), AttrValue::Int(9000));
            spans.push(s);
        };
        thrift(Kind::Client, "c", "b", (10, 20));
        thrift(Kind::Server, "d", "c", (11, 19));
        let calls = [
            ThriftCall {
                rid: 1001,
                port: 9000,
                t0: 9,
                t1: 21,
            },
            ThriftCall {
                rid: 1002,
                port: 9000,
                t0: 22,
                t1: 30,
            },
        ];
        let s = score(&nodes, Propagate::None, &[level()], &spans, &calls);
        let l = &s.levels[0];
        assert_eq!(
            (l.found_spans, l.parent_ok, l.duplicates, l.trees_ok),
            (4, 4, 1, 0)
        );
    }
}
