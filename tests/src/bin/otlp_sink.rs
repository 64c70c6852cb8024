//! `otlp_sink`: an OTLP trace receiver for the overhead benchmark (`cargo xtask bench`) that only
//! counts spans.
//!
//! Listens on `127.0.0.1:0` for OTLP/gRPC and OTLP/HTTP protobuf (`POST /v1/traces`), prints
//! `grpc=http://127.0.0.1:P http=http://127.0.0.1:Q` on its first stdout line, then one line
//! `spans=N requests=M cpu_ms=C` each time a line arrives on stdin (a poll), and the same line when stdin
//! closes or on SIGTERM/SIGINT, then exits.
//!
//! Unlike `tracer_tests::receiver::Receiver`, which keeps every span flattened into maps so the
//! tests can inspect them, this keeps two counters: at benchmark rates (tens of thousands of
//! spans a second for minutes) keeping spans would grow to gigabytes and its allocations would
//! take CPU from the measured processes on a small machine.
//!
//! For the same reason it does not decode the spans: a request is read with prost into
//! [`ExportCount`], a view of `ExportTraceServiceRequest` that keeps only the nesting down to
//! the spans, so each span's fields are skipped, not materialized. Decoding every span with the
//! generated types cost about 3.5 us of CPU per span on the benchmark host, on the same 2 cores
//! as the servers it measures (about half of the agent's own cost per span).

use std::io::BufRead as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioExecutor;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message as _;

/// gRPC method path of the OTLP trace export.
const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// Largest request accepted (the agent's batches are far smaller).
const MAX_MESSAGE: usize = 64 << 20;

/// `ExportTraceServiceRequest` with only `resource_spans` (field 1).
#[derive(Clone, PartialEq, prost::Message)]
struct ExportCount {
    #[prost(message, repeated, tag = "1")]
    resource_spans: Vec<ResourceCount>,
}

/// `ResourceSpans` with only `scope_spans` (field 2).
#[derive(Clone, PartialEq, prost::Message)]
struct ResourceCount {
    #[prost(message, repeated, tag = "2")]
    scope_spans: Vec<ScopeCount>,
}

/// `ScopeSpans` with only `spans` (field 2), each read as a message with no known field.
#[derive(Clone, PartialEq, prost::Message)]
struct ScopeCount {
    #[prost(message, repeated, tag = "2")]
    spans: Vec<Skipped>,
}

/// A span whose fields prost skips.
#[derive(Clone, PartialEq, prost::Message)]
struct Skipped {}

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
    requests: AtomicU64,
}

impl Counts {
    fn ingest(&self, req: &ExportCount) {
        let n: usize = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    /// The counts and this process's CPU time so far (the benchmark reports the receiver's
    /// cost beside the agent's: both run on the measured machine).
    fn line(&self) -> String {
        format!(
            "spans={} requests={} cpu_ms={}",
            self.spans.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            cpu_ms()
        )
    }
}

/// User and system CPU time of this process, in milliseconds.
fn cpu_ms() -> u64 {
    // SAFETY: getrusage writes the struct it is given; all-zero is a valid `rusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(usage.ru_utime) + ms(usage.ru_stime)
}

/// The export method, for tonic's unary gRPC handling with prost's codec.
struct Export(Arc<Counts>);

impl tonic::server::UnaryService<ExportCount> for Export {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<ExportCount>) -> Self::Future {
        self.0.ingest(request.get_ref());
        std::future::ready(Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        })))
    }
}

async fn handle_grpc(
    counts: Arc<Counts>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<tonic::body::Body>, std::convert::Infallible> {
    if req.uri().path() != EXPORT_PATH {
        return Ok(tonic::Status::unimplemented(req.uri().path().to_owned()).into_http());
    }
    let codec = tonic_prost::ProstCodec::<ExportTraceServiceResponse, ExportCount>::default();
    let mut grpc = tonic::server::Grpc::new(codec).max_decoding_message_size(MAX_MESSAGE);
    Ok(grpc.unary(Export(counts), req).await)
}

async fn handle_http(
    counts: Arc<Counts>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: u16, body: Vec<u8>| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
        return Ok(reply(404, Vec::new()));
    }
    let Ok(body) = req.into_body().collect().await else {
        return Ok(reply(400, Vec::new()));
    };
    match ExportCount::decode(body.to_bytes()) {
        Ok(decoded) => {
            counts.ingest(&decoded);
            let ok = ExportTraceServiceResponse {
                partial_success: None,
            };
            Ok(reply(200, ok.encode_to_vec()))
        }
        Err(_) => Ok(reply(400, Vec::new())),
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("build runtime");
    let counts = Arc::new(Counts::default());
    runtime.block_on(async {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind grpc");
        let http = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind http");
        println!(
            "grpc=http://{} http=http://{}",
            grpc.local_addr().unwrap(),
            http.local_addr().unwrap()
        );
        let counts_grpc = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = grpc.accept().await else {
                    continue;
                };
                let counts = counts_grpc.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| handle_grpc(counts.clone(), req));
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        let counts_http = counts.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = http.accept().await else {
                    continue;
                };
                let counts = counts_http.clone();
                tokio::spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req| handle_http(counts.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    });
    // Polls come on stdin (a blocking thread); signals end the process with a last count.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let stdin_done = done_tx.clone();
    let poll_counts = counts.clone();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if line.is_err() {
                break;
            }
            println!("{}", poll_counts.line());
        }
        let _ = stdin_done.send(());
    });
    runtime.spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = done_tx.send(());
    });
    let _ = done_rx.recv();
    println!("{}", counts.line());
    runtime.shutdown_background();
}
