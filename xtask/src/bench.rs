//! `cargo xtask bench`: the agent's overhead and capacity, measured side by side in one run.
//!
//! Every comparison runs its variants interleaved (untraced, traced, untraced, traced, ...) with
//! the same load, and reports medians and the ratio of medians to the untraced runs, so that the
//! noise of a shared machine hits all variants alike. Sections (`--only`):
//!
//! - `nginx`: one nginx serving a small static file, `wrk -t2 -c32 --latency`, keep-alive and a
//!   new connection per request (`Connection: close`); untraced vs our agent exporting OTLP/gRPC
//!   to a counting sink (`tests/src/bin/otlp_sink.rs`), tracing every process (wrk's client
//!   side too) and with `--exclude-process wrk` (as when the clients are on other hosts).
//! - `chain`: the same against nginx reverse proxy (upstream keepalive) -> nginx static server.
//! - `flask`: a Flask app under gunicorn; untraced, our agent (both ways), OpenTelemetry's Python SDK
//!   (FlaskInstrumentor, BatchSpanProcessor, OTLP/HTTP to the same sink).
//! - `pipeline`: the agent's userspace pipeline alone on one thread (`tracer-user/examples/
//!   pipeline.rs`: a synthetic keep-alive load through the connection table, span assembly and
//!   the OTLP encoding): CPU ns and heap allocations per request, the steady A/B measure for
//!   userspace changes.
//! - `capacity`: rate-limited steps with `hey -q` against nginx, reading the agent's drop
//!   counters from `/metrics` after each step; then saturation with a tiny ring buffer and a tiny
//!   event queue to show the counters move.
//!
//! For every traced run the agent's own cost is read from /proc (utime+stime, VmHWM, `memlock`
//! of its BPF map fds) and from its BPF program fds (`run_time_ns`/`run_cnt`, with
//! `kernel.bpf_stats_enabled=1` for the duration of the bench, restored after). The sink's CPU
//! time over the same interval is reported beside it: the receiver shares the 2 cores with the
//! measured servers, so its cost is in the traced throughput too.
//!
//! All servers run on free loopback ports out of a temp dir; every child runs in its own process
//! group and is stopped when its guard drops, on errors and Ctrl-C too.

use crate::{proc, setup};
use anyhow::{Context as _, Result, bail};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const SECTIONS: &[&str] = &["nginx", "chain", "flask", "pipeline", "capacity"];
/// wrk's shape for every saturation run.
const WRK_THREADS: &str = "2";
const WRK_CONNECTIONS: &str = "32";
/// Concurrency of the rate-limited capacity steps (hey's `-q` is per worker). 16 workers
/// topped out near 17-20k req/s on 2 cores, below the rates the steps are meant to reach.
const HEY_WORKERS: u64 = 32;
/// The agent holds finished spans 1 s before export (its default `--settle-ms`).
/// Wait after a load before reading the agent: its settle time plus more than one stats tick.
const DRAIN: Duration = Duration::from_millis(2500);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds per measured run (default 10; 3 with --quick).
    #[arg(long)]
    duration: Option<u64>,
    /// Smoke run: 3 s runs, one repetition, no warm-up, two capacity steps.
    #[arg(long)]
    quick: bool,
    /// Repetitions of each interleaved comparison; medians are reported (default 3; 1 with --quick).
    #[arg(long)]
    reps: Option<usize>,
    /// Comma-separated sections to run: nginx, chain, flask, pipeline, capacity (default: all).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// Debian tools the bench drives: (command, package).
const APT_TOOLS: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("wrk", "wrk"),
    ("hey", "hey"),
    ("bpftool", "bpftool"),
    ("timeout", "coreutils"),
    ("python3", "python3"),
];

/// Python packages of the Flask service and its OpenTelemetry variant: (pip package, module).
const PYTHON_PACKAGES: &[(&str, &str)] = &[
    ("flask", "flask"),
    ("gunicorn", "gunicorn"),
    ("opentelemetry-sdk", "opentelemetry.sdk.trace"),
    (
        "opentelemetry-exporter-otlp-proto-http",
        "opentelemetry.exporter.otlp.proto.http",
    ),
    (
        "opentelemetry-instrumentation-flask",
        "opentelemetry.instrumentation.flask",
    ),
];

static STOP: AtomicBool = AtomicBool::new(false);

pub fn bench(args: Args) -> Result<ExitCode> {
    for s in &args.only {
        if !SECTIONS.contains(&s.as_str()) {
            bail!(
                "bench: unknown section {s:?} in --only (known: {})",
                SECTIONS.join(",")
            );
        }
    }
    let want = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let cfg = Cfg {
        duration: args.duration.unwrap_or(if args.quick { 3 } else { 10 }),
        reps: args.reps.unwrap_or(if args.quick { 1 } else { 3 }).max(1),
        warmup: !args.quick,
        quick: args.quick,
    };
    if !proc::is_root() {
        bail!(
            "bench: run as root (the agent loads eBPF programs and the bench reads its /proc files)"
        );
    }

    setup::setup(false)?;
    let mut apt = Vec::new();
    for (tool, package) in APT_TOOLS {
        setup::check_tool(&mut apt, tool, package);
    }
    setup::install_apt_packages(&apt)?;
    setup::ensure_python(PYTHON_PACKAGES)?;
    let agent_bin = crate::build_agent()?;
    proc::run(
        "bench: build otlp_sink",
        proc::cargo().args([
            "build",
            "--release",
            "-p",
            "tracer-tests",
            "--bin",
            "otlp_sink",
        ]),
    )?;
    let sink_bin = crate::target_dir()?.join("release/otlp_sink");

    install_stop_handler();
    let tmp = TempDir::new()?;
    let _stats = BpfStats::enable()?;
    let mut ctx = Ctx {
        cfg,
        agent_bin,
        sink: Sink::start(&sink_bin)?,
        tmp: tmp.0.clone(),
        assets: crate::workspace_root().join("bench/overhead"),
        rows: Vec::new(),
        costs: Vec::new(),
        capacity: Vec::new(),
        notes: Vec::new(),
        pipeline: None,
    };
    eprintln!(
        "bench: {} s per run, {} repetition(s), sections: {}",
        cfg.duration,
        cfg.reps,
        SECTIONS
            .iter()
            .filter(|s| want(s))
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    );

    if want("nginx") {
        let _srv = ctx.nginx_static("static")?;
        let url = _srv.1.clone();
        for close in [false, true] {
            ctx.compare(
                &format!("nginx static, {}", mode(close)),
                NGINX_VARIANTS,
                &url,
                close,
                |_, _| Ok(None),
            )?;
        }
    }
    if want("chain") {
        let backend = ctx.nginx_static("backend")?;
        let proxy = ctx.nginx_proxy("proxy", port_of(&backend.1))?;
        let url = proxy.1.clone();
        for close in [false, true] {
            ctx.compare(
                &format!("nginx proxy -> nginx, {}", mode(close)),
                NGINX_VARIANTS,
                &url,
                close,
                |_, _| Ok(None),
            )?;
        }
    }
    if want("flask") {
        let port = free_port()?;
        let url = format!("http://127.0.0.1:{port}/");
        ctx.compare(
            "Flask (gunicorn gthread 2x4), keep-alive",
            &[
                Variant::Untraced,
                Variant::Agent,
                Variant::AgentNoLoadgen,
                Variant::Otel,
            ],
            &url,
            false,
            |ctx, v| ctx.gunicorn(port, v).map(Some),
        )?;
    }
    if want("pipeline") {
        ctx.pipeline()?;
    }
    if want("capacity") {
        ctx.capacity()?;
    }
    print!("{}", ctx.report());
    Ok(ExitCode::SUCCESS)
}

fn mode(close: bool) -> &'static str {
    if close {
        "conn per request"
    } else {
        "keep-alive"
    }
}

#[derive(Clone, Copy)]
struct Cfg {
    duration: u64,
    reps: usize,
    warmup: bool,
    quick: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Variant {
    Untraced,
    /// Our agent tracing every process, the load generator's client side included.
    Agent,
    /// Our agent with the load generator excluded (`--exclude-process wrk`), as when the
    /// clients run on other hosts: only the services' own spans.
    AgentNoLoadgen,
    Otel,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::Untraced => "untraced",
            Variant::Agent => "tracer (eBPF)",
            Variant::AgentNoLoadgen => "tracer, wrk excl.",
            Variant::Otel => "OTel Python SDK",
        }
    }

    /// Arguments of our agent for this variant (`None`: no agent).
    fn agent_args(self) -> Option<&'static [&'static str]> {
        match self {
            Variant::Agent => Some(&[]),
            Variant::AgentNoLoadgen => Some(&["--exclude-process", "wrk"]),
            Variant::Untraced | Variant::Otel => None,
        }
    }
}

/// The variants every nginx comparison runs.
const NGINX_VARIANTS: &[Variant] = &[Variant::Untraced, Variant::Agent, Variant::AgentNoLoadgen];

struct Ctx {
    cfg: Cfg,
    agent_bin: PathBuf,
    sink: Sink,
    tmp: PathBuf,
    assets: PathBuf,
    rows: Vec<Row>,
    costs: Vec<CostRow>,
    capacity: Vec<CapRow>,
    notes: Vec<String>,
    /// The userspace pipeline alone: medians of (ns CPU, allocations) per request.
    pipeline: Option<(f64, f64)>,
}

/// One line of the main table: the medians of one variant of one scenario.
struct Row {
    scenario: String,
    variant: Variant,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Medians of the untraced variant of the same scenario.
    base: (f64, f64, f64),
    spans_per_req: f64,
    errors: u64,
}

/// The agent's cost in one scenario (medians over its traced runs).
struct CostRow {
    scenario: String,
    cpu_ms_per_1k: f64,
    sink_ms_per_1k: f64,
    hwm_mib: f64,
    ring_mib: f64,
    map_mib: f64,
    bpf_ns_per_run: f64,
    bpf_runs_per_req: f64,
    bpf_us_per_req: f64,
    lost: u64,
    /// Lost events/spans by counter, summed over the traced runs.
    drops: BTreeMap<String, u64>,
    progs: Vec<(String, f64)>,
}

struct CapRow {
    label: String,
    load: Load,
    received: f64,
    exported: f64,
    drops: Vec<(String, f64)>,
}

impl CapRow {
    fn lost(&self) -> f64 {
        self.drops.iter().map(|(_, v)| v).sum()
    }
}

/// One measured run of a load generator.
#[derive(Clone, Debug, Default)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    errors: u64,
}

struct RunResult {
    load: Load,
    spans: u64,
    warm_requests: u64,
    cost: Option<Cost>,
}

struct Cost {
    cpu_s: f64,
    ring_kb: u64,
    /// The receiving end of the export (the OTLP sink, on the same cores).
    sink_cpu_s: f64,
    hwm_kb: u64,
    memlock: u64,
    bpf: BTreeMap<u32, (u64, u64)>,
    names: BTreeMap<u32, String>,
    drops: BTreeMap<String, u64>,
}

impl Ctx {
    /// Runs `variants` interleaved `reps` times against `url`; `server` starts what a variant
    /// needs (and is stopped when its guard drops), `None` when the server runs for all.
    fn compare(
        &mut self,
        scenario: &str,
        variants: &[Variant],
        url: &str,
        close: bool,
        mut server: impl FnMut(&Ctx, Variant) -> Result<Option<Group>>,
    ) -> Result<()> {
        let mut runs: Vec<Vec<RunResult>> = variants.iter().map(|_| Vec::new()).collect();
        for rep in 0..self.cfg.reps {
            for (i, &v) in variants.iter().enumerate() {
                check_stop()?;
                eprintln!(
                    "bench: {scenario}: {} (run {}/{})",
                    v.label(),
                    rep + 1,
                    self.cfg.reps
                );
                let srv = server(self, v)?;
                let r = self.one_run(v, url, close)?;
                drop(srv);
                eprintln!(
                    "bench:   {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} spans for {} requests",
                    r.load.rps,
                    r.load.p50_ms,
                    r.load.p99_ms,
                    r.spans,
                    r.load.requests + r.warm_requests
                );
                runs[i].push(r);
            }
        }
        let med =
            |rs: &[RunResult], f: &dyn Fn(&RunResult) -> f64| median(rs.iter().map(f).collect());
        let base_of = |rs: &[RunResult]| {
            (
                med(rs, &|r| r.load.rps),
                med(rs, &|r| r.load.p50_ms),
                med(rs, &|r| r.load.p99_ms),
            )
        };
        let base = base_of(&runs[0]);
        for (&v, rs) in variants.iter().zip(&runs) {
            let (rps, p50, p99) = base_of(rs);
            self.rows.push(Row {
                scenario: scenario.to_owned(),
                variant: v,
                rps,
                p50_ms: p50,
                p99_ms: p99,
                base,
                spans_per_req: med(rs, &|r| {
                    r.spans as f64 / (r.load.requests + r.warm_requests).max(1) as f64
                }),
                errors: rs.iter().map(|r| r.load.errors).sum(),
            });
            let costs: Vec<(&Cost, u64)> = rs
                .iter()
                .filter_map(|r| r.cost.as_ref().map(|c| (c, r.load.requests)))
                .collect();
            if costs.is_empty() {
                continue;
            }
            let m = |f: &dyn Fn(&Cost, f64) -> f64| {
                median(
                    costs
                        .iter()
                        .map(|(c, n)| f(c, (*n).max(1) as f64))
                        .collect(),
                )
            };
            let bpf_sum = |c: &Cost| {
                c.bpf
                    .values()
                    .fold((0u64, 0u64), |a, b| (a.0 + b.0, a.1 + b.1))
            };
            // Each traced run has its own agent, so its programs have new ids: match them by name.
            let by_name = |c: &Cost| -> BTreeMap<String, (u64, u64)> {
                let mut m = BTreeMap::new();
                for (id, (t, n)) in &c.bpf {
                    let name = c
                        .names
                        .get(id)
                        .cloned()
                        .unwrap_or_else(|| format!("id {id}"));
                    let e: &mut (u64, u64) = m.entry(name).or_default();
                    e.0 += t;
                    e.1 += n;
                }
                m
            };
            let per_run: Vec<BTreeMap<String, (u64, u64)>> =
                costs.iter().map(|(c, _)| by_name(c)).collect();
            let mut progs: Vec<(String, f64)> = per_run[0]
                .keys()
                .map(|name| {
                    let ns = median(
                        per_run
                            .iter()
                            .filter_map(|r| r.get(name))
                            .map(|(t, n)| *t as f64 / (*n).max(1) as f64)
                            .collect(),
                    );
                    (name.clone(), ns)
                })
                .collect();
            progs.sort_by(|a, b| a.0.cmp(&b.0));
            self.costs.push(CostRow {
                scenario: match v {
                    Variant::AgentNoLoadgen => format!("{scenario}, wrk excl."),
                    _ => scenario.to_owned(),
                },
                cpu_ms_per_1k: m(&|c, n| c.cpu_s * 1e3 / n * 1e3),
                sink_ms_per_1k: m(&|c, n| c.sink_cpu_s * 1e3 / n * 1e3),
                hwm_mib: m(&|c, _| c.hwm_kb as f64 / 1024.0),
                ring_mib: m(&|c, _| c.ring_kb as f64 / 1024.0),
                map_mib: m(&|c, _| c.memlock as f64 / 1048576.0),
                bpf_ns_per_run: m(&|c, _| {
                    let (t, n) = bpf_sum(c);
                    t as f64 / n.max(1) as f64
                }),
                bpf_runs_per_req: m(&|c, n| bpf_sum(c).1 as f64 / n),
                bpf_us_per_req: m(&|c, n| bpf_sum(c).0 as f64 / n / 1e3),
                lost: costs.iter().flat_map(|(c, _)| c.drops.values()).sum(),
                drops: costs.iter().flat_map(|(c, _)| &c.drops).fold(
                    BTreeMap::new(),
                    |mut m, (k, v)| {
                        *m.entry(k.clone()).or_default() += v;
                        m
                    },
                ),
                progs,
            });
        }
        Ok(())
    }

    /// One run of one variant: agent up (if traced), warm-up, measured load, drain, agent down.
    fn one_run(&mut self, v: Variant, url: &str, close: bool) -> Result<RunResult> {
        wait_http(url, Duration::from_secs(20))?;
        let (spans_before, _) = self.sink.poll()?;
        let agent = match v.agent_args() {
            Some(args) => Some(Agent::start(self, args)?),
            None => None,
        };
        let warm_requests = if self.cfg.warmup {
            wrk(url, close, 1)?.requests
        } else {
            0
        };
        let before = agent.as_ref().map(Agent::sample).transpose()?;
        let (_, sink_cpu_before) = self.sink.poll()?;
        let load = wrk(url, close, self.cfg.duration)?;
        let mut cost = None;
        if let (Some(agent), Some(before)) = (&agent, before) {
            // Let the pipeline finish what the load produced before reading its cost.
            std::thread::sleep(DRAIN);
            let after = agent.sample()?;
            let (_, sink_cpu_after) = self.sink.poll()?;
            cost = Some(after.cost_since(&before, sink_cpu_after - sink_cpu_before));
        }
        if let Some(mut agent) = agent {
            agent.group.stop();
        }
        let spans = self.sink.poll()?.0 - spans_before;
        Ok(RunResult {
            load,
            spans,
            warm_requests,
            cost,
        })
    }

    /// Starts nginx with `nginx-static.conf` in its own prefix; returns the guard and its URL.
    fn nginx_static(&self, name: &str) -> Result<(Group, String)> {
        let port = free_port()?;
        let root = self.tmp.join(name).join("html");
        std::fs::create_dir_all(&root)?;
        std::fs::copy(self.assets.join("index.html"), root.join("index.html"))?;
        self.nginx(
            name,
            "nginx-static.conf",
            &[
                ("@PORT@", port.to_string()),
                ("@ROOT@", root.display().to_string()),
            ],
            port,
        )
    }

    fn nginx_proxy(&self, name: &str, upstream: u16) -> Result<(Group, String)> {
        let port = free_port()?;
        self.nginx(
            name,
            "nginx-proxy.conf",
            &[
                ("@PORT@", port.to_string()),
                ("@UPSTREAM_PORT@", upstream.to_string()),
            ],
            port,
        )
    }

    fn nginx(
        &self,
        name: &str,
        template: &str,
        subst: &[(&str, String)],
        port: u16,
    ) -> Result<(Group, String)> {
        let prefix = self.tmp.join(name);
        std::fs::create_dir_all(prefix.join("tmp"))?;
        let mut conf = std::fs::read_to_string(self.assets.join(template))
            .with_context(|| format!("bench: reading {template}"))?;
        for (k, v) in subst {
            conf = conf.replace(k, v);
        }
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut cmd = Command::new("nginx");
        cmd.arg("-p").arg(&prefix).arg("-c").arg(&conf_path);
        let group = Group::spawn(
            &format!("nginx {name}"),
            &mut cmd,
            &prefix.join("stderr.log"),
        )?;
        let url = format!("http://127.0.0.1:{port}/");
        wait_http(&url, Duration::from_secs(10)).with_context(|| {
            format!(
                "nginx {name} did not answer; its error.log: {}",
                std::fs::read_to_string(prefix.join("error.log")).unwrap_or_default()
            )
        })?;
        Ok((group, url))
    }

    /// gunicorn with the plain app (untraced and agent) or the OpenTelemetry-instrumented one.
    fn gunicorn(&self, port: u16, v: Variant) -> Result<Group> {
        let app = if v == Variant::Otel {
            "flask_app_otel:app"
        } else {
            "flask_app:app"
        };
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "gunicorn", "-c", "gunicorn.conf.py", app])
            .current_dir(&self.assets)
            .env("BENCH_PORT", port.to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", &self.sink.http)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        let group = Group::spawn("gunicorn", &mut cmd, &self.tmp.join("gunicorn.log"))?;
        wait_http(
            &format!("http://127.0.0.1:{port}/"),
            Duration::from_secs(30),
        )
        .with_context(|| {
            format!(
                "gunicorn did not answer: {}",
                std::fs::read_to_string(self.tmp.join("gunicorn.log")).unwrap_or_default()
            )
        })?;
        Ok(group)
    }

    /// Steps a rate-limited load against nginx with one agent running and reads its counters
    /// after each step; then saturates with undersized buffers so that losses show.
    fn capacity(&mut self) -> Result<()> {
        let (_srv, url) = self.nginx_static("capacity")?;
        let rates: &[u64] = if self.cfg.quick {
            &[2_000, 8_000]
        } else {
            &[
                1_000, 2_000, 4_000, 8_000, 12_000, 16_000, 20_000, 24_000, 28_000,
            ]
        };
        let d = self.cfg.duration;
        let agent = Agent::start(self, &[])?;
        for &rate in rates {
            check_stop()?;
            eprintln!(
                "bench: capacity: {rate} req/s for {d} s (hey -c {HEY_WORKERS} -q {})",
                rate / HEY_WORKERS
            );
            let before = agent.metrics()?;
            let load = hey(&url, rate, d)?;
            std::thread::sleep(DRAIN);
            let after = agent.metrics()?;
            self.capacity.push(cap_row(
                format!("hey -q, target {rate}/s"),
                load,
                &before,
                &after,
            ));
        }
        eprintln!("bench: capacity: saturation (wrk, keep-alive)");
        let before = agent.metrics()?;
        let load = wrk(&url, false, d)?;
        std::thread::sleep(DRAIN);
        let after = agent.metrics()?;
        self.capacity.push(cap_row(
            "wrk saturation, defaults".into(),
            load,
            &before,
            &after,
        ));
        drop(agent);
        for (label, extra) in [
            (
                "wrk saturation, --ringbuf-bytes 8192",
                &["--ringbuf-bytes", "8192"][..],
            ),
            (
                "wrk saturation, --max-pending-spans 1000",
                &["--max-pending-spans", "1000"][..],
            ),
        ] {
            check_stop()?;
            eprintln!("bench: capacity: {label}");
            let agent = Agent::start(self, extra)?;
            let before = agent.metrics()?;
            let load = wrk(&url, false, d)?;
            std::thread::sleep(DRAIN);
            let after = agent.metrics()?;
            self.capacity
                .push(cap_row(label.into(), load, &before, &after));
        }
        Ok(())
    }

    fn report(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(o, "\n== tracer overhead benchmark ==");
        let _ = writeln!(o, "{}", machine());
        let _ = writeln!(
            o,
            "{} s per run, {} interleaved repetition(s), medians; ratio = variant / untraced of the same scenario\n",
            self.cfg.duration, self.cfg.reps
        );
        if !self.rows.is_empty() {
            let _ = writeln!(
                o,
                "{:<42} {:<18} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>9} {:>6}",
                "scenario",
                "variant",
                "req/s",
                "p50 ms",
                "p99 ms",
                "req/s",
                "p50",
                "p99",
                "spans/req",
                "errors"
            );
            let _ = writeln!(
                o,
                "{:<42} {:<18} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}",
                "", "", "", "", "", "ratio", "ratio", "ratio"
            );
            for r in &self.rows {
                let _ = writeln!(
                    o,
                    "{:<42} {:<18} {:>9.0} {:>9.3} {:>9.3} {:>7.3} {:>7.2} {:>7.2} {:>9.2} {:>6}",
                    r.scenario,
                    r.variant.label(),
                    r.rps,
                    r.p50_ms,
                    r.p99_ms,
                    r.rps / r.base.0,
                    r.p50_ms / r.base.1,
                    r.p99_ms / r.base.2,
                    r.spans_per_req,
                    r.errors
                );
            }
        }
        if !self.costs.is_empty() {
            let _ = writeln!(
                o,
                "\nAgent cost (traced runs, medians; sink: the OTLP receiver on the same cores, \
                 counting spans without decoding them; ring RSS: the part of VmHWM that is the \
                 ring buffer, whose pages are mapped and counted twice):"
            );
            let _ = writeln!(
                o,
                "{:<54} {:>12} {:>14} {:>9} {:>12} {:>9} {:>10} {:>9} {:>10} {:>6}",
                "scenario",
                "CPU ms/1k req",
                "sink ms/1k req",
                "VmHWM MiB",
                "ring RSS MiB",
                "maps MiB",
                "BPF ns/run",
                "runs/req",
                "BPF us/req",
                "lost"
            );
            for c in &self.costs {
                let _ = writeln!(
                    o,
                    "{:<54} {:>12.1} {:>14.1} {:>9.1} {:>12.1} {:>9.1} {:>10.0} {:>9.1} {:>10.2} {:>6}",
                    c.scenario,
                    c.cpu_ms_per_1k,
                    c.sink_ms_per_1k,
                    c.hwm_mib,
                    c.ring_mib,
                    c.map_mib,
                    c.bpf_ns_per_run,
                    c.bpf_runs_per_req,
                    c.bpf_us_per_req,
                    c.lost
                );
            }
            for c in self.costs.iter().filter(|c| c.lost > 0) {
                let d: Vec<String> = c.drops.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(o, "  lost in {}: {}", c.scenario, d.join(" "));
            }
            let _ = writeln!(o, "\nBPF mean ns per invocation, per program:");
            for c in &self.costs {
                let progs: Vec<String> = c
                    .progs
                    .iter()
                    .filter(|(_, ns)| *ns > 0.0)
                    .map(|(n, ns)| format!("{n} {ns:.0}"))
                    .collect();
                let _ = writeln!(o, "  {:<52} {}", c.scenario, progs.join(", "));
            }
        }
        if !self.capacity.is_empty() {
            let _ = writeln!(
                o,
                "\nCapacity (nginx static, keep-alive; counter deltas from the agent's /metrics):"
            );
            let _ = writeln!(
                o,
                "{:<40} {:>9} {:>9} {:>9} {:>11} {:>10} {:>9}  drops by stage",
                "load", "req/s", "p50 ms", "p99 ms", "events rcvd", "spans exp", "lost",
            );
            for c in &self.capacity {
                let drops: Vec<String> = c
                    .drops
                    .iter()
                    .filter(|(_, v)| *v > 0.0)
                    .map(|(k, v)| format!("{k}={v:.0}"))
                    .collect();
                let _ = writeln!(
                    o,
                    "{:<40} {:>9.0} {:>9.3} {:>9.3} {:>11.0} {:>10.0} {:>9.0}  {}",
                    c.label,
                    c.load.rps,
                    c.load.p50_ms,
                    c.load.p99_ms,
                    c.received,
                    c.exported,
                    c.lost(),
                    if drops.is_empty() {
                        "-".into()
                    } else {
                        drops.join(" ")
                    }
                );
            }
            let clean = self
                .capacity
                .iter()
                .filter(|c| !c.label.contains("--"))
                .filter(|c| c.lost() == 0.0)
                .map(|c| c.load.rps)
                .fold(0.0f64, f64::max);
            let _ = writeln!(
                o,
                "highest rate sustained with zero lost events: {clean:.0} req/s"
            );
        }
        if let Some((ns, allocations)) = self.pipeline {
            let _ = writeln!(
                o,
                "\nUserspace pipeline alone (one thread, synthetic nginx keep-alive load, median of \
                 {} runs): {ns:.0} ns CPU and {allocations:.1} heap allocations per request",
                self.cfg.reps
            );
        }
        for n in &self.notes {
            let _ = writeln!(o, "note: {n}");
        }
        o
    }

    /// Runs the pipeline example `reps` times; keeps the medians.
    fn pipeline(&mut self) -> Result<()> {
        proc::run(
            "bench: build the pipeline example",
            proc::cargo().args([
                "build",
                "--release",
                "-p",
                "tracer-user",
                "--example",
                "pipeline",
            ]),
        )?;
        let bin = crate::target_dir()?.join("release/examples/pipeline");
        let (mut ns, mut allocations) = (Vec::new(), Vec::new());
        for rep in 0..self.cfg.reps {
            check_stop()?;
            eprintln!("bench: pipeline (run {}/{})", rep + 1, self.cfg.reps);
            let out = Command::new(&bin)
                .output()
                .with_context(|| format!("bench: running {}", bin.display()))?;
            let line = String::from_utf8_lossy(&out.stdout).into_owned();
            if !out.status.success() {
                bail!(
                    "bench: the pipeline example failed: {line}{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            eprint!("bench:   {line}");
            let field = |key: &str| -> Result<f64> {
                line.split_whitespace()
                    .find_map(|w| w.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("bench: no {key} in {line:?}"))
            };
            ns.push(field("ns_per_request=")?);
            allocations.push(field("allocations_per_request=")?);
        }
        self.pipeline = Some((median(ns), median(allocations)));
        Ok(())
    }
}

fn cap_row(label: String, load: Load, before: &Metrics, after: &Metrics) -> CapRow {
    let delta = |k: &str| after.get(k) - before.get(k);
    let drops = after
        .0
        .keys()
        .filter(|k| k.contains("_dropped_total"))
        .map(|k| (k.trim_start_matches("tracer_").to_owned(), delta(k)))
        .collect();
    CapRow {
        label,
        load,
        received: delta("tracer_events_received_total{stage=\"reader\"}"),
        exported: delta("tracer_spans_exported_total{stage=\"exporter\"}"),
        drops,
    }
}

// ---- the agent ----

struct Agent {
    group: Group,
    pid: u32,
    health: String,
}

struct Sample {
    ticks: u64,
    hwm_kb: u64,
    /// Resident pages of the agent's BPF map mappings (the ring buffer's, whose data pages
    /// the kernel maps twice in a row: RSS counts them twice).
    ring_kb: u64,
    memlock: u64,
    bpf: BTreeMap<u32, (u64, u64)>,
    metrics: Metrics,
}

impl Agent {
    fn start(ctx: &Ctx, extra: &[&str]) -> Result<Agent> {
        let health = format!("127.0.0.1:{}", free_port()?);
        let mut cmd = Command::new(&ctx.agent_bin);
        cmd.args(["--otlp-endpoint", &ctx.sink.grpc, "--otlp-protocol", "grpc"])
            // The agent copies its kernel-side counters (ringbuf drops among them) into /metrics only
            // on its stats tick, so the tick is 1 s here; `warn` keeps the tick's log line quiet.
            .args([
                "--health-addr",
                &health,
                "--stats-interval-secs",
                "1",
                "--log-level",
                "warn",
            ])
            .args(extra);
        let log = ctx.tmp.join("agent.log");
        let group = Group::spawn("tracer agent", &mut cmd, &log)?;
        let pid = group.child.id();
        let agent = Agent { group, pid, health };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            check_stop()?;
            if http_get(&agent.health, "/readyz").is_ok_and(|(s, _)| s == 200) {
                return Ok(agent);
            }
            if Instant::now() > deadline {
                bail!(
                    "bench: agent not ready after 60 s; its log:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn metrics(&self) -> Result<Metrics> {
        let (status, body) = http_get(&self.health, "/metrics")?;
        if status != 200 {
            bail!("bench: agent /metrics answered {status}");
        }
        Ok(Metrics::parse(&body))
    }

    fn sample(&self) -> Result<Sample> {
        let pid = self.pid;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("bench: odd /proc/pid/stat")?
            .1
            .split_whitespace()
            .collect();
        // Fields 14 and 15 (utime, stime); the slice starts at field 3.
        let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let hwm_kb = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let (memlock, bpf) = bpf_fds(pid)?;
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
        Ok(Sample {
            ticks,
            hwm_kb,
            ring_kb: bpf_map_rss_kb(&smaps),
            memlock,
            bpf,
            metrics: self.metrics()?,
        })
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.group.stop();
    }
}

impl Sample {
    /// `sink_cpu_s`: the OTLP sink's CPU time over the same interval.
    fn cost_since(&self, before: &Sample, sink_cpu_s: f64) -> Cost {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let bpf = self
            .bpf
            .iter()
            .map(|(id, (t, n))| {
                let (t0, n0) = before.bpf.get(id).copied().unwrap_or((0, 0));
                (*id, (t - t0, n - n0))
            })
            .collect();
        // The whole life of this agent (warm-up included): any loss in the run counts.
        let drops = self
            .metrics
            .0
            .iter()
            .filter(|(k, v)| k.contains("_dropped_total") && **v > 0.0)
            .map(|(k, v)| (k.trim_start_matches("tracer_").to_owned(), *v as u64))
            .collect();
        Cost {
            cpu_s: (self.ticks - before.ticks) as f64 / hz,
            sink_cpu_s,
            hwm_kb: self.hwm_kb,
            ring_kb: self.ring_kb,
            memlock: self.memlock,
            bpf,
            names: prog_names(),
            drops,
        }
    }
}

/// Sum of `Rss:` over the `anon_inode:bpf-map` mappings of an smaps listing, in KiB.
fn bpf_map_rss_kb(smaps: &str) -> u64 {
    let mut in_map = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            // A mapping's first line: range, perms, offset, device, inode, name.
            Some(first) if first.contains('-') && !first.ends_with(':') => {
                in_map = line.ends_with("anon_inode:bpf-map");
            }
            Some("Rss:") if in_map => {
                kb += words
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    kb
}

/// `(run_time_ns, run_cnt)` by BPF program id.
type ProgStats = BTreeMap<u32, (u64, u64)>;

/// Sum of `memlock` over the distinct BPF maps the process holds, and per BPF program id
/// `(run_time_ns, run_cnt)`, from `/proc/<pid>/fdinfo`.
fn bpf_fds(pid: u32) -> Result<(u64, ProgStats)> {
    let mut maps = BTreeMap::new();
    let mut progs = BTreeMap::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let entry = entry?;
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let is_map = target == "anon_inode:bpf-map";
        if !is_map && target != "anon_inode:bpf-prog" {
            continue;
        }
        let fd = entry.file_name();
        let Ok(info) =
            std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{}", fd.to_string_lossy()))
        else {
            continue;
        };
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0)
        };
        if is_map {
            maps.insert(field("map_id"), field("memlock"));
        } else {
            progs.insert(
                field("prog_id") as u32,
                (field("run_time_ns"), field("run_cnt")),
            );
        }
    }
    Ok((maps.values().sum(), progs))
}

/// BPF program names by id, from `bpftool -j prog show` (empty if bpftool fails).
fn prog_names() -> BTreeMap<u32, String> {
    let Some(out) = proc::stdout_if_ok(Command::new("bpftool").args(["-j", "prog", "show"])) else {
        return BTreeMap::new();
    };
    let Ok(serde_json::Value::Array(progs)) = serde_json::from_str(&out) else {
        return BTreeMap::new();
    };
    progs
        .iter()
        .filter_map(|p| Some((p["id"].as_u64()? as u32, p["name"].as_str()?.to_owned())))
        .collect()
}

/// Prometheus text samples by `name{labels}`.
struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (k, v) = l.rsplit_once(' ')?;
                    Some((k.to_owned(), v.trim().parse().ok()?))
                })
                .collect(),
        )
    }
    fn get(&self, key: &str) -> f64 {
        self.0.get(key).copied().unwrap_or(0.0)
    }
}

// ---- the OTLP sink ----

struct Sink {
    /// Stops the sink when the bench ends.
    _group: Group,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    grpc: String,
    http: String,
}

impl Sink {
    fn start(bin: &Path) -> Result<Sink> {
        let mut cmd = Command::new(bin);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.process_group(0);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("bench: starting {}", bin.display()))?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let group = Group {
            name: "otlp_sink".into(),
            child,
        };
        let mut first = String::new();
        stdout.read_line(&mut first)?;
        let addr = |key: &str| {
            first
                .split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
                .with_context(|| format!("bench: otlp_sink printed {first:?}"))
        };
        Ok(Sink {
            grpc: addr("grpc=")?,
            http: addr("http=")?,
            _group: group,
            stdin,
            stdout,
        })
    }

    /// Spans received so far, and the sink's CPU time so far in seconds.
    fn poll(&mut self) -> Result<(u64, f64)> {
        self.stdin.write_all(b"\n")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        let field = |key: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .and_then(|n| n.parse().ok())
        };
        field("spans=")
            .zip(field("cpu_ms="))
            .map(|(spans, ms)| (spans, ms as f64 / 1e3))
            .with_context(|| format!("bench: otlp_sink answered {line:?}"))
    }
}

// ---- load generators ----

fn bounded(program: &str, secs: u64) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["--kill-after=5", &format!("{}", secs + 30), program]);
    cmd
}

fn wrk(url: &str, close: bool, secs: u64) -> Result<Load> {
    let mut cmd = bounded("wrk", secs);
    cmd.args([
        "-t",
        WRK_THREADS,
        "-c",
        WRK_CONNECTIONS,
        "-d",
        &format!("{secs}s"),
        "--timeout",
        "5s",
        "--latency",
    ]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    cmd.arg(url);
    let out = output("wrk", &mut cmd)?;
    parse_wrk(&out).with_context(|| format!("bench: could not read wrk's output:\n{out}"))
}

fn parse_wrk(out: &str) -> Option<Load> {
    let mut load = Load::default();
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => load.rps = v.parse().ok()?,
            ["50%", v] => load.p50_ms = duration_ms(v)?,
            ["99%", v] => load.p99_ms = duration_ms(v)?,
            [n, "requests", "in", ..] => load.requests = n.parse().ok()?,
            ["Non-2xx", "or", "3xx", "responses:", n] => load.errors += n.parse::<u64>().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                load.errors += rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    (load.rps > 0.0).then_some(load)
}

/// wrk's durations: `512.00us`, `1.23ms`, `2.00s`, `1.5m`.
fn duration_ms(s: &str) -> Option<f64> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => return None,
    })
}

/// `hey` at `rate` requests/s in total (keep-alive), for `secs`.
fn hey(url: &str, rate: u64, secs: u64) -> Result<Load> {
    let mut cmd = bounded("hey", secs);
    cmd.args([
        "-z",
        &format!("{secs}s"),
        "-c",
        &HEY_WORKERS.to_string(),
        "-q",
        &(rate / HEY_WORKERS).max(1).to_string(),
        url,
    ]);
    let out = output("hey", &mut cmd)?;
    parse_hey(&out).with_context(|| format!("bench: could not read hey's output:\n{out}"))
}

fn parse_hey(out: &str) -> Option<Load> {
    let mut load = Load::default();
    let mut in_errors = false;
    for line in out.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", v] => load.rps = v.parse().ok()?,
            ["50%", "in", v, "secs"] => load.p50_ms = v.parse::<f64>().ok()? * 1e3,
            ["99%", "in", v, "secs"] => load.p99_ms = v.parse::<f64>().ok()? * 1e3,
            [code, n, "responses"] if code.starts_with('[') => {
                let n: u64 = n.parse().ok()?;
                load.requests += n;
                if *code != "[200]" {
                    load.errors += n;
                }
            }
            ["Error", "distribution:"] => in_errors = true,
            [n, ..] if in_errors && n.starts_with('[') => {
                load.errors += n
                    .trim_matches(|c| c == '[' || c == ']')
                    .parse::<u64>()
                    .unwrap_or(0);
            }
            _ => {}
        }
    }
    (load.rps > 0.0).then_some(load)
}

fn output(step: &str, cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("bench: could not start `{}`", proc::describe(cmd)))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "bench: {step} exited with {}: {}{}",
            out.status,
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(text)
}

// ---- processes, ports, files ----

/// A child in its own process group: SIGTERM to the leader on stop, SIGKILL to the group after
/// 15 s, and always once more to the group so no worker is left behind.
struct Group {
    name: String,
    child: Child,
}

impl Group {
    fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Group> {
        let log = std::fs::File::create(log)?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd
            .spawn()
            .with_context(|| format!("bench: could not start {name}: `{}`", proc::describe(cmd)))?;
        Ok(Group {
            name: name.to_owned(),
            child,
        })
    }

    fn stop(&mut self) {
        let pid = self.child.id() as i32;
        if matches!(self.child.try_wait(), Ok(None)) {
            // SAFETY: plain kill of a child we started (and still own: not yet reaped).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(self.child.try_wait(), Ok(None)) {
                eprintln!("bench: {} did not stop within 15 s; killing it", self.name);
            }
        }
        // SAFETY: the group is the one this child leads, created by us with process_group(0).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn port_of(url: &str) -> u16 {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// A minimal HTTP/1.0 GET: (status, body).
fn http_get(addr: &str, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("bench: no HTTP status line")?;
    let body = buf.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    Ok((status, body))
}

/// Waits until `url` (`http://host:port/path`) answers 200.
fn wait_http(url: &str, timeout: Duration) -> Result<()> {
    let rest = url.trim_start_matches("http://");
    let (addr, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let deadline = Instant::now() + timeout;
    loop {
        check_stop()?;
        match http_get(addr, &path) {
            Ok((200, _)) => return Ok(()),
            other if Instant::now() > deadline => bail!("bench: {url} not ready: {other:?}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir> {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("tracer-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `kernel.bpf_stats_enabled=1` while alive; the previous value is restored on drop.
struct BpfStats(String);

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl BpfStats {
    fn enable() -> Result<BpfStats> {
        let old = std::fs::read_to_string(BPF_STATS)
            .context("bench: reading kernel.bpf_stats_enabled")?;
        std::fs::write(BPF_STATS, "1").context("bench: enabling kernel.bpf_stats_enabled")?;
        Ok(BpfStats(old.trim().to_owned()))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(BPF_STATS, &self.0) {
            eprintln!(
                "bench: could not restore kernel.bpf_stats_enabled={}: {e}",
                self.0
            );
        }
    }
}

/// SIGINT/SIGTERM set [`STOP`]; the bench then fails at its next check, and the guards stop
/// every child on the way out (the children have their own process groups, so a terminal's
/// Ctrl-C does not reach them directly).
fn install_stop_handler() {
    extern "C" fn on_signal(_: libc::c_int) {
        STOP.store(true, Ordering::SeqCst);
    }
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            action.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(sig, &action, std::ptr::null_mut());
        }
    }
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("bench: interrupted");
    }
    Ok(())
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")?
                .split_once(':')
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .map_or(String::new(), |kb| {
            format!(", {:.1} GiB RAM", kb as f64 / 1048576.0)
        });
    format!(
        "machine: nproc {nproc}, kernel {}, CPU {model}{mem}",
        kernel.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:8080/\n  2 threads and 32 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency   1.10ms  300.00us   8.00ms   90.00%\n  Latency Distribution\n     50%  512.00us\n     75%    1.00ms\n     90%    2.00ms\n     99%    1.50s\n  41234 requests in 2.00s, 10.00MB read\n  Socket errors: connect 0, read 3, write 0, timeout 1\n  Non-2xx or 3xx responses: 2\nRequests/sec:  20617.00\nTransfer/sec:      5.00MB\n";
        let l = parse_wrk(out).unwrap();
        assert_eq!(l.requests, 41234);
        assert_eq!(l.errors, 6);
        assert!((l.rps - 20617.0).abs() < 1e-9);
        assert!((l.p50_ms - 0.512).abs() < 1e-9);
        assert!((l.p99_ms - 1500.0).abs() < 1e-9);
    }

    #[test]
    fn reads_hey_output() {
        let out = "\nSummary:\n  Total:\t2.0012 secs\n  Requests/sec:\t999.4000\n\nLatency distribution:\n  10% in 0.0003 secs\n  50% in 0.0005 secs\n  99% in 0.0020 secs\n\nStatus code distribution:\n  [200]\t1990 responses\n  [502]\t10 responses\n\nError distribution:\n  [3]\tGet http://x: dial tcp: connection refused\n";
        let l = parse_hey(out).unwrap();
        assert_eq!(l.requests, 2000);
        assert_eq!(l.errors, 13);
        assert!((l.p50_ms - 0.5).abs() < 1e-9);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 2.5);
    }
}
