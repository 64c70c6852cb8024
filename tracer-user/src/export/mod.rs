//! Export stage: a bounded queue of finished spans drained by one task that batches them to
//! OTLP (gRPC or HTTP/protobuf) or prints them as per-trace trees on stdout.
//! (Interface only until the exporter helper lands.)

use std::{sync::Arc, time::Duration};

use crate::{metrics::Metrics, span::SpanRecord};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    Grpc,
    HttpProtobuf,
}

#[derive(Clone, Debug)]
pub struct ExportConfig {
    /// OTLP endpoint; `None` prints spans to stdout instead.
    pub endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// Extra request headers / gRPC metadata (for example auth tokens).
    pub headers: Vec<(String, String)>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Spans per export request at most.
    pub max_batch: usize,
    /// How long a partial batch may wait before it is sent.
    pub batch_delay: Duration,
    /// Spans the queue holds before new ones are dropped (and counted).
    pub queue_capacity: usize,
}

/// Handle to the running export task.
pub struct Exporter {
    _metrics: Arc<Metrics>,
}

impl Exporter {
    pub fn start(_config: ExportConfig, metrics: Arc<Metrics>) -> anyhow::Result<Self> {
        Ok(Self { _metrics: metrics })
    }
    /// Queues a span without waiting; a full queue drops it and counts the drop.
    pub fn submit(&self, _span: SpanRecord) {}
    /// Sends what is queued, waiting at most `deadline`.
    pub async fn shutdown(self, _deadline: Duration) {}
}
