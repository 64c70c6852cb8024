//! Self-tests of the harness that need no agent: the OTLP receiver decodes
//! both transports, the peers behave as the e2e tests assume, and network
//! namespaces are created and removed. When an e2e test fails, these tell
//! whether the harness or the agent is at fault.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, Status as PStatus, span::SpanKind,
};
use prost::Message;
use tracer_tests::netns::NetnsPair;
use tracer_tests::peers::{self, Peer};
use tracer_tests::receiver::{AttrValue, Kind, Receiver, Status};
use tracer_tests::{require_root, urls};

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn request(name: &str) -> ExportTraceServiceRequest {
    let span = Span {
        trace_id: vec![0xab; 16],
        span_id: vec![0xcd; 8],
        parent_span_id: vec![0x01; 8],
        name: name.into(),
        kind: SpanKind::Server as i32,
        start_time_unix_nano: 10,
        end_time_unix_nano: 20,
        attributes: vec![
            kv("url.path", any_value::Value::StringValue("/x".into())),
            kv("http.response.status_code", any_value::Value::IntValue(503)),
        ],
        status: Some(PStatus {
            code: 2,
            message: "bad".into(),
        }),
        ..Default::default()
    };
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", any_value::Value::StringValue("svc".into())),
                    kv("process.pid", any_value::Value::IntValue(42)),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![span],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn check_decoded(receiver: &Receiver, name: &str, via: &str) {
    let spans = receiver.wait_for(name, 1, Duration::from_secs(5), |s| s.name == name);
    let s = &spans[0];
    assert_eq!(s.trace_id, "ab".repeat(16));
    assert_eq!(s.span_id, "cd".repeat(8));
    assert_eq!(s.parent_span_id.as_deref(), Some("0101010101010101"));
    assert_eq!(s.kind, Kind::Server);
    assert_eq!(s.status, Status::Error);
    assert_eq!(s.status_message, "bad");
    assert_eq!(s.url_path(), Some("/x"));
    assert_eq!(
        s.attr("http.response.status_code"),
        Some(&AttrValue::Int(503))
    );
    assert_eq!(s.service_name(), Some("svc"));
    assert_eq!(s.pid(), Some(42));
    assert_eq!(s.via, via);
}

#[test]
fn receiver_decodes_grpc_export() {
    let receiver = Receiver::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(receiver.grpc_endpoint())
            .await
            .expect("connect grpc");
        client
            .export(request("grpc-span"))
            .await
            .expect("export over grpc");
    });
    check_decoded(&receiver, "grpc-span", "grpc");
}

/// POSTs an OTLP/HTTP protobuf body to `127.0.0.1:port` and returns the whole answer.
fn post_traces(port: u16, body: &[u8]) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp
}

#[test]
fn receiver_decodes_http_protobuf_export() {
    let receiver = Receiver::start();
    let resp = post_traces(receiver.http_port(), &request("http-span").encode_to_vec());
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "receiver answered: {resp:?}"
    );
    check_decoded(&receiver, "http-span", "http");
}

/// The benchmark's counting sink reads only the nesting down to the spans: it must count
/// every span of every resource and scope, over gRPC and OTLP/HTTP alike.
#[test]
fn benchmark_sink_counts_spans_over_both_transports() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    let mut sink = Command::new(env!("CARGO_BIN_EXE_otlp_sink"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start otlp_sink");
    let mut lines = BufReader::new(sink.stdout.take().unwrap()).lines();
    let mut stdin = sink.stdin.take().unwrap();
    let first = lines.next().unwrap().unwrap();
    let endpoint = |name: &str| {
        first
            .split(' ')
            .find_map(|kv| kv.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {first:?}"))
            .to_owned()
    };
    let (grpc, http) = (endpoint("grpc="), endpoint("http="));
    // Two resources, the first with two scopes: 2 + 1 + 3 spans.
    let mut three_groups = request("a");
    let resource = three_groups.resource_spans[0].clone();
    let span = resource.scope_spans[0].spans[0].clone();
    three_groups.resource_spans[0].scope_spans.push(ScopeSpans {
        spans: vec![span.clone(), span.clone()],
        ..Default::default()
    });
    let mut second = resource.clone();
    second.scope_spans[0].spans = vec![span.clone(), span.clone(), span];
    three_groups.resource_spans.push(second);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(grpc)
            .await
            .expect("connect grpc");
        client
            .export(three_groups.clone())
            .await
            .expect("export over grpc");
    });
    let port = http.rsplit(':').next().and_then(|p| p.parse().ok());
    let resp = post_traces(port.expect("sink http port"), &three_groups.encode_to_vec());
    assert!(resp.starts_with("HTTP/1.1 200"), "sink answered: {resp:?}");

    writeln!(stdin, "poll").unwrap();
    let counted = lines.next().unwrap().unwrap();
    let _ = sink.kill();
    let _ = sink.wait();
    assert!(
        counted.starts_with("spans=12 requests=2 cpu_ms="),
        "sink counted {counted:?}"
    );
}

#[test]
fn rust_server_handles_keep_alive_and_pipelining() {
    let port = peers::free_port();
    let _server = peers::rust_server(port);
    let mut cmd = peers::python_script("pipeline_client.py");
    cmd.args([
        "127.0.0.1",
        &port.to_string(),
        "/a",
        "/status/404",
        "/bytes/5000",
    ]);
    let out = peers::run_client(cmd);
    assert_eq!(out.stdout, "200 /a\n404 /status/404\n200 /bytes/5000\n");
    peers::run_client(peers::python_client(
        &urls(port, &["/k/1", "/k/2"]),
        &["--repeat", "2"],
    ));
}

#[test]
fn flask_peer_routes_and_client_exit_codes() {
    let (pa, pb) = (peers::free_port(), peers::free_port());
    let _b = peers::flask_server(pb, &[], &[]);
    let _a = peers::flask_server(
        pa,
        &["--downstream", &format!("http://127.0.0.1:{pb}")],
        &[],
    );
    peers::run_client(peers::python_client(
        &urls(
            pa,
            &["/", "/items/1", "/api/x/y", "/bytes/200000", "/chain"],
        ),
        &[],
    ));
    let failing = peers::run(
        peers::python_client(&urls(pa, &["/missing"]), &[]),
        peers::CLIENT_TIMEOUT,
    );
    assert!(
        !failing.status.success(),
        "client.py must fail on a 404 without --allow-errors"
    );
    peers::run_client(peers::python_client(
        &urls(pa, &["/missing", "/error"]),
        &["--allow-errors"],
    ));
    let failing = peers::run(
        peers::python_client(&urls(pa, &["/error"]), &[]),
        peers::CLIENT_TIMEOUT,
    );
    assert!(
        !failing.status.success(),
        "client.py must fail on a 500 without --allow-errors"
    );
}

#[test]
fn python_http_server_and_curl_work() {
    let port = peers::free_port();
    let dir = tracer_tests::scratch_dir("selftest");
    std::fs::write(dir.join("f.txt"), "x").unwrap();
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
    let _server = Peer::server("http.server", cmd, ([127, 0, 0, 1], port).into());
    let mut curl = Command::new("curl");
    curl.args([
        "-sS",
        "-f",
        "-o",
        "/dev/null",
        &format!("http://127.0.0.1:{port}/f.txt"),
    ]);
    peers::run_client(curl);
}

#[test]
fn netns_pair_connects_and_is_removed() {
    require_root();
    let names;
    {
        let pair = NetnsPair::create();
        names = (pair.ns_a.clone(), pair.ns_b.clone());
        let port = 18080;
        let mut cmd = NetnsPair::command(&pair.ns_a, peers::rust_server_bin());
        cmd.args(["--bind", &format!("{}:{port}", pair.addr_a)]);
        let _server = Peer::spawn("rust_http_server (netns)", cmd);
        NetnsPair::wait_port(&pair.ns_b, &pair.addr_a, port, Duration::from_secs(10));
        let mut client = NetnsPair::command(&pair.ns_b, peers::python());
        client
            .arg(tracer_tests::peers_dir().join("client.py"))
            .arg(format!("http://{}:{port}/x", pair.addr_a));
        peers::run_client(client);
    }
    let list = String::from_utf8(
        Command::new("ip")
            .args(["netns", "list"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert!(
        !list.contains(&names.0) && !list.contains(&names.1),
        "namespaces left behind: {list}"
    );
}

/// The agent guard against a stand-in that follows the life-cycle contract:
/// readiness detection, SIGTERM/SIGINT exit statuses, rejection of a bad flag.
#[test]
fn agent_guard_with_stand_in_agent() {
    use tracer_tests::agent::{Agent, AgentArgs, STOP_TIMEOUT};
    let script = tracer_tests::peers_dir().join("fake_tracer.py");
    let script = script.to_str().unwrap();
    let stand_in = || AgentArgs::empty().stand_in(peers::python(), &[script]);

    let mut agent = Agent::start(&stand_in().args(["--settle-ms", "300"]).ports(&[1234]));
    assert!(agent.stop().success());
    assert!(agent.log().contains("flushing"), "log: {}", agent.log());

    let mut agent = Agent::start(&stand_in());
    assert!(agent.stop_with(libc::SIGINT).success());

    let mut agent = Agent::spawn(&stand_in().arg("--no-such-flag"));
    let status = agent.wait_exit(STOP_TIMEOUT).expect("stand-in exits");
    assert_eq!(status.code(), Some(2));
    let stderr: Vec<String> = agent
        .log()
        .lines()
        .filter_map(|l| l.strip_prefix("[stderr] ").map(String::from))
        .collect();
    assert_eq!(
        stderr,
        vec!["error: unexpected argument '--no-such-flag'".to_string()]
    );
}
