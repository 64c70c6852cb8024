//! Export stage: the last step of the agent's data flow
//! (kernel capture -> connection table -> protocol parsers -> span assembly -> **exporter** ->
//! OTLP collector or stdout).
//!
//! Span assembly hands finished [`SpanRecord`]s to [`Exporter::submit`], which never blocks: a
//! bounded queue takes them or the span is dropped and counted. One task drains the queue:
//! with an endpoint it batches spans into OTLP requests (gRPC or HTTP/protobuf, see
//! [`transport`]) and retries transient failures (see [`retry`]); without one it prints each
//! trace as an indented tree on stdout (see [`console`]).

pub mod console;
pub mod otlp;
mod queue;
pub mod retry;
pub mod transport;

use std::{sync::Arc, time::Duration};

use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    metrics::{self, Metrics},
    span::SpanRecord,
};

pub use retry::RetryPolicy;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// OTLP endpoint; `None` prints spans to stdout instead.
    pub endpoint: Option<String>,
    /// Whether `endpoint` is a traces-specific URL (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, used
    /// as is) or a base URL (`OTEL_EXPORTER_OTLP_ENDPOINT`, to which HTTP appends `/v1/traces`).
    /// gRPC uses the endpoint as is either way.
    pub endpoint_is_signal_specific: bool,
    pub protocol: OtlpProtocol,
    /// Extra request headers / gRPC metadata (for example auth tokens).
    pub headers: Vec<(String, String)>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// Export requests in flight at once.
    pub concurrency: usize,
    /// How long a partial batch may wait before it is sent.
    pub batch_delay: Duration,
    /// Spans the queue holds before new ones are dropped (and counted).
    pub queue_capacity: usize,
    /// How failed export requests are retried.
    pub retry: RetryPolicy,
}

impl Default for ExportConfig {
    fn default() -> Self {
        Self {
            endpoint: None,
            endpoint_is_signal_specific: false,
            protocol: OtlpProtocol::Grpc,
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            max_batch: 512,
            concurrency: 4,
            batch_delay: Duration::from_secs(1),
            queue_capacity: 4096,
            retry: RetryPolicy::default(),
        }
    }
}

/// A configuration value the exporter cannot use.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid OTLP header entry {0:?}: expected key=value")]
    HeaderSyntax(String),
    #[error("invalid OTLP header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error(
        "OTLP protocol http/json is not supported; use http/protobuf (port 4318) or grpc (port 4317)"
    )]
    HttpJsonUnsupported,
    #[error("unknown OTLP protocol {0:?}; expected grpc or http/protobuf")]
    UnknownProtocol(String),
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    #[error("invalid export setting: {0}")]
    InvalidSetting(&'static str),
    #[error("the exporter must be started inside a tokio runtime")]
    NoRuntime,
}

/// Parses `OTEL_EXPORTER_OTLP_HEADERS` (`k1=v1,k2=v2`; values are URL-decoded, blanks around
/// keys and values ignored, empty entries skipped).
pub fn parse_headers(s: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut headers = Vec::new();
    for entry in s.split(',') {
        if entry.trim().is_empty() {
            continue;
        }
        let (key, value) = entry
            .split_once('=')
            .ok_or_else(|| ConfigError::HeaderSyntax(entry.trim().to_owned()))?;
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError::HeaderSyntax(entry.trim().to_owned()));
        }
        let value = percent_decode(value.trim()).map_err(|reason| ConfigError::InvalidHeader {
            name: key.to_owned(),
            reason,
        })?;
        headers.push((key.to_owned(), value));
    }
    Ok(headers)
}

/// Decodes `%XX` escapes; the result must be UTF-8.
fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at byte {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "value is not UTF-8 after percent-decoding".to_owned())
}

/// Parses `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or `http/protobuf`).
pub fn parse_protocol(s: &str) -> Result<OtlpProtocol, ConfigError> {
    match s.trim() {
        "grpc" => Ok(OtlpProtocol::Grpc),
        "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        "http/json" => Err(ConfigError::HttpJsonUnsupported),
        other => Err(ConfigError::UnknownProtocol(other.to_owned())),
    }
}

/// Handle to the running export task.
pub struct Exporter {
    tx: mpsc::Sender<SpanRecord>,
    /// Set once by `shutdown`: the instant by which the task must have finished.
    deadline: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Exporter {
    /// Starts the export task on the current tokio runtime. A down collector does not fail or
    /// delay this: connections are made when the first batch is sent.
    pub fn start(config: ExportConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ConfigError::NoRuntime)?;
        if config.queue_capacity == 0 {
            return Err(ConfigError::InvalidSetting("queue_capacity must be at least 1").into());
        }
        if config.max_batch == 0 {
            return Err(ConfigError::InvalidSetting("max_batch must be at least 1").into());
        }
        let (tx, rx) = mpsc::channel(config.queue_capacity);
        let (deadline, deadline_rx) = watch::channel(None);
        let task = match &config.endpoint {
            Some(endpoint) => {
                // Built inside the runtime: the lazy gRPC channel spawns its worker here.
                let _guard = runtime.enter();
                let transport = transport::Transport::new(&config, endpoint)?;
                tracing::info!(endpoint = transport.target(), protocol = ?config.protocol, "exporting spans over OTLP");
                runtime.spawn(queue::run_otlp(
                    rx,
                    transport,
                    config,
                    metrics.clone(),
                    deadline_rx,
                ))
            }
            None => runtime.spawn(queue::run_console(rx, metrics.clone())),
        };
        Ok(Self {
            tx,
            deadline,
            task,
            metrics,
        })
    }

    /// Queues a span without waiting; a full queue drops it and counts the drop.
    pub fn submit(&self, span: SpanRecord) {
        if self.tx.try_send(span).is_err() {
            metrics::inc(&self.metrics.spans_dropped_queue);
        }
    }

    /// Sends what is queued, waiting at most `deadline`. Spans that cannot be sent in time
    /// (collector down or slow) are dropped and counted.
    pub async fn shutdown(self, deadline: Duration) {
        let Self {
            tx,
            deadline: deadline_tx,
            task,
            metrics: _,
        } = self;
        let hard = Instant::now() + deadline;
        // Leave the task a little time to count what it gives up on before it is aborted.
        let soft = hard - (deadline / 10).min(Duration::from_millis(100));
        deadline_tx.send_replace(Some(soft));
        // Closing the queue makes the task flush what is left and return.
        drop(tx);
        let abort = task.abort_handle();
        match tokio::time::timeout_at(hard, task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "export task failed"),
            Err(_) => {
                abort.abort();
                tracing::warn!(
                    ?deadline,
                    "export did not finish before the shutdown deadline"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
