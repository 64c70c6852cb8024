//! Agent-level behaviour: no spans for its own export traffic, OTLP over
//! HTTP/protobuf (by flag and by environment), and its life cycle (signals
//! flush and exit 0, bad flags fail with one line).

use std::time::Duration;

use tracer_tests::agent::{Agent, AgentArgs, STOP_TIMEOUT, TEST_SETTLE_MS};
use tracer_tests::check;
use tracer_tests::peers::{self, Peer};
use tracer_tests::receiver::{ReceivedSpan, Receiver, dump};
use tracer_tests::{QUIET, SPAN_TIMEOUT, require_root, urls};

fn server_at(path: &str) -> impl Fn(&ReceivedSpan) -> bool + '_ {
    move |s| s.is_server() && s.url_path() == Some(path)
}

/// Asserts no received span comes from the agent or the receiver (this test
/// process), or involves either receiver port.
fn assert_no_self_traffic(receiver: &Receiver, agent: &Agent) {
    let all = receiver.spans();
    let bad: Vec<ReceivedSpan> = all
        .iter()
        .filter(|s| {
            s.pid() == Some(agent.pid() as i64)
                || s.pid() == Some(std::process::id() as i64)
                || s.mentions_port(receiver.grpc_port())
                || s.mentions_port(receiver.http_port())
                || s.url_path() == Some("/v1/traces")
                || s.url_path().is_some_and(|p| p.contains("TraceService"))
        })
        .cloned()
        .collect();
    assert!(
        bad.is_empty(),
        "spans of the agent's own OTLP traffic (agent pid {}, receiver ports {}/{}):\n{}",
        agent.pid(),
        receiver.grpc_port(),
        receiver.http_port(),
        dump(&bad)
    );
}

/// The Rust server on a free port and an agent exporting to a fresh receiver, tracing the
/// server's port and both of the receiver's (so that the agent's own export traffic would be
/// seen if its kernel filter let it through).
fn traced_server_and_receiver() -> (Receiver, u16, Peer, Agent) {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let server = peers::rust_server(port);
    let agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[
        port,
        receiver.grpc_port(),
        receiver.http_port(),
    ]));
    (receiver, port, server, agent)
}

/// (Test 9) The agent's export connection is never traced, even when the
/// receiver's ports are inside the `--port` filter and several exports happen
/// while tracing.
#[test]
fn no_spans_for_own_export_traffic() {
    let (receiver, port, _server, mut agent) = traced_server_and_receiver();

    // Two rounds, so at least one export happens while the agent traces.
    peers::run_client(peers::python_client(&urls(port, &["/round/one"]), &[]));
    receiver.wait_for(
        "SERVER /round/one",
        1,
        SPAN_TIMEOUT,
        server_at("/round/one"),
    );
    peers::run_client(peers::python_client(&urls(port, &["/round/two"]), &[]));
    receiver.wait_for(
        "SERVER /round/two",
        1,
        SPAN_TIMEOUT,
        server_at("/round/two"),
    );
    std::thread::sleep(QUIET);
    agent.stop();
    assert!(
        receiver.export_requests() >= 2,
        "expected several export requests, got {}",
        receiver.export_requests()
    );
    assert_no_self_traffic(&receiver, &agent);
}

/// GET /shared/port from 127.0.0.2:<argv[1]> to 127.0.0.1:<argv[2]>; exits 0 on a 200.
const SHARED_PORT_CLIENT: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.2", int(sys.argv[1])))
s.connect(("127.0.0.1", int(sys.argv[2])))
s.sendall(b"GET /shared/port HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
answer = b""
while True:
    chunk = s.recv(4096)
    if not chunk:
        break
    answer += chunk
sys.exit(0 if answer.startswith(b"HTTP/1.1 200") else 1)
"#;

/// The local port of the agent's export connection: the established connection in
/// `/proc/net/tcp` whose remote port is the receiver's gRPC port (only the agent connects
/// to this test's receiver).
fn export_connection_port(receiver: &Receiver) -> u16 {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("reading /proc/net/tcp");
    let port_of = |endpoint: &str| {
        let hex = endpoint.rsplit(':').next().unwrap_or("");
        u16::from_str_radix(hex, 16).unwrap_or(0)
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
            (*state == "01" && port_of(remote) == receiver.grpc_port()).then(|| port_of(local))
        })
        .next()
        .unwrap_or_else(|| panic!("no connection to the receiver in /proc/net/tcp:\n{table}"))
}

/// Linux gives one ephemeral port to several outgoing connections with different
/// destinations, so another process's connection can carry the local port of the agent's
/// export connection. Such a connection is traced like any other: only the agent's own
/// endpoint pairs are left out. (Forced here by binding a client to that port on
/// 127.0.0.2; under load it happens by chance.)
#[test]
fn a_connection_sharing_the_export_connections_port_is_traced() {
    let (receiver, port, _server, mut agent) = traced_server_and_receiver();
    peers::run_client(peers::python_client(&urls(port, &["/first"]), &[]));
    receiver.wait_for("SERVER /first", 1, SPAN_TIMEOUT, server_at("/first"));
    let shared = export_connection_port(&receiver);

    let mut client = std::process::Command::new(peers::python());
    client.args([
        "-c",
        SHARED_PORT_CLIENT,
        &shared.to_string(),
        &port.to_string(),
    ]);
    peers::run_client(client);
    let server = receiver.wait_exactly(
        "SERVER /shared/port",
        1,
        SPAN_TIMEOUT,
        QUIET,
        server_at("/shared/port"),
    );
    check::attr_str(&server[0], "network.peer.address", "127.0.0.2");
    check::attr_int(&server[0], "network.peer.port", i64::from(shared));
    agent.stop();
    assert_no_self_traffic(&receiver, &agent);
}

fn http_protobuf_round(args: AgentArgs, receiver: &Receiver, port: u16) {
    let mut agent = Agent::start(&args);
    peers::run_client(peers::python_client(&urls(port, &["/over/http"]), &[]));
    let srv = receiver.wait_exactly(
        "SERVER /over/http",
        1,
        SPAN_TIMEOUT,
        QUIET,
        server_at("/over/http"),
    );
    let cli = receiver.wait_exactly("CLIENT /over/http", 1, SPAN_TIMEOUT, QUIET, |s| {
        s.is_client() && s.url_path() == Some("/over/http")
    });
    let (srv, cli) = (&srv[0], &cli[0]);
    assert_eq!(
        srv.via, "http",
        "spans must arrive on the HTTP/protobuf endpoint\n    {srv}"
    );
    assert_eq!(cli.via, "http");
    check::attr_int(srv, "http.response.status_code", 200);
    check::attr_str(srv, "http.request.method", "GET");
    check::child_of(srv, cli);
    check::within(srv, cli);
    agent.stop();
    assert_no_self_traffic(receiver, &agent);
    assert!(
        receiver.spans().iter().all(|s| s.via == "http"),
        "nothing may arrive over gRPC:\n{}",
        dump(&receiver.spans())
    );
}

/// (Test 11) `--otlp-protocol http/protobuf`: the same spans arrive on the HTTP
/// endpoint, and the (HTTP/1.1!) export requests are not traced.
#[test]
fn export_over_http_protobuf_flag() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = peers::rust_server(port);
    let args = AgentArgs::http(&receiver).ports(&[port, receiver.http_port()]);
    http_protobuf_round(args, &receiver, port);
}

/// (Test 11b) The same configured through `OTEL_EXPORTER_OTLP_ENDPOINT` and
/// `OTEL_EXPORTER_OTLP_PROTOCOL`.
#[test]
fn export_over_http_protobuf_env() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = peers::rust_server(port);
    let args = AgentArgs::empty()
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.http_endpoint())
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .args(["--settle-ms", &TEST_SETTLE_MS.to_string()])
        .ports(&[port, receiver.http_port()]);
    http_protobuf_round(args, &receiver, port);
}

/// (Test 13a) SIGTERM: exit status 0 within a few seconds.
#[test]
fn sigterm_exits_zero() {
    require_root();
    let receiver = Receiver::start();
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[peers::free_port()]));
    agent.stop();
}

/// (Test 13b) SIGINT: exit status 0 within a few seconds.
#[test]
fn sigint_exits_zero() {
    require_root();
    let receiver = Receiver::start();
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[peers::free_port()]));
    let status = agent.stop_with(libc::SIGINT);
    assert!(
        status.success(),
        "agent exited with {status} after SIGINT. Output:\n{}",
        agent.log()
    );
}

/// (Test 13c) Spans still held (a 60 s settle time) are flushed on SIGTERM.
#[test]
fn sigterm_flushes_pending_spans() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = peers::rust_server(port);
    let mut agent = Agent::start(
        &AgentArgs::empty()
            .args([
                "--otlp-endpoint",
                &receiver.grpc_endpoint(),
                "--settle-ms",
                "60000",
            ])
            .ports(&[port]),
    );
    peers::run_client(peers::python_client(&urls(port, &["/pending"]), &[]));
    // Give the agent time to see the exchange; it must still hold the span.
    std::thread::sleep(Duration::from_secs(2));
    let early: Vec<_> = receiver
        .spans()
        .into_iter()
        .filter(|s| s.url_path() == Some("/pending"))
        .collect();
    assert!(
        early.is_empty(),
        "--settle-ms 60000 must hold spans, yet they were exported:\n{}",
        dump(&early)
    );
    agent.stop();
    receiver.wait_for(
        "SERVER /pending flushed on SIGTERM",
        1,
        Duration::from_secs(5),
        server_at("/pending"),
    );
}

/// Runs the agent with `args`, expects a quick non-zero exit with exactly one
/// non-empty stderr line containing `needle`.
fn assert_rejected(args: &[&str], needle: &str) {
    require_root();
    let mut agent = Agent::spawn(&AgentArgs::empty().args(args.iter().copied()));
    let status = agent.wait_exit(STOP_TIMEOUT).unwrap_or_else(|| {
        panic!(
            "agent with {args:?} still running after {STOP_TIMEOUT:?}:\n{}",
            agent.log()
        )
    });
    assert!(
        !status.success(),
        "agent with {args:?} must exit non-zero, got {status}:\n{}",
        agent.log()
    );
    let log = agent.log();
    let lines: Vec<&str> = log
        .lines()
        .filter_map(|l| l.strip_prefix("[stderr] "))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "expected one clear stderr line for {args:?}, got:\n{log}"
    );
    assert!(
        lines[0].contains(needle),
        "the stderr line for {args:?} should mention {needle:?}: {:?}",
        lines[0]
    );
}

/// (Test 13d) An unknown flag: non-zero exit and a one-line message naming it.
#[test]
fn unknown_flag_is_rejected_with_one_line() {
    assert_rejected(&["--no-such-flag"], "--no-such-flag");
}

/// (Test 13e) A bad value: non-zero exit and a one-line message naming it.
#[test]
fn bad_protocol_value_is_rejected_with_one_line() {
    assert_rejected(&["--otlp-protocol", "carrier-pigeon"], "carrier-pigeon");
}
