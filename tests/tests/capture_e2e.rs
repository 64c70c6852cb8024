//! End-to-end tests of the capture layer: IPv6 sockets, every data syscall the kernel side
//! decodes (including `sendfile`, the `*mmsg` pair and `MSG_PEEK`), and a keep-alive
//! connection opened before the agent started, which must be picked up at its next I/O with
//! its addresses, down to a read that was already blocked when the probes were attached.

use std::time::Duration;

use tracer_tests::agent::{Agent, AgentArgs};
use tracer_tests::check;
use tracer_tests::peers::{self, Peer};
use tracer_tests::receiver::{ReceivedSpan, Receiver};
use tracer_tests::{QUIET, SPAN_TIMEOUT, require_root};

fn one(receiver: &Receiver, kind_server: bool, path: &str) -> ReceivedSpan {
    let what = format!("{} {path}", if kind_server { "SERVER" } else { "CLIENT" });
    receiver.wait_exactly(&what, 1, SPAN_TIMEOUT, QUIET, |s| {
        s.is_server() == kind_server && s.url_path() == Some(path)
    })[0]
        .clone()
}

fn rust_server_at(bind: &str, addr: std::net::SocketAddr) -> Peer {
    let mut cmd = std::process::Command::new(peers::rust_server_bin());
    cmd.args(["--bind", bind]);
    Peer::server("rust_http_server", cmd, addr)
}

#[test]
fn ipv6_loopback_exchange_is_traced_with_v6_addresses() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let addr: std::net::SocketAddr = format!("[::1]:{port}").parse().unwrap();
    let _server = rust_server_at(&addr.to_string(), addr);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let mut client = peers::python_script("socket_client.py");
    client.args(["::1", &port.to_string(), "/v6/hello"]);
    peers::run_client(client);

    let server = one(&receiver, true, "/v6/hello");
    let client = one(&receiver, false, "/v6/hello");
    check::child_of(&server, &client);
    check::within(&server, &client);
    for span in [&server, &client] {
        check::attr_str(span, "network.peer.address", "::1");
        check::attr_str(span, "network.type", "ipv6");
        check::attr_int(span, "http.response.status_code", 200);
    }
    check::attr_int(&client, "server.port", i64::from(port));
    agent.stop();
}

#[test]
fn sendmsg_and_recvmsg_with_several_iovecs_are_captured() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = peers::rust_server(port);
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let mut client = peers::python_script("socket_client.py");
    client.args([
        "127.0.0.1",
        &port.to_string(),
        "--calls",
        "iov",
        "/iov/one",
        "/iov/two",
    ]);
    peers::run_client(client);

    for path in ["/iov/one", "/iov/two"] {
        let client = one(&receiver, false, path);
        let server = one(&receiver, true, path);
        check::child_of(&server, &client);
        check::attr_str(&client, "http.request.method", "GET");
        check::attr_int(&client, "http.response.status_code", 200);
    }
    agent.stop();
}

/// Every data syscall the kernel side decodes, on both ends of a keep-alive connection: the
/// client sends and receives with send/recv (sendto/recvfrom), write/read, writev/readv,
/// sendmsg/recvmsg and sendmmsg/recvmmsg, and once with a MSG_PEEK before each receive (the
/// peeked bytes must not be taken twice); the server reads with recv_into and answers with
/// writev for the head and sendfile for a 10 kB body. The second request of each connection is
/// parsed right on the server only if the sendfile's byte count was accounted for.
#[test]
fn every_decoded_data_syscall_is_captured() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let mut server_cmd = peers::python_script("sendfile_server.py");
    server_cmd.args([port.to_string().as_str(), "10000"]);
    let _server = Peer::server(
        "sendfile_server",
        server_cmd,
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    );
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let runs = [
        ("send", false),
        ("rw", false),
        ("vec", false),
        ("iov", false),
        ("mmsg", false),
        ("send", true),
        ("mmsg", true),
    ];
    let paths = |calls: &str, peek: bool| {
        let name = if peek {
            format!("{calls}-peek")
        } else {
            calls.to_string()
        };
        [format!("/calls/{name}/1"), format!("/calls/{name}/2")]
    };
    for (calls, peek) in runs {
        let mut client = peers::python_script("socket_client.py");
        client.args(["127.0.0.1", &port.to_string(), "--calls", calls]);
        if peek {
            client.arg("--peek");
        }
        client.args(paths(calls, peek));
        peers::run_client(client);
    }
    for (calls, peek) in runs {
        for path in paths(calls, peek) {
            let client = one(&receiver, false, &path);
            let server = one(&receiver, true, &path);
            check::child_of(&server, &client);
            check::within(&server, &client);
            check::attr_int(&server, "http.response.status_code", 200);
            check::attr_int(&client, "http.response.status_code", 200);
        }
    }
    agent.stop();
}

#[test]
fn connection_opened_before_the_agent_is_picked_up_at_its_next_request() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = peers::rust_server(port);
    let go = tracer_tests::scratch_dir("preexisting").join("go");
    let mut client_cmd = peers::python_script("socket_client.py");
    client_cmd
        .args(["127.0.0.1", &port.to_string(), "--wait-for"])
        .arg(&go)
        .args(["/before/agent", "/after/1", "/after/2"]);
    let mut client = Peer::spawn("socket_client", client_cmd);
    client.wait_until(Duration::from_secs(20), "first exchange done", |p| {
        p.output().contains("first exchange done")
    });

    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));
    std::fs::write(&go, b"go").unwrap();

    // The server thread was blocked in read() when the probes were attached: the bytes are
    // taken when that read returns, so its first request after the agent started is seen too.
    for path in ["/after/1", "/after/2"] {
        let server = one(&receiver, true, path);
        let client_span = one(&receiver, false, path);
        check::child_of(&server, &client_span);
        check::attr_str(&server, "network.peer.address", "127.0.0.1");
        check::attr_int(&server, "server.port", i64::from(port));
    }
    assert!(
        receiver
            .spans()
            .iter()
            .all(|s| s.url_path() != Some("/before/agent")),
        "the exchange before the agent started cannot have spans"
    );
    agent.stop();
}
