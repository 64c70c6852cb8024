//! End-to-end tests of configuration, process selection, sampling, container/Kubernetes
//! identity (node-side, and from the pod watch against a fake API server) and the health
//! endpoint: real servers and curl traced by the real agent, spans checked at a real OTLP
//! receiver. Requires root, BPF, cgroup v2 (`/sys/fs/cgroup` or
//! `/sys/fs/cgroup/unified`), `unshare` and `mount`; a missing one fails the test.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use tracer_tests::agent::{Agent, AgentArgs};
use tracer_tests::kube_api::{FakeKubeApi, pod_json, query_params};
use tracer_tests::peers::{self, Peer};
use tracer_tests::receiver::{ReceivedSpan, Receiver, dump};
use tracer_tests::{QUIET, SPAN_TIMEOUT, fresh_ids, require_root, scratch_dir};

fn curl(url: &str, headers: &[String]) {
    let mut c = Command::new("curl");
    // No -f: paths that do not exist (404) are fine, only the spans matter.
    c.args(["-sS", "-o", "/dev/null"]);
    for h in headers {
        c.args(["-H", h]);
    }
    c.arg(url);
    peers::run_client(c);
}

fn http_server(port: u16, env: &[(&str, &str)]) -> Peer {
    let dir = scratch_dir(&format!("srv-{port}"));
    std::fs::write(dir.join("x.txt"), "x\n").unwrap();
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
    cmd.env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_RESOURCE_ATTRIBUTES");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Peer::server("http.server", cmd, ([127, 0, 0, 1], port).into())
}

fn server_spans_on(receiver: &Receiver, port: u16) -> Vec<ReceivedSpan> {
    receiver
        .spans()
        .into_iter()
        .filter(|s| s.is_server() && s.attr_int("server.port") == Some(port as i64))
        .collect()
}

/// `OTEL_RESOURCE_ATTRIBUTES` of the traced process lands on its resource, decoded.
#[test]
fn otel_resource_attributes_reach_the_resource() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = http_server(
        port,
        &[(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=e2e%20env,service.version=1.2.3",
        )],
    );
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]));
    curl(&format!("http://127.0.0.1:{port}/x.txt"), &[]);
    let srv = receiver
        .wait_for("SERVER /x.txt", 1, SPAN_TIMEOUT, |s| {
            s.is_server() && s.url_path() == Some("/x.txt")
        })
        .remove(0);
    assert_eq!(
        srv.resource
            .get("deployment.environment")
            .and_then(|v| v.as_str()),
        Some("e2e env"),
        "{:?}",
        srv.resource
    );
    assert_eq!(
        srv.resource.get("service.version").and_then(|v| v.as_str()),
        Some("1.2.3"),
        "{:?}",
        srv.resource
    );
    assert_eq!(
        srv.service_name(),
        Some("http.server"),
        "no service.name given: from the command line"
    );
    agent.stop();
}

/// A cgroup (v2) made for the test, removed on drop (after its processes are gone).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn create(relative: &str) -> TestCgroup {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").is_file() && p.join("cgroup.controllers").exists())
            .expect("no cgroup v2 hierarchy at /sys/fs/cgroup/unified or /sys/fs/cgroup: the test needs one");
        let path = root.join(relative.trim_start_matches('/'));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", path.display()));
        TestCgroup(path)
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Innermost first; the kubepods.slice parents may be shared with nothing else.
        let mut dir = Some(self.0.as_path());
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(d) = dir {
            if !d.to_string_lossy().contains("tracer-e2e") {
                break;
            }
            while std::fs::remove_dir(d).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            dir = d.parent();
        }
    }
}

/// A Python `http.server` in a pod-like cgroup (`kubepods…pod<uid>…/cri-containerd-<id>`) and
/// its own mount namespace, where the service account's namespace file and `/etc/hostname` are
/// the pod's. Without `OTEL_SERVICE_NAME`. Dropped: the server, then the cgroup.
struct PodServer {
    server: Option<Peer>,
    _cgroup: TestCgroup,
    port: u16,
}

impl PodServer {
    const NAME: &str = "checkout-6b8f9d7c5-abcde";
    const NAMESPACE: &str = "shop-e2e";

    fn start(uid: &str, container: &str) -> PodServer {
        let rel = format!(
            "tracer-e2e.slice/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container}.scope",
            uid.replace('-', "_")
        );
        let cgroup = TestCgroup::create(&rel);
        let procs = cgroup.0.join("cgroup.procs");
        let scratch = scratch_dir(&format!("pod-{uid}"));
        std::fs::write(scratch.join("hostname"), format!("{}\n", Self::NAME)).unwrap();
        std::fs::write(scratch.join("x.txt"), "x\n").unwrap();
        let port = peers::free_port();
        let script = format!(
            "set -e; mount -t tmpfs tracer-e2e /run; mkdir -p /run/secrets/kubernetes.io/serviceaccount; \
             echo {ns} > /run/secrets/kubernetes.io/serviceaccount/namespace; \
             mount --bind {host} /etc/hostname; exec {py} -m http.server {port} --bind 127.0.0.1 --directory {dir}",
            ns = Self::NAMESPACE,
            host = scratch.join("hostname").display(),
            py = peers::python().display(),
            dir = scratch.display(),
        );
        let mut cmd = Command::new("unshare");
        cmd.args(["-m", "--propagation", "private", "sh", "-c", &script]);
        cmd.env_remove("HOSTNAME")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_RESOURCE_ATTRIBUTES");
        let procs_c = procs.clone();
        // SAFETY: only open/write/close between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                std::fs::write(&procs_c, b"0")?;
                Ok(())
            });
        }
        let server = Peer::server("pod http.server", cmd, ([127, 0, 0, 1], port).into());
        let in_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", server.pid())).unwrap();
        assert!(
            in_cgroup.contains(container),
            "server not in the test cgroup: {in_cgroup}"
        );
        PodServer {
            server: Some(server),
            _cgroup: cgroup,
            port,
        }
    }

    /// Requests `path` with curl and returns the SERVER span.
    fn request(&self, receiver: &Receiver, path: &str) -> ReceivedSpan {
        curl(&format!("http://127.0.0.1:{}{path}", self.port), &[]);
        receiver
            .wait_for(&format!("SERVER {path}"), 1, SPAN_TIMEOUT, |s| {
                s.is_server() && s.url_path() == Some(path)
            })
            .remove(0)
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        // The server first: a cgroup with processes cannot be removed.
        drop(self.server.take());
    }
}

fn resource_str(span: &ReceivedSpan, key: &str) -> Option<String> {
    span.resource
        .get(key)
        .and_then(|v| v.as_str())
        .map(str::to_owned)
}

/// A server in a pod-like cgroup and its own mount namespace, no API: `container.id`,
/// `k8s.pod.uid` from the cgroup path, `k8s.pod.name` and `k8s.namespace.name` from files in the
/// container seen through `/proc/<pid>/root`, `k8s.node.name` from the agent's `NODE_NAME`.
#[test]
fn container_and_pod_identity_from_cgroup_and_container_files() {
    require_root();
    let uid = "1d2c3b4a-5e6f-4a0b-8c9d-0e1f2a3b4c5d";
    let container = "c0ffee".repeat(10) + "beef";
    let pod = PodServer::start(uid, &container);

    let receiver = Receiver::start();
    let mut agent = Agent::start(
        &AgentArgs::grpc(&receiver)
            .ports(&[pod.port])
            .env("NODE_NAME", "e2e-node"),
    );
    let srv = pod.request(&receiver, "/x.txt");
    let r = |k: &str| resource_str(&srv, k);
    assert_eq!(
        r("container.id").as_deref(),
        Some(container.as_str()),
        "{:?}",
        srv.resource
    );
    assert_eq!(r("k8s.pod.uid").as_deref(), Some(uid), "{:?}", srv.resource);
    assert_eq!(
        r("k8s.pod.name").as_deref(),
        Some(PodServer::NAME),
        "{:?}",
        srv.resource
    );
    assert_eq!(
        r("k8s.namespace.name").as_deref(),
        Some(PodServer::NAMESPACE),
        "{:?}",
        srv.resource
    );
    assert_eq!(
        r("k8s.node.name").as_deref(),
        Some("e2e-node"),
        "{:?}",
        srv.resource
    );
    assert_eq!(
        srv.service_name(),
        Some("http.server"),
        "no labels without the API"
    );
    assert_eq!(r("k8s.deployment.name"), None, "{:?}", srv.resource);
    // curl runs outside any pod: no k8s attributes on its resource.
    let client = receiver
        .wait_for("CLIENT /x.txt", 1, SPAN_TIMEOUT, |s| {
            s.is_client() && s.url_path() == Some("/x.txt")
        })
        .remove(0);
    assert!(
        !client.resource.contains_key("k8s.pod.uid"),
        "{:?}",
        client.resource
    );
    agent.stop();
    assert!(
        !agent.log().contains("watching the pods"),
        "no API, no watch:\n{}",
        agent.log()
    );
}

/// The agent with a kubeconfig pointing at a fake API server and `NODE_NAME`: it watches the
/// pods of its node, and the pod process's spans get `service.name` from the pod's
/// `app.kubernetes.io/name` label and `k8s.deployment.name` from its ReplicaSet owner. A pod
/// the watch learns about only after the process was first seen gets node-side identity first,
/// then the API's.
#[test]
fn pod_labels_and_owner_from_the_api_watch() {
    require_root();
    let uid = "2e3d4c5b-6f70-4b1c-9d0e-1f2a3b4c5d6e";
    let container = "feed".repeat(16);
    let pod = PodServer::start(uid, &container);
    let api = FakeKubeApi::start();
    let kubeconfig = api.write_kubeconfig(&scratch_dir("kubeconfig"));
    // Another pod of the node, so that the watch has something from the start.
    api.add(pod_json(
        "3f4e5d6c-7081-4c2d-8e1f-2a3b4c5d6e7f",
        "other-0",
        "shop",
        "e2e-node",
        &[],
        Some(("StatefulSet", "other")),
    ));

    let receiver = Receiver::start();
    let mut agent = Agent::start(
        &AgentArgs::grpc(&receiver)
            .ports(&[pod.port])
            .env("NODE_NAME", "e2e-node")
            .env("KUBECONFIG", kubeconfig.to_str().unwrap()),
    );
    // Not in the API yet: node-side identity, nothing waits.
    let srv = pod.request(&receiver, "/before");
    assert_eq!(
        srv.service_name(),
        Some("http.server"),
        "{:?}",
        srv.resource
    );
    assert_eq!(resource_str(&srv, "k8s.pod.uid").as_deref(), Some(uid));
    assert_eq!(resource_str(&srv, "k8s.deployment.name"), None);

    api.add(pod_json(
        uid,
        PodServer::NAME,
        "shop",
        "e2e-node",
        &[
            ("app.kubernetes.io/name", "storefront"),
            ("pod-template-hash", "6b8f9d7c5"),
        ],
        Some(("ReplicaSet", "checkout-6b8f9d7c5")),
    ));
    // The agent re-checks a process's identity at most every 2 s.
    let deadline = Instant::now() + SPAN_TIMEOUT;
    let mut attempt = 0;
    let srv = loop {
        attempt += 1;
        let srv = pod.request(&receiver, &format!("/after-{attempt}"));
        if srv.service_name() == Some("storefront") || Instant::now() > deadline {
            break srv;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        srv.service_name(),
        Some("storefront"),
        "service.name from the app.kubernetes.io/name label: {:?}\n{}",
        srv.resource,
        agent.log()
    );
    let r = |k: &str| resource_str(&srv, k);
    assert_eq!(
        r("k8s.deployment.name").as_deref(),
        Some("checkout"),
        "{:?}",
        srv.resource
    );
    assert_eq!(
        r("k8s.namespace.name").as_deref(),
        Some("shop"),
        "the API's, over the file's"
    );
    assert_eq!(r("k8s.pod.name").as_deref(), Some(PodServer::NAME));
    assert_eq!(r("k8s.node.name").as_deref(), Some("e2e-node"));
    assert_eq!(r("container.id").as_deref(), Some(container.as_str()));

    // One watch of this node's pods, not a request per process.
    let requests = api.requests();
    assert!(!requests.is_empty());
    for r in &requests {
        assert!(
            query_params(r).contains(&("fieldSelector".into(), "spec.nodeName=e2e-node".into())),
            "{r}"
        );
    }
    assert_eq!(
        requests
            .iter()
            .filter(|r| !r.contains("watch=true"))
            .count(),
        1,
        "one list: {requests:#?}"
    );
    agent.stop();
    assert!(
        agent.log().contains("watching the pods of node e2e-node"),
        "{}",
        agent.log()
    );
}

/// A kubeconfig pointing at an API server that is not there: the agent starts, says so in one
/// warning line, and traces with node-side pod identity.
#[test]
fn unreachable_api_is_one_warning_and_node_side_identity() {
    require_root();
    let uid = "4a5b6c7d-8e9f-4a0b-9c1d-2e3f4a5b6c7d";
    let container = "dead".repeat(16);
    let pod = PodServer::start(uid, &container);
    let kubeconfig = {
        let api = FakeKubeApi::start();
        api.write_kubeconfig(&scratch_dir("kubeconfig-down"))
    };
    let receiver = Receiver::start();
    let started = Instant::now();
    let mut agent = Agent::start(
        &AgentArgs::grpc(&receiver)
            .ports(&[pod.port])
            .env("NODE_NAME", "e2e-node")
            .env("KUBECONFIG", kubeconfig.to_str().unwrap()),
    );
    let ready_after = started.elapsed();
    let srv = pod.request(&receiver, "/x.txt");
    assert_eq!(srv.service_name(), Some("http.server"));
    assert_eq!(resource_str(&srv, "k8s.pod.uid").as_deref(), Some(uid));
    assert_eq!(
        resource_str(&srv, "k8s.pod.name").as_deref(),
        Some(PodServer::NAME)
    );
    // Let a few retries pass (backoff 0.8 s, 1.6 s, 3.2 s).
    std::thread::sleep(Duration::from_secs(4));
    agent.stop();
    let log = agent.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("kube"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line about the API:\n{log}");
    assert!(
        warnings[0].contains("cannot watch the pods of node e2e-node"),
        "{}",
        warnings[0]
    );
    eprintln!("agent ready after {ready_after:?} with the API down");
}

/// Exclusion by executable, set in a configuration file: the excluded server's spans never
/// arrive while the included one's do.
#[test]
fn exclude_by_executable_from_the_config_file() {
    require_root();
    let receiver = Receiver::start();
    let (py_port, rust_port) = (peers::free_port(), peers::free_port());
    let _py = http_server(py_port, &[]);
    let _rust = peers::rust_server(rust_port);
    let dir = scratch_dir("exclude");
    let file = dir.join("tracer.toml");
    std::fs::write(
        &file,
        format!("[include]\nports = [{py_port}, {rust_port}]\n\n[exclude]\nexecutables = [\"rust_http_server\"]\n"),
    )
    .unwrap();
    let mut agent = Agent::start(
        &AgentArgs::grpc(&receiver)
            .arg("--config")
            .arg(file.to_str().unwrap()),
    );
    curl(&format!("http://127.0.0.1:{rust_port}/excluded"), &[]);
    curl(&format!("http://127.0.0.1:{py_port}/x.txt"), &[]);
    receiver.wait_for("SERVER span of the included server", 1, SPAN_TIMEOUT, |s| {
        s.is_server() && s.attr_int("server.port") == Some(py_port as i64)
    });
    std::thread::sleep(QUIET);
    let excluded = server_spans_on(&receiver, rust_port);
    assert!(
        excluded.is_empty(),
        "spans of the excluded executable arrived:\n{}",
        dump(&excluded)
    );
    // The client (curl) is not excluded: its span to the excluded server is there.
    assert!(
        receiver
            .spans()
            .iter()
            .any(|s| s.is_client() && s.url_path() == Some("/excluded")),
        "curl's CLIENT span must still arrive:\n{}",
        dump(&receiver.spans())
    );
    agent.stop();
}

/// Reads the agent's counters once they include the kernel side's latest (it copies them
/// every second).
fn metrics_after_refresh(health: &str) -> String {
    std::thread::sleep(Duration::from_millis(2500));
    let (code, body) = http_get(health, "/metrics");
    assert_eq!(code, 200);
    body
}

/// Processes the rules exclude are muted in the kernel: once the agent has decided about a
/// process (at its first connection), its socket syscalls are dropped at entry, before any
/// copy. Both ends of the traffic here are excluded: the server by executable, the client
/// (this test process) by pid; on the traced port nothing more leaves the kernel.
#[test]
fn excluded_processes_stop_in_the_kernel() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let addr = format!("127.0.0.1:{port}");
    let health = format!("127.0.0.1:{}", peers::free_port());
    let _server = peers::rust_server(port);
    let me = std::process::id().to_string();
    let mut agent = Agent::start(&AgentArgs::grpc(&receiver).ports(&[port]).args([
        "--health-addr",
        &health,
        "--exclude-process",
        "rust_http_server",
        "--exclude-pid",
        &me,
    ]));
    for i in 0..3 {
        assert_eq!(http_get(&addr, &format!("/warm{i}")).0, 200);
    }
    let before = metrics_after_refresh(&health);
    assert!(
        metric(&before, "tracer_processes_filtered_total") >= 2,
        "server and client muted:\n{before}"
    );
    let sent_before = metric(&before, "tracer_events_sent_total");
    const REQUESTS: u64 = 300;
    for i in 0..REQUESTS {
        assert_eq!(http_get(&addr, &format!("/quiet{i}")).0, 200);
    }
    let after = metrics_after_refresh(&health);
    let sent = metric(&after, "tracer_events_sent_total") - sent_before;
    // Unmuted, each request is 4 data events (a read and a write at each end).
    assert!(
        sent < REQUESTS / 10,
        "{sent} events left the kernel for {REQUESTS} requests of muted processes:\n{after}"
    );
    assert!(
        server_spans_on(&receiver, port).is_empty(),
        "spans of excluded processes:\n{}",
        dump(&receiver.spans())
    );
    agent.stop();
}

/// A connection whose bytes are no protocol the agent decodes is muted in the kernel once
/// detection gives up: its later reads and writes are not copied at all.
#[test]
fn connections_of_unknown_protocol_stop_in_the_kernel() {
    require_root();
    let receiver = Receiver::start();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let health = format!("127.0.0.1:{}", peers::free_port());
    let mut agent = Agent::start(
        &AgentArgs::grpc(&receiver)
            .ports(&[port])
            .args(["--health-addr", &health]),
    );
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // One write and one read per chunk, so that reads do not merge chunks.
    let mut exchange = |n: usize| {
        for _ in 0..n {
            let chunk = b"\x13\x37 no protocol at all\n";
            client.write_all(chunk).unwrap();
            let mut buf = [0u8; 64];
            let mut got = 0;
            while got < chunk.len() {
                got += server.read(&mut buf[got..]).unwrap();
            }
        }
    };
    exchange(20);
    let before = metrics_after_refresh(&health);
    assert!(
        metric(&before, "tracer_connections_unknown_protocol_total") >= 2,
        "both ends given up on:\n{before}"
    );
    let sent_before = metric(&before, "tracer_events_sent_total");
    exchange(100);
    let after = metrics_after_refresh(&health);
    assert_eq!(
        metric(
            &after,
            "tracer_connections_filtered_total{stage=\"kernel_muted\"}"
        ),
        2,
        "both ends muted in the kernel:\n{after}"
    );
    let sent = metric(&after, "tracer_events_sent_total") - sent_before;
    assert!(
        sent <= 2,
        "{sent} events left the kernel for 200 syscalls on muted connections:\n{after}"
    );
    agent.stop();
}

/// `--sample-ratio 0`: a request without trace context yields no spans at all, one whose
/// `traceparent` says sampled is kept, one that says not sampled is dropped.
#[test]
fn sampling_ratio_zero_keeps_only_sampled_context() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let _server = http_server(port, &[]);
    let mut agent = Agent::start(
        &AgentArgs::grpc(&receiver)
            .ports(&[port])
            .args(["--sample-ratio", "0"]),
    );
    let (kept_trace, kept_span) = fresh_ids();
    let (dropped_trace, dropped_span) = fresh_ids();
    curl(&format!("http://127.0.0.1:{port}/no-context"), &[]);
    curl(
        &format!("http://127.0.0.1:{port}/unsampled"),
        &[format!("traceparent: 00-{dropped_trace}-{dropped_span}-00")],
    );
    curl(
        &format!("http://127.0.0.1:{port}/sampled"),
        &[format!("traceparent: 00-{kept_trace}-{kept_span}-01")],
    );
    let srv = receiver
        .wait_for("SERVER /sampled", 1, SPAN_TIMEOUT, |s| {
            s.is_server() && s.url_path() == Some("/sampled")
        })
        .remove(0);
    assert_eq!(srv.trace_id, kept_trace, "{srv}");
    assert_eq!(
        srv.parent_span_id.as_deref(),
        Some(kept_span.as_str()),
        "{srv}"
    );
    std::thread::sleep(QUIET);
    let others: Vec<ReceivedSpan> = receiver
        .spans()
        .into_iter()
        .filter(|s| matches!(s.url_path(), Some("/no-context" | "/unsampled")))
        .collect();
    assert!(
        others.is_empty(),
        "ratio 0 must drop context-less and unsampled traces:\n{}",
        dump(&others)
    );
    agent.stop();
    assert!(
        agent.log().contains("spans_sampled_out_total{sampling}="),
        "sampled-out counter in the totals:\n{}",
        agent.log()
    );
}

/// A configuration file with a bad value or an unknown key: non-zero exit, one line naming
/// the key.
#[test]
fn bad_configuration_file_is_refused_with_the_key_named() {
    require_root();
    let dir = scratch_dir("badconfig");
    for (name, text, key) in [
        ("ratio.toml", "[sampling]\nratio = 1.5\n", "sampling.ratio"),
        (
            "type.toml",
            "[buffers]\nexport_queue = \"big\"\n",
            "buffers.export_queue",
        ),
        (
            "unknown.toml",
            "[exporter]\nendpoint = \"http://x:4317\"\nendpiont = \"typo\"\n",
            "exporter.endpiont",
        ),
    ] {
        let file = dir.join(name);
        std::fs::write(&file, text).unwrap();
        let mut agent =
            Agent::spawn(&AgentArgs::empty().args(["--config", file.to_str().unwrap()]));
        let status = agent
            .wait_exit(Duration::from_secs(20))
            .expect("agent must exit on a bad configuration");
        assert!(!status.success(), "{name}: exit status {status}");
        let log = agent.log();
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 1, "{name}: one line expected:\n{log}");
        assert!(
            lines[0].contains(&format!("`{key}`")),
            "{name}: key {key} not named: {log}"
        );
    }
}

fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Sum of every sample of a metric in a Prometheus text body.
fn metric(body: &str, name: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `--health-addr`: `/healthz` and `/readyz` answer 200 once ready, and the `/metrics`
/// counters move with traffic.
#[test]
fn health_and_metrics_endpoints_follow_traffic() {
    require_root();
    let receiver = Receiver::start();
    let port = peers::free_port();
    let health = format!("127.0.0.1:{}", peers::free_port());
    let _server = http_server(port, &[]);
    let mut agent = Agent::start(
        &AgentArgs::grpc(&receiver)
            .ports(&[port])
            .args(["--health-addr", &health]),
    );
    assert_eq!(http_get(&health, "/healthz").0, 200);
    assert_eq!(http_get(&health, "/readyz").0, 200);
    let (code, before) = http_get(&health, "/metrics");
    assert_eq!(code, 200);
    let exported_before = metric(&before, "tracer_spans_exported_total");
    let received_before = metric(&before, "tracer_events_received_total");
    for i in 0..3 {
        curl(&format!("http://127.0.0.1:{port}/m{i}"), &[]);
    }
    receiver.wait_for("3 SERVER spans", 3, SPAN_TIMEOUT, |s| {
        s.is_server() && s.url_path().is_some_and(|p| p.starts_with("/m"))
    });
    let deadline = Instant::now() + SPAN_TIMEOUT;
    let after = loop {
        let (_, body) = http_get(&health, "/metrics");
        if metric(&body, "tracer_spans_exported_total") >= exported_before + 6
            || Instant::now() > deadline
        {
            break body;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        metric(&after, "tracer_spans_exported_total") >= exported_before + 6,
        "3 SERVER + 3 CLIENT spans exported:\n{after}"
    );
    assert!(
        metric(&after, "tracer_events_received_total") > received_before,
        "events counted:\n{after}"
    );
    agent.stop();
}
