//! End-to-end tests of the export stage against in-process OTLP receivers (gRPC and
//! HTTP/protobuf) on 127.0.0.1, plus config parsing.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
    trace_service_server::{TraceService, TraceServiceServer},
};
use prost::Message;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use super::*;
use crate::export::otlp::tests::{record, resource};

/// Received requests with the header of interest (`x-tenant`) of each.
type Received = Arc<Mutex<Vec<(Option<String>, ExportTraceServiceRequest)>>>;

fn received_span_count(received: &Received) -> usize {
    let requests = received.lock().expect("lock");
    requests
        .iter()
        .flat_map(|(_, r)| &r.resource_spans)
        .flat_map(|rs| &rs.scope_spans)
        .map(|ss| ss.spans.len())
        .sum()
}

fn config(endpoint: String, protocol: OtlpProtocol) -> ExportConfig {
    ExportConfig {
        endpoint: Some(endpoint),
        protocol,
        headers: vec![("X-Tenant".to_owned(), "acme".to_owned())],
        timeout: Duration::from_secs(2),
        max_batch: 10,
        batch_delay: Duration::from_millis(50),
        queue_capacity: 100,
        retry: RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            max_elapsed: Duration::from_secs(5),
        },
        ..ExportConfig::default()
    }
}

/// gRPC receiver that answers with the queued failures first, then OK.
struct GrpcReceiver {
    received: Received,
    failures: Mutex<VecDeque<tonic::Code>>,
    /// Spans each successful answer reports as rejected (partial success).
    rejected: i64,
}

#[tonic::async_trait]
impl TraceService for GrpcReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if let Some(code) = self.failures.lock().expect("lock").pop_front() {
            return Err(tonic::Status::new(code, "try later"));
        }
        let tenant = request
            .metadata()
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.received
            .lock()
            .expect("lock")
            .push((tenant, request.into_inner()));
        let partial_success = (self.rejected > 0).then(|| ExportTracePartialSuccess {
            rejected_spans: self.rejected,
            error_message: "span too large".to_owned(),
        });
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success,
        }))
    }
}

async fn grpc_receiver(failures: Vec<tonic::Code>) -> (SocketAddr, Received) {
    grpc_receiver_rejecting(failures, 0).await
}

async fn grpc_receiver_rejecting(
    failures: Vec<tonic::Code>,
    rejected: i64,
) -> (SocketAddr, Received) {
    grpc_receiver_on("127.0.0.1:0".parse().expect("addr"), failures, rejected).await
}

async fn grpc_receiver_on(
    addr: SocketAddr,
    failures: Vec<tonic::Code>,
    rejected: i64,
) -> (SocketAddr, Received) {
    let listener = TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Received::default();
    let service = GrpcReceiver {
        received: received.clone(),
        failures: Mutex::new(failures.into()),
        rejected,
    };
    tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
        TraceServiceServer::new(service),
        TcpIncoming::from(listener),
    ));
    (addr, received)
}

/// HTTP/protobuf receiver on `/v1/traces` that answers with the queued statuses first, then 200.
async fn http_receiver(failures: Vec<StatusCode>) -> (SocketAddr, Received) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let received = Received::default();
    let failures = Arc::new(Mutex::new(VecDeque::from(failures)));
    let state = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let received = state.clone();
            let failures = failures.clone();
            let service = service_fn(move |request: Request<Incoming>| {
                let received = received.clone();
                let failures = failures.clone();
                async move {
                    let reply = |status: StatusCode, body: Bytes| {
                        let mut response = Response::new(Full::new(body));
                        *response.status_mut() = status;
                        Ok::<_, Infallible>(response)
                    };
                    if let Some(status) = failures.lock().expect("lock").pop_front() {
                        return reply(status, Bytes::new());
                    }
                    let path_ok = request.uri().path() == "/v1/traces";
                    let type_ok = request
                        .headers()
                        .get("content-type")
                        .is_some_and(|v| v == "application/x-protobuf");
                    let tenant = request
                        .headers()
                        .get("x-tenant")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let Ok(body) = request.into_body().collect().await else {
                        return reply(StatusCode::BAD_REQUEST, Bytes::new());
                    };
                    let decoded = ExportTraceServiceRequest::decode(body.to_bytes());
                    match decoded {
                        Ok(decoded) if path_ok && type_ok => {
                            received.lock().expect("lock").push((tenant, decoded));
                            reply(
                                StatusCode::OK,
                                ExportTraceServiceResponse::default().encode_to_vec().into(),
                            )
                        }
                        _ => reply(StatusCode::BAD_REQUEST, Bytes::from_static(b"bad request")),
                    }
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    (addr, received)
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

fn submit_spans(exporter: &Exporter, count: u8) {
    let a = resource(100, "alpha");
    let b = resource(200, "beta");
    for i in 0..count {
        exporter.submit(record(if i % 2 == 0 { &a } else { &b }, 1, i, None));
    }
}

#[tokio::test]
async fn grpc_receiver_gets_batches_with_metadata() {
    let (addr, received) = grpc_receiver(vec![]).await;
    let metrics = Arc::new(Metrics::default());
    let exporter = Exporter::start(
        config(format!("http://{addr}"), OtlpProtocol::Grpc),
        metrics.clone(),
    )
    .expect("start");
    submit_spans(&exporter, 25);
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(received_span_count(&received), 25);
    let requests = received.lock().expect("lock");
    assert_eq!(requests.len(), 3, "batches of at most 10");
    assert!(
        requests
            .iter()
            .all(|(tenant, _)| tenant.as_deref() == Some("acme"))
    );
    assert_eq!(
        requests[0].1.resource_spans.len(),
        2,
        "one ResourceSpans per process"
    );
    assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 25);
    assert_eq!(metrics.spans_dropped_export.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn partial_success_counts_rejected_spans_as_dropped() {
    let (addr, _received) = grpc_receiver_rejecting(vec![], 1).await;
    let metrics = Arc::new(Metrics::default());
    let exporter = Exporter::start(
        config(format!("http://{addr}"), OtlpProtocol::Grpc),
        metrics.clone(),
    )
    .expect("start");
    submit_spans(&exporter, 4);
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 3);
    assert_eq!(metrics.spans_dropped_export.load(Ordering::Relaxed), 1);
    assert_eq!(metrics.export_errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn http_receiver_gets_decodable_batches() {
    let (addr, received) = http_receiver(vec![]).await;
    let metrics = Arc::new(Metrics::default());
    let exporter = Exporter::start(
        config(format!("http://{addr}/"), OtlpProtocol::HttpProtobuf),
        metrics.clone(),
    )
    .expect("start");
    submit_spans(&exporter, 12);
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(received_span_count(&received), 12);
    assert!(
        received
            .lock()
            .expect("lock")
            .iter()
            .all(|(tenant, _)| tenant.as_deref() == Some("acme"))
    );
    assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 12);
}

#[tokio::test]
async fn http_signal_specific_endpoint_is_used_as_is() {
    let (addr, received) = http_receiver(vec![]).await;
    let metrics = Arc::new(Metrics::default());
    let mut cfg = config(
        format!("http://{addr}/v1/traces"),
        OtlpProtocol::HttpProtobuf,
    );
    cfg.endpoint_is_signal_specific = true;
    let exporter = Exporter::start(cfg, metrics.clone()).expect("start");
    submit_spans(&exporter, 3);
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(received_span_count(&received), 3);
}

#[tokio::test]
async fn grpc_unavailable_is_retried() {
    let (addr, received) = grpc_receiver(vec![
        tonic::Code::Unavailable,
        tonic::Code::ResourceExhausted,
    ])
    .await;
    let metrics = Arc::new(Metrics::default());
    let exporter = Exporter::start(
        config(format!("http://{addr}"), OtlpProtocol::Grpc),
        metrics.clone(),
    )
    .expect("start");
    submit_spans(&exporter, 4);
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(received_span_count(&received), 4);
    assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 4);
    assert_eq!(metrics.export_errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn http_503_is_retried_and_400_is_not() {
    let (addr, received) = http_receiver(vec![StatusCode::SERVICE_UNAVAILABLE]).await;
    let metrics = Arc::new(Metrics::default());
    let exporter = Exporter::start(
        config(format!("http://{addr}"), OtlpProtocol::HttpProtobuf),
        metrics.clone(),
    )
    .expect("start");
    submit_spans(&exporter, 4);
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(received_span_count(&received), 4);
    assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 4);

    let (addr, received) = http_receiver(vec![StatusCode::BAD_REQUEST]).await;
    let metrics = Arc::new(Metrics::default());
    let exporter = Exporter::start(
        config(format!("http://{addr}"), OtlpProtocol::HttpProtobuf),
        metrics.clone(),
    )
    .expect("start");
    submit_spans(&exporter, 4);
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(received_span_count(&received), 0);
    assert_eq!(metrics.spans_dropped_export.load(Ordering::Relaxed), 4);
    assert_eq!(metrics.export_errors.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn down_collector_drops_counted_and_shutdown_is_bounded() {
    for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
        let addr = closed_port().await;
        let metrics = Arc::new(Metrics::default());
        let mut cfg = config(format!("http://{addr}"), protocol);
        // Retries would outlast the shutdown deadline: shutdown must cut them short.
        cfg.retry = RetryPolicy {
            max_attempts: 100,
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(200),
            max_elapsed: Duration::from_secs(60),
        };
        let started = std::time::Instant::now();
        let exporter =
            Exporter::start(cfg, metrics.clone()).expect("start does not wait for the collector");
        assert!(started.elapsed() < Duration::from_millis(200));
        submit_spans(&exporter, 25);
        let shutdown_started = std::time::Instant::now();
        exporter.shutdown(Duration::from_millis(500)).await;
        assert!(
            shutdown_started.elapsed() < Duration::from_millis(1000),
            "{protocol:?}: {:?}",
            shutdown_started.elapsed()
        );
        assert_eq!(
            metrics.spans_exported.load(Ordering::Relaxed),
            0,
            "{protocol:?}"
        );
        assert_eq!(
            metrics.spans_dropped_export.load(Ordering::Relaxed),
            25,
            "{protocol:?}"
        );
        assert_eq!(
            metrics.export_errors.load(Ordering::Relaxed),
            3,
            "{protocol:?}: one per batch"
        );
    }
}

#[tokio::test]
async fn down_collector_gives_up_after_max_attempts() {
    let addr = closed_port().await;
    let metrics = Arc::new(Metrics::default());
    let exporter = Exporter::start(
        config(format!("http://{addr}"), OtlpProtocol::Grpc),
        metrics.clone(),
    )
    .expect("start");
    submit_spans(&exporter, 2);
    // Far longer than 4 attempts with <=100ms backoffs take: the batch fails on its own.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(metrics.spans_dropped_export.load(Ordering::Relaxed), 2);
    assert_eq!(metrics.export_errors.load(Ordering::Relaxed), 1);
    exporter.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn grpc_collector_that_comes_up_later_receives_new_spans() {
    let addr = closed_port().await;
    let metrics = Arc::new(Metrics::default());
    let mut cfg = config(format!("http://{addr}"), OtlpProtocol::Grpc);
    cfg.retry.max_attempts = 1;
    let exporter = Exporter::start(cfg, metrics.clone()).expect("start");
    submit_spans(&exporter, 2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(metrics.spans_dropped_export.load(Ordering::Relaxed), 2);
    let (_, received) = grpc_receiver_on(addr, vec![], 0).await;
    submit_spans(&exporter, 3);
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(received_span_count(&received), 3);
    assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn full_queue_drops_are_counted() {
    let addr = closed_port().await;
    let metrics = Arc::new(Metrics::default());
    let mut cfg = config(format!("http://{addr}"), OtlpProtocol::Grpc);
    cfg.queue_capacity = 5;
    cfg.max_batch = 5;
    let exporter = Exporter::start(cfg, metrics.clone()).expect("start");
    // The task has not run yet on this single-threaded test runtime: only 5 fit.
    submit_spans(&exporter, 20);
    assert_eq!(metrics.spans_dropped_queue.load(Ordering::Relaxed), 15);
    exporter.shutdown(Duration::from_millis(300)).await;
    assert_eq!(metrics.spans_dropped_export.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn console_mode_prints_and_counts() {
    let metrics = Arc::new(Metrics::default());
    let exporter = Exporter::start(ExportConfig::default(), metrics.clone()).expect("start");
    submit_spans(&exporter, 3);
    exporter.shutdown(Duration::from_secs(1)).await;
    assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 3);
}

#[test]
fn start_needs_a_runtime_and_sane_sizes() {
    let metrics = Arc::new(Metrics::default());
    assert!(Exporter::start(ExportConfig::default(), metrics.clone()).is_err());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let cfg = ExportConfig {
        max_batch: 0,
        ..ExportConfig::default()
    };
    assert!(Exporter::start(cfg, metrics).is_err());
}

#[test]
fn parses_otlp_headers() {
    let headers =
        parse_headers(" api-key = secret%20value ,tenant=a%2Cb,, empty= ").expect("parse");
    assert_eq!(
        headers,
        vec![
            ("api-key".to_owned(), "secret value".to_owned()),
            ("tenant".to_owned(), "a,b".to_owned()),
            ("empty".to_owned(), String::new()),
        ]
    );
    assert_eq!(parse_headers("").expect("empty"), vec![]);
    assert!(matches!(
        parse_headers("novalue"),
        Err(ConfigError::HeaderSyntax(_))
    ));
    assert!(matches!(
        parse_headers("=v"),
        Err(ConfigError::HeaderSyntax(_))
    ));
    assert!(matches!(
        parse_headers("k=%zz"),
        Err(ConfigError::InvalidHeader { .. })
    ));
    assert!(matches!(
        parse_headers("k=%ff"),
        Err(ConfigError::InvalidHeader { .. })
    ));
    assert_eq!(
        parse_headers("k=a=b").expect("parse"),
        vec![("k".to_owned(), "a=b".to_owned())]
    );
}

#[test]
fn parses_otlp_protocol() {
    assert_eq!(parse_protocol("grpc").expect("grpc"), OtlpProtocol::Grpc);
    assert_eq!(
        parse_protocol(" http/protobuf ").expect("http"),
        OtlpProtocol::HttpProtobuf
    );
    let json = parse_protocol("http/json").expect_err("json");
    assert!(json.to_string().contains("http/protobuf"), "{json}");
    assert!(matches!(
        parse_protocol("thrift"),
        Err(ConfigError::UnknownProtocol(_))
    ));
}

/// What [`SlowReceiver`] saw.
#[derive(Default)]
struct SlowCounts {
    active: std::sync::atomic::AtomicUsize,
    most_active: std::sync::atomic::AtomicUsize,
    spans: std::sync::atomic::AtomicUsize,
}

/// gRPC receiver that holds every request for a while and records how many it held at once.
struct SlowReceiver(Arc<SlowCounts>);

#[tonic::async_trait]
impl TraceService for SlowReceiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let counts = &self.0;
        let now = counts.active.fetch_add(1, Ordering::SeqCst) + 1;
        counts.most_active.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let spans: usize = request
            .get_ref()
            .resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .map(|ss| ss.spans.len())
            .sum();
        counts.spans.fetch_add(spans, Ordering::SeqCst);
        counts.active.fetch_sub(1, Ordering::SeqCst);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// A slow collector gets up to `concurrency` requests at once, never more, and every span.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_requests_overlap_up_to_the_concurrency() {
    for concurrency in [1, 3] {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let receiver = Arc::new(SlowCounts::default());
        tokio::spawn(tonic::transport::Server::builder().serve_with_incoming(
            TraceServiceServer::new(SlowReceiver(receiver.clone())),
            TcpIncoming::from(listener),
        ));
        let metrics = Arc::new(Metrics::default());
        let exporter = Exporter::start(
            ExportConfig {
                concurrency,
                ..config(format!("http://{addr}"), OtlpProtocol::Grpc)
            },
            metrics.clone(),
        )
        .expect("start");
        submit_spans(&exporter, 60);
        exporter.shutdown(Duration::from_secs(10)).await;
        assert_eq!(
            receiver.spans.load(Ordering::SeqCst),
            60,
            "concurrency {concurrency}"
        );
        assert_eq!(metrics.spans_exported.load(Ordering::Relaxed), 60);
        assert_eq!(
            receiver.most_active.load(Ordering::SeqCst),
            concurrency,
            "requests at once with concurrency {concurrency}"
        );
    }
}
