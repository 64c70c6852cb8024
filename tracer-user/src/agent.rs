//! The agent's life: start-up checks, the Kubernetes pod watch (in the background), loading
//! the probes, wiring the pipeline stages (ring-buffer reader -> connection table -> span
//! assembly -> exporter, the first three on one task, records handled in place as they are
//! drained), periodic housekeeping and self-telemetry, and an orderly stop on SIGINT/SIGTERM
//! (detach, flush, exit 0).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    time::{MissedTickBehavior, interval},
};
use tracing::{info, warn};

use crate::{
    assemble::{Assembler, AssemblerConfig, ResourceSource},
    btf,
    config::Config,
    conntable::{ConnOutput, ConnTable, Filter},
    event::{ConnOp, Event},
    export::{ExportConfig, Exporter, parse_headers, parse_protocol},
    health,
    heap::PromptPurge,
    k8s::Kubernetes,
    loader::{self, LoadOptions, Probes},
    metrics::Metrics,
    metrics::{add, inc},
    preflight,
    process::{self, ProcessCache},
    protocol::ParserOptions,
    reader::{self, RingReader},
    sampling::Sampler,
    selection::Selection,
    span::{ProcessResource, SpanRecord},
};

impl ResourceSource for ProcessCache {
    fn resource(&mut self, pid: u32) -> Arc<ProcessResource> {
        ProcessCache::resource(self, pid)
    }
}

/// How often span assembly and the connection table do their housekeeping.
const TICK: Duration = Duration::from_millis(50);
/// How long one drain of the ring buffer may run before the pipeline looks at its other
/// duties; the housekeeping tick is at most this late (plus one batch).
const DRAIN_BUDGET: Duration = Duration::from_millis(10);
/// The last drain at a stop, with the probes still attached: what they wrote before it.
const FINAL_DRAIN_BUDGET: Duration = Duration::from_millis(500);
/// How long the exporter may take to flush at exit.
const FLUSH_DEADLINE: Duration = Duration::from_secs(3);

/// Runs the agent until a stop signal. Errors are start-up failures, one clear line each.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let mut own_listen_ports = Vec::new();
    if let Some(addr) = config.health_addr {
        let bound = health::spawn(addr, metrics.clone(), ready.clone()).await?;
        info!("health and metrics endpoint on http://{bound}");
        own_listen_ports.push(bound.port());
    }
    // Start-up checks: one line each; fatal only when nothing could work.
    let checks = preflight::run();
    checks.log();
    if let Some(fatal) = checks.fatal() {
        anyhow::bail!("{fatal}");
    }
    // Node-side identity, plus the API watch of this node's pods when in a cluster; the watch
    // runs in the background and never delays start-up.
    let kubernetes = Kubernetes::start(config.k8s_api);
    let start_up = PromptPurge::start();
    let sock_offsets = match btf::sock_offsets() {
        Ok(offsets) => offsets,
        Err(e) => {
            warn!("{e}; using the usual x86_64 sock_common offsets, addresses may be wrong");
            tracer_common::SockOffsets::X86_64
        }
    };
    let selection = Selection::from_config(&config);
    let mut probes = loader::load(&LoadOptions {
        agent_pid: std::process::id(),
        capture_bytes: config.capture_bytes,
        ringbuf_bytes: config.ringbuf_bytes,
        pids: config.pids.clone(),
        ports: config.ports.clone(),
        own_listen_ports,
        sock_offsets,
        process_rules: selection.has_process_rules(),
    })?;
    let ring = probes.take_ring_buffer()?;
    drop(start_up);

    let exporter = Exporter::start(export_config(&config)?, metrics.clone())
        .context("starting the exporter")?;
    let mut ring = RingReader::new(ring, metrics.clone()).context("polling the ring buffer")?;

    let mut table = ConnTable::new(
        Filter { selection },
        ParserOptions::with_headers(config.record_query, &config.record_headers),
        config.max_connections,
        config.connection_idle_secs.saturating_mul(1_000_000_000),
        metrics.clone(),
    );
    let mut assembler = Assembler::new(
        AssemblerConfig {
            settle_ns: config.settle().as_nanos() as u64,
            request_timeout_ns: config.request_timeout_secs.saturating_mul(1_000_000_000),
            max_pending: config.max_pending_spans,
            realtime_offset_ns: realtime_offset_ns(),
            link_threshold: config.link_threshold,
        },
        metrics.clone(),
    );
    let mut processes =
        ProcessCache::new(process::host_name(), 4096).with_kubernetes(kubernetes.clone());
    let sampler = Sampler::new(config.sample_ratio);
    // Head sampling at the export boundary: every span of a trace gets the same decision.
    let submit = |span: SpanRecord| {
        if sampler.keep(&span) {
            exporter.submit(span);
        } else {
            inc(&metrics.spans_sampled_out);
        }
    };

    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut tick = interval(TICK);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let stats_every = Duration::from_secs(config.stats_interval_secs.max(1));
    let mut stats = interval(stats_every);
    stats.tick().await;
    let mut drain_timer = interval(reader::DRAIN_INTERVAL);
    drain_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut outputs: Vec<ConnOutput> = Vec::new();
    let mut ticks: u64 = 0;

    ready.store(true, Ordering::Relaxed);
    info!(
        "tracer ready: {} tracepoints attached, exporting to {}",
        probes.attached,
        config
            .otlp_traces_endpoint
            .as_deref()
            .or(config.otlp_endpoint.as_deref())
            .unwrap_or("stdout")
    );
    loop {
        // In this order: under load the ring buffer is always ready, and a draw among ready
        // branches (tokio's default) let whole drains pass before the housekeeping tick, up
        // to 1.4 s late on an overrun proxy chain: what it releases piled up meanwhile (to
        // the pending-span bound, then in one burst into the export queue).
        tokio::select! {
            biased;
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => {
                let now = monotonic_ns();
                ticks += 1;
                if ticks.is_multiple_of(20) {
                    // Keeps /metrics current (the kernel side counts per CPU, read on demand).
                    refresh_kernel_counters(&probes, &metrics);
                }
                table.evict_idle(now, &mut outputs);
                for output in outputs.drain(..) {
                    assembler.on_output(output, &mut processes);
                }
                for span in assembler.tick(now) {
                    submit(span);
                }
            }
            _ = stats.tick(), if config.stats_interval_secs > 0 => log_stats(&probes, &metrics, &table, &assembler),
            woken = ring.woken() => {
                if let Err(e) = woken {
                    warn!("ring buffer poll failed: {e}; stopping");
                    break;
                }
                drain(&mut ring, &mut probes, &mut table, &mut assembler, &mut processes, &mut outputs, &metrics);
            }
            _ = drain_timer.tick() => {
                drain(&mut ring, &mut probes, &mut table, &mut assembler, &mut processes, &mut outputs, &metrics);
            }
        }
    }

    info!("stopping: detaching probes and flushing spans");
    refresh_kernel_counters(&probes, &metrics);
    let stopping = Instant::now();
    while drain(
        &mut ring,
        &mut probes,
        &mut table,
        &mut assembler,
        &mut processes,
        &mut outputs,
        &metrics,
    ) && stopping.elapsed() < FINAL_DRAIN_BUDGET
    {}
    drop(ring);
    drop(probes);
    table.close_all(&mut outputs);
    for output in outputs.drain(..) {
        assembler.on_output(output, &mut processes);
    }
    for span in assembler.flush(monotonic_ns()) {
        submit(span);
    }
    exporter.shutdown(FLUSH_DEADLINE).await;
    log_totals(&metrics);
    Ok(())
}

/// Drains the ring buffer through the connection table into span assembly, batch after
/// batch until it is empty or [`DRAIN_BUDGET`] has passed, so that ticks and signals keep
/// their turn under any load. Returns whether records were left when the budget ran out.
fn drain(
    ring: &mut RingReader,
    probes: &mut Probes,
    table: &mut ConnTable,
    assembler: &mut Assembler,
    processes: &mut ProcessCache,
    outputs: &mut Vec<ConnOutput>,
    metrics: &Metrics,
) -> bool {
    let started = Instant::now();
    let mut more = false;
    loop {
        let read = ring.drain(|event| {
            // A new connection: learn the process's identity while it surely still runs.
            if let Event::Conn(conn) = event
                && conn.op != ConnOp::Close
            {
                processes.resource(conn.pid);
            }
            table.on_event(event, outputs);
            for output in outputs.drain(..) {
                assembler.on_output(output, processes);
            }
        });
        if read < reader::DRAIN_BATCH {
            break;
        }
        if started.elapsed() >= DRAIN_BUDGET {
            more = true;
            break;
        }
    }
    // What the table decided not to trace stops in the kernel, before any copy.
    let mutes = table.take_mutes();
    if !mutes.pids.is_empty() || !mutes.conns.is_empty() {
        let failed = probes.mute(&mutes.pids, &mutes.conns);
        add(&metrics.mutes_failed, failed as u64);
    }
    more
}

fn export_config(config: &Config) -> anyhow::Result<ExportConfig> {
    let (endpoint, signal_specific) = match (&config.otlp_traces_endpoint, &config.otlp_endpoint) {
        (Some(traces), _) => (Some(traces.clone()), true),
        (None, Some(base)) => (Some(base.clone()), false),
        (None, None) => (None, false),
    };
    let headers = match &config.otlp_headers {
        Some(h) => parse_headers(h).context("--otlp-headers / OTEL_EXPORTER_OTLP_HEADERS")?,
        None => Vec::new(),
    };
    Ok(ExportConfig {
        endpoint,
        endpoint_is_signal_specific: signal_specific,
        protocol: parse_protocol(&config.otlp_protocol)
            .context("--otlp-protocol / OTEL_EXPORTER_OTLP_PROTOCOL")?,
        headers,
        timeout: Duration::from_millis(config.otlp_timeout_ms),
        max_batch: config.export_batch.max(1),
        concurrency: usize::from(config.export_concurrency.max(1)),
        batch_delay: Duration::from_millis(200),
        queue_capacity: config.export_queue.max(1),
        ..ExportConfig::default()
    })
}

/// Copies the kernel side's counters into the shared metrics.
fn refresh_kernel_counters(probes: &Probes, metrics: &Metrics) {
    use std::sync::atomic::Ordering::Relaxed;
    match probes.kernel_counters() {
        Ok(k) => {
            metrics.kernel_events_sent.store(k.events_sent, Relaxed);
            metrics.kernel_ringbuf_full.store(k.ringbuf_full, Relaxed);
            metrics
                .kernel_read_user_failed
                .store(k.read_user_failed, Relaxed);
            metrics.kernel_inflight_full.store(k.inflight_full, Relaxed);
            metrics
                .kernel_sendfile_uncaptured
                .store(k.sendfile_uncaptured, Relaxed);
            metrics.kernel_port_filtered.store(k.port_filtered, Relaxed);
            metrics.kernel_agent_peer.store(k.agent_peer, Relaxed);
            metrics
                .kernel_conn_insert_failed
                .store(k.conn_insert_failed, Relaxed);
            metrics.kernel_conn_muted.store(k.conn_muted, Relaxed);
            metrics.kernel_proc_events.store(k.proc_events, Relaxed);
            metrics
                .kernel_undecoded_call
                .store(k.undecoded_call, Relaxed);
        }
        Err(e) => warn!("cannot read kernel counters: {e}"),
    }
}

fn log_stats(probes: &Probes, metrics: &Metrics, table: &ConnTable, assembler: &Assembler) {
    refresh_kernel_counters(probes, metrics);
    info!(
        connections = table.len(),
        pending_spans = assembler.pending(),
        "{}",
        summary(metrics)
    );
}

fn log_totals(metrics: &Metrics) {
    info!("totals: {}", summary(metrics));
}

/// Non-zero counters as `name{stage}=value`, one line.
fn summary(metrics: &Metrics) -> String {
    metrics
        .snapshot()
        .into_iter()
        .filter(|(_, _, v)| *v > 0)
        .map(|(name, stage, v)| format!("{name}{{{stage}}}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// Now on the kernel's `bpf_ktime_get_ns` clock (`CLOCK_MONOTONIC`).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn realtime_offset_ns() -> i128 {
    clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC)
}
