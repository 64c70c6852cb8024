//! The TOML configuration file (`--config PATH` / `TRACER_CONFIG`).
//!
//! The file is read into structs whose fields are all optional and which refuse unknown keys
//! (`deny_unknown_fields`), then flattened into [`Entry`]s: file key, the clap argument it
//! fills, and its values as the flag would take them. Defaults and value checks stay in the
//! clap struct ([`super::Config`]); here only the shape (tables, keys, types) is checked.
//! Errors are one line naming the key (`sampling.ratio`, `exclude.bogus`).
//!
//! ```toml
//! [exporter]
//! endpoint = "http://collector:4317"      # OTEL_EXPORTER_OTLP_ENDPOINT, --otlp-endpoint
//! traces_endpoint = "http://c:4318/v1/traces"
//! protocol = "grpc"                       # or "http/protobuf"
//! headers = { authorization = "Bearer x" }
//! timeout_ms = 10000
//! batch_size = 512
//!
//! [sampling]
//! ratio = 0.25
//!
//! [include]          # empty or absent: everything
//! pids = [1234]
//! executables = ["nginx", "python3"]
//! ports = [80, 8080]
//! cgroups = ["/kubepods.slice"]
//! containers = ["3f4e5d6c7b8a"]
//! services = ["checkout"]
//!
//! [exclude]          # same keys; exclusion wins over inclusion
//! executables = ["sshd"]
//!
//! [capture]
//! bytes = 1024
//! record_query = false
//! request_headers = ["x-request-id"]
//!
//! [buffers]
//! ringbuf_bytes = 8388608
//! connections = 65536
//! pending_spans = 100000
//! export_queue = 8192
//!
//! [agent]
//! settle_ms = 1000
//! request_timeout_secs = 120
//! connection_idle_secs = 300
//! stats_interval_secs = 60
//! health_addr = "127.0.0.1:9464"
//! log_level = "info"
//!
//! [kubernetes]
//! api = true          # watch this node's pods for labels and owners (in a cluster)
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

/// One file setting, as flag values.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Dotted file key, e.g. `sampling.ratio`.
    pub key: &'static str,
    /// The clap argument id (the `Config` field name).
    pub id: &'static str,
    /// Flag values (several for a list).
    pub values: Vec<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    exporter: Option<Exporter>,
    sampling: Option<Sampling>,
    include: Option<Selection>,
    exclude: Option<Selection>,
    capture: Option<Capture>,
    buffers: Option<Buffers>,
    agent: Option<Agent>,
    kubernetes: Option<Kubernetes>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Exporter {
    endpoint: Option<String>,
    traces_endpoint: Option<String>,
    protocol: Option<String>,
    headers: Option<BTreeMap<String, String>>,
    timeout_ms: Option<u64>,
    batch_size: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Sampling {
    ratio: Option<f64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Selection {
    pids: Option<Vec<u32>>,
    executables: Option<Vec<String>>,
    ports: Option<Vec<u16>>,
    cgroups: Option<Vec<String>>,
    containers: Option<Vec<String>>,
    services: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Capture {
    bytes: Option<u32>,
    record_query: Option<bool>,
    request_headers: Option<Vec<String>>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Buffers {
    ringbuf_bytes: Option<u32>,
    connections: Option<u64>,
    pending_spans: Option<u64>,
    export_queue: Option<u64>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Agent {
    settle_ms: Option<u64>,
    link_threshold: Option<f64>,
    request_timeout_secs: Option<u64>,
    connection_idle_secs: Option<u64>,
    stats_interval_secs: Option<u64>,
    health_addr: Option<String>,
    log_level: Option<String>,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct Kubernetes {
    api: Option<bool>,
}

/// Every file key and the clap argument it fills (documentation and tests use this list).
pub const KEYS: &[(&str, &str)] = &[
    ("exporter.endpoint", "otlp_endpoint"),
    ("exporter.traces_endpoint", "otlp_traces_endpoint"),
    ("exporter.protocol", "otlp_protocol"),
    ("exporter.headers", "otlp_headers"),
    ("exporter.timeout_ms", "otlp_timeout_ms"),
    ("exporter.batch_size", "export_batch"),
    ("exporter.concurrency", "export_concurrency"),
    ("sampling.ratio", "sample_ratio"),
    ("include.pids", "pids"),
    ("include.executables", "processes"),
    ("include.ports", "ports"),
    ("include.cgroups", "cgroups"),
    ("include.containers", "containers"),
    ("include.services", "services"),
    ("exclude.pids", "exclude_pids"),
    ("exclude.executables", "exclude_processes"),
    ("exclude.ports", "exclude_ports"),
    ("exclude.cgroups", "exclude_cgroups"),
    ("exclude.containers", "exclude_containers"),
    ("exclude.services", "exclude_services"),
    ("capture.bytes", "capture_bytes"),
    ("capture.record_query", "record_query"),
    ("capture.request_headers", "record_headers"),
    ("buffers.ringbuf_bytes", "ringbuf_bytes"),
    ("buffers.connections", "max_connections"),
    ("buffers.pending_spans", "max_pending_spans"),
    ("buffers.export_queue", "export_queue"),
    ("agent.settle_ms", "settle_ms"),
    ("agent.link_threshold", "link_threshold"),
    ("agent.request_timeout_secs", "request_timeout_secs"),
    ("agent.connection_idle_secs", "connection_idle_secs"),
    ("agent.stats_interval_secs", "stats_interval_secs"),
    ("agent.health_addr", "health_addr"),
    ("agent.log_level", "log_level"),
    ("kubernetes.api", "k8s_api"),
];

struct Out(Vec<Entry>);

impl Out {
    fn put<T: ToString>(&mut self, key: &'static str, value: Option<T>) {
        if let Some(v) = value {
            self.list(key, Some(vec![v]));
        }
    }
    fn list<T: ToString>(&mut self, key: &'static str, values: Option<Vec<T>>) {
        let Some(values) = values else { return };
        let id = KEYS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, id)| *id)
            .expect("key listed in KEYS");
        self.0.push(Entry {
            key,
            id,
            values: values.iter().map(ToString::to_string).collect(),
        });
    }
}

/// `%` and `,` percent-encoded, as `OTEL_EXPORTER_OTLP_HEADERS` values are decoded.
fn encode_header_value(v: &str) -> String {
    v.replace('%', "%25").replace(',', "%2C")
}

/// Parses the file text into entries; the error is one line naming the key.
pub fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let line = |span: Option<std::ops::Range<usize>>| {
        span.map(|r| {
            format!(
                "line {}: ",
                text[..r.start.min(text.len())].matches('\n').count() + 1
            )
        })
        .unwrap_or_default()
    };
    let de = toml::Deserializer::parse(text)
        .map_err(|e| format!("{}{}", line(e.span()), one_line(e.message())))?;
    let file: FileConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let message = one_line(e.inner().message());
        let at = line(e.inner().span());
        // For an unknown key the path may end at its table or at the key itself.
        match message
            .strip_prefix("unknown field `")
            .and_then(|m| m.split_once('`'))
        {
            Some((_, _))
                if path != "."
                    && !path.is_empty()
                    && path.rsplit('.').next()
                        == message
                            .strip_prefix("unknown field `")
                            .and_then(|m| m.split('`').next()) =>
            {
                format!("{at}unknown key `{path}` (see deploy/CONFIGURATION.md)")
            }
            Some((field, _)) if path == "." || path.is_empty() => {
                format!("{at}unknown key `{field}` (see deploy/CONFIGURATION.md)")
            }
            Some((field, _)) => {
                format!("{at}unknown key `{path}.{field}` (see deploy/CONFIGURATION.md)")
            }
            None => format!("{at}key `{path}`: {message}"),
        }
    })?;
    let mut out = Out(Vec::new());
    if let Some(e) = file.exporter {
        out.put("exporter.endpoint", e.endpoint);
        out.put("exporter.traces_endpoint", e.traces_endpoint);
        out.put("exporter.protocol", e.protocol);
        out.put(
            "exporter.headers",
            e.headers.map(|h| {
                h.iter()
                    .map(|(k, v)| format!("{k}={}", encode_header_value(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            }),
        );
        out.put("exporter.timeout_ms", e.timeout_ms);
        out.put("exporter.batch_size", e.batch_size);
    }
    if let Some(s) = file.sampling {
        out.put("sampling.ratio", s.ratio);
    }
    for (table, sel) in [("include", file.include), ("exclude", file.exclude)] {
        let Some(sel) = sel else { continue };
        let key = |k: &str| {
            KEYS.iter()
                .map(|(key, _)| *key)
                .find(|key| *key == format!("{table}.{k}"))
                .expect("listed")
        };
        out.list(key("pids"), sel.pids);
        out.list(key("executables"), sel.executables);
        out.list(key("ports"), sel.ports);
        out.list(key("cgroups"), sel.cgroups);
        out.list(key("containers"), sel.containers);
        out.list(key("services"), sel.services);
    }
    if let Some(c) = file.capture {
        out.put("capture.bytes", c.bytes);
        out.put("capture.record_query", c.record_query);
        out.list("capture.request_headers", c.request_headers);
    }
    if let Some(b) = file.buffers {
        out.put("buffers.ringbuf_bytes", b.ringbuf_bytes);
        out.put("buffers.connections", b.connections);
        out.put("buffers.pending_spans", b.pending_spans);
        out.put("buffers.export_queue", b.export_queue);
    }
    if let Some(a) = file.agent {
        out.put("agent.settle_ms", a.settle_ms);
        out.put("agent.link_threshold", a.link_threshold);
        out.put("agent.request_timeout_secs", a.request_timeout_secs);
        out.put("agent.connection_idle_secs", a.connection_idle_secs);
        out.put("agent.stats_interval_secs", a.stats_interval_secs);
        out.put("agent.health_addr", a.health_addr);
        out.put("agent.log_level", a.log_level);
    }
    if let Some(k) = file.kubernetes {
        out.put("kubernetes.api", k.api);
    }
    Ok(out.0)
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}
