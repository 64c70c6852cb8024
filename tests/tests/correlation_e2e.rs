//! End-to-end tests of parent inference where neither propagated context nor thread
//! causality decides: a single-threaded asyncio hub serving two overlapping requests. With an
//! id copied from the inbound path into the outbound path, query or JSON body the agent links
//! by `content`; with
//! nothing to tell the two requests apart it must refuse to guess: the outbound CLIENT spans
//! stay roots, each with a span link to a candidate and a confidence below the threshold.
//! One request at a time, the event loop's calls link by `thread`; overlapping ones without
//! ids by the learned delay (`timing`). A waitress pool worker's calls link by `process` (the
//! one request in progress) and then by `thread_pool` (the worker keeps its request).

use std::net::SocketAddr;

use tracer_tests::agent::{Agent, AgentArgs};
use tracer_tests::check;
use tracer_tests::peers::{self, Peer};
use tracer_tests::receiver::{AttrValue, ReceivedSpan, Receiver};
use tracer_tests::{QUIET, SPAN_TIMEOUT, require_root};

fn loopback(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// Starts a receiver, a Rust downstream server, the asyncio hub (with `hub_args`) and the
/// agent on both ports; returns (receiver, hub port, hub, agent).
fn start_hub(hub_args: &[&str]) -> (&'static Receiver, u16, &'static Peer, Agent) {
    require_root();
    let receiver = Box::leak(Box::new(Receiver::start()));
    let (hub_port, down_port) = (peers::free_port(), peers::free_port());
    let _down = Box::leak(Box::new(peers::rust_server(down_port)));
    let mut cmd = peers::python_script("async_hub.py");
    cmd.args([
        "--port",
        &hub_port.to_string(),
        "--downstream-port",
        &down_port.to_string(),
    ])
    .args(hub_args);
    let hub = Box::leak(Box::new(Peer::server("async_hub", cmd, loopback(hub_port))));
    let agent = Agent::start(
        &AgentArgs::grpc(receiver)
            .ports(&[hub_port, down_port])
            .args(["--record-header", "x-test-rid"]),
    );
    (receiver, hub_port, hub, agent)
}

/// Starts the hub (copying the inbound id into the outbound `copy_id`: path, query, body, or
/// nowhere), drives /in/101 and /in/202 at once, and returns (hub SERVER spans, hub CLIENT
/// spans) once all have arrived.
fn run_hub(copy_id: Option<&str>) -> (Vec<ReceivedSpan>, Vec<ReceivedSpan>, Agent) {
    let hub_args: Vec<&str> = copy_id.map(|c| vec!["--copy-id", c]).unwrap_or_default();
    let (receiver, hub_port, hub, agent) = start_hub(&hub_args);

    let mut load = peers::python_script("concurrent_get.py");
    load.args([
        format!("http://127.0.0.1:{hub_port}/in/101"),
        format!("http://127.0.0.1:{hub_port}/in/202"),
    ]);
    peers::run_client(load);

    let hub_pid = i64::from(hub.pid());
    let servers = receiver.wait_exactly("hub SERVER /in/*", 2, SPAN_TIMEOUT, QUIET, |s| {
        s.is_server() && s.pid() == Some(hub_pid)
    });
    let clients = receiver.wait_exactly("hub CLIENT /down*", 2, SPAN_TIMEOUT, QUIET, |s| {
        s.is_client() && s.pid() == Some(hub_pid)
    });
    (servers, clients, agent)
}

fn confidence(span: &ReceivedSpan) -> f64 {
    match span.attributes.get("tracer.link.confidence") {
        Some(AttrValue::Double(c)) => *c,
        _ => f64::NAN,
    }
}

/// Both calls are children of the request whose id they carry, linked by `content`. Which
/// call carries which id is read from the `x-test-rid` header the agent records.
fn assert_linked_by_content(copy_id: &str) {
    let (servers, clients, mut agent) = run_hub(Some(copy_id));
    for id in ["101", "202"] {
        let inbound = format!("/in/{id}");
        let server = check::one(&servers, &inbound, |s| {
            s.url_path() == Some(inbound.as_str())
        });
        let client = check::one(&clients, &format!("call for {id}"), |s| {
            s.attr_str("http.request.header.x-test-rid") == Some(id)
        });
        check::child_of(client, server);
        check::within(client, server);
        check::attr_str(client, "tracer.link.method", "content");
        assert!(
            confidence(client) >= 0.9,
            "content links are confident\n    {client}"
        );
    }
    agent.stop();
}

#[test]
fn event_loop_calls_are_linked_by_an_id_copied_into_the_outbound_path() {
    assert_linked_by_content("path");
}

#[test]
fn event_loop_calls_are_linked_by_an_id_copied_into_the_outbound_query() {
    assert_linked_by_content("query");
}

#[test]
fn event_loop_calls_are_linked_by_an_id_copied_into_the_outbound_json_body() {
    assert_linked_by_content("body");
}

#[test]
fn indistinguishable_concurrent_candidates_give_roots_with_links_not_wrong_parents() {
    let (servers, clients, mut agent) = run_hub(None);
    let server_ids: Vec<&str> = servers.iter().map(|s| s.span_id.as_str()).collect();
    for client in &clients {
        check::root(client);
        check::attr_str(client, "tracer.link.method", "ambiguous");
        assert!(
            confidence(client) < 0.5,
            "below the default threshold\n    {client}"
        );
        assert_eq!(
            client.links.len(),
            1,
            "one span link to the best candidate\n    {client}"
        );
        assert!(
            server_ids.contains(&client.links[0].1.as_str()),
            "the link points at one of the in-progress requests\n    {client}"
        );
    }
    agent.stop();
}

/// GET `path` from a server over a fresh connection and read the whole answer: the head and
/// `Content-Length` bytes of body (the asyncio hub keeps the connection open).
fn get(port: u16, path: &str) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(loopback(port)).expect("connect");
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    while !complete(&answer) {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&chunk[..n]),
        }
    }
    assert!(
        answer.starts_with(b"HTTP/1.1 200") && complete(&answer),
        "{path} answered {:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// Whether `answer` holds a whole HTTP response with a `Content-Length` body.
fn complete(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|n| body.len() >= n)
}

#[test]
fn overlapping_calls_without_ids_are_assigned_by_the_learned_delay() {
    let (receiver, hub_port, hub, mut agent) = start_hub(&["--hold", "300"]);
    // One request at a time: the agent learns the delay from a request to its call (~300 ms).
    // One endpoint throughout: delays are learned per (request name, call name).
    for _ in 0..12 {
        get(hub_port, "/in/x");
    }
    // Two overlapping requests 150 ms apart: both are in progress during both calls, and only
    // the learned delay tells which call belongs to which request. (50 ms apart with a 100 ms
    // hold, a busy host's scheduling jitter made the two nearly simultaneous now and then.)
    let first = std::thread::spawn(move || get(hub_port, "/in/x"));
    std::thread::sleep(std::time::Duration::from_millis(150));
    get(hub_port, "/in/x");
    first.join().unwrap();

    let hub_pid = i64::from(hub.pid());
    let servers = receiver.wait_exactly("hub SERVER /in/*", 14, SPAN_TIMEOUT, QUIET, |s| {
        s.is_server() && s.pid() == Some(hub_pid)
    });
    let clients = receiver.wait_exactly("hub CLIENT /down", 14, SPAN_TIMEOUT, QUIET, |s| {
        s.is_client() && s.pid() == Some(hub_pid)
    });
    let mut by_start: Vec<&ReceivedSpan> = servers.iter().collect();
    by_start.sort_by_key(|s| s.start_ns);
    // One request at a time on the event loop: the thread serving it made the call.
    for server in &by_start[..12] {
        let call = check::one(&clients, "the call of a lone request", |c| {
            c.parent_span_id.as_deref() == Some(server.span_id.as_str())
        });
        check::attr_str(call, "tracer.link.method", "thread");
    }
    for (server, path) in by_start[12..].iter().zip(["first /in/x", "second /in/x"]) {
        let children: Vec<&ReceivedSpan> = clients
            .iter()
            .filter(|c| c.parent_span_id.as_deref() == Some(server.span_id.as_str()))
            .collect();
        let all: Vec<String> = clients.iter().map(|c| c.to_string()).collect();
        assert_eq!(
            children.len(),
            1,
            "one call under {path}\n    {server}\n  calls:\n{}",
            all.join("\n")
        );
        check::attr_str(children[0], "tracer.link.method", "timing");
        assert!(
            confidence(children[0]) >= 0.5,
            "a clearly better delay is above the default threshold\n    {}",
            children[0]
        );
        check::within(children[0], server);
    }
    agent.stop();
}

/// waitress reads requests on its I/O thread and runs the app on a pool worker, so the
/// worker's calls have no serving thread to follow. The first call of a lone request links
/// by `process` (the only request in progress) once its settling window passes, which
/// makes the worker claim the request; the second call, after that window, links by
/// `thread_pool`.
#[test]
fn a_pool_workers_calls_link_by_process_then_by_its_claim() {
    require_root();
    let receiver = Receiver::start();
    let (front_port, down_port) = (peers::free_port(), peers::free_port());
    let _down = peers::rust_server(down_port);
    let downstream = format!("http://127.0.0.1:{down_port}");
    let front = peers::flask_server(
        front_port,
        &[
            "--keep-alive",
            "--downstream",
            &downstream,
            "--pause-ms",
            "400",
        ],
        &[],
    );
    // The harness's settle time, 300 ms, gives a settling window of 60 ms: the first call is
    // decided long before the second.
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[front_port, down_port]));
    let twice = std::thread::spawn(move || get(front_port, "/twice"));
    // The agent's clock is its event stream: other traffic during the pause moves it past
    // the first call's window (on a quiet host the first call is decided with the second).
    std::thread::sleep(std::time::Duration::from_millis(200));
    get(down_port, "/elsewhere");
    twice.join().unwrap();

    let front_pid = i64::from(front.pid());
    let server = receiver.wait_exactly("SERVER /twice", 1, SPAN_TIMEOUT, QUIET, |s| {
        s.is_server() && s.pid() == Some(front_pid)
    });
    let calls = receiver.wait_exactly("the two calls", 2, SPAN_TIMEOUT, QUIET, |s| {
        s.is_client() && s.pid() == Some(front_pid)
    });
    for (path, method) in [("/items/7", "process"), ("/items/8", "thread_pool")] {
        let call = check::one(&calls, path, |c| c.url_path() == Some(path));
        check::child_of(call, &server[0]);
        check::within(call, &server[0]);
        check::attr_str(call, "tracer.link.method", method);
        assert!(
            confidence(call) >= 0.5,
            "above the default threshold\n    {call}"
        );
    }
    agent.stop();
}
