//! Tracing across two network namespaces joined by a veth pair: the server
//! in one namespace, the client in the other, both traced by one agent in
//! the host namespace.

use tracer_tests::agent::{Agent, AgentArgs};
use tracer_tests::check;
use tracer_tests::netns::NetnsPair;
use tracer_tests::peers::{self, Peer, SERVER_READY_TIMEOUT};
use tracer_tests::receiver::Receiver;
use tracer_tests::{QUIET, SPAN_TIMEOUT, require_root};

/// (Test 10) Peer addresses are the namespace addresses, and the SERVER span is
/// the child of the CLIENT span across namespaces.
#[test]
fn server_and_client_in_separate_namespaces() {
    require_root();
    let receiver = Receiver::start();
    let pair = NetnsPair::create();
    let port = peers::free_port();

    let mut cmd = NetnsPair::command(&pair.ns_a, peers::rust_server_bin());
    cmd.args(["--bind", &format!("{}:{port}", pair.addr_a)]);
    let server = Peer::spawn("rust_http_server (netns a)", cmd);
    NetnsPair::wait_port(&pair.ns_b, &pair.addr_a, port, SERVER_READY_TIMEOUT);

    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));

    let mut client = NetnsPair::command(&pair.ns_b, peers::python());
    client
        .arg(tracer_tests::peers_dir().join("client.py"))
        .arg(format!("http://{}:{port}/ns/hello", pair.addr_a));
    let out = peers::run_client(client);

    let srv = receiver.wait_exactly("SERVER /ns/hello", 1, SPAN_TIMEOUT, QUIET, |s| {
        s.is_server() && s.url_path() == Some("/ns/hello")
    });
    let cli = receiver.wait_exactly("CLIENT /ns/hello", 1, SPAN_TIMEOUT, QUIET, |s| {
        s.is_client() && s.url_path() == Some("/ns/hello")
    });
    let (srv, cli) = (&srv[0], &cli[0]);

    assert_eq!(
        srv.pid(),
        Some(server.pid() as i64),
        "SERVER span from the server process\n    {srv}"
    );
    assert_eq!(
        cli.pid(),
        Some(out.pid as i64),
        "CLIENT span from the client process\n    {cli}"
    );
    check::attr_str(srv, "network.peer.address", &pair.addr_b);
    check::attr_str(srv, "client.address", &pair.addr_b);
    check::attr_int(srv, "server.port", port as i64);
    check::attr_str(cli, "network.peer.address", &pair.addr_a);
    check::attr_int(cli, "network.peer.port", port as i64);
    check::attr_str(cli, "server.address", &pair.addr_a);
    check::attr_int(cli, "server.port", port as i64);
    check::attr_int(srv, "http.response.status_code", 200);
    check::child_of(srv, cli);
    check::within(srv, cli);

    agent.stop();
}
