//! Trace context propagation from request headers: W3C `traceparent`
//! (flags 01 and 03, with `tracestate`), single `b3`, multi `X-B3-*` with a
//! 64-bit trace id, and `uber-trace-id`.
//!
//! Two views: with only the server traced (`--pid`), its SERVER span must
//! join the header's trace with the header's span id as parent; with both
//! ends traced (`--port`), the client's CLIENT span does that and the SERVER
//! span is the CLIENT span's child.

use tracer_tests::agent::{Agent, AgentArgs};
use tracer_tests::check;
use tracer_tests::peers;
use tracer_tests::receiver::Receiver;
use tracer_tests::{QUIET, SPAN_TIMEOUT, fresh_ids, require_root, urls};

/// One injected context: the headers to send and what the agent must derive.
struct Case {
    label: &'static str,
    headers: Vec<String>,
    trace_id: String,
    parent: String,
}

impl Case {
    fn path(&self) -> String {
        format!("/api/ctx/{}", self.label)
    }
}

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    let (t, s) = fresh_ids();
    out.push(Case {
        label: "w3c-sampled",
        headers: vec![
            format!("traceparent: 00-{t}-{s}-01"),
            "tracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into(),
        ],
        trace_id: t,
        parent: s,
    });
    let (t, s) = fresh_ids();
    out.push(Case {
        label: "w3c-flags03",
        headers: vec![
            format!("traceparent: 00-{t}-{s}-03"),
            "tracestate: vendor=value".into(),
        ],
        trace_id: t,
        parent: s,
    });
    let (t, s) = fresh_ids();
    out.push(Case {
        label: "b3-single",
        headers: vec![format!("b3: {t}-{s}-1")],
        trace_id: t,
        parent: s,
    });
    let (t, s) = fresh_ids();
    let t64 = t[16..].to_string();
    out.push(Case {
        label: "b3-multi-64bit",
        headers: vec![
            format!("X-B3-TraceId: {t64}"),
            format!("X-B3-SpanId: {s}"),
            "X-B3-Sampled: 1".into(),
        ],
        trace_id: format!("0000000000000000{t64}"),
        parent: s,
    });
    let (t, s) = fresh_ids();
    out.push(Case {
        label: "uber",
        headers: vec![format!("uber-trace-id: {t}:{s}:0:1")],
        trace_id: t,
        parent: s,
    });
    out
}

/// Sends one request per case (each with its own headers).
fn send(port: u16, cases: &[Case]) {
    for case in cases {
        let mut extra: Vec<&str> = Vec::new();
        for h in &case.headers {
            extra.push("--header");
            extra.push(h);
        }
        peers::run_client(peers::python_client(&urls(port, &[&case.path()]), &extra));
    }
}

/// Only the server is traced: its SERVER span's trace and parent come from
/// the headers.
#[test]
fn server_joins_trace_from_each_header_format() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let flask = peers::flask_server(port, &[], &[]);
    let mut agent =
        Agent::start(&AgentArgs::grpc(&receiver).args(["--pid", &flask.pid().to_string()]));

    let cases = cases();
    send(port, &cases);

    for case in &cases {
        let path = case.path();
        let spans = receiver.wait_exactly(&format!("SERVER {path}"), 1, SPAN_TIMEOUT, QUIET, |s| {
            s.is_server() && s.url_path() == Some(path.as_str())
        });
        let srv = &spans[0];
        assert_eq!(
            srv.trace_id, case.trace_id,
            "[{}] trace id from headers {:?}\n    {srv}",
            case.label, case.headers
        );
        assert_eq!(
            srv.parent_span_id.as_deref(),
            Some(case.parent.as_str()),
            "[{}] parent span id from headers {:?}\n    {srv}",
            case.label,
            case.headers
        );
        assert_ne!(
            srv.span_id, case.parent,
            "[{}] the SERVER span needs its own span id\n    {srv}",
            case.label
        );
        check::ids_valid(srv);
    }
    let strays: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.is_client())
        .collect();
    assert!(
        strays.is_empty(),
        "--pid limits tracing to the server, yet CLIENT spans arrived:\n{}",
        tracer_tests::receiver::dump(&strays)
    );

    agent.stop();
}

/// Both ends traced: the CLIENT span continues the header's trace with the
/// header's span id as parent, the SERVER span is the CLIENT span's child.
#[test]
fn client_and_server_continue_trace_from_each_header_format() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _flask = peers::flask_server(port, &[], &[]);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let cases = cases();
    send(port, &cases);

    for case in &cases {
        let path = case.path();
        let cli = receiver.wait_exactly(&format!("CLIENT {path}"), 1, SPAN_TIMEOUT, QUIET, |s| {
            s.is_client() && s.url_path() == Some(path.as_str())
        });
        let srv = receiver.wait_exactly(&format!("SERVER {path}"), 1, SPAN_TIMEOUT, QUIET, |s| {
            s.is_server() && s.url_path() == Some(path.as_str())
        });
        let (cli, srv) = (&cli[0], &srv[0]);
        assert_eq!(
            cli.trace_id, case.trace_id,
            "[{}] CLIENT trace id from headers {:?}\n    {cli}",
            case.label, case.headers
        );
        assert_eq!(
            cli.parent_span_id.as_deref(),
            Some(case.parent.as_str()),
            "[{}] CLIENT parent from headers {:?}\n    {cli}",
            case.label,
            case.headers
        );
        // Propagated context is trusted before same-host linking: the SERVER span joins the
        // header's parent, as the app's own instrumentation would, beside our CLIENT span.
        assert_eq!(
            srv.trace_id, case.trace_id,
            "[{}] SERVER trace id\n    {srv}",
            case.label
        );
        assert_eq!(
            srv.parent_span_id.as_deref(),
            Some(case.parent.as_str()),
            "[{}] SERVER parent from headers\n    {srv}",
            case.label
        );
        check::within(srv, cli);
    }

    agent.stop();
}
