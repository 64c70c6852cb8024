//! Health and metrics endpoint: a small HTTP/1 server beside the pipeline, not part of it.
//!
//! - `GET /healthz`: `200 ok` while the process runs (liveness).
//! - `GET /readyz`: `200 ready` once the agent has set `ready` (probes attached), `503 not ready`
//!   before (readiness; a node whose kernel refuses the probes never turns ready).
//! - `GET /metrics`: every [`Metrics`] counter in the Prometheus text format 0.0.4, as
//!   `tracer_<name>{stage="<stage>"} <value>`, one `# TYPE` line per metric name.
//! - anything else: 404, or 405 for another method on one of the paths above.
//!
//! It only reads atomics, so it never slows the pipeline down. A bad request, a slow client or a
//! reset connection ends that connection alone (logged at debug); the listener keeps accepting.

use std::{
    convert::Infallible,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore};

use crate::metrics::Metrics;

/// Prefix of every exported metric name.
const PREFIX: &str = "tracer_";
/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Connections served at once; more are closed on accept (scrapers and probes need a few).
const MAX_CONNECTIONS: usize = 32;
/// A client must send its request head within this time (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("health endpoint: bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("health endpoint: local address of {addr}: {source}")]
    LocalAddr {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What the handlers read.
struct State {
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
}

/// Binds `addr` (port 0 picks a free port) and serves the endpoint on the current tokio runtime
/// until the runtime shuts down. Returns the bound address; binding errors are returned, not
/// logged, so that the caller can refuse to start with a clear message.
pub async fn spawn(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) -> Result<SocketAddr, HealthError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HealthError::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| HealthError::LocalAddr { addr, source })?;
    tokio::spawn(accept_loop(listener, Arc::new(State { metrics, ready })));
    Ok(local)
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: transient, back off instead of spinning.
                tracing::debug!(error = %e, "health endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "health endpoint: too many connections, closing");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let response = respond(&state, &req);
                async move { Ok::<_, Infallible>(response) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "health endpoint: connection ended with an error");
            }
            drop(slot);
        });
    }
}

fn respond<B>(state: &State, req: &Request<B>) -> Response<Full<Bytes>> {
    let known = matches!(req.uri().path(), "/healthz" | "/readyz" | "/metrics");
    if !known {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return response;
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if state.ready.load(Ordering::Acquire) => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => {
            let mut response = text(StatusCode::OK, render_metrics(&state.metrics.snapshot()));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(PROMETHEUS_TEXT));
            response
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Renders `(name, stage, value)` counters in the Prometheus text format 0.0.4. The format wants
/// all samples of one metric in one group under its `# TYPE` line, so samples are grouped by
/// name, in the order names first appear. Names and stages come from the `counters!` table in
/// `metrics.rs` (identifier characters only; a test below keeps it so), so no escaping is needed.
fn render_metrics(snapshot: &[(&str, &str, u64)]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for (name, _, _) in snapshot {
        if !names.contains(name) {
            names.push(name);
        }
    }
    let mut out = String::new();
    for name in names {
        // Writing into a String cannot fail.
        let _ = writeln!(out, "# TYPE {PREFIX}{name} counter");
        for (_, stage, value) in snapshot.iter().filter(|(n, _, _)| *n == name) {
            let _ = writeln!(out, "{PREFIX}{name}{{stage=\"{stage}\"}} {value}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpStream,
    };

    use super::*;
    use crate::metrics;

    async fn start() -> (SocketAddr, Arc<Metrics>, Arc<AtomicBool>) {
        let metrics = Arc::new(Metrics::default());
        let ready = Arc::new(AtomicBool::new(false));
        let any_port = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0));
        let addr = spawn(any_port, metrics.clone(), ready.clone())
            .await
            .expect("bind 127.0.0.1:0");
        (addr, metrics, ready)
    }

    /// Sends raw bytes on a fresh connection and returns everything the server answers.
    async fn exchange(addr: SocketAddr, raw: &[u8]) -> String {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream.write_all(raw).await.expect("write request");
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
            .await
            .expect("server closes the connection in time")
            .expect("read answer");
        String::from_utf8(answer).expect("utf-8 answer")
    }

    /// `(status code, body)` of a `method path` request.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        let raw =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let answer = exchange(addr, raw.as_bytes()).await;
        let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        (status, body.to_owned())
    }

    #[tokio::test]
    async fn healthz_answers_ok() {
        let (addr, _, _) = start().await;
        assert_eq!(
            request(addr, "GET", "/healthz").await,
            (200, "ok\n".to_owned())
        );
    }

    #[tokio::test]
    async fn readyz_follows_the_ready_flag() {
        let (addr, _, ready) = start().await;
        assert_eq!(
            request(addr, "GET", "/readyz").await,
            (503, "not ready\n".to_owned())
        );
        ready.store(true, Ordering::Release);
        assert_eq!(
            request(addr, "GET", "/readyz").await,
            (200, "ready\n".to_owned())
        );
    }

    #[tokio::test]
    async fn unknown_paths_and_methods_are_refused() {
        let (addr, _, _) = start().await;
        assert_eq!(request(addr, "GET", "/").await.0, 404);
        assert_eq!(request(addr, "GET", "/metricsx").await.0, 404);
        assert_eq!(request(addr, "POST", "/metrics").await.0, 405);
        assert_eq!(request(addr, "HEAD", "/healthz").await.0, 200);
    }

    #[tokio::test]
    async fn metrics_lists_every_counter_and_moves() {
        let (addr, metrics, _) = start().await;
        let (status, body) = request(addr, "GET", "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("tracer_spans_exported_total{stage=\"exporter\"} 0\n"),
            "{body}"
        );
        // One sample line per counter, one TYPE line per distinct name.
        let snapshot = metrics.snapshot();
        let samples = body.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(samples, snapshot.len(), "{body}");
        let type_lines = body.lines().filter(|l| l.starts_with("# TYPE ")).count();
        let mut names: Vec<_> = snapshot.iter().map(|(n, _, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(type_lines, names.len(), "{body}");

        metrics::add(&metrics.spans_exported, 41);
        metrics::inc(&metrics.spans_exported);
        metrics::inc(&metrics.kernel_ringbuf_full);
        let (_, body) = request(addr, "GET", "/metrics").await;
        assert!(
            body.contains("tracer_spans_exported_total{stage=\"exporter\"} 42\n"),
            "{body}"
        );
        assert!(
            body.contains("tracer_events_dropped_total{stage=\"ringbuf\"} 1\n"),
            "{body}"
        );
    }

    #[test]
    fn samples_of_one_name_share_one_type_line_and_stay_grouped() {
        let snapshot = [
            ("dropped_total", "a", 1),
            ("sent_total", "a", 2),
            ("dropped_total", "b", 3),
        ];
        assert_eq!(
            render_metrics(&snapshot),
            "# TYPE tracer_dropped_total counter\n\
             tracer_dropped_total{stage=\"a\"} 1\n\
             tracer_dropped_total{stage=\"b\"} 3\n\
             # TYPE tracer_sent_total counter\n\
             tracer_sent_total{stage=\"a\"} 2\n"
        );
    }

    /// `render_metrics` writes names and stages unescaped: keep them plain identifiers.
    #[test]
    fn counter_names_and_stages_need_no_escaping() {
        let plain = |s: &str| {
            s.starts_with(|c: char| c.is_ascii_lowercase())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        };
        for (name, stage, _) in Metrics::default().snapshot() {
            assert!(plain(name) && plain(stage), "{name}{{stage={stage}}}");
        }
    }

    #[tokio::test]
    async fn garbage_and_resets_do_not_stop_the_server() {
        let (addr, _, _) = start().await;
        let answer = exchange(addr, b"\x00\x01 not http at all\r\n\r\n").await;
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 400"),
            "{answer:?}"
        );
        drop(TcpStream::connect(addr).await.expect("connect"));
        // An oversized head: the server may refuse it and close while we still write.
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let huge = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(1 << 20));
        let _ = stream.write_all(huge.as_bytes()).await;
        let _ =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut Vec::new())).await;
        assert_eq!(request(addr, "GET", "/healthz").await.0, 200);
    }
}
