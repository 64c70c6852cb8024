//! Accuracy benchmark: how often the agent's traces are right.
//!
//! For each scenario (see `tracer_tests::accuracy::scenario`): start the services, the OTLP
//! receiver and the real agent (`--port` filters on the scenario's ports), drive root requests
//! at each concurrency level with a keep-alive load generator (itself traced: its CLIENT span
//! is each tree's expected root), wait until the spans are exported, stop the agent (which
//! flushes what it still holds), and score the spans against the ground truth built into the
//! services' request paths, headers and logs. Prints a table; `--json PATH` writes the same
//! numbers.
//!
//! Usage: accuracy [--scenarios sync,async,thrift,chain,sync-noid,async-noid,chain-noid,sync-body,async-body,w3c,b3]
//!                 [--concurrency 1,8,32]
//!                 [--requests 300] [--settle-ms 1000] [--json PATH] [--dump-spans DIR]
//!
//! Exit status 0 whatever the accuracy; non-zero only when the run itself failed (bad
//! arguments, agent or services not starting, load generator crashing).

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tracer_tests::accuracy::scenario::{self, Scenario};
use tracer_tests::accuracy::score::{
    self, CONFIDENCE_BUCKETS, Calibrated, Level, LevelScore, ScenarioScore,
};
use tracer_tests::agent::{Agent, AgentArgs};
use tracer_tests::peers::{self, Peer};
use tracer_tests::receiver::{AttrValue, ReceivedSpan, Receiver};

struct Options {
    scenarios: Vec<String>,
    concurrency: Vec<usize>,
    requests: usize,
    settle_ms: u64,
    json: Option<std::path::PathBuf>,
    /// Directory for `<scenario>.jsonl`: every received span, one JSON object a line.
    dump_spans: Option<std::path::PathBuf>,
}

fn usage() -> String {
    format!(
        "usage: accuracy [--scenarios a,b] [--concurrency 1,8,32] [--requests N] [--settle-ms MS] [--json PATH] [--dump-spans DIR]\n\
         scenarios: {} (default: all)",
        scenario::ALL.join(", ")
    )
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        scenarios: scenario::ALL.iter().map(|s| s.to_string()).collect(),
        concurrency: vec![1, 8, 32],
        requests: 300,
        settle_ms: 1000,
        json: None,
        dump_spans: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value\n{}", usage()));
        match a.as_str() {
            "--scenarios" => {
                o.scenarios = value()?.split(',').map(|s| s.trim().to_string()).collect()
            }
            "--concurrency" => {
                o.concurrency = value()?
                    .split(',')
                    .map(|s| {
                        s.trim()
                            .parse()
                            .map_err(|e| format!("--concurrency {s}: {e}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--requests" => {
                o.requests = value()?.parse().map_err(|e| format!("--requests: {e}"))?
            }
            "--settle-ms" => {
                o.settle_ms = value()?.parse().map_err(|e| format!("--settle-ms: {e}"))?
            }
            "--json" => o.json = Some(value()?.into()),
            "--dump-spans" => o.dump_spans = Some(value()?.into()),
            "-h" | "--help" => return Err(usage()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    for s in &o.scenarios {
        if scenario::get(s).is_none() {
            return Err(format!("unknown scenario {s}\n{}", usage()));
        }
    }
    o.concurrency.dedup();
    if o.concurrency.iter().any(|c| *c == 0 || *c > 256) {
        return Err("concurrency levels must be 1..=256".into());
    }
    if o.requests == 0 || o.requests > 99_999 {
        return Err("--requests must be 1..=99999".into());
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    tracer_tests::require_root();
    let started = Instant::now();
    println!(
        "accuracy: {} root requests per level, concurrency {:?}, agent --settle-ms {}",
        opts.requests, opts.concurrency, opts.settle_ms
    );
    // The scenario column fits the longest selected name (at least the 10 columns it always had).
    let width = opts
        .scenarios
        .iter()
        .map(String::len)
        .max()
        .unwrap_or(0)
        .max(10);
    print_header(width);
    let mut results = Vec::new();
    let mut calibration = [Calibrated::default(); 4];
    for name in &opts.scenarios {
        let sc = scenario::get(name).expect("checked in parse_args");
        let (score, agent_totals) = run_scenario(&sc, &opts);
        let drops = metric(agent_totals.as_str().unwrap_or(""), "events_dropped_total");
        print_rows(&sc, &score, drops, width);
        for l in &score.levels {
            for (total, c) in calibration.iter_mut().zip(&l.calibration) {
                total.add(*c);
            }
        }
        results.push(json!({
            "scenario": sc.name,
            "description": sc.description,
            "nodes": sc.nodes.iter().map(|n| n.label).collect::<Vec<_>>(),
            "unattributed_spans": score.unattributed,
            "agent_totals": agent_totals,
            "agent_events_dropped": drops,
            "levels": score.levels.iter().map(LevelScore::to_json).collect::<Vec<_>>(),
        }));
    }
    let secs = started.elapsed().as_secs_f64();
    print_calibration(&calibration);
    println!("{}", legend());
    println!("total time {secs:.0}s");
    if let Some(path) = &opts.json {
        let doc = json!({
            "requests_per_level": opts.requests,
            "concurrency": opts.concurrency,
            "settle_ms": opts.settle_ms,
            "seconds": secs,
            "scenarios": results,
        });
        let text = serde_json::to_string_pretty(&doc).expect("json");
        if let Err(e) = std::fs::write(path, text) {
            eprintln!("accuracy: cannot write {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

fn wait_ports(peer: &mut Peer, ports: &[u16]) {
    for &p in ports {
        peer.wait_until(
            peers::SERVER_READY_TIMEOUT,
            &format!("port {p} accepts"),
            |_| {
                TcpStream::connect_timeout(&scenario::loopback(p), Duration::from_millis(200))
                    .is_ok()
            },
        );
    }
}

/// The agent's ring buffer: larger than the default, so that a burst while the shared host
/// is busy is absorbed rather than dropped (drops are reported either way).
const RINGBUF_BYTES: u32 = 64 << 20;

/// The persistent load generator process (killed with its process group on drop).
struct LoadGen {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl LoadGen {
    fn start(mut cmd: Command) -> LoadGen {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn load generator {cmd:?}: {e}"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout: ChildStdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut lg = LoadGen {
            child,
            stdin,
            lines,
        };
        lg.expect_line(Duration::from_secs(30), |l| l == "ready");
        lg
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn expect_line(&mut self, timeout: Duration, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if accept(&l) => return l,
                Ok(l) => eprintln!("[loadgen] {l}"),
                Err(e) => panic!("load generator: no expected output within {timeout:?} ({e})"),
            }
        }
    }

    /// Runs one level and returns the load generator's JSON summary.
    fn level(&mut self, base: u64, count: usize, concurrency: usize, timeout: Duration) -> Value {
        writeln!(self.stdin, "{base} {count} {concurrency}").expect("write to load generator");
        self.stdin.flush().expect("flush load generator stdin");
        let line = self.expect_line(timeout, |l| l.starts_with('{'));
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("load generator summary {line:?}: {e}"))
    }
}

impl Drop for LoadGen {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group we created for our own child.
        unsafe { libc::kill(-(self.child.id() as i32), libc::SIGKILL) };
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs one scenario end to end; returns its score and the agent's `totals:` log line.
fn run_scenario(sc: &Scenario, opts: &Options) -> (ScenarioScore, Value) {
    eprintln!("[accuracy] scenario {}: {}", sc.name, sc.description);
    let scratch = tracer_tests::scratch_dir(&format!("accuracy-{}", sc.name));
    let thrift_log = scratch.join("thrift-calls.log");
    let _ = std::fs::remove_file(&thrift_log);
    let receiver = Receiver::start();
    let (services, ports) = sc.services(&thrift_log);
    // Services first (their readiness probes are plain connects, before the agent runs).
    let mut running = Vec::new();
    for svc in services {
        let mut peer = Peer::spawn(svc.name, svc.command);
        wait_ports(&mut peer, &svc.ready);
        running.push(peer);
    }
    let mut loadgen = LoadGen::start(sc.loadgen(ports.entry));
    // Filtering by pid happens in the kernel, by port only in the agent: with both, other
    // traffic on this (shared) host does not compete for the agent's ring buffer.
    let mut pids: Vec<String> = running.iter().map(|p| p.pid().to_string()).collect();
    pids.push(loadgen.pid().to_string());
    let mut args = AgentArgs::empty()
        .args([
            "--otlp-endpoint",
            &receiver.grpc_endpoint(),
            "--otlp-protocol",
            "grpc",
        ])
        .args([
            "--settle-ms",
            &opts.settle_ms.to_string(),
            "--log-level",
            "info",
        ])
        .args([
            "--stats-interval-secs",
            "0",
            "--ringbuf-bytes",
            &RINGBUF_BYTES.to_string(),
        ])
        .args(["--pid", &pids.join(",")])
        .ports(&ports.all);
    if sc.noid {
        // Ground truth only: the agent does not link by recorded header values.
        args = args.args(["--record-header", scenario::RID_HEADER]);
    }
    let mut agent = Agent::start(&args);
    let settle = Duration::from_millis(opts.settle_ms);

    let mut levels = Vec::new();
    for &c in &opts.concurrency {
        let base = c as u64 * 1_000_000;
        let timeout = Duration::from_secs(60) + Duration::from_millis(opts.requests as u64 * 200);
        let summary = loadgen.level(base, opts.requests, c, timeout);
        let failed = summary["failed"].as_array().map_or(0, Vec::len);
        let seconds = summary["seconds"].as_f64().unwrap_or(0.0);
        eprintln!(
            "[accuracy]   concurrency {c}: {} requests in {seconds:.1}s, {failed} failed",
            opts.requests
        );
        levels.push(Level {
            concurrency: c,
            base,
            count: opts.requests,
            failed,
            seconds,
        });
        // Let this level's spans settle before the next level starts.
        std::thread::sleep(settle + Duration::from_millis(300));
    }
    drop(loadgen);

    // Wait for the spans: until the expected number arrived and nothing new came for a
    // second, or nothing new came for settle + 3 s (some are missing), at most 90 s.
    let expected = levels.len() * opts.requests * sc.nodes.len();
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut last_count, mut last_change) = (0, Instant::now());
    loop {
        let n = receiver.spans().len();
        if n != last_count {
            (last_count, last_change) = (n, Instant::now());
        }
        let quiet = last_change.elapsed();
        if (n >= expected && quiet >= Duration::from_secs(1))
            || quiet >= settle + Duration::from_secs(3)
            || Instant::now() >= deadline
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // SIGTERM flushes what the agent still holds.
    let status = agent.stop_with(libc::SIGTERM);
    if !status.success() {
        eprintln!("[accuracy] warning: agent exited with {status} on SIGTERM");
    }
    std::thread::sleep(Duration::from_millis(500));
    let totals = agent
        .log()
        .lines()
        .find_map(|l| l.split_once("totals: ").map(|(_, t)| t.to_string()))
        .unwrap_or_default();
    if !totals.is_empty() {
        eprintln!("[accuracy]   agent totals: {totals}");
    }
    drop(running);

    let spans = receiver.spans();
    if let Some(dir) = &opts.dump_spans {
        dump_spans(dir, sc.name, &spans);
    }
    let calls = std::fs::read_to_string(&thrift_log)
        .map(|t| score::parse_thrift_log(&t))
        .unwrap_or_default();
    let result = score::score(&sc.nodes, sc.propagate, &levels, &spans, &calls);
    let _ = std::fs::remove_dir_all(&scratch);
    (result, Value::String(totals))
}

/// Writes `<dir>/<scenario>.jsonl`, one received span a line (for checking by hand).
fn dump_spans(dir: &std::path::Path, scenario: &str, spans: &[ReceivedSpan]) {
    let attrs = |m: &std::collections::BTreeMap<String, AttrValue>| -> Value {
        m.iter()
            .map(|(k, v)| {
                let v = match v {
                    AttrValue::Str(s) | AttrValue::Other(s) => json!(s),
                    AttrValue::Int(i) => json!(i),
                    AttrValue::Bool(b) => json!(b),
                    AttrValue::Double(d) => json!(d),
                };
                (k.clone(), v)
            })
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let mut text = String::new();
    for s in spans {
        let line = json!({
            "trace_id": s.trace_id,
            "span_id": s.span_id,
            "parent_span_id": s.parent_span_id,
            "name": s.name,
            "kind": format!("{:?}", s.kind),
            "start_ns": s.start_ns,
            "end_ns": s.end_ns,
            "attributes": attrs(&s.attributes),
            "resource": attrs(&s.resource),
            "links": s.links,
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    let path = dir.join(format!("{scenario}.jsonl"));
    let written = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, text));
    if let Err(e) = written {
        eprintln!("[accuracy] warning: cannot write {}: {e}", path.display());
    }
}

fn pct(n: usize, d: usize) -> String {
    if d == 0 {
        "-".into()
    } else {
        format!("{:.1}%", 100.0 * n as f64 / d as f64)
    }
}

/// The header after the scenario column (which is `width` wide, then one space).
const COLUMNS: &str = " conc  roots fail  spans  recall  parent   trees  dups extra  timing  link methods (spans: parent ok among scored)             conf";

fn print_header(width: usize) {
    let header = format!("{:<width$} {COLUMNS}", "scenario");
    println!("{header}");
    println!("{}", "-".repeat(header.len()));
}

/// Sum of every `name{...}=N` counter in the agent's `totals:` line.
fn metric(totals: &str, name: &str) -> u64 {
    totals
        .split_whitespace()
        .filter(|kv| kv.starts_with(name))
        .filter_map(|kv| kv.rsplit_once('=')?.1.parse::<u64>().ok())
        .sum()
}

fn print_rows(sc: &Scenario, score: &ScenarioScore, drops: u64, width: usize) {
    let mut out = std::io::stdout().lock();
    for l in &score.levels {
        let methods: Vec<String> = l
            .methods
            .iter()
            .map(|(m, s)| {
                if s.scored > 0 {
                    format!("{m}={} ({})", s.spans, pct(s.parent_ok, s.scored))
                } else {
                    format!("{m}={}", s.spans)
                }
            })
            .collect();
        let _ = writeln!(
            out,
            "{:<width$} {:>5} {:>6} {:>4} {:>6} {:>7} {:>7} {:>7} {:>5} {:>5} {:>7}  {:<56} {}",
            sc.name,
            l.concurrency,
            l.roots,
            l.failed_roots,
            l.expected_spans,
            pct(l.found_spans, l.expected_spans),
            pct(l.parent_ok, l.expected_spans),
            pct(l.trees_ok, l.roots),
            l.duplicates,
            l.extra,
            format!("{}/{}", l.timing_violations, l.timing_checked),
            methods.join(" "),
            l.mean_confidence()
                .map_or("-".into(), |c| format!("{c:.2}")),
        );
    }
    if drops > 0 {
        let _ = writeln!(
            out,
            "{:<width$} WARNING: the agent dropped {drops} events (ring buffer full): recall is confounded",
            sc.name
        );
    }
    if score.unattributed > 0 {
        let _ = writeln!(
            out,
            "{:<width$} ({} spans named no root request of this run)",
            sc.name, score.unattributed
        );
    }
    let _ = out.flush();
}

/// Whether the stated confidence of inferred links means what it says: per bucket, over
/// every scenario and level of the run, how many expected spans were linked so and how many
/// of those links are right.
fn print_calibration(calibration: &[Calibrated; 4]) {
    println!(
        "\ninferred links (content, thread_pool, process, timing, ambiguous) by stated confidence, all rows:"
    );
    println!("confidence          spans   right");
    for (i, (from, c)) in CONFIDENCE_BUCKETS.iter().zip(calibration).enumerate() {
        let label = match CONFIDENCE_BUCKETS.get(i + 1) {
            Some(to) if i == 0 => format!("< {to:.1} (refused)"),
            Some(to) => format!("{from:.1} - {to:.1}"),
            None => format!(">= {from:.1}"),
        };
        println!("{label:<18} {:>6} {:>7}", c.spans, pct(c.right, c.spans));
    }
}

fn legend() -> &'static str {
    "\nroots: root requests sent; fail: of them, failed at the load generator\n\
     spans: expected spans; recall: expected spans found\n\
     parent: expected spans found with the right parent (same trace, right parent span id;\n\
     \x20       roots: no parent; w3c/b3: the span id the caller's own instrumentation sent)\n\
     trees: root requests whose whole tree is right (every span once, every parent right, no extra span)\n\
     dups: extra copies of expected spans; extra: spans of a root request matching no expected span\n\
     timing: children outside their expected parent's time range / parent-child pairs checked\n\
     link methods: spans per tracer.link.method ((none): attribute absent); conf: mean\n\
     \x20       tracer.link.confidence of inferred links (methods other than root/context)\n\
     by stated confidence: right = the right parent, or for refused links (a root, below the\n\
     \x20       agent's --link-threshold, default 0.5) a span link to the right parent"
}
