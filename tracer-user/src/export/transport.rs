//! OTLP transports (span assembly -> exporter queue -> OTLP request -> **transport** ->
//! collector): gRPC through tonic's client and HTTP/protobuf through hyper's client. Both send
//! one `ExportTraceServiceRequest`, encoded once by the caller (a retry resends the same
//! bytes), and classify failures as retryable or not.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    Request, StatusCode, Uri,
    header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue},
};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tonic::{
    Code, Status,
    client::Grpc,
    codec::{Codec, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::{MetadataKey, MetadataMap, MetadataValue},
    transport::{Channel, Endpoint},
};
use tonic_prost::{ProstCodec, ProstDecoder};

use super::{ConfigError, ExportConfig, OtlpProtocol};

/// Largest response body read from an HTTP collector.
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// Why one export request failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("gRPC status {code:?}: {message}")]
    Grpc { code: Code, message: String },
    #[error("HTTP status {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Http { status: StatusCode, message: String },
    #[error("connection failed: {0}")]
    Connection(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("gave up: exporter shutdown deadline reached")]
    ShutdownDeadline,
    #[error("could not build the request: {0}")]
    Request(String),
}

impl SendError {
    /// Whether sending the same request again may succeed (per the OTLP specification's list
    /// of transient gRPC codes and HTTP statuses; connection problems and timeouts too).
    pub fn is_retryable(&self) -> bool {
        match self {
            SendError::Grpc { code, .. } => matches!(
                code,
                Code::Cancelled
                    | Code::DeadlineExceeded
                    | Code::ResourceExhausted
                    | Code::Aborted
                    | Code::OutOfRange
                    | Code::Unavailable
                    | Code::DataLoss
            ),
            SendError::Http { status, .. } => matches!(status.as_u16(), 429 | 502 | 503 | 504),
            SendError::Connection(_) | SendError::Timeout(_) => true,
            SendError::ShutdownDeadline | SendError::Request(_) => false,
        }
    }
}

/// What the collector said about an accepted request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Accepted {
    /// Spans the collector reports it rejected (partial success).
    pub rejected: u64,
    pub message: String,
}

impl From<Option<ExportTracePartialSuccess>> for Accepted {
    fn from(partial: Option<ExportTracePartialSuccess>) -> Self {
        partial
            .map(|p| Accepted {
                rejected: u64::try_from(p.rejected_spans).unwrap_or(0),
                message: p.error_message,
            })
            .unwrap_or_default()
    }
}

/// A configured OTLP transport.
#[allow(
    clippy::large_enum_variant,
    reason = "one value per exporter, never moved on a hot path"
)]
#[derive(Clone)]
pub enum Transport {
    Grpc(GrpcTransport),
    Http(HttpTransport),
}

impl Transport {
    /// Validates the endpoint and headers; connects nothing yet.
    pub fn new(config: &ExportConfig, endpoint: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: &str| ConfigError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = endpoint
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => return Err(invalid("TLS is not supported; use an http:// endpoint")),
            _ => return Err(invalid("expected an http:// URL")),
        }
        if uri.host().is_none() {
            return Err(invalid("no host"));
        }
        Ok(match config.protocol {
            OtlpProtocol::Grpc => Transport::Grpc(GrpcTransport::new(config, endpoint)?),
            OtlpProtocol::HttpProtobuf => {
                let url = traces_url(endpoint, config.endpoint_is_signal_specific);
                let uri = url
                    .parse()
                    .map_err(|e: hyper::http::uri::InvalidUri| invalid(&e.to_string()))?;
                Transport::Http(HttpTransport::new(config, uri, url)?)
            }
        })
    }

    /// Where requests go, for logs.
    pub fn target(&self) -> &str {
        match self {
            Transport::Grpc(t) => &t.target,
            Transport::Http(t) => &t.target,
        }
    }

    /// Sends one request.
    /// Sends one encoded `ExportTraceServiceRequest`.
    pub async fn send(&mut self, request: &Bytes) -> Result<Accepted, SendError> {
        match self {
            Transport::Grpc(t) => t.send(request).await,
            Transport::Http(t) => t.send(request).await,
        }
    }
}

/// The HTTP URL for traces: a signal-specific endpoint as is, a base endpoint with
/// `/v1/traces` appended to its path.
pub fn traces_url(endpoint: &str, signal_specific: bool) -> String {
    if signal_specific {
        endpoint.to_owned()
    } else {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    }
}

/// The method every gRPC export calls.
const GRPC_EXPORT: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Writes an export request that is already encoded. (The generated client takes the request
/// by value, so every attempt would need a deep copy of all its spans.)
struct EncodedCodec;

struct EncodedEncoder;

impl Encoder for EncodedEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = EncodedEncoder;
    type Decoder = ProstDecoder<ExportTraceServiceResponse>;

    fn encoder(&mut self) -> Self::Encoder {
        EncodedEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<(), ExportTraceServiceResponse>::default().decoder()
    }
}

#[derive(Clone)]
pub struct GrpcTransport {
    client: Grpc<Channel>,
    metadata: MetadataMap,
    timeout: Duration,
    target: String,
}

impl GrpcTransport {
    fn new(config: &ExportConfig, endpoint: &str) -> Result<Self, ConfigError> {
        let channel = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| ConfigError::InvalidEndpoint {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })?
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            .connect_lazy();
        let mut metadata = MetadataMap::new();
        for (name, value) in &config.headers {
            let invalid = |reason: &str| ConfigError::InvalidHeader {
                name: name.clone(),
                reason: reason.to_owned(),
            };
            let key = MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| invalid("not a valid gRPC metadata key"))?;
            let value = MetadataValue::try_from(value.as_str())
                .map_err(|_| invalid("not a valid gRPC metadata value"))?;
            metadata.append(key, value);
        }
        Ok(Self {
            client: Grpc::new(channel),
            metadata,
            timeout: config.timeout,
            target: endpoint.to_owned(),
        })
    }

    async fn send(&mut self, request: &Bytes) -> Result<Accepted, SendError> {
        let mut grpc_request = tonic::Request::new(request.clone());
        *grpc_request.metadata_mut() = self.metadata.clone();
        grpc_request.set_timeout(self.timeout);
        let client = &mut self.client;
        // As tonic's generated client does it.
        let call = async move {
            client
                .ready()
                .await
                .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
            client
                .unary(
                    grpc_request,
                    PathAndQuery::from_static(GRPC_EXPORT),
                    EncodedCodec,
                )
                .await
        };
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(SendError::Timeout(self.timeout)),
            Ok(Err(status)) => Err(SendError::Grpc {
                code: status.code(),
                message: with_causes(status.message().to_owned(), &status),
            }),
            Ok(Ok(response)) => Ok(response.into_inner().partial_success.into()),
        }
    }
}

#[derive(Clone)]
pub struct HttpTransport {
    client: Client<HttpConnector, Full<Bytes>>,
    uri: Uri,
    headers: HeaderMap,
    timeout: Duration,
    target: String,
}

impl HttpTransport {
    fn new(config: &ExportConfig, uri: Uri, target: String) -> Result<Self, ConfigError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let invalid = |reason: &str| ConfigError::InvalidHeader {
                name: name.clone(),
                reason: reason.to_owned(),
            };
            let key = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| invalid("not a valid HTTP header name"))?;
            let value = HeaderValue::from_str(value)
                .map_err(|_| invalid("not a valid HTTP header value"))?;
            headers.append(key, value);
        }
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            client,
            uri,
            headers,
            timeout: config.timeout,
            target,
        })
    }

    async fn send(&mut self, request: &Bytes) -> Result<Accepted, SendError> {
        let body = Full::new(request.clone());
        let mut http_request = Request::post(self.uri.clone())
            .body(body)
            .map_err(|e| SendError::Request(e.to_string()))?;
        *http_request.headers_mut() = self.headers.clone();
        let exchange = async {
            let response = self
                .client
                .request(http_request)
                .await
                .map_err(|e| SendError::Connection(with_causes(e.to_string(), &e)))?;
            let status = response.status();
            let textual = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.starts_with("text/") || v.starts_with("application/json"));
            let body = Limited::new(response.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .map_err(|e| SendError::Connection(format!("reading the response: {e}")))?;
            if !status.is_success() {
                let message = if textual {
                    String::from_utf8_lossy(&body)
                        .trim()
                        .chars()
                        .take(200)
                        .collect()
                } else {
                    String::new()
                };
                return Err(SendError::Http { status, message });
            }
            // An undecodable success body still means the spans were accepted.
            Ok(ExportTraceServiceResponse::decode(body)
                .map(|r| r.partial_success.into())
                .unwrap_or_default())
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Err(SendError::Timeout(self.timeout)),
            Ok(result) => result,
        }
    }
}

/// Appends the error's sources ("tcp connect error: Connection refused"): the outer messages
/// of tonic and hyper errors alone do not say what went wrong.
fn with_causes(mut message: String, error: &dyn std::error::Error) -> String {
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !message.contains(&cause_text) {
            message.push_str(": ");
            message.push_str(&cause_text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_endpoint_gets_signal_path_and_specific_one_is_kept() {
        assert_eq!(
            traces_url("http://c:4318", false),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/", false),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/base", false),
            "http://c:4318/base/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/custom/traces", true),
            "http://c:4318/custom/traces"
        );
    }

    #[test]
    fn classifies_retryable_failures() {
        let grpc = |code| SendError::Grpc {
            code,
            message: String::new(),
        };
        let http = |s: u16| SendError::Http {
            status: StatusCode::from_u16(s).expect("status"),
            message: String::new(),
        };
        assert!(grpc(Code::Unavailable).is_retryable());
        assert!(grpc(Code::DeadlineExceeded).is_retryable());
        assert!(grpc(Code::ResourceExhausted).is_retryable());
        assert!(grpc(Code::Aborted).is_retryable());
        assert!(!grpc(Code::InvalidArgument).is_retryable());
        assert!(!grpc(Code::Unauthenticated).is_retryable());
        for s in [429, 502, 503, 504] {
            assert!(http(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 404, 413, 500] {
            assert!(!http(s).is_retryable(), "{s}");
        }
        assert!(SendError::Connection("refused".into()).is_retryable());
        assert!(!SendError::ShutdownDeadline.is_retryable());
    }

    #[tokio::test]
    async fn rejects_unusable_endpoints_and_headers() {
        let config = |protocol, headers: Vec<(&str, &str)>| ExportConfig {
            protocol,
            headers: headers
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            ..ExportConfig::default()
        };
        for endpoint in ["https://c:4317", "c:4317", "http://"] {
            assert!(
                Transport::new(&config(OtlpProtocol::Grpc, vec![]), endpoint).is_err(),
                "{endpoint}"
            );
        }
        let bad_header = config(OtlpProtocol::HttpProtobuf, vec![("bad header", "x")]);
        assert!(matches!(
            Transport::new(&bad_header, "http://c:4318"),
            Err(ConfigError::InvalidHeader { .. })
        ));
        let bad_value = config(OtlpProtocol::Grpc, vec![("authorization", "a\nb")]);
        assert!(matches!(
            Transport::new(&bad_value, "http://c:4317"),
            Err(ConfigError::InvalidHeader { .. })
        ));
        let http = Transport::new(&config(OtlpProtocol::HttpProtobuf, vec![]), "http://c:4318")
            .expect("http");
        assert_eq!(http.target(), "http://c:4318/v1/traces");
    }

    #[tokio::test]
    async fn connection_errors_name_their_cause() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::HttpProtobuf] {
            let config = ExportConfig {
                protocol,
                ..ExportConfig::default()
            };
            let mut transport =
                Transport::new(&config, &format!("http://{addr}")).expect("transport");
            let error = transport.send(&Bytes::new()).await.expect_err("refused");
            assert!(error.is_retryable(), "{protocol:?}: {error}");
            assert!(
                error.to_string().contains("Connection refused"),
                "{protocol:?}: {error}"
            );
        }
    }
}
