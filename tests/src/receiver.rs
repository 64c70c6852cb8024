//! A real OTLP trace receiver for the tests, built on `opentelemetry-proto`.
//!
//! [`Receiver::start`] listens on two loopback ports at once: OTLP/gRPC
//! (tonic `TraceService`) and OTLP/HTTP protobuf (hyper, `POST /v1/traces`).
//! Both decode `ExportTraceServiceRequest`s and store the spans flattened into
//! [`ReceivedSpan`]s (ids as lowercase hex, attributes and resource attributes
//! as maps). The servers run on a private tokio runtime owned by the
//! receiver, so tests stay plain synchronous code.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;

/// An attribute value as received.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
    Double(f64),
    /// Arrays, maps and bytes, rendered with `Debug`.
    Other(String),
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_int(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }
}

impl fmt::Display for AttrValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttrValue::Str(s) => write!(f, "{s:?}"),
            AttrValue::Int(i) => write!(f, "{i}"),
            AttrValue::Bool(b) => write!(f, "{b}"),
            AttrValue::Double(d) => write!(f, "{d}"),
            AttrValue::Other(o) => write!(f, "{o}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Unspecified,
    Internal,
    Server,
    Client,
    Producer,
    Consumer,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Unset,
    Ok,
    Error,
}

/// One span as it arrived, flattened together with its resource.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// `None` when the parent span id was empty (a root span).
    pub parent_span_id: Option<String>,
    pub trace_state: String,
    pub name: String,
    pub kind: Kind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: BTreeMap<String, AttrValue>,
    pub status: Status,
    pub status_message: String,
    /// `(trace_id, span_id)` of each link.
    pub links: Vec<(String, String)>,
    pub resource: BTreeMap<String, AttrValue>,
    /// Which endpoint received it: `"grpc"` or `"http"`.
    pub via: &'static str,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&AttrValue> {
        self.attributes.get(key)
    }
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attr(key).and_then(AttrValue::as_str)
    }
    pub fn attr_int(&self, key: &str) -> Option<i64> {
        self.attr(key).and_then(AttrValue::as_int)
    }
    pub fn service_name(&self) -> Option<&str> {
        self.resource
            .get("service.name")
            .and_then(AttrValue::as_str)
    }
    /// `process.pid` of the resource (accepts an int or a numeric string).
    pub fn pid(&self) -> Option<i64> {
        match self.resource.get("process.pid")? {
            AttrValue::Int(i) => Some(*i),
            AttrValue::Str(s) => s.parse().ok(),
            _ => None,
        }
    }
    pub fn url_path(&self) -> Option<&str> {
        self.attr_str("url.path")
    }
    pub fn status_code_attr(&self) -> Option<i64> {
        self.attr_int("http.response.status_code")
    }
    pub fn is_server(&self) -> bool {
        self.kind == Kind::Server
    }
    pub fn is_client(&self) -> bool {
        self.kind == Kind::Client
    }
    /// True if any port-valued attribute equals `port`.
    pub fn mentions_port(&self, port: u16) -> bool {
        [
            "server.port",
            "network.peer.port",
            "client.port",
            "network.local.port",
        ]
        .iter()
        .any(|k| self.attr_int(k) == Some(i64::from(port)))
    }
}

impl fmt::Display for ReceivedSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:?} trace={} span={} parent={} status={:?}{} dur={}ns service={} pid={}",
            self.kind,
            self.name,
            self.trace_id,
            self.span_id,
            self.parent_span_id.as_deref().unwrap_or("-"),
            self.status,
            if self.status_message.is_empty() {
                String::new()
            } else {
                format!("({})", self.status_message)
            },
            self.end_ns.saturating_sub(self.start_ns),
            self.service_name().unwrap_or("?"),
            self.pid()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into()),
        )?;
        let attrs: Vec<String> = self
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        write!(f, "\n      attrs: {}", attrs.join(" "))
    }
}

/// Renders spans one per line, for assertion messages.
pub fn dump(spans: &[ReceivedSpan]) -> String {
    if spans.is_empty() {
        return "    (no spans)".to_string();
    }
    spans
        .iter()
        .map(|s| format!("    {s}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Default)]
struct Store {
    spans: Vec<ReceivedSpan>,
    requests: usize,
}

#[derive(Default)]
struct Shared {
    store: Mutex<Store>,
    changed: Condvar,
}

impl Shared {
    fn ingest(&self, req: ExportTraceServiceRequest, via: &'static str) {
        let mut flat = Vec::new();
        for rs in req.resource_spans {
            let resource = rs
                .resource
                .map(|r| attr_map(&r.attributes))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    flat.push(ReceivedSpan {
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: if s.parent_span_id.is_empty() {
                            None
                        } else {
                            Some(hex(&s.parent_span_id))
                        },
                        trace_state: s.trace_state.clone(),
                        name: s.name.clone(),
                        kind: match s.kind {
                            1 => Kind::Internal,
                            2 => Kind::Server,
                            3 => Kind::Client,
                            4 => Kind::Producer,
                            5 => Kind::Consumer,
                            _ => Kind::Unspecified,
                        },
                        start_ns: s.start_time_unix_nano,
                        end_ns: s.end_time_unix_nano,
                        attributes: attr_map(&s.attributes),
                        status: match s.status.as_ref().map(|st| st.code) {
                            Some(1) => Status::Ok,
                            Some(2) => Status::Error,
                            _ => Status::Unset,
                        },
                        status_message: s
                            .status
                            .as_ref()
                            .map(|st| st.message.clone())
                            .unwrap_or_default(),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        resource: resource.clone(),
                        via,
                    });
                }
            }
        }
        let mut store = self.store.lock().unwrap();
        store.requests += 1;
        store.spans.extend(flat);
        self.changed.notify_all();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attr_map(kvs: &[KeyValue]) -> BTreeMap<String, AttrValue> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value(kv.value.as_ref())))
        .collect()
}

fn value(v: Option<&AnyValue>) -> AttrValue {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => AttrValue::Str(s.clone()),
        Some(any_value::Value::IntValue(i)) => AttrValue::Int(*i),
        Some(any_value::Value::BoolValue(b)) => AttrValue::Bool(*b),
        Some(any_value::Value::DoubleValue(d)) => AttrValue::Double(*d),
        Some(other) => AttrValue::Other(format!("{other:?}")),
        None => AttrValue::Other("<empty>".into()),
    }
}

struct GrpcService(Arc<Shared>);

#[tonic::async_trait]
impl TraceService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.ingest(request.into_inner(), "grpc");
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

type HttpResponse = hyper::Response<Full<Bytes>>;

async fn handle_http(
    shared: Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<HttpResponse, std::convert::Infallible> {
    let reply = |status: u16, body: Vec<u8>, ctype: &str| {
        hyper::Response::builder()
            .status(status)
            .header("content-type", ctype)
            .body(Full::new(Bytes::from(body)))
            .expect("valid response")
    };
    if req.method() != hyper::Method::POST || req.uri().path() != "/v1/traces" {
        return Ok(reply(404, b"only POST /v1/traces".to_vec(), "text/plain"));
    }
    let ctype = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Ok(reply(400, format!("body: {e}").into_bytes(), "text/plain")),
    };
    if !ctype.starts_with("application/x-protobuf") {
        return Ok(reply(
            415,
            format!("unsupported content-type {ctype:?}").into_bytes(),
            "text/plain",
        ));
    }
    match ExportTraceServiceRequest::decode(body) {
        Ok(decoded) => {
            shared.ingest(decoded, "http");
            let resp = ExportTraceServiceResponse {
                partial_success: None,
            }
            .encode_to_vec();
            Ok(reply(200, resp, "application/x-protobuf"))
        }
        Err(e) => Ok(reply(
            400,
            format!("decode: {e}").into_bytes(),
            "text/plain",
        )),
    }
}

/// A running OTLP receiver (gRPC and HTTP/protobuf). Dropping it shuts down
/// its runtime.
pub struct Receiver {
    shared: Arc<Shared>,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Receiver {
    /// Starts both endpoints on `127.0.0.1:0`.
    pub fn start() -> Receiver {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("otlp-receiver")
            .build()
            .expect("build receiver runtime");
        let shared = Arc::new(Shared::default());
        let (grpc_addr, http_addr) = runtime.block_on(async {
            let grpc = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind grpc receiver");
            let http = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind http receiver");
            let addrs = (grpc.local_addr().unwrap(), http.local_addr().unwrap());

            let svc = TraceServiceServer::new(GrpcService(shared.clone()))
                .max_decoding_message_size(64 << 20);
            tokio::spawn(async move {
                let incoming = tonic::transport::server::TcpIncoming::from(grpc);
                if let Err(e) = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming(incoming)
                    .await
                {
                    eprintln!("[receiver] gRPC server stopped: {e}");
                }
            });

            let shared_http = shared.clone();
            tokio::spawn(async move {
                loop {
                    let (stream, _) = match http.accept().await {
                        Ok(s) => s,
                        Err(e) => {
                            eprintln!("[receiver] http accept: {e}");
                            continue;
                        }
                    };
                    let shared = shared_http.clone();
                    tokio::spawn(async move {
                        let svc =
                            hyper::service::service_fn(move |req| handle_http(shared.clone(), req));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            addrs
        });
        Receiver {
            shared,
            grpc_addr,
            http_addr,
            runtime: Some(runtime),
        }
    }

    /// `http://127.0.0.1:PORT` of the gRPC endpoint.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }
    /// `http://127.0.0.1:PORT` of the HTTP/protobuf endpoint (the agent appends `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http_addr)
    }
    pub fn grpc_port(&self) -> u16 {
        self.grpc_addr.port()
    }
    pub fn http_port(&self) -> u16 {
        self.http_addr.port()
    }

    /// Snapshot of every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.shared.store.lock().unwrap().spans.clone()
    }

    /// Number of export requests received (both endpoints).
    pub fn export_requests(&self) -> usize {
        self.shared.store.lock().unwrap().requests
    }

    /// Waits until at least `count` received spans satisfy `pred` and returns
    /// all spans that do. Panics after `timeout` with `what` and a dump of
    /// everything received.
    pub fn wait_for(
        &self,
        what: &str,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        match self.try_wait_for(count, timeout, &pred) {
            Ok(found) => found,
            Err(found) => panic!(
                "timed out after {timeout:?} waiting for {count} span(s): {what}; {} matched.\n  all {} received span(s):\n{}",
                found.len(),
                self.spans().len(),
                dump(&self.spans())
            ),
        }
    }

    /// Like [`Receiver::wait_for`] but returns `Err(matching so far)` on timeout.
    pub fn try_wait_for(
        &self,
        count: usize,
        timeout: Duration,
        pred: &dyn Fn(&ReceivedSpan) -> bool,
    ) -> Result<Vec<ReceivedSpan>, Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        let mut store = self.shared.store.lock().unwrap();
        loop {
            let found: Vec<ReceivedSpan> =
                store.spans.iter().filter(|s| pred(s)).cloned().collect();
            if found.len() >= count {
                return Ok(found);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(found);
            }
            store = self
                .shared
                .changed
                .wait_timeout(store, deadline - now)
                .unwrap()
                .0;
        }
    }

    /// Waits for exactly `count` matching spans: at least `count` within
    /// `timeout`, then no more during `quiet` (catches duplicates).
    pub fn wait_exactly(
        &self,
        what: &str,
        count: usize,
        timeout: Duration,
        quiet: Duration,
        pred: impl Fn(&ReceivedSpan) -> bool,
    ) -> Vec<ReceivedSpan> {
        self.wait_for(what, count, timeout, &pred);
        std::thread::sleep(quiet);
        let found: Vec<ReceivedSpan> = self.spans().into_iter().filter(|s| pred(s)).collect();
        assert_eq!(
            found.len(),
            count,
            "expected exactly {count} span(s): {what}; got {}:\n{}\n  all received:\n{}",
            found.len(),
            dump(&found),
            dump(&self.spans())
        );
        found
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(2));
        }
    }
}
