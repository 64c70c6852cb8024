//! The accuracy benchmark's scenarios: which services run, what the load generator calls and
//! which spans each root request must produce (the expected tree).
//!
//! Every HTTP request path is `/<hop>/<rid>`, the rid of the root request copied by each
//! service into the calls it makes (see `bench/accuracy/services.py`), so an HTTP span's
//! `url.path` names its root request and its place in the tree (hop + span kind). In the
//! `*-noid` scenarios the calls below the root go to the fixed path `/<hop>` and carry the rid
//! in the request header [`RID_HEADER`] instead, which the agent records
//! ([`RID_ATTRIBUTE`]) but does not use for linking. Thrift spans carry no arguments; they are
//! tied to rids through the Thrift front's call log (see [`super::score::ThriftCall`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use crate::receiver::Kind;

/// How the services propagate trace context themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagate {
    None,
    W3c,
    B3,
}

impl Propagate {
    pub fn flag(self) -> &'static str {
        match self {
            Propagate::None => "none",
            Propagate::W3c => "w3c",
            Propagate::B3 => "b3",
        }
    }
}

/// Request header carrying the root request's rid on the calls of the `*-noid` scenarios.
pub const RID_HEADER: &str = "x-bench-rid";
/// The span attribute the agent records [`RID_HEADER`] as (`--record-header`).
pub const RID_ATTRIBUTE: &str = "http.request.header.x-bench-rid";

/// What identifies a span as a node of the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Matcher {
    /// HTTP span whose `url.path` is `/<hop>/<rid>`.
    Http(&'static str),
    /// HTTP span whose `url.path` is `/<hop>` (no id) and whose recorded [`RID_HEADER`]
    /// ([`RID_ATTRIBUTE`]) is the rid.
    HttpNoId(&'static str),
    /// Thrift span of the call the Thrift front logged for the rid.
    Thrift,
}

/// One expected span of each root request's tree.
#[derive(Clone, Debug)]
pub struct Node {
    pub label: &'static str,
    pub kind: Kind,
    pub matcher: Matcher,
    /// Index of the parent node; `None` for the root (the load generator's CLIENT span).
    pub parent: Option<usize>,
}

/// A service process of a scenario.
pub struct Service {
    pub name: &'static str,
    pub command: Command,
    /// Ports that must accept connections before the scenario starts.
    pub ready: Vec<u16>,
}

pub struct Scenario {
    pub name: &'static str,
    pub description: &'static str,
    /// The hop the load generator calls (`/<entry_hop>/<rid>`).
    pub entry_hop: &'static str,
    pub propagate: Propagate,
    /// Calls below the root carry no id in their paths (services run with `--noid`; the
    /// agent records [`RID_HEADER`] for the ground truth).
    pub noid: bool,
    /// The load generator sends `{"number": n}` and every service forwards the number it was
    /// sent in the bodies of its calls (services and load generator run with `--number`):
    /// the only id is in the JSON bodies.
    pub number: Option<BodyNumber>,
    pub nodes: Vec<Node>,
}

/// How the load generator picks the number in a root request's body.
#[derive(Clone, Copy)]
pub enum BodyNumber {
    /// The request's ordinal in its level: concurrent requests never share one.
    Ordinal,
    /// Random in 1..100: concurrent requests now and then share one, as FizzBuzz clients do.
    Random,
}

impl BodyNumber {
    fn flag(self) -> &'static str {
        match self {
            BodyNumber::Ordinal => "ordinal",
            BodyNumber::Random => "random",
        }
    }
}

pub const ALL: &[&str] = &[
    "sync",
    "async",
    "thrift",
    "chain",
    "sync-noid",
    "async-noid",
    "chain-noid",
    "threaded-noid",
    "chain-threaded-noid",
    "sync-body",
    "async-body",
    "sync-body-random",
    "async-body-random",
    "w3c",
    "b3",
];

/// Hops in the order `services.py` numbers them (span id = code << 48 | rid).
const HOPS: &[&str] = &["hub", "fizz", "buzz", "a", "b", "c", "tq"];
const TRACE_HI: u64 = 0x00AC_C0DE_0000_0000;

/// Trace id and parent span id the caller's own instrumentation put in the request to
/// `hop` for root request `rid` (mirrors `context_headers` in `services.py`).
pub fn header_context(propagate: Propagate, hop: &str, rid: u64) -> Option<(String, String)> {
    let code = HOPS.iter().position(|h| *h == hop)? as u64 + 1;
    let span = format!("{:016x}", (code << 48) | rid);
    match propagate {
        Propagate::None => None,
        Propagate::W3c => Some((format!("{TRACE_HI:016x}{rid:016x}"), span)),
        // 64-bit B3 trace ids are left-padded to 128 bits.
        Propagate::B3 => Some((format!("{:016x}{:016x}", 0, TRACE_HI | rid), span)),
    }
}

fn http(label: &'static str, kind: Kind, hop: &'static str, parent: Option<usize>) -> Node {
    Node {
        label,
        kind,
        matcher: Matcher::Http(hop),
        parent,
    }
}

/// A node below the root request: its path carries the rid unless `noid`.
fn down(
    noid: bool,
    label: &'static str,
    kind: Kind,
    hop: &'static str,
    parent: Option<usize>,
) -> Node {
    Node {
        matcher: if noid {
            Matcher::HttpNoId(hop)
        } else {
            Matcher::Http(hop)
        },
        ..http(label, kind, hop, parent)
    }
}

/// The FizzBuzz hub tree: loadgen -> hub -> {fizz, buzz}.
fn hub_nodes(noid: bool) -> Vec<Node> {
    vec![
        http("loadgen CLIENT /hub", Kind::Client, "hub", None),
        http("hub SERVER /hub", Kind::Server, "hub", Some(0)),
        down(noid, "hub CLIENT /fizz", Kind::Client, "fizz", Some(1)),
        down(noid, "fizzer SERVER /fizz", Kind::Server, "fizz", Some(2)),
        down(noid, "hub CLIENT /buzz", Kind::Client, "buzz", Some(1)),
        down(noid, "buzzer SERVER /buzz", Kind::Server, "buzz", Some(4)),
    ]
}

/// The three-level chain: loadgen -> A -> B -> C.
fn chain_nodes(noid: bool) -> Vec<Node> {
    vec![
        http("loadgen CLIENT /a", Kind::Client, "a", None),
        http("A SERVER /a", Kind::Server, "a", Some(0)),
        down(noid, "A CLIENT /b", Kind::Client, "b", Some(1)),
        down(noid, "B SERVER /b", Kind::Server, "b", Some(2)),
        down(noid, "B CLIENT /c", Kind::Client, "c", Some(3)),
        down(noid, "C SERVER /c", Kind::Server, "c", Some(4)),
    ]
}

pub fn get(name: &str) -> Option<Scenario> {
    let s = match name {
        "sync" => Scenario {
            name: "sync",
            description: "FastAPI `def` hub (thread pool, requests) -> Flask fizzer, buzzer (waitress)",
            entry_hop: "hub",
            propagate: Propagate::None,
            noid: false,
            number: None,
            nodes: hub_nodes(false),
        },
        "async" => Scenario {
            name: "async",
            description: "FastAPI `async def` hub, one httpx.AsyncClient, asyncio.gather(fizz, buzz)",
            entry_hop: "hub",
            propagate: Propagate::None,
            noid: false,
            number: None,
            nodes: hub_nodes(false),
        },
        "sync-noid" => Scenario {
            name: "sync-noid",
            description: "sync with no id in the downstream paths (POST /fizz, /buzz; rid in x-bench-rid)",
            entry_hop: "hub",
            propagate: Propagate::None,
            noid: true,
            number: None,
            nodes: hub_nodes(true),
        },
        "async-noid" => Scenario {
            name: "async-noid",
            description: "async with no id in the downstream paths (POST /fizz, /buzz; rid in x-bench-rid)",
            entry_hop: "hub",
            propagate: Propagate::None,
            noid: true,
            number: None,
            nodes: hub_nodes(true),
        },
        "sync-body" => Scenario {
            name: "sync-body",
            description: "sync-noid, but each request's JSON body carries its own number, forwarded downstream",
            entry_hop: "hub",
            propagate: Propagate::None,
            noid: true,
            number: Some(BodyNumber::Ordinal),
            nodes: hub_nodes(true),
        },
        "async-body" => Scenario {
            name: "async-body",
            description: "async-noid, but each request's JSON body carries its own number, forwarded downstream",
            entry_hop: "hub",
            propagate: Propagate::None,
            noid: true,
            number: Some(BodyNumber::Ordinal),
            nodes: hub_nodes(true),
        },
        "sync-body-random" => Scenario {
            name: "sync-body-random",
            description: "sync-body with random numbers in 1..100: concurrent requests may share one",
            entry_hop: "hub",
            propagate: Propagate::None,
            noid: true,
            number: Some(BodyNumber::Random),
            nodes: hub_nodes(true),
        },
        "async-body-random" => Scenario {
            name: "async-body-random",
            description: "async-body with random numbers in 1..100: concurrent requests may share one",
            entry_hop: "hub",
            propagate: Propagate::None,
            noid: true,
            number: Some(BodyNumber::Random),
            nodes: hub_nodes(true),
        },
        "thrift" => Scenario {
            name: "thrift",
            description: "Flask (waitress) -> thriftpy2 over a pool of 4 long-lived connections",
            entry_hop: "tq",
            propagate: Propagate::None,
            noid: false,
            number: None,
            nodes: vec![
                http("loadgen CLIENT /tq", Kind::Client, "tq", None),
                http("front SERVER /tq", Kind::Server, "tq", Some(0)),
                Node {
                    label: "front CLIENT work",
                    kind: Kind::Client,
                    matcher: Matcher::Thrift,
                    parent: Some(1),
                },
                Node {
                    label: "thrift SERVER work",
                    kind: Kind::Server,
                    matcher: Matcher::Thrift,
                    parent: Some(2),
                },
            ],
        },
        "chain" => Scenario {
            name: "chain",
            description: "A (FastAPI def) -> B (Flask) -> C (Flask), HTTP keep-alive",
            entry_hop: "a",
            propagate: Propagate::None,
            noid: false,
            number: None,
            nodes: chain_nodes(false),
        },
        "chain-noid" => Scenario {
            name: "chain-noid",
            description: "chain with no id in the downstream paths (POST /b, /c; rid in x-bench-rid)",
            entry_hop: "a",
            propagate: Propagate::None,
            noid: true,
            number: None,
            nodes: chain_nodes(true),
        },
        "threaded-noid" => Scenario {
            name: "threaded-noid",
            description: "sync-noid with a Flask hub on a thread-per-connection server (ThreadingHTTPServer)",
            entry_hop: "hub",
            propagate: Propagate::None,
            noid: true,
            number: None,
            nodes: hub_nodes(true),
        },
        "chain-threaded-noid" => Scenario {
            name: "chain-threaded-noid",
            description: "chain-noid with A and B Flask on a thread-per-connection server (ThreadingHTTPServer)",
            entry_hop: "a",
            propagate: Propagate::None,
            noid: true,
            number: None,
            nodes: chain_nodes(true),
        },
        "w3c" => Scenario {
            name: "w3c",
            description: "sync hub; every hop sends W3C traceparent with its own span id",
            entry_hop: "hub",
            propagate: Propagate::W3c,
            noid: false,
            number: None,
            nodes: hub_nodes(false),
        },
        "b3" => Scenario {
            name: "b3",
            description: "sync hub; every hop sends X-B3-* (64-bit trace id) with its own span id",
            entry_hop: "hub",
            propagate: Propagate::B3,
            noid: false,
            number: None,
            nodes: hub_nodes(false),
        },
        _ => return None,
    };
    Some(s)
}

/// `bench/accuracy/services.py`.
pub fn services_script() -> PathBuf {
    crate::workspace_root().join("bench/accuracy/services.py")
}

pub fn service_cmd(role: &str) -> Command {
    let mut cmd = Command::new(crate::peers::python());
    cmd.arg(services_script())
        .arg(role)
        .env("PYTHONUNBUFFERED", "1");
    cmd
}

/// Ports of a scenario's services; the agent traces exactly these.
pub struct Ports {
    pub entry: u16,
    pub all: Vec<u16>,
}

impl Scenario {
    /// The service processes (and the ports to filter on); `thrift_log` is where the Thrift
    /// front logs its calls.
    pub fn services(&self, thrift_log: &std::path::Path) -> (Vec<Service>, Ports) {
        let port = crate::peers::free_port;
        let p = |cmd: &mut Command, port: u16| {
            cmd.args(["--port", &port.to_string()]);
        };
        let prop = self.propagate.flag();
        let (noid, number) = (self.noid, self.number);
        // Services that make calls: propagation mode, no ids in their paths if `noid`, the
        // inbound body's number forwarded if `number`.
        let caller = |role: &str| {
            let mut cmd = service_cmd(role);
            cmd.args(["--propagate", prop]);
            if noid {
                cmd.arg("--noid");
            }
            if number.is_some() {
                cmd.arg("--number");
            }
            cmd
        };
        // The services that make calls in the `*threaded*` scenarios: Flask served with a
        // thread per connection (`--server threaded`), which reads each request, makes the
        // calls and writes the answer.
        let threaded = self.name.contains("threaded");
        let threaded_caller = || {
            let mut cmd = caller("relay");
            cmd.args(["--server", "threaded"]);
            cmd
        };
        let mut out = Vec::new();
        let leaf = |name: &'static str, port: u16| {
            let mut cmd = service_cmd("leaf");
            p(&mut cmd, port);
            Service {
                name,
                command: cmd,
                ready: vec![port],
            }
        };
        match self.name {
            "sync" | "async" | "w3c" | "b3" | "sync-noid" | "async-noid" | "sync-body"
            | "async-body" | "sync-body-random" | "async-body-random" | "threaded-noid" => {
                let (hub, fizz, buzz) = (port(), port(), port());
                out.push(leaf("fizzer", fizz));
                out.push(leaf("buzzer", buzz));
                let mut cmd = if threaded {
                    threaded_caller()
                } else if self.name.starts_with("async") {
                    caller("hub-async")
                } else {
                    caller("hub-sync")
                };
                p(&mut cmd, hub);
                cmd.args([
                    "--down",
                    &format!("fizz={fizz}"),
                    "--down",
                    &format!("buzz={buzz}"),
                ]);
                out.push(Service {
                    name: "hub",
                    command: cmd,
                    ready: vec![hub],
                });
                (
                    out,
                    Ports {
                        entry: hub,
                        all: vec![hub, fizz, buzz],
                    },
                )
            }
            "chain" | "chain-noid" | "chain-threaded-noid" => {
                let (a, b, c) = (port(), port(), port());
                out.push(leaf("C", c));
                let mut cmd = if threaded {
                    threaded_caller()
                } else {
                    caller("relay")
                };
                p(&mut cmd, b);
                cmd.args(["--down", &format!("c={c}")]);
                out.push(Service {
                    name: "B",
                    command: cmd,
                    ready: vec![b],
                });
                let mut cmd = if threaded {
                    threaded_caller()
                } else {
                    caller("hub-sync")
                };
                p(&mut cmd, a);
                cmd.args(["--down", &format!("b={b}")]);
                out.push(Service {
                    name: "A",
                    command: cmd,
                    ready: vec![a],
                });
                (
                    out,
                    Ports {
                        entry: a,
                        all: vec![a, b, c],
                    },
                )
            }
            "thrift" => {
                let front = port();
                let replicas: Vec<u16> = (0..4).map(|_| port()).collect();
                let mut server = service_cmd("thrift-server");
                let mut fcmd = service_cmd("thrift-front");
                for r in &replicas {
                    server.args(["--thrift-port", &r.to_string()]);
                    fcmd.args(["--thrift-port", &r.to_string()]);
                }
                out.push(Service {
                    name: "thrift-server",
                    command: server,
                    ready: replicas.clone(),
                });
                p(&mut fcmd, front);
                fcmd.arg("--log").arg(thrift_log);
                out.push(Service {
                    name: "thrift-front",
                    command: fcmd,
                    ready: vec![front],
                });
                let mut all = vec![front];
                all.extend(&replicas);
                (out, Ports { entry: front, all })
            }
            other => panic!("no services for scenario {other}"),
        }
    }

    /// The load generator, started before the agent (so its pid can be traced); it runs one
    /// level per stdin line `base count concurrency`: rids `base+1 ..= base+count`.
    pub fn loadgen(&self, entry: u16) -> Command {
        let mut cmd = service_cmd("loadgen");
        cmd.args([
            "--serve",
            "--port",
            &entry.to_string(),
            "--hop",
            self.entry_hop,
        ])
        .args(["--propagate", self.propagate.flag()]);
        if let Some(number) = self.number {
            cmd.args(["--number", number.flag()]);
        }
        cmd
    }
}

pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &Command) -> Vec<String> {
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn every_scenario_resolves() {
        for name in ALL {
            assert_eq!(get(name).unwrap().name, *name);
        }
    }

    /// The body scenarios give the load generator its way of numbering and have every
    /// calling service forward the number.
    #[test]
    fn body_scenarios_number_the_load_and_forward_it() {
        let log = std::path::Path::new("/nonexistent");
        for (name, numbering) in [
            ("sync-body", Some("ordinal")),
            ("async-body-random", Some("random")),
            ("sync-noid", None),
        ] {
            let sc = get(name).unwrap();
            let load = args(&sc.loadgen(1));
            let given = load
                .windows(2)
                .find(|w| w[0] == "--number")
                .map(|w| w[1].clone());
            assert_eq!(given.as_deref(), numbering, "{name}");
            let (services, _) = sc.services(log);
            let hub = services.iter().find(|s| s.name == "hub").expect("hub");
            assert_eq!(
                args(&hub.command).contains(&"--number".to_string()),
                numbering.is_some(),
                "{name}"
            );
        }
    }

    /// The thread-per-connection scenarios run exactly their calling services with
    /// `--server threaded`, as `--noid` relays; the others keep their servers.
    #[test]
    fn threaded_scenarios_serve_callers_thread_per_connection() {
        let log = std::path::Path::new("/nonexistent");
        for (name, threaded) in [
            ("threaded-noid", &["hub"][..]),
            ("chain-threaded-noid", &["A", "B"][..]),
            ("sync-noid", &[][..]),
            ("chain-noid", &[][..]),
        ] {
            let sc = get(name).unwrap();
            assert!(sc.noid);
            let (services, _) = sc.services(log);
            for svc in &services {
                let a = args(&svc.command);
                let is_threaded = a.windows(2).any(|w| w == ["--server", "threaded"]);
                assert_eq!(
                    is_threaded,
                    threaded.contains(&svc.name),
                    "{name} {}",
                    svc.name
                );
                if is_threaded {
                    assert_eq!(a[1], "relay", "{name} {}", svc.name);
                    assert!(a.contains(&"--noid".to_string()));
                }
            }
        }
    }
}
