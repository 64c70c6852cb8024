//! Command line and environment: every setting of the agent, each flag with an `env =`
//! fallback; the OpenTelemetry exporter variables are honoured under their standard names.
//! Precedence: a flag beats its environment variable, which beats the default.

use std::time::Duration;

use clap::Parser;

/// eBPF tracer: HTTP and Thrift spans of uninstrumented processes, exported over OTLP.
///
/// Precedence of settings: command-line flag, then environment variable, then default.
#[derive(Parser, Debug, Clone)]
#[command(name = "tracer", version, about, long_about = None)]
pub struct Config {
    /// OTLP endpoint (gRPC e.g. http://localhost:4317; HTTP e.g. http://localhost:4318, to which
    /// /v1/traces is appended). Without one, spans are printed to stdout as trace trees.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// Traces-only OTLP endpoint, used as is (takes precedence over --otlp-endpoint).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    pub otlp_traces_endpoint: Option<String>,

    /// OTLP transport.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", default_value = "grpc", value_parser = ["grpc", "http/protobuf"])]
    pub otlp_protocol: String,

    /// Headers for the exporter, `key=value,key2=value2` (e.g. an auth token).
    #[arg(long, env = "OTEL_EXPORTER_OTLP_HEADERS")]
    pub otlp_headers: Option<String>,

    /// Timeout of one export request, in milliseconds.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TIMEOUT", default_value_t = 10_000)]
    pub otlp_timeout_ms: u64,

    /// Trace only these process ids (repeatable; filtered in the kernel).
    #[arg(long = "pid", env = "TRACER_PIDS", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Trace only processes with this name (`comm` or executable name; repeatable).
    #[arg(long = "process", env = "TRACER_PROCESSES", value_delimiter = ',')]
    pub processes: Vec<String>,

    /// Trace only connections with this local or remote port (repeatable).
    #[arg(long = "port", env = "TRACER_PORTS", value_delimiter = ',')]
    pub ports: Vec<u16>,

    /// Payload bytes captured per socket syscall (64..=4096). Request heads longer than this
    /// lose their later headers; bodies are skipped by framing either way.
    #[arg(long, env = "TRACER_CAPTURE_BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(64..=4096))]
    pub capture_bytes: u32,

    /// Record `url.query` on HTTP spans (off by default: queries often carry secrets).
    #[arg(long, env = "TRACER_RECORD_QUERY")]
    pub record_query: bool,

    /// How long finished spans are held so that late links can still be made, in ms.
    #[arg(long, env = "TRACER_SETTLE_MS", default_value_t = 1000)]
    pub settle_ms: u64,

    /// Kernel ring buffer size in bytes (a power of two, multiple of the page size).
    #[arg(long, env = "TRACER_RINGBUF_BYTES", default_value_t = 8 << 20, value_parser = parse_ringbuf_size)]
    pub ringbuf_bytes: u32,

    /// Decoded events queued between the reader and the pipeline before drops.
    #[arg(long, env = "TRACER_EVENT_QUEUE", default_value_t = 65_536)]
    pub event_queue: usize,

    /// Connections tracked at most.
    #[arg(long, env = "TRACER_MAX_CONNECTIONS", default_value_t = 65_536)]
    pub max_connections: usize,

    /// Seconds without I/O after which a connection is forgotten.
    #[arg(long, env = "TRACER_CONNECTION_IDLE_SECS", default_value_t = 300)]
    pub connection_idle_secs: u64,

    /// Spans held in span assembly at most.
    #[arg(long, env = "TRACER_MAX_PENDING_SPANS", default_value_t = 100_000)]
    pub max_pending_spans: usize,

    /// Seconds a request may wait for its response before its span closes as an error.
    #[arg(long, env = "TRACER_REQUEST_TIMEOUT_SECS", default_value_t = 120)]
    pub request_timeout_secs: u64,

    /// Spans queued for export at most.
    #[arg(long, env = "TRACER_EXPORT_QUEUE", default_value_t = 8192)]
    pub export_queue: usize,

    /// Spans per export request at most.
    #[arg(long, env = "TRACER_EXPORT_BATCH", default_value_t = 512)]
    pub export_batch: usize,

    /// Seconds between self-telemetry log lines (0: only at exit).
    #[arg(long, env = "TRACER_STATS_INTERVAL_SECS", default_value_t = 60)]
    pub stats_interval_secs: u64,

    /// Address of the health and metrics endpoint (`/healthz`, `/readyz`, `/metrics`), e.g.
    /// 0.0.0.0:9464. Off when not set.
    #[arg(long, env = "TRACER_HEALTH_ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,

    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing EnvFilter directive).
    #[arg(long, env = "TRACER_LOG", default_value = "info")]
    pub log_level: String,
}

fn parse_ringbuf_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two of at least 4096".into());
    }
    Ok(n)
}

impl Config {
    pub fn settle(&self) -> Duration {
        Duration::from_millis(self.settle_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let c = Config::try_parse_from(["tracer", "--port", "80", "--port", "443", "--pid", "1,2", "--capture-bytes", "256"]).unwrap();
        assert_eq!(c.ports, vec![80, 443]);
        assert_eq!(c.pids, vec![1, 2]);
        assert_eq!(c.capture_bytes, 256);
        assert_eq!(c.otlp_protocol, "grpc");
        assert!(Config::try_parse_from(["tracer", "--capture-bytes", "99999"]).is_err());
        assert!(Config::try_parse_from(["tracer", "--ringbuf-bytes", "5000"]).is_err());
        assert!(Config::try_parse_from(["tracer", "--otlp-protocol", "http/json"]).is_err());
        assert!(Config::try_parse_from(["tracer", "--bogus"]).is_err());
    }
}
