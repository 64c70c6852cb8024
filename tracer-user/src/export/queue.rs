//! The export task (span assembly -> bounded queue -> **this task** -> transport or stdout):
//! drains the queue into batches, sends them with retries (up to `concurrency` requests in
//! flight, each retried on its own) and counts every span's fate (exported or dropped), or,
//! without an endpoint, prints finished traces.

use std::{future, sync::Arc, time::Duration};

use tokio::{
    io::AsyncWriteExt,
    sync::{mpsc, watch},
    task::JoinSet,
    time::{Instant, sleep, sleep_until},
};

use super::{
    ExportConfig, console::TraceBuffer, otlp, retry::RetryPolicy, transport::SendError,
    transport::Transport,
};
use crate::{
    metrics::{self, Metrics},
    span::SpanRecord,
};

/// At most one warning about failed exports per this interval; the rest go to debug.
const WARN_INTERVAL: Duration = Duration::from_secs(10);
/// How often the console task looks for traces ready to print.
const CONSOLE_TICK: Duration = Duration::from_millis(200);

/// Resolves once shutdown has set a deadline and that deadline has passed.
async fn deadline_passed(deadline: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let current = *deadline.borrow_and_update();
        if let Some(at) = current {
            sleep_until(at).await;
            return;
        }
        if deadline.changed().await.is_err() {
            // The exporter handle is gone without a shutdown: no deadline will come.
            future::pending::<()>().await;
        }
    }
}

/// Drains the queue into OTLP requests until the queue is closed and empty.
pub(super) async fn run_otlp(
    mut rx: mpsc::Receiver<SpanRecord>,
    transport: Transport,
    config: ExportConfig,
    metrics: Arc<Metrics>,
    deadline: watch::Receiver<Option<Instant>>,
) {
    let mut warnings = WarnLimiter::new(WARN_INTERVAL);
    let mut batch = Vec::with_capacity(config.max_batch);
    let target = transport.target().to_owned();
    let mut in_flight: JoinSet<BatchOutcome> = JoinSet::new();
    let mut record = |done: Result<BatchOutcome, tokio::task::JoinError>| match done {
        Ok(outcome) => record_outcome(&metrics, outcome, &target, &mut warnings),
        Err(error) => tracing::warn!(%error, "OTLP export request task failed"),
    };
    loop {
        while in_flight.len() >= config.concurrency.max(1) {
            match in_flight.join_next().await {
                Some(done) => record(done),
                None => break,
            }
        }
        // Wait for spans, taking note of requests that finish meanwhile.
        let received = tokio::select! {
            received = rx.recv_many(&mut batch, config.max_batch) => received,
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                record(done);
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let flush_at = Instant::now() + config.batch_delay;
        let mut closed = false;
        while batch.len() < config.max_batch {
            let room = config.max_batch - batch.len();
            tokio::select! {
                received = rx.recv_many(&mut batch, room) => if received == 0 {
                    closed = true;
                    break;
                },
                () = sleep_until(flush_at) => break,
            }
        }
        let spans = std::mem::replace(&mut batch, Vec::with_capacity(config.max_batch));
        let (mut transport, retry, mut deadline) =
            (transport.clone(), config.retry.clone(), deadline.clone());
        in_flight
            .spawn(async move { export_batch(&mut transport, spans, &retry, &mut deadline).await });
        if closed {
            break;
        }
    }
    while let Some(done) = in_flight.join_next().await {
        record(done);
    }
    tracing::debug!("OTLP export task finished");
}

/// What became of one batch.
#[derive(Debug)]
struct BatchOutcome {
    spans: u64,
    attempts: u32,
    result: Result<super::transport::Accepted, SendError>,
}

/// Sends one batch, retrying retryable failures within the policy and the shutdown deadline.
async fn export_batch(
    transport: &mut Transport,
    spans: Vec<SpanRecord>,
    policy: &RetryPolicy,
    deadline: &mut watch::Receiver<Option<Instant>>,
) -> BatchOutcome {
    let count = spans.len() as u64;
    // Encoded once: a retry resends these bytes.
    let request = bytes::Bytes::from(otlp::encode_request(&spans));
    drop(spans);
    let started = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = tokio::select! {
            result = transport.send(&request) => result,
            () = deadline_passed(deadline) => Err(SendError::ShutdownDeadline),
        };
        let error = match result {
            Ok(accepted) => {
                return BatchOutcome {
                    spans: count,
                    attempts,
                    result: Ok(accepted),
                };
            }
            Err(error) => error,
        };
        let backoff = policy.backoff(attempts);
        let give_up = !error.is_retryable()
            || attempts >= policy.max_attempts
            || started.elapsed() + backoff > policy.max_elapsed
            || deadline
                .borrow()
                .is_some_and(|at| Instant::now() + backoff >= at);
        if give_up {
            return BatchOutcome {
                spans: count,
                attempts,
                result: Err(error),
            };
        }
        tracing::debug!(endpoint = transport.target(), %error, attempt = attempts, ?backoff, "OTLP export failed; retrying");
        tokio::select! {
            () = sleep(backoff) => {}
            // Report the collector's error, not the deadline: it is what the operator needs.
            () = deadline_passed(deadline) => {
                return BatchOutcome { spans: count, attempts, result: Err(error) };
            }
        }
    }
}

fn record_outcome(
    metrics: &Metrics,
    outcome: BatchOutcome,
    endpoint: &str,
    warnings: &mut WarnLimiter,
) {
    match outcome.result {
        Ok(accepted) => {
            let rejected = accepted.rejected.min(outcome.spans);
            metrics::add(&metrics.spans_exported, outcome.spans - rejected);
            if rejected > 0 {
                metrics::add(&metrics.spans_dropped_export, rejected);
                warnings.warn(
                    Instant::now(),
                    endpoint,
                    &format!("collector rejected {rejected} spans: {}", accepted.message),
                    rejected,
                );
            } else if !accepted.message.is_empty() {
                tracing::debug!(endpoint, message = %accepted.message, "collector accepted spans with a message");
            }
        }
        Err(error) => {
            metrics::add(&metrics.spans_dropped_export, outcome.spans);
            metrics::inc(&metrics.export_errors);
            let error = format!("{error} (after {} attempts)", outcome.attempts);
            warnings.warn(Instant::now(), endpoint, &error, outcome.spans);
        }
    }
}

/// Logs the first failure, then at most one per interval with how many were not logged.
struct WarnLimiter {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl WarnLimiter {
    fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: None,
            suppressed: 0,
        }
    }

    fn warn(&mut self, now: Instant, endpoint: &str, error: &str, dropped_spans: u64) {
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            self.suppressed += 1;
            tracing::debug!(
                endpoint,
                error,
                dropped_spans,
                "OTLP export failed; spans dropped"
            );
            return;
        }
        tracing::warn!(
            endpoint,
            error,
            dropped_spans,
            similar_failures_not_logged = self.suppressed,
            "OTLP export failed; spans dropped"
        );
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Prints finished traces to stdout until the queue is closed, then prints the rest.
pub(super) async fn run_console(mut rx: mpsc::Receiver<SpanRecord>, metrics: Arc<Metrics>) {
    let mut buffer = TraceBuffer::default();
    let mut received = Vec::new();
    let mut tick = tokio::time::interval(CONSOLE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    while open {
        tokio::select! {
            n = rx.recv_many(&mut received, 256) => {
                open = n > 0;
                let now = Instant::now();
                for span in received.drain(..) {
                    if !buffer.push(span, now) {
                        metrics::inc(&metrics.spans_dropped_export);
                    }
                }
            }
            _ = tick.tick() => {}
        }
        let ready = if open {
            buffer.take_ready(Instant::now())
        } else {
            buffer.take_all()
        };
        print_traces(ready, &metrics).await;
    }
}

async fn print_traces(traces: Vec<Vec<SpanRecord>>, metrics: &Metrics) {
    if traces.is_empty() {
        return;
    }
    let mut text = String::new();
    let mut spans = 0;
    for trace in &traces {
        text.push_str(&super::console::render_trace(trace));
        text.push('\n');
        spans += trace.len() as u64;
    }
    let mut stdout = tokio::io::stdout();
    let written = async {
        stdout.write_all(text.as_bytes()).await?;
        stdout.flush().await
    };
    match written.await {
        Ok(()) => metrics::add(&metrics.spans_exported, spans),
        Err(error) => {
            metrics::add(&metrics.spans_dropped_export, spans);
            metrics::inc(&metrics.export_errors);
            tracing::debug!(%error, "could not write spans to stdout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_are_rate_limited() {
        let t0 = Instant::now();
        let mut limiter = WarnLimiter::new(Duration::from_secs(10));
        limiter.warn(t0, "http://c:4317", "down", 5);
        limiter.warn(t0 + Duration::from_secs(3), "http://c:4317", "down", 5);
        limiter.warn(t0 + Duration::from_secs(9), "http://c:4317", "down", 5);
        assert_eq!((limiter.last, limiter.suppressed), (Some(t0), 2));
        limiter.warn(t0 + Duration::from_secs(11), "http://c:4317", "down", 5);
        assert_eq!(
            (limiter.last, limiter.suppressed),
            (Some(t0 + Duration::from_secs(11)), 0)
        );
    }
}
