//! `otlp_sink`: an OTLP trace receiver for the overhead benchmark (`cargo xtask bench`) that only
//! counts spans.
//!
//! Listens on `127.0.0.1:0` for OTLP/gRPC and OTLP/HTTP protobuf (`POST /v1/traces`), prints
//! `grpc=http://127.0.0.1:P http=http://127.0.0.1:Q` on its first stdout line, then one line
//! `spans=N requests=M` each time a line arrives on stdin (a poll), and the same line when stdin
//! closes or on SIGTERM/SIGINT, then exits.
//!
//! Unlike `tracer_tests::receiver::Receiver`, which keeps every span flattened into maps so the
//! tests can inspect them, this keeps two counters: at benchmark rates (tens of thousands of
//! spans a second for minutes) keeping spans would grow to gigabytes and its allocations would
//! take CPU from the measured processes on a small machine.

use std::io::BufRead as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;

#[derive(Default)]
struct Counts {
    spans: AtomicU64,
    requests: AtomicU64,
}

impl Counts {
    fn ingest(&self, req: &ExportTraceServiceRequest) {
        let n: usize = req
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        self.spans.fetch_add(n as u64, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }
    fn line(&self) -> String {
        format!(
            "spans={} requests={}",
            self.spans.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed)
        )
    }
}

struct Grpc(Arc<Counts>);

#[tonic::async_trait]
impl TraceService for Grpc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.ingest(request.get_ref());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
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
    match ExportTraceServiceRequest::decode(body.to_bytes()) {
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
        let svc = TraceServiceServer::new(Grpc(counts.clone())).max_decoding_message_size(64 << 20);
        tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(grpc);
            if let Err(e) = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(incoming)
                .await
            {
                eprintln!("otlp_sink: gRPC server stopped: {e}");
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
