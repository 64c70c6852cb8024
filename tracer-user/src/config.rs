//! Configuration: command-line flags, environment variables and a TOML file.
//!
//! Every setting is a flag with an `env =` fallback (the OpenTelemetry exporter variables under
//! their standard names); most also have a key in the configuration file named by `--config` /
//! `TRACER_CONFIG` (see [`file`] and `deploy/CONFIGURATION.md`, which lists every key).
//! Precedence: command-line flag > environment variable > configuration file > default. The
//! clap struct below is the only place defaults and value checks live: a file value is used
//! only where `ArgMatches::value_source` says neither the command line nor the environment gave
//! one, and it is checked by the same value parser as the flag.

pub mod file;

use std::{path::PathBuf, time::Duration};

use clap::{CommandFactory, FromArgMatches, Parser, parser::ValueSource};

/// Text of `--help` after the flag list: where settings come from.
pub const PRECEDENCE_HELP: &str = "\
Settings come from, highest precedence first: command-line flags, environment variables \
(shown as [env: ...]), the TOML file named by --config / TRACER_CONFIG, built-in defaults. \
Every file key is listed in deploy/CONFIGURATION.md; an unknown key, a value of the wrong type \
or a bad value is refused at start with the key named.";

/// eBPF tracer: HTTP and Thrift spans of uninstrumented processes, exported over OTLP.
///
/// Precedence of settings: command-line flag, then environment variable, then configuration
/// file, then default.
#[derive(Parser, Debug, Clone)]
#[command(name = "tracer", version, about, long_about = None, after_help = PRECEDENCE_HELP)]
pub struct Config {
    /// TOML configuration file (e.g. /etc/tracer/tracer.toml); flags and environment variables
    /// override its values.
    #[arg(long, env = "TRACER_CONFIG")]
    pub config: Option<PathBuf>,

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

    /// Keep this fraction of traces that arrive without a sampling decision (0..=1), decided
    /// per trace id. A propagated `traceparent` decides for itself: sampled is kept, not
    /// sampled is dropped.
    #[arg(long, env = "TRACER_SAMPLE_RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    pub sample_ratio: f64,

    /// Trace only these process ids (repeatable; filtered in the kernel).
    #[arg(long = "pid", env = "TRACER_PIDS", value_delimiter = ',')]
    pub pids: Vec<u32>,

    /// Trace only processes with this name (`comm` or executable name; repeatable).
    #[arg(long = "process", env = "TRACER_PROCESSES", value_delimiter = ',')]
    pub processes: Vec<String>,

    /// Trace only connections with this local or remote port (repeatable).
    #[arg(long = "port", env = "TRACER_PORTS", value_delimiter = ',')]
    pub ports: Vec<u16>,

    /// Trace only processes whose cgroup path (cgroup v2, or any v1 hierarchy) starts with
    /// this prefix, e.g. `/kubepods.slice` (repeatable).
    #[arg(long = "cgroup", env = "TRACER_CGROUPS", value_delimiter = ',')]
    pub cgroups: Vec<String>,

    /// Trace only processes of this container (full 64-hex id or a prefix of at least 12;
    /// repeatable).
    #[arg(long = "container", env = "TRACER_CONTAINERS", value_delimiter = ',', value_parser = parse_container_id)]
    pub containers: Vec<String>,

    /// Trace only processes whose `service.name` is this (repeatable).
    #[arg(long = "service", env = "TRACER_SERVICES", value_delimiter = ',')]
    pub services: Vec<String>,

    /// Never trace these process ids (repeatable).
    #[arg(
        long = "exclude-pid",
        env = "TRACER_EXCLUDE_PIDS",
        value_delimiter = ','
    )]
    pub exclude_pids: Vec<u32>,

    /// Never trace processes with this name (`comm` or executable name; repeatable).
    #[arg(
        long = "exclude-process",
        env = "TRACER_EXCLUDE_PROCESSES",
        value_delimiter = ','
    )]
    pub exclude_processes: Vec<String>,

    /// Never trace connections with this local or remote port (repeatable).
    #[arg(
        long = "exclude-port",
        env = "TRACER_EXCLUDE_PORTS",
        value_delimiter = ','
    )]
    pub exclude_ports: Vec<u16>,

    /// Never trace processes whose cgroup path starts with this prefix (repeatable).
    #[arg(
        long = "exclude-cgroup",
        env = "TRACER_EXCLUDE_CGROUPS",
        value_delimiter = ','
    )]
    pub exclude_cgroups: Vec<String>,

    /// Never trace processes of this container (id or prefix of at least 12; repeatable).
    #[arg(long = "exclude-container", env = "TRACER_EXCLUDE_CONTAINERS", value_delimiter = ',', value_parser = parse_container_id)]
    pub exclude_containers: Vec<String>,

    /// Never trace processes whose `service.name` is this (repeatable).
    #[arg(
        long = "exclude-service",
        env = "TRACER_EXCLUDE_SERVICES",
        value_delimiter = ','
    )]
    pub exclude_services: Vec<String>,

    /// Payload bytes captured per socket syscall (64..=4096). Request heads longer than this
    /// lose their later headers; bodies are skipped by framing either way.
    #[arg(long, env = "TRACER_CAPTURE_BYTES", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(64..=4096))]
    pub capture_bytes: u32,

    /// Record `url.query` on HTTP spans (off by default: queries often carry secrets).
    /// `--record-query` alone means true; `--record-query false` also works.
    #[arg(long, env = "TRACER_RECORD_QUERY", num_args = 0..=1, default_value_t = false,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub record_query: bool,

    /// Request header whose value may be recorded as `http.request.header.<name>` (lower case;
    /// repeatable; default none). `traceparent`, `tracestate`, `authorization`, `cookie` and
    /// `proxy-authorization` are refused.
    #[arg(long = "record-header", env = "TRACER_RECORD_HEADERS", value_delimiter = ',', value_parser = parse_header_name)]
    pub record_headers: Vec<String>,

    /// Longest a finished span is held so that late links can still be made, in ms. A span
    /// whose place is decided leaves earlier: once the event stream is a fifth of this (at
    /// most 50 ms) past its end.
    #[arg(long, env = "TRACER_SETTLE_MS", default_value_t = 1000)]
    pub settle_ms: u64,

    /// Lowest confidence (0..1) at which an inferred parent is used; below it the span stays a
    /// root with a span link to the candidate (`tracer.link.confidence` tells which).
    #[arg(long, env = "TRACER_LINK_THRESHOLD", default_value_t = 0.5, value_parser = parse_ratio)]
    pub link_threshold: f64,

    /// Kernel ring buffer size in bytes (a power of two, multiple of the page size).
    #[arg(long, env = "TRACER_RINGBUF_BYTES", default_value_t = 8 << 20, value_parser = parse_ringbuf_size)]
    pub ringbuf_bytes: u32,

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

    /// Export requests in flight at once (each retried on its own).
    #[arg(long, env = "TRACER_EXPORT_CONCURRENCY", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub export_concurrency: u16,

    /// Seconds between self-telemetry log lines (0: only at exit).
    #[arg(long, env = "TRACER_STATS_INTERVAL_SECS", default_value_t = 60)]
    pub stats_interval_secs: u64,

    /// Address of the health and metrics endpoint (`/healthz`, `/readyz`, `/metrics`), e.g.
    /// 0.0.0.0:9464. Off when not set.
    #[arg(long, env = "TRACER_HEALTH_ADDR")]
    pub health_addr: Option<std::net::SocketAddr>,

    /// Read pod labels and owners (`k8s.deployment.name`, ..., the `app.kubernetes.io/name`
    /// label for `service.name`) from the Kubernetes API: one watch of this node's pods, started
    /// when the agent runs in a cluster (`KUBERNETES_SERVICE_HOST`) or has a `KUBECONFIG`, and
    /// `NODE_NAME` is set. `--k8s-api false` keeps to what the node shows.
    #[arg(long, env = "TRACER_K8S_API", num_args = 0..=1, default_value_t = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub k8s_api: bool,

    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing EnvFilter directive).
    #[arg(long, env = "TRACER_LOG", default_value = "info")]
    pub log_level: String,
}

fn parse_ratio(s: &str) -> Result<f64, String> {
    let r: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    if !(0.0..=1.0).contains(&r) {
        return Err("must be between 0 and 1".into());
    }
    Ok(r)
}

fn parse_container_id(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    if s.len() < 12 || s.len() > 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("must be 12 to 64 hex digits".into());
    }
    Ok(s)
}

/// Header names never recorded: trace context beyond what linking needs, and credentials.
pub const NEVER_RECORDED_HEADERS: &[&str] = &[
    "traceparent",
    "tracestate",
    "baggage",
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
];

fn parse_header_name(s: &str) -> Result<String, String> {
    let s = s.trim().to_ascii_lowercase();
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err("must be a header name (letters, digits, '-', '_', '.')".into());
    }
    if NEVER_RECORDED_HEADERS.contains(&s.as_str()) {
        return Err(format!("`{s}` is never recorded"));
    }
    Ok(s)
}

fn parse_ringbuf_size(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if n < 4096 || !n.is_power_of_two() {
        return Err("must be a power of two of at least 4096".into());
    }
    Ok(n)
}

/// Why the configuration was refused.
#[derive(Debug)]
pub enum LoadError {
    /// From clap: bad flag or environment value, or `--help` / `--version`.
    Clap(clap::Error),
    /// The configuration file: unreadable, not TOML, unknown key, wrong type or bad value; one
    /// line naming the file and the key.
    File(String),
}

impl Config {
    /// Parses the process's arguments and environment, then the configuration file.
    pub fn load() -> Result<Config, LoadError> {
        Self::load_from(std::env::args_os().collect())
    }

    /// Like [`Config::load`] with explicit arguments (`args[0]` is the program name).
    pub fn load_from(args: Vec<std::ffi::OsString>) -> Result<Config, LoadError> {
        let matches = Config::command()
            .try_get_matches_from(&args)
            .map_err(LoadError::Clap)?;
        let first = Config::from_arg_matches(&matches).map_err(LoadError::Clap)?;
        let Some(path) = first.config.clone() else {
            return Ok(first);
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LoadError::File(format!("config file {}: {e}", path.display())))?;
        let entries = file::parse(&text)
            .map_err(|e| LoadError::File(format!("config file {}: {e}", path.display())))?;
        let mut extra: Vec<std::ffi::OsString> = Vec::new();
        for entry in entries {
            // Flag and environment win over the file.
            if matches!(
                matches.value_source(entry.id),
                Some(ValueSource::CommandLine | ValueSource::EnvVariable)
            ) {
                continue;
            }
            let flag = Config::command()
                .get_arguments()
                .find(|a| a.get_id() == entry.id)
                .and_then(|a| a.get_long())
                .map(|l| format!("--{l}"))
                .unwrap_or_else(|| panic!("file key {} maps to no flag", entry.key));
            let mut these: Vec<std::ffi::OsString> = Vec::new();
            for value in &entry.values {
                these.push(format!("{flag}={value}").into());
            }
            // The same value parser as the flag, alone, so that the error is this key's.
            let mut probe: Vec<std::ffi::OsString> = vec!["tracer".into()];
            probe.extend(these.iter().cloned());
            if let Err(e) = Config::command().try_get_matches_from(probe) {
                let text = e.to_string();
                let line = text
                    .lines()
                    .next()
                    .unwrap_or("invalid value")
                    .trim_start_matches("error: ");
                return Err(LoadError::File(format!(
                    "config file {}: key `{}`: {line}",
                    path.display(),
                    entry.key
                )));
            }
            extra.extend(these);
        }
        let mut all = args;
        all.extend(extra);
        Config::try_parse_from(all).map_err(LoadError::Clap)
    }

    pub fn settle(&self) -> Duration {
        Duration::from_millis(self.settle_ms)
    }

    /// The log filter: `--log-level`, with the kube crates' per-attempt lines held back unless
    /// the filter names a `kube` target itself. kube's client logs an error for every failed
    /// request and its watcher a warning for every forbidden retry; the agent says once that
    /// the pod watch fails and once that it works again (`k8s/watch.rs`).
    pub fn log_filter(&self) -> String {
        if self.log_level.contains("kube") {
            self.log_level.clone()
        } else {
            format!(
                "{},kube_runtime=error,kube_client::client::builder=off",
                self.log_level
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_values_are_refused() {
        let c = Config::try_parse_from([
            "tracer",
            "--port",
            "80",
            "--port",
            "443",
            "--pid",
            "1,2",
            "--capture-bytes",
            "256",
        ])
        .unwrap();
        assert_eq!(c.ports, vec![80, 443]);
        assert_eq!(c.pids, vec![1, 2]);
        assert_eq!(c.capture_bytes, 256);
        assert_eq!(c.otlp_protocol, "grpc");
        assert!(Config::try_parse_from(["tracer", "--capture-bytes", "99999"]).is_err());
        assert!(Config::try_parse_from(["tracer", "--ringbuf-bytes", "5000"]).is_err());
        assert!(Config::try_parse_from(["tracer", "--otlp-protocol", "http/json"]).is_err());
        assert!(Config::try_parse_from(["tracer", "--bogus"]).is_err());
    }

    fn load_with(file: &str, args: &[&str]) -> Result<Config, LoadError> {
        let path = std::env::temp_dir().join(format!(
            "tracer-config-test-{}-{}.toml",
            std::process::id(),
            file.len() ^ args.len() << 16 ^ file.as_ptr() as usize
        ));
        std::fs::write(&path, file).unwrap();
        let mut all: Vec<std::ffi::OsString> =
            vec!["tracer".into(), "--config".into(), path.clone().into()];
        all.extend(args.iter().map(|a| a.into()));
        let r = Config::load_from(all);
        let _ = std::fs::remove_file(&path);
        r
    }

    fn file_error(r: Result<Config, LoadError>) -> String {
        match r {
            Err(LoadError::File(line)) => {
                assert!(!line.contains('\n'), "one line: {line}");
                line
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn file_fills_what_flags_do_not_set() {
        let c = load_with(
            r#"
[exporter]
endpoint = "http://collector:4317"
headers = { authorization = "Bearer a,b" }
[sampling]
ratio = 0.25
[include]
ports = [80, 8080]
executables = ["nginx"]
[exclude]
containers = ["ABCDEF0123456789"]
[capture]
record_query = true
request_headers = ["X-Request-Id"]
bytes = 512
[agent]
settle_ms = 10
health_addr = "127.0.0.1:9464"
[kubernetes]
api = false
"#,
            &["--capture-bytes", "256"],
        )
        .unwrap();
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(
            c.otlp_headers.as_deref(),
            Some("authorization=Bearer a%2Cb")
        );
        assert_eq!(c.sample_ratio, 0.25);
        assert_eq!(c.ports, vec![80, 8080]);
        assert_eq!(c.processes, vec!["nginx"]);
        assert_eq!(c.exclude_containers, vec!["abcdef0123456789"]);
        assert!(c.record_query);
        assert_eq!(c.record_headers, vec!["x-request-id"]);
        assert_eq!(c.capture_bytes, 256, "flag beats file");
        assert_eq!(c.settle_ms, 10);
        assert_eq!(c.health_addr, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(c.otlp_protocol, "grpc", "default where nobody says");
        assert!(!c.k8s_api);
        assert!(
            load_with("[kubernetes]\napi = false\n", &["--k8s-api"])
                .unwrap()
                .k8s_api,
            "flag beats file"
        );
        // Every file key maps to an argument that exists.
        let cmd = Config::command();
        for (key, id) in file::KEYS {
            assert!(
                cmd.get_arguments()
                    .any(|a| a.get_id() == *id && a.get_long().is_some()),
                "{key} -> {id}"
            );
        }
    }

    #[test]
    fn bad_files_name_the_key() {
        let e = file_error(load_with("[sampling]\nratio = 2.0\n", &[]));
        assert!(
            e.contains("`sampling.ratio`") && e.contains("between 0 and 1"),
            "{e}"
        );
        let e = file_error(load_with("[sampling]\nratio = \"half\"\n", &[]));
        assert!(
            e.contains("`sampling.ratio`") && e.contains("line 2"),
            "{e}"
        );
        let e = file_error(load_with("[exclude]\nbogus = 1\n", &[]));
        assert!(e.contains("unknown key `exclude.bogus`"), "{e}");
        let e = file_error(load_with("nope = 1\n", &[]));
        assert!(e.contains("unknown key `nope`"), "{e}");
        let e = file_error(load_with("[capture]\nbytes = 5\n", &[]));
        assert!(e.contains("`capture.bytes`"), "{e}");
        let e = file_error(load_with(
            "[capture]\nrequest_headers = [\"traceparent\"]\n",
            &[],
        ));
        assert!(
            e.contains("`capture.request_headers`") && e.contains("never recorded"),
            "{e}"
        );
        let e = file_error(load_with("[buffers]\nringbuf_bytes = 5000\n", &[]));
        assert!(e.contains("`buffers.ringbuf_bytes`"), "{e}");
        let e = file_error(load_with("[kubernetes]\napi = \"yes\"\n", &[]));
        assert!(e.contains("`kubernetes.api`"), "{e}");
        let e = file_error(load_with("[exporter\n", &[]));
        assert!(e.contains("line 1"), "{e}");
        // A flag's own bad value is clap's error, not the file's.
        assert!(matches!(
            load_with("", &["--sample-ratio", "7"]),
            Err(LoadError::Clap(_))
        ));
        // A flag overrides a bad-but-shadowed file value? No: the file is still checked only
        // for the keys it fills; a key the flag sets is not looked at.
        assert!(load_with("[sampling]\nratio = 7.0\n", &["--sample-ratio", "0.5"]).is_ok());
        match Config::load_from(vec![
            "tracer".into(),
            "--config".into(),
            "/nonexistent/t.toml".into(),
        ]) {
            Err(LoadError::File(l)) => assert!(l.contains("/nonexistent/t.toml"), "{l}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn log_filter_quiets_kube_unless_asked() {
        let filter = |args: &[&str]| {
            let mut all = vec!["tracer"];
            all.extend(args);
            Config::try_parse_from(all).unwrap().log_filter()
        };
        assert_eq!(
            filter(&[]),
            "info,kube_runtime=error,kube_client::client::builder=off"
        );
        assert_eq!(
            filter(&["--log-level", "debug,kube_runtime=debug"]),
            "debug,kube_runtime=debug"
        );
    }

    #[test]
    fn record_query_forms() {
        assert!(
            Config::try_parse_from(["tracer", "--record-query"])
                .unwrap()
                .record_query
        );
        assert!(
            !Config::try_parse_from(["tracer", "--record-query=false"])
                .unwrap()
                .record_query
        );
        assert!(!Config::try_parse_from(["tracer"]).unwrap().record_query);
        assert!(
            Config::try_parse_from(["tracer"]).unwrap().k8s_api,
            "on by default"
        );
        assert!(
            !Config::try_parse_from(["tracer", "--k8s-api=false"])
                .unwrap()
                .k8s_api
        );
        assert!(
            !Config::try_parse_from(["tracer", "--k8s-api", "off"])
                .unwrap()
                .k8s_api
        );
        assert!(Config::try_parse_from(["tracer", "--k8s-api=maybe"]).is_err());
        assert!(Config::try_parse_from(["tracer", "--record-header", "Authorization"]).is_err());
        assert!(Config::try_parse_from(["tracer", "--container", "xyz"]).is_err());
    }
}
