//! `pipeline`: the agent's userspace pipeline alone, on one thread, with a fixed synthetic
//! load: `cargo xtask bench --only pipeline` runs it (or `cargo run --release -p tracer-user
//! --example pipeline -- [requests]`).
//!
//! It feeds the records the kernel side would send for an nginx-like keep-alive server (a
//! request read and a response written on each of 32 connections, 20 us apart) through the
//! connection table, span assembly (ticking every 50 ms of the synthetic clock, as the agent does) and the OTLP
//! encoding in batches of 512, and prints CPU nanoseconds and heap allocations per request,
//! measured after a warm-up of a third of the requests (by then spans leave as fast as they
//! come and the heap has stopped growing). As in the agent, the heap is kept in 4 KiB pages.
//! No kernel, no ring buffer, no network: the figures move only with the pipeline's own code,
//! which makes this the A/B measure for userspace changes on a noisy shared machine (the
//! end-to-end sections of the bench move by more than such a change between runs).

use std::alloc::{GlobalAlloc, Layout};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tracer::assemble::{Assembler, AssemblerConfig, ResourceSource};
use tracer::conntable::{ConnTable, Filter};
use tracer::event::{DataRecord, Endpoints, Event};
use tracer::export::otlp::encode_request;
use tracer::metrics::Metrics;
use tracer::protocol::{Direction, ParserOptions};
use tracer::span::{Attribute, ProcessResource, SpanRecord};

/// The agent's allocator, counting allocation calls.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { mimalloc::MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const CONNECTIONS: u64 = 32;
const REQUEST_GAP_NS: u64 = 20_000;
const RESPONSE_AFTER_NS: u64 = 50_000;
/// As the agent's tick (`agent::TICK`).
const TICK_NS: u64 = 50_000_000;
const EXPORT_BATCH: usize = 512;
const REQUEST: &[u8] =
    b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n";
const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Mon, 07 Dec 2026 06:00:00 GMT\r\nContent-Type: text/html\r\nContent-Length: 612\r\nConnection: keep-alive\r\n\r\n";

struct OneProcess(Arc<ProcessResource>);

impl ResourceSource for OneProcess {
    fn resource(&mut self, _pid: u32) -> Arc<ProcessResource> {
        self.0.clone()
    }
}

/// One socket read or write of the synthetic server, on connection `n % CONNECTIONS`.
fn record(n: u64, direction: Direction, at: u64, payload: &[u8]) -> DataRecord<'_> {
    let conn = n % CONNECTIONS;
    DataRecord {
        pid: 100,
        tid: 100,
        fd: 10 + conn as i32,
        conn_id: conn + 1,
        enter_ns: at,
        exit_ns: at + 2_000,
        bytes: payload.len() as u64,
        direction,
        syscall: 0,
        body_not_captured: false,
        endpoints: Some(Endpoints {
            local: std::net::SocketAddr::from(([127, 0, 0, 1], 8080)),
            remote: std::net::SocketAddr::from(([127, 0, 0, 1], 40_000 + conn as u16)),
        }),
        payload,
    }
}

fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(450_000);
    let warm_up = total / 3;
    let requests = total - warm_up;
    // SAFETY: prctl with integer arguments only (what the agent's `main` does).
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
    let metrics = Arc::new(Metrics::default());
    let mut table = ConnTable::new(
        Filter::default(),
        ParserOptions::default(),
        65_536,
        u64::MAX,
        metrics.clone(),
    );
    let mut assembler = Assembler::new(
        AssemblerConfig {
            settle_ns: 1_000_000_000,
            request_timeout_ns: 120_000_000_000,
            max_pending: 100_000,
            realtime_offset_ns: 0,
            link_threshold: 0.5,
        },
        metrics.clone(),
    );
    let mut resources = OneProcess(Arc::new(ProcessResource {
        pid: 100,
        service_name: "nginx".into(),
        attributes: vec![Attribute::int("process.pid", 100)],
    }));
    let mut response = RESPONSE_HEAD.to_vec();
    response.resize(RESPONSE_HEAD.len() + 612, b'x');
    let mut outputs = Vec::new();
    let mut finished: Vec<SpanRecord> = Vec::new();
    let (mut spans, mut encoded_bytes) = (0u64, 0u64);
    let mut next_tick = TICK_NS;
    let start = 1_000_000_000u64;
    let (mut cpu_before, mut allocations_before) = (0, 0);
    for n in 0..total {
        if n == warm_up {
            (spans, encoded_bytes) = (0, 0);
            (cpu_before, allocations_before) = (cpu_ns(), ALLOCATIONS.load(Ordering::Relaxed));
        }
        let at = start + n * REQUEST_GAP_NS;
        for (direction, at, payload) in [
            (Direction::Ingress, at, REQUEST),
            (Direction::Egress, at + RESPONSE_AFTER_NS, &response[..]),
        ] {
            table.on_event(
                &Event::Data(record(n, direction, at, payload)),
                &mut outputs,
            );
            for output in outputs.drain(..) {
                assembler.on_output(output, &mut resources);
            }
        }
        if at >= start + next_tick {
            next_tick += TICK_NS;
            finished.extend(assembler.tick(at));
            while finished.len() >= EXPORT_BATCH {
                let batch: Vec<SpanRecord> = finished.drain(..EXPORT_BATCH).collect();
                encoded_bytes += encode_request(&batch).len() as u64;
                spans += batch.len() as u64;
            }
        }
    }
    let cpu = cpu_ns() - cpu_before;
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - allocations_before;
    let exported_per_request = spans as f64 / requests as f64;
    // `key=value` words: `cargo xtask bench` reads them.
    println!(
        "pipeline: requests={requests} spans={spans} bytes_per_span={:.0} \
         ns_per_request={:.0} allocations_per_request={:.1}",
        encoded_bytes as f64 / spans.max(1) as f64,
        cpu as f64 / requests as f64,
        allocations as f64 / requests as f64,
    );
    // The load is far longer than the settling window: nearly every request must have left.
    if exported_per_request < 0.9 {
        eprintln!("pipeline: only {exported_per_request:.2} spans per request were encoded");
        std::process::exit(1);
    }
}
