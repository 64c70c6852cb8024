//! End-to-end HTTP span tests on loopback: real servers (python http.server,
//! Flask, the Rust helper server) and real clients (curl, requests, a raw
//! pipelining client) traced by the real agent, spans checked at a real OTLP
//! receiver. Requires root and a built agent (see `tracer_tests::agent`).

use std::process::Command;

use tracer_tests::agent::{Agent, AgentArgs};
use tracer_tests::check;
use tracer_tests::peers::{self, Peer};
use tracer_tests::receiver::{ReceivedSpan, Receiver, Status, dump};
use tracer_tests::{QUIET, SPAN_TIMEOUT, require_root, urls};

fn server_at(path: &str) -> impl Fn(&ReceivedSpan) -> bool + '_ {
    move |s| s.is_server() && s.url_path() == Some(path)
}

fn client_at(path: &str) -> impl Fn(&ReceivedSpan) -> bool + '_ {
    move |s| s.is_client() && s.url_path() == Some(path)
}

/// Waits for exactly one SERVER and one CLIENT span for `path` and checks the
/// CLIENT -> SERVER link (same trace, parent, nested times).
fn exchange(receiver: &Receiver, path: &str) -> (ReceivedSpan, ReceivedSpan) {
    let server = receiver.wait_exactly(
        &format!("SERVER {path}"),
        1,
        SPAN_TIMEOUT,
        QUIET,
        server_at(path),
    );
    let client = receiver.wait_exactly(
        &format!("CLIENT {path}"),
        1,
        SPAN_TIMEOUT,
        QUIET,
        client_at(path),
    );
    let (server, client) = (server[0].clone(), client[0].clone());
    check::ids_valid(&server);
    check::ids_valid(&client);
    check::child_of(&server, &client);
    check::within(&server, &client);
    (client, server)
}

fn curl() -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-f", "-o", "/dev/null"]);
    cmd
}

/// (Test 1) `python3 -m http.server` + curl: one SERVER and one CLIENT span with the
/// right services, names, attributes, linkage and nesting.
#[test]
fn http_server_and_curl_on_loopback() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let dir = tracer_tests::scratch_dir("http-server");
    std::fs::write(dir.join("hello.txt"), "hello from the e2e suite\n").unwrap();
    let mut cmd = Command::new(peers::python());
    cmd.args([
        "-m",
        "http.server",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--directory",
    ])
    .arg(&dir);
    let server = Peer::server("http.server", cmd, ([127, 0, 0, 1], port).into());
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let mut c = curl();
    c.arg(format!("http://127.0.0.1:{port}/hello.txt"));
    let client_out = peers::run_client(c);

    let (client, srv) = exchange(&receiver, "/hello.txt");
    check::root(&client);

    // Server side.
    assert_eq!(
        srv.service_name(),
        Some("http.server"),
        "server service.name\n    {srv}"
    );
    assert_eq!(
        srv.pid(),
        Some(server.pid() as i64),
        "server process.pid\n    {srv}"
    );
    assert_eq!(srv.name, "GET /hello.txt");
    check::attr_str(&srv, "http.request.method", "GET");
    check::attr_str(&srv, "url.path", "/hello.txt");
    check::attr_str(&srv, "http.route", "/hello.txt");
    check::attr_int(&srv, "http.response.status_code", 200);
    check::attr_int(&srv, "server.port", port as i64);
    check::attr_str(&srv, "client.address", "127.0.0.1");
    check::attr_str(&srv, "network.peer.address", "127.0.0.1");
    let client_port = srv.attr_int("network.peer.port").unwrap_or(0);
    assert!(
        client_port > 0 && client_port != port as i64,
        "server span peer port must be curl's port\n    {srv}"
    );
    assert!(
        srv.attr_str("user_agent.original")
            .is_some_and(|ua| ua.starts_with("curl/")),
        "user_agent.original\n    {srv}"
    );
    assert_ne!(
        srv.status,
        Status::Error,
        "200 must not be an error\n    {srv}"
    );
    for key in [
        "process.executable.name",
        "process.command_line",
        "host.name",
    ] {
        assert!(
            srv.resource.contains_key(key),
            "resource attribute {key} missing\n    {srv}\n    {:?}",
            srv.resource
        );
    }
    assert!(
        srv.resource
            .get("process.command_line")
            .and_then(|v| v.as_str())
            .is_some_and(|c| c.contains("http.server")),
        "process.command_line of the server: {:?}",
        srv.resource
    );

    // Client side.
    assert_eq!(
        client.service_name(),
        Some("curl"),
        "client service.name\n    {client}"
    );
    assert_eq!(
        client.pid(),
        Some(client_out.pid as i64),
        "client process.pid\n    {client}"
    );
    assert_eq!(
        client
            .resource
            .get("process.executable.name")
            .and_then(|v| v.as_str()),
        Some("curl"),
        "client process.executable.name"
    );
    assert_eq!(client.name, "GET /hello.txt");
    check::attr_str(&client, "http.request.method", "GET");
    check::attr_int(&client, "http.response.status_code", 200);
    check::attr_str(&client, "network.peer.address", "127.0.0.1");
    check::attr_int(&client, "network.peer.port", port as i64);
    check::attr_int(&client, "server.port", port as i64);
    assert_ne!(
        client.status,
        Status::Error,
        "200 must not be an error\n    {client}"
    );

    agent.stop();
}

/// (Test 2) Flask + requests.Session: five requests on one keep-alive connection
/// give five SERVER and five CLIENT spans, each pair matched by path.
#[test]
fn flask_keep_alive_five_requests_pair_up() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let flask = peers::flask_server(port, &["--keep-alive"], &[]);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let paths = [
        "/items/101",
        "/items/102",
        "/items/103",
        "/items/104",
        "/items/105",
    ];
    let out = peers::run_client(peers::python_client(&urls(port, &paths), &[]));

    let servers =
        receiver.wait_exactly("SERVER /items/*", 5, SPAN_TIMEOUT, QUIET, |s| s.is_server());
    let clients =
        receiver.wait_exactly("CLIENT /items/*", 5, SPAN_TIMEOUT, QUIET, |s| s.is_client());
    let mut peer_ports = Vec::new();
    for path in paths {
        let srv = check::one(&servers, &format!("SERVER {path}"), server_at(path));
        let cli = check::one(&clients, &format!("CLIENT {path}"), client_at(path));
        check::child_of(srv, cli);
        check::within(srv, cli);
        assert_eq!(srv.name, "GET /items/{id}", "server span name\n    {srv}");
        assert_eq!(cli.name, "GET /items/{id}", "client span name\n    {cli}");
        check::attr_str(srv, "http.route", "/items/{id}");
        check::attr_int(srv, "http.response.status_code", 200);
        check::attr_int(cli, "http.response.status_code", 200);
        check::attr_str(srv, "network.protocol.version", "1.1");
        assert_eq!(
            srv.service_name(),
            Some("flask_app"),
            "server service.name\n    {srv}"
        );
        assert_eq!(srv.pid(), Some(flask.pid() as i64));
        assert_eq!(
            cli.service_name(),
            Some("client"),
            "client service.name\n    {cli}"
        );
        assert_eq!(cli.pid(), Some(out.pid as i64));
        assert!(
            srv.attr_str("user_agent.original")
                .is_some_and(|ua| ua.starts_with("python-requests/")),
            "user_agent.original\n    {srv}"
        );
        peer_ports.push(srv.attr_int("network.peer.port"));
    }
    assert!(
        peer_ports
            .iter()
            .all(|p| p.is_some() && *p == peer_ports[0]),
        "all five requests went over one keep-alive connection, so every SERVER span must have the same peer port: {peer_ports:?}"
    );
    // Distinct traces: each request is its own root.
    let mut traces: Vec<&str> = clients.iter().map(|c| c.trace_id.as_str()).collect();
    traces.sort();
    traces.dedup();
    assert_eq!(
        traces.len(),
        5,
        "each request is its own trace:\n{}",
        dump(&clients)
    );

    agent.stop();
}

/// (Test 3) A non-Python (Rust, std-only) server: spans carry its executable name
/// and the status codes it answered with.
#[test]
fn rust_server_spans() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let server = peers::rust_server(port);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    peers::run_client(peers::python_client(
        &urls(port, &["/hello/world", "/status/201"]),
        &[],
    ));

    let (cli, srv) = exchange(&receiver, "/hello/world");
    assert_eq!(
        srv.service_name(),
        Some("rust_http_server"),
        "service.name of a binary is its executable name\n    {srv}"
    );
    assert_eq!(
        srv.resource
            .get("process.executable.name")
            .and_then(|v| v.as_str()),
        Some("rust_http_server")
    );
    assert_eq!(srv.pid(), Some(server.pid() as i64));
    check::attr_int(&srv, "http.response.status_code", 200);
    check::attr_int(&cli, "http.response.status_code", 200);
    assert_eq!(srv.name, "GET /hello/world");

    let (cli, srv) = exchange(&receiver, "/status/201");
    check::attr_int(&srv, "http.response.status_code", 201);
    check::attr_int(&cli, "http.response.status_code", 201);
    assert_ne!(srv.status, Status::Error);
    assert_ne!(cli.status, Status::Error);

    agent.stop();
}

/// (Test 4) client -> Flask A -> Flask B: four spans in one trace, each linked to
/// its parent (CLIENT -> SERVER across processes, SERVER -> CLIENT inside A),
/// children nested in their parents' time.
#[test]
fn two_hop_chain_is_one_trace() {
    require_root();
    let receiver = Receiver::start();
    let (port_a, port_b) = (peers::free_port(), peers::free_port());
    let b = peers::flask_server(port_b, &[], &[]);
    let downstream = format!("http://127.0.0.1:{port_b}");
    let a = peers::flask_server(port_a, &["--downstream", &downstream], &[]);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port_a, port_b]));

    let out = peers::run_client(peers::python_client(&urls(port_a, &["/chain"]), &[]));

    let (pa, pb, pc) = (a.pid() as i64, b.pid() as i64, out.pid as i64);
    let user_client = receiver.wait_exactly(
        "CLIENT /chain from the client",
        1,
        SPAN_TIMEOUT,
        QUIET,
        |s| s.is_client() && s.url_path() == Some("/chain"),
    );
    let a_server = receiver.wait_exactly("SERVER /chain in A", 1, SPAN_TIMEOUT, QUIET, |s| {
        s.is_server() && s.url_path() == Some("/chain")
    });
    let a_client = receiver.wait_exactly("CLIENT /items/7 from A", 1, SPAN_TIMEOUT, QUIET, |s| {
        s.is_client() && s.url_path() == Some("/items/7")
    });
    let b_server = receiver.wait_exactly("SERVER /items/7 in B", 1, SPAN_TIMEOUT, QUIET, |s| {
        s.is_server() && s.url_path() == Some("/items/7")
    });
    let (uc, asv, ac, bs) = (&user_client[0], &a_server[0], &a_client[0], &b_server[0]);

    assert_eq!(
        uc.pid(),
        Some(pc),
        "the /chain CLIENT span belongs to the client process\n    {uc}"
    );
    assert_eq!(
        asv.pid(),
        Some(pa),
        "the /chain SERVER span belongs to A\n    {asv}"
    );
    assert_eq!(
        ac.pid(),
        Some(pa),
        "the /items/7 CLIENT span belongs to A\n    {ac}"
    );
    assert_eq!(
        bs.pid(),
        Some(pb),
        "the /items/7 SERVER span belongs to B\n    {bs}"
    );

    check::root(uc);
    check::child_of(asv, uc);
    check::child_of(ac, asv);
    check::child_of(bs, ac);
    // Werkzeug's threaded server reads the request and runs the handler on one thread.
    check::attr_str(ac, "tracer.link.method", "thread");
    check::attr_str(bs, "tracer.link.method", "same_host");
    check::within(asv, uc);
    check::within(ac, asv);
    check::within(bs, ac);
    for s in [uc, asv, ac, bs] {
        check::attr_int(s, "http.response.status_code", 200);
    }
    check::attr_int(ac, "server.port", port_b as i64);
    check::attr_int(ac, "network.peer.port", port_b as i64);

    agent.stop();
}

/// (Test 6) Three pipelined requests in one write: three SERVER spans, each with
/// its own path and status, in request order.
#[test]
fn pipelined_requests_to_rust_server() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = peers::rust_server(port);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let paths = ["/first", "/status/404", "/third"];
    let mut cmd = peers::python_script("pipeline_client.py");
    cmd.args(["127.0.0.1", &port.to_string()]).args(paths);
    let out = peers::run_client(cmd);
    assert_eq!(
        out.stdout.lines().count(),
        3,
        "pipeline client output: {}",
        out.stdout
    );

    let servers = receiver.wait_exactly("3 pipelined SERVER spans", 3, SPAN_TIMEOUT, QUIET, |s| {
        s.is_server()
    });
    let expected = [("/first", 200), ("/status/404", 404), ("/third", 200)];
    let mut ordered = Vec::new();
    for (path, status) in expected {
        let s = check::one(&servers, &format!("SERVER {path}"), server_at(path));
        check::attr_int(s, "http.response.status_code", status);
        check::attr_str(s, "http.request.method", "GET");
        assert_ne!(
            s.status,
            Status::Error,
            "a 404 is not a SERVER error\n    {s}"
        );
        ordered.push(s);
    }
    let peer_port = ordered[0].attr_int("network.peer.port");
    assert!(
        ordered
            .iter()
            .all(|s| s.attr_int("network.peer.port") == peer_port && peer_port.is_some()),
        "one connection:\n{}",
        dump(&servers)
    );
    for w in ordered.windows(2) {
        assert!(
            w[0].start_ns <= w[1].start_ns && w[0].end_ns <= w[1].end_ns,
            "pipelined spans must follow request order:\n    {}\n    {}",
            w[0],
            w[1]
        );
    }

    agent.stop();
}

/// (Test 7) A 200 KB response with `--capture-bytes 256`, then a second request
/// on the same keep-alive connection: both exchanges are parsed correctly.
#[test]
fn large_response_then_keep_alive_request() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _flask = peers::flask_server(port, &["--keep-alive"], &[]);
    let mut agent = Agent::start(
        &AgentArgs::grpc(&receiver)
            .ports(&[port])
            .args(["--capture-bytes", "256"]),
    );

    peers::run_client(peers::python_client(
        &urls(port, &["/bytes/200000", "/items/2"]),
        &[],
    ));

    let (cli_big, srv_big) = exchange(&receiver, "/bytes/200000");
    let (cli_small, srv_small) = exchange(&receiver, "/items/2");
    for s in [&cli_big, &srv_big, &cli_small, &srv_small] {
        check::attr_int(s, "http.response.status_code", 200);
        assert_ne!(s.status, Status::Error, "{s}");
    }
    assert_eq!(srv_small.name, "GET /items/{id}");
    assert_eq!(
        srv_big.attr_int("network.peer.port"),
        srv_small.attr_int("network.peer.port"),
        "both requests used one keep-alive connection\n    {srv_big}\n    {srv_small}"
    );
    assert!(
        srv_big.end_ns <= srv_small.start_ns,
        "second exchange starts after the first ends\n    {srv_big}\n    {srv_small}"
    );

    agent.stop();
}

/// (Test 8) Status mapping: 500 is ERROR on both sides; 404 is ERROR only on the
/// CLIENT span; 200 is never ERROR.
#[test]
fn error_status_mapping() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _flask = peers::flask_server(port, &[], &[]);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    peers::run_client(peers::python_client(
        &urls(port, &["/error", "/missing/page", "/items/3"]),
        &["--allow-errors"],
    ));

    let (cli, srv) = exchange(&receiver, "/error");
    check::attr_int(&srv, "http.response.status_code", 500);
    assert_eq!(
        srv.status,
        Status::Error,
        "500 => SERVER span ERROR\n    {srv}"
    );
    assert_eq!(
        cli.status,
        Status::Error,
        "500 => CLIENT span ERROR\n    {cli}"
    );

    let (cli, srv) = exchange(&receiver, "/missing/page");
    check::attr_int(&srv, "http.response.status_code", 404);
    check::attr_int(&cli, "http.response.status_code", 404);
    assert_ne!(
        srv.status,
        Status::Error,
        "404 => SERVER span not ERROR\n    {srv}"
    );
    assert_eq!(
        cli.status,
        Status::Error,
        "404 => CLIENT span ERROR\n    {cli}"
    );

    let (cli, srv) = exchange(&receiver, "/items/3");
    assert_ne!(srv.status, Status::Error, "200 => not ERROR\n    {srv}");
    assert_ne!(cli.status, Status::Error, "200 => not ERROR\n    {cli}");

    agent.stop();
}

/// (Test 12) `OTEL_SERVICE_NAME` in a traced process's environment names its
/// service; a process without it keeps the derived name.
#[test]
fn otel_service_name_from_process_environment() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _flask = peers::flask_server(port, &[], &[("OTEL_SERVICE_NAME", "custom-name")]);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let mut client = peers::python_client(&urls(port, &["/api/named"]), &[]);
    client.env_remove("OTEL_SERVICE_NAME");
    peers::run_client(client);

    let (cli, srv) = exchange(&receiver, "/api/named");
    assert_eq!(
        srv.service_name(),
        Some("custom-name"),
        "server has OTEL_SERVICE_NAME=custom-name\n    {srv}"
    );
    assert_eq!(
        cli.service_name(),
        Some("client"),
        "client has no OTEL_SERVICE_NAME: name from `python3 client.py`\n    {cli}"
    );

    agent.stop();
}
