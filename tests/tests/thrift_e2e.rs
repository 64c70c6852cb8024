//! End-to-end Thrift span tests on loopback: real Thrift peers (thriftpy2 servers and
//! clients, Apache `thrift` over THeader, a Rust `thrift` crate client, a Flask gateway with a
//! pool of Thrift connections) traced by the real agent, spans checked at a real OTLP
//! receiver. Requires root and a built agent (see `tracer_tests::agent`).
//!
//! The peers speak the services of `tests/peers/thrift_service.thrift`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Command;

use tracer_tests::agent::{Agent, AgentArgs};
use tracer_tests::check;
use tracer_tests::peers::{self, ClientOutput, Peer};
use tracer_tests::receiver::{ReceivedSpan, Receiver, Status, dump};
use tracer_tests::{QUIET, SPAN_TIMEOUT, fresh_ids, require_root};

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// `thriftpy_server.py --port P extra...`, waited for until it accepts.
fn thriftpy_server(port: u16, extra: &[&str]) -> Peer {
    let mut cmd = peers::python_script("thriftpy_server.py");
    cmd.args(["--port", &port.to_string()]).args(extra);
    Peer::server("thriftpy_server", cmd, loopback(port))
}

/// Runs `thriftpy_client.py --port P extra... calls...` to a zero exit.
fn thriftpy_client(port: u16, extra: &[&str], calls: &[&str]) -> ClientOutput {
    let mut cmd = peers::python_script("thriftpy_client.py");
    cmd.args(["--port", &port.to_string()])
        .args(extra)
        .args(calls);
    peers::run_client(cmd)
}

/// Asserts the client printed `line` (the call really happened as expected).
fn printed(out: &ClientOutput, line: &str) {
    assert!(
        out.stdout.lines().any(|l| l.trim() == line),
        "client output lacks {line:?}:\n{}",
        out.stdout
    );
}

fn is_thrift(s: &ReceivedSpan) -> bool {
    s.attr_str("rpc.system") == Some("thrift")
}

/// Waits for exactly one CLIENT and one SERVER Thrift span named `name` and checks the
/// pair: ids valid, SERVER the child of CLIENT, times nested, `rpc.*` attributes, peer
/// attributes against `port` (the server's). Returns (client, server).
fn thrift_pair(receiver: &Receiver, name: &str, port: u16) -> (ReceivedSpan, ReceivedSpan) {
    let client = receiver.wait_exactly(
        &format!("Thrift CLIENT {name}"),
        1,
        SPAN_TIMEOUT,
        QUIET,
        |s| s.is_client() && is_thrift(s) && s.name == name,
    );
    let server = receiver.wait_exactly(
        &format!("Thrift SERVER {name}"),
        1,
        SPAN_TIMEOUT,
        QUIET,
        |s| s.is_server() && is_thrift(s) && s.name == name,
    );
    let (client, server) = (client[0].clone(), server[0].clone());
    check::ids_valid(&client);
    check::ids_valid(&server);
    check::child_of(&server, &client);
    nested_unless_oneway(&server, &client);
    check::attr_str(&server, "tracer.link.method", "same_host");
    let (service, method) = match name.split_once('/') {
        Some((service, method)) => (Some(service), method),
        None => (None, name),
    };
    for s in [&client, &server] {
        check::attr_str(s, "rpc.system", "thrift");
        check::attr_str(s, "rpc.method", method);
        assert_eq!(
            s.attr_str("rpc.service"),
            service,
            "rpc.service of\n    {s}"
        );
        check::attr_str(s, "network.transport", "tcp");
        check::attr_str(s, "network.peer.address", "127.0.0.1");
        check::attr_int(s, "server.port", port as i64);
        assert_eq!(
            s.attr("rpc.thrift.truncated"),
            None,
            "nothing was cut off\n    {s}"
        );
    }
    check::attr_int(&client, "network.peer.port", port as i64);
    let peer_port = server.attr_int("network.peer.port").unwrap_or(0);
    assert!(
        peer_port > 0 && peer_port != port as i64,
        "the SERVER span's peer port must be the client's ephemeral port\n    {server}"
    );
    check::attr_int(&server, "client.port", peer_port);
    (client, server)
}

/// Methods of `thrift_service.thrift` declared `oneway`.
const ONEWAY: [&str; 1] = ["notify"];

/// A SERVER span lies within its CLIENT span, except for a oneway call: its CLIENT span
/// ends when the write returns, and the server may read the message only after that; then
/// the SERVER span must still start no earlier than the CLIENT span.
fn nested_unless_oneway(server: &ReceivedSpan, client: &ReceivedSpan) {
    if ONEWAY.contains(&client.name.rsplit('/').next().unwrap_or("")) {
        assert!(
            client.start_ns <= server.start_ns && server.start_ns <= server.end_ns,
            "oneway: the SERVER span starts after the CLIENT span did
    {server}
    {client}"
        );
    } else {
        check::within(server, client);
    }
}

/// Checks protocol and transport attributes on both spans of a pair.
fn encoding(pair: &(ReceivedSpan, ReceivedSpan), protocol: &str, transport: &str) {
    for s in [&pair.0, &pair.1] {
        check::attr_str(s, "rpc.thrift.protocol", protocol);
        check::attr_str(s, "rpc.thrift.transport", transport);
    }
}

fn not_error(s: &ReceivedSpan) {
    assert_ne!(
        s.status,
        Status::Error,
        "a successful call is not an error\n    {s}"
    );
}

/// All pairs went over one connection: the SERVER spans share the client's port.
fn one_connection(pairs: &[&(ReceivedSpan, ReceivedSpan)]) {
    let ports: BTreeSet<Option<i64>> = pairs
        .iter()
        .map(|(_, s)| s.attr_int("network.peer.port"))
        .collect();
    assert_eq!(
        ports.len(),
        1,
        "all calls used one connection, so every SERVER span has the same peer port: {ports:?}\n{}",
        dump(&pairs.iter().map(|(_, s)| s.clone()).collect::<Vec<_>>())
    );
}

/// Each call is its own trace, rooted at its CLIENT span.
fn separate_roots(pairs: &[&(ReceivedSpan, ReceivedSpan)]) {
    let mut traces = BTreeSet::new();
    for (client, _) in pairs {
        check::root(client);
        traces.insert(client.trace_id.clone());
    }
    assert_eq!(traces.len(), pairs.len(), "each call is its own trace");
}

/// Calls in program order: each CLIENT span starts after the previous one ended.
fn in_order(pairs: &[&(ReceivedSpan, ReceivedSpan)]) {
    for w in pairs.windows(2) {
        assert!(
            w[0].0.end_ns <= w[1].0.start_ns,
            "calls are sequential on one connection:\n    {}\n    {}",
            w[0].0,
            w[1].0
        );
    }
}

/// (Thrift 1) thriftpy2 `make_server` (binary, buffered, thread per connection) and a
/// thriftpy2 client making three calls on one connection: one CLIENT and one SERVER span
/// per call, named after the method, linked CLIENT -> SERVER, with process resources.
#[test]
fn thriftpy_binary_buffered_calls() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let server = thriftpy_server(port, &[]);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let out = thriftpy_client(port, &[], &["add:1:2", "echo:hello thrift", "events"]);
    printed(&out, "add:1:2 -> 3");
    printed(&out, "echo:hello thrift -> 'hello thrift'");

    let add = thrift_pair(&receiver, "add", port);
    let echo = thrift_pair(&receiver, "echo", port);
    let events = thrift_pair(&receiver, "events", port);
    let pairs = [&add, &echo, &events];
    for pair in pairs {
        encoding(pair, "binary", "buffered");
        let (client, srv) = pair;
        not_error(client);
        not_error(srv);
        assert_eq!(
            srv.service_name(),
            Some("thriftpy_server"),
            "server service.name\n    {srv}"
        );
        assert_eq!(
            srv.pid(),
            Some(server.pid() as i64),
            "server process.pid\n    {srv}"
        );
        assert_eq!(
            client.service_name(),
            Some("thriftpy_client"),
            "client service.name\n    {client}"
        );
        assert_eq!(
            client.pid(),
            Some(out.pid as i64),
            "client process.pid\n    {client}"
        );
    }
    one_connection(&pairs);
    separate_roots(&pairs);
    in_order(&pairs);
    let all_thrift = receiver.spans().iter().filter(|s| is_thrift(s)).count();
    assert_eq!(
        all_thrift,
        6,
        "three calls, six Thrift spans:\n{}",
        dump(&receiver.spans())
    );

    agent.stop();
}

/// (Thrift 2) Compact protocol over framed transport (thriftpy2 factories on both ends).
#[test]
fn thriftpy_compact_framed_calls() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let opts = ["--protocol", "compact", "--transport", "framed"];
    let _server = thriftpy_server(port, &opts);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let out = thriftpy_client(
        port,
        &opts,
        &["add:40:2", "echo:compact and framed", "events"],
    );
    printed(&out, "add:40:2 -> 42");

    let add = thrift_pair(&receiver, "add", port);
    let echo = thrift_pair(&receiver, "echo", port);
    let events = thrift_pair(&receiver, "events", port);
    let pairs = [&add, &echo, &events];
    for pair in pairs {
        encoding(pair, "compact", "framed");
        not_error(&pair.0);
        not_error(&pair.1);
    }
    one_connection(&pairs);
    separate_roots(&pairs);
    in_order(&pairs);

    agent.stop();
}

/// (Thrift 3) Multiplexed services on one connection: spans named `Service/method` with
/// `rpc.service`.
#[test]
fn thriftpy_multiplexed_services() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = thriftpy_server(port, &["--multiplexed"]);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let out = thriftpy_client(
        port,
        &["--multiplexed"],
        &["add:2:3", "greet:ann", "echo:mux"],
    );
    printed(&out, "greet:ann -> 'hello ann'");

    let add = thrift_pair(&receiver, "Calculator/add", port);
    let greet = thrift_pair(&receiver, "Greeter/greet", port);
    let echo = thrift_pair(&receiver, "Calculator/echo", port);
    let pairs = [&add, &greet, &echo];
    for pair in pairs {
        encoding(pair, "binary", "buffered");
        not_error(&pair.0);
        not_error(&pair.1);
    }
    check::attr_str(&greet.0, "rpc.service", "Greeter");
    check::attr_str(&add.1, "rpc.service", "Calculator");
    one_connection(&pairs);
    separate_roots(&pairs);
    in_order(&pairs);

    agent.stop();
}

/// (Thrift 4) A declared exception (`CalcError`) and an undeclared error (a
/// `TApplicationException`): both spans of each are ERROR with the exception's message;
/// the call after them on the same connection is fine (the stream stayed in sync).
#[test]
fn thriftpy_exceptions_are_errors() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = thriftpy_server(port, &[]);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let out = thriftpy_client(port, &[], &["divide:7:0", "crash:boom", "divide:7:2"]);
    printed(&out, "divide:7:0 !! CalcError('division by zero', 22)");
    printed(
        &out,
        "crash:boom !! TApplicationException(6, 'crash: boom')",
    );
    printed(&out, "divide:7:2 -> 3");

    let divides: Vec<ReceivedSpan> =
        receiver.wait_exactly("4 divide spans", 4, SPAN_TIMEOUT, QUIET, |s| {
            is_thrift(s) && s.name == "divide"
        });
    let (crash_client, crash_server) = thrift_pair(&receiver, "crash", port);
    for s in [&crash_client, &crash_server] {
        assert_eq!(
            s.status,
            Status::Error,
            "TApplicationException => ERROR\n    {s}"
        );
        assert!(
            s.status_message.contains("crash: boom"),
            "status message carries the TApplicationException's message\n    {s}"
        );
    }
    // The first divide raised, the second did not: tell them apart by time.
    let mut clients: Vec<&ReceivedSpan> = divides.iter().filter(|s| s.is_client()).collect();
    let mut servers: Vec<&ReceivedSpan> = divides.iter().filter(|s| s.is_server()).collect();
    clients.sort_by_key(|s| s.start_ns);
    servers.sort_by_key(|s| s.start_ns);
    assert!(
        clients.len() == 2 && servers.len() == 2,
        "two divide calls:\n{}",
        dump(&divides)
    );
    for (client, server) in clients.iter().zip(&servers) {
        check::child_of(server, client);
        check::within(server, client);
    }
    for s in [clients[0], servers[0]] {
        assert_eq!(
            s.status,
            Status::Error,
            "declared exception => ERROR\n    {s}"
        );
        assert!(
            s.status_message.contains("division by zero"),
            "status message carries the declared exception's message\n    {s}"
        );
        check::attr_int(s, "rpc.thrift.exception_field", 1);
    }
    for s in [clients[1], servers[1]] {
        not_error(s);
        assert_eq!(s.attr("rpc.thrift.exception_field"), None, "{s}");
    }
    assert!(
        crash_client.start_ns >= clients[0].end_ns && crash_client.end_ns <= clients[1].start_ns
    );

    agent.stop();
}

/// (Thrift 5) A oneway call: one CLIENT and one SERVER span, not errors, the CLIENT span
/// ends with its write (no reply awaited, no request left hanging until the timeout or the
/// agent's shutdown); the call after it pairs normally.
#[test]
fn thriftpy_oneway_call() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = thriftpy_server(port, &[]);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let out = thriftpy_client(port, &[], &["notify:first-event", "events"]);
    printed(&out, "events -> 'first-event'");

    let notify = thrift_pair(&receiver, "notify", port);
    let events = thrift_pair(&receiver, "events", port);
    for s in [&notify.0, &notify.1, &events.0, &events.1] {
        not_error(s);
    }
    assert!(
        notify.0.end_ns <= events.0.start_ns,
        "the oneway CLIENT span ends before the next call starts\n    {}\n    {}",
        notify.0,
        events.0
    );
    one_connection(&[&notify, &events]);
    separate_roots(&[&notify, &events]);

    // Nothing else turns up at shutdown (a hanging oneway request would be flushed then).
    agent.stop();
    std::thread::sleep(QUIET);
    let thrift: Vec<ReceivedSpan> = receiver.spans().into_iter().filter(is_thrift).collect();
    assert_eq!(
        thrift.len(),
        4,
        "exactly four Thrift spans, also after shutdown:\n{}",
        dump(&thrift)
    );
}

/// (Thrift 6) Apache `thrift` over THeader (binary and compact payloads); calls whose
/// THeader carries a `traceparent` give spans in that trace with that parent, a call
/// without one gives a same-host CLIENT -> SERVER pair.
#[test]
fn apache_theader_traceparent() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let mut cmd = peers::python_script("apache_thrift_header.py");
    cmd.args(["server", "--port", &port.to_string()]);
    let _server = Peer::server("apache_thrift_header", cmd, loopback(port));
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let (t1, s1) = fresh_ids();
    let (t2, s2) = fresh_ids();
    let (t3, s3) = fresh_ids();
    let run = |protocol: &str, calls: &[String]| {
        let mut cmd = peers::python_script("apache_thrift_header.py");
        cmd.args([
            "client",
            "--port",
            &port.to_string(),
            "--protocol",
            protocol,
        ])
        .args(calls);
        peers::run_client(cmd)
    };
    let out = run(
        "binary",
        &[
            format!("first@00-{t1}-{s1}-01"),
            "plain".into(),
            format!("third@00-{t2}-{s2}-01"),
        ],
    );
    printed(&out, "plain -> plain");
    let out = run("compact", &[format!("compact@00-{t3}-{s3}-01")]);
    printed(&out, "compact -> compact");

    let spans = receiver.wait_exactly("8 Thrift echo spans", 8, SPAN_TIMEOUT, QUIET, |s| {
        is_thrift(s) && s.name == "echo"
    });
    for s in &spans {
        check::attr_str(s, "rpc.thrift.transport", "header");
        check::attr_str(s, "rpc.method", "echo");
        not_error(s);
    }
    for (label, trace, parent, protocol) in [
        ("first", &t1, &s1, "binary"),
        ("third", &t2, &s2, "binary"),
        ("compact", &t3, &s3, "compact"),
    ] {
        let client = check::one(&spans, &format!("CLIENT {label} in trace {trace}"), |s| {
            s.is_client() && &s.trace_id == trace
        });
        let server = check::one(&spans, &format!("SERVER {label} in trace {trace}"), |s| {
            s.is_server() && &s.trace_id == trace
        });
        for s in [client, server] {
            assert_eq!(
                s.parent_span_id.as_deref(),
                Some(parent.as_str()),
                "[{label}] parent from the THeader traceparent\n    {s}"
            );
            check::attr_str(s, "tracer.link.method", "context");
            check::attr_str(s, "rpc.thrift.protocol", protocol);
        }
        assert_ne!(client.span_id, server.span_id);
        check::within(server, client);
    }
    let injected = [&t1, &t2, &t3];
    let plain: Vec<ReceivedSpan> = spans
        .iter()
        .filter(|s| !injected.contains(&&s.trace_id))
        .cloned()
        .collect();
    let client = check::one(&plain, "CLIENT plain", |s| s.is_client());
    let server = check::one(&plain, "SERVER plain", |s| s.is_server());
    check::root(client);
    check::child_of(server, client);
    check::within(server, client);
    check::attr_str(server, "tracer.link.method", "same_host");

    agent.stop();
}

/// Path of the `rust_thrift_client` helper built with this crate.
fn rust_thrift_client(port: u16, extra: &[&str], calls: &[&str]) -> ClientOutput {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rust_thrift_client"));
    cmd.args(["--connect", &format!("127.0.0.1:{port}")])
        .args(extra)
        .args(calls);
    peers::run_client(cmd)
}

/// (Thrift 7) A non-Python peer: the Rust `thrift` crate as client (sequence ids 1, 2, ...,
/// unlike thriftpy2's constant 0) to thriftpy2 servers, binary/buffered and compact/framed.
#[test]
fn rust_client_to_thriftpy_server() {
    require_root();
    let receiver = Receiver::start();
    let (p1, p2) = (peers::free_port(), peers::free_port());
    let _binary = thriftpy_server(p1, &[]);
    let compact_opts = ["--protocol", "compact", "--transport", "framed"];
    let _compact = thriftpy_server(p2, &compact_opts);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[p1, p2]));

    let calls = [
        "add:5:6",
        "echo:from rust",
        "divide:1:0",
        "notify:rust-event",
    ];
    let out1 = rust_thrift_client(p1, &[], &calls);
    printed(&out1, "add:5:6 -> 11");
    printed(&out1, "divide:1:0 -> CalcError");
    let out2 = rust_thrift_client(p2, &compact_opts, &calls);
    printed(&out2, "echo:from rust -> from rust");

    for (port, out, protocol, transport) in [
        (p1, &out1, "binary", "buffered"),
        (p2, &out2, "compact", "framed"),
    ] {
        let on_port = |s: &ReceivedSpan| s.attr_int("server.port") == Some(port as i64);
        let mut pairs = Vec::new();
        for name in ["add", "echo", "divide", "notify"] {
            let client = receiver.wait_exactly(
                &format!("CLIENT {name} :{port}"),
                1,
                SPAN_TIMEOUT,
                QUIET,
                |s| s.is_client() && is_thrift(s) && s.name == name && on_port(s),
            );
            let server = receiver.wait_exactly(
                &format!("SERVER {name} :{port}"),
                1,
                SPAN_TIMEOUT,
                QUIET,
                |s| s.is_server() && is_thrift(s) && s.name == name && on_port(s),
            );
            let (client, server) = (client[0].clone(), server[0].clone());
            check::child_of(&server, &client);
            nested_unless_oneway(&server, &client);
            check::attr_str(&server, "tracer.link.method", "same_host");
            assert_eq!(
                client.service_name(),
                Some("rust_thrift_client"),
                "{client}"
            );
            assert_eq!(client.pid(), Some(out.pid as i64), "{client}");
            pairs.push((client, server));
        }
        for pair in &pairs {
            encoding(pair, protocol, transport);
        }
        let refs: Vec<&(ReceivedSpan, ReceivedSpan)> = pairs.iter().collect();
        one_connection(&refs);
        separate_roots(&refs);
        in_order(&refs);
        let (divide_client, divide_server) = &pairs[2];
        for s in [divide_client, divide_server] {
            assert_eq!(
                s.status,
                Status::Error,
                "declared exception => ERROR\n    {s}"
            );
            assert!(s.status_message.contains("division by zero"), "{s}");
        }
        for (client, server) in [&pairs[0], &pairs[1], &pairs[3]] {
            not_error(client);
            not_error(server);
        }
    }

    agent.stop();
}

/// The Flask gateway test: `THREADS x REQUESTS` concurrent HTTP requests, each calling
/// Thrift through a pool of `POOL` connections; every span linked to the right parent.
fn flask_gateway_pool(eager: bool) {
    const THREADS: usize = 8;
    const REQUESTS: usize = 6;
    const POOL: usize = 3;
    require_root();
    let receiver = Receiver::start();
    let (thrift_port, http_port) = (peers::free_port(), peers::free_port());
    let _thrift = thriftpy_server(thrift_port, &["--tagged"]);
    let mut cmd = peers::python_script("flask_thrift_gateway.py");
    cmd.args([
        "--port",
        &http_port.to_string(),
        "--thrift-port",
        &thrift_port.to_string(),
        "--pool",
        &POOL.to_string(),
    ]);
    if eager {
        cmd.arg("--eager");
    }
    let gateway = Peer::server("flask_thrift_gateway", cmd, loopback(http_port));
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[http_port, thrift_port]));

    let mut load = peers::python_script("http_load.py");
    load.args([
        "--port",
        &http_port.to_string(),
        "--threads",
        &THREADS.to_string(),
        "--requests",
        &REQUESTS.to_string(),
    ]);
    let out = peers::run_client(load);
    let total = THREADS * REQUESTS;
    assert_eq!(out.stdout.trim(), total.to_string(), "load client output");

    let rids: Vec<String> = (0..THREADS)
        .flat_map(|t| (0..REQUESTS).map(move |i| format!("{t}-{i}")))
        .collect();
    let http_servers =
        receiver.wait_exactly("HTTP SERVER /call/*", total, SPAN_TIMEOUT, QUIET, |s| {
            s.is_server() && s.url_path().is_some_and(|p| p.starts_with("/call/"))
        });
    let http_clients =
        receiver.wait_exactly("HTTP CLIENT /call/*", total, SPAN_TIMEOUT, QUIET, |s| {
            s.is_client() && s.url_path().is_some_and(|p| p.starts_with("/call/"))
        });
    let thrift_clients = receiver.wait_exactly(
        "Thrift CLIENT req-*/echo",
        total,
        SPAN_TIMEOUT,
        QUIET,
        |s| s.is_client() && is_thrift(s),
    );
    // With the pool opened before the agent, each Thrift server thread was already blocked
    // in read() when the probes were attached: that first call per connection has no entry
    // record and is not seen on the server side (documented in ARCHITECTURE.md).
    let thrift_servers = if eager {
        receiver.wait_for(
            "Thrift SERVER req-*/echo",
            total - POOL,
            SPAN_TIMEOUT,
            |s| s.is_server() && is_thrift(s),
        );
        std::thread::sleep(QUIET);
        receiver
            .spans()
            .into_iter()
            .filter(|s| s.is_server() && is_thrift(s))
            .collect()
    } else {
        receiver.wait_exactly(
            "Thrift SERVER req-*/echo",
            total,
            SPAN_TIMEOUT,
            QUIET,
            |s| s.is_server() && is_thrift(s),
        )
    };
    let mut unseen_first_calls = 0;

    let mut wrong = Vec::new();
    let mut thrift_conns = BTreeMap::new();
    for rid in &rids {
        let path = format!("/call/{rid}");
        let name = format!("req-{rid}/echo");
        let hc = check::one(&http_clients, &format!("HTTP CLIENT {path}"), |s| {
            s.url_path() == Some(&path)
        });
        let hs = check::one(&http_servers, &format!("HTTP SERVER {path}"), |s| {
            s.url_path() == Some(&path)
        });
        let tc = check::one(&thrift_clients, &format!("Thrift CLIENT {name}"), |s| {
            s.name == name
        });
        let found: Vec<&ReceivedSpan> = thrift_servers.iter().filter(|s| s.name == name).collect();
        let ts = match found.as_slice() {
            [one] => *one,
            [] if eager => {
                unseen_first_calls += 1;
                tc
            }
            _ => check::one(&thrift_servers, &format!("Thrift SERVER {name}"), |s| {
                s.name == name
            }),
        };
        assert_eq!(
            tc.pid(),
            Some(gateway.pid() as i64),
            "Thrift CLIENT from the gateway\n    {tc}"
        );
        check::attr_str(tc, "rpc.service", &format!("req-{rid}"));
        // Collect every wrong link before failing, to show the whole picture.
        let links = [
            (hs, hc, "HTTP SERVER -> HTTP CLIENT"),
            (tc, hs, "Thrift CLIENT -> HTTP SERVER"),
            (ts, tc, "Thrift SERVER -> Thrift CLIENT"),
        ];
        let checked = if std::ptr::eq(ts, tc) {
            &links[..2]
        } else {
            &links[..]
        };
        for &(child, parent, what) in checked {
            if child.parent_span_id.as_deref() != Some(parent.span_id.as_str())
                || child.trace_id != parent.trace_id
            {
                wrong.push(format!(
                    "[{rid}] {what}:\n      child:  {child}\n      parent: {parent}"
                ));
            } else if !(parent.start_ns <= child.start_ns && child.end_ns <= parent.end_ns) {
                wrong.push(format!("[{rid}] {what} times not nested:\n      child:  {child}\n      parent: {parent}"));
            }
        }
        check::root(hc);
        if !std::ptr::eq(ts, tc) {
            *thrift_conns
                .entry(ts.attr_int("network.peer.port"))
                .or_insert(0) += 1;
        }
    }
    assert!(
        unseen_first_calls <= POOL,
        "{unseen_first_calls} Thrift SERVER spans missing, at most {POOL} (one per pre-opened connection) may be"
    );
    assert!(
        wrong.is_empty(),
        "{} wrong link(s):\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        thrift_conns.len() <= POOL && !thrift_conns.contains_key(&None),
        "Thrift calls went over the pool's {POOL} connections (peer port -> calls): {thrift_conns:?}"
    );

    agent.stop();
}

/// (Thrift 8) Flask (Werkzeug threaded) calling Thrift through a pool of long-lived
/// connections opened on demand, under 8 concurrent HTTP clients: every Thrift SERVER span
/// is the child of the right Thrift CLIENT span, which is the child of the Flask SERVER span
/// of the request that made it (request id in the URL path and in the Thrift service name);
/// counts exact.
#[test]
fn flask_gateway_thrift_pool_under_load() {
    flask_gateway_pool(false);
}

/// (Thrift 8b) Same, with the pool's connections opened before the agent started (the
/// agent first sees them mid-stream).
#[test]
fn flask_gateway_thrift_pool_opened_before_agent() {
    flask_gateway_pool(true);
}
