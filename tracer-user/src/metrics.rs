//! Self-telemetry: counters every stage increments, read by the periodic log line, the exit
//! summary and the metrics endpoint. Names follow `<thing>_<verb>_total{stage}`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Defines the counter struct, its snapshot and the (name, stage) labels in one place.
macro_rules! counters {
    ($($field:ident => ($name:literal, $stage:literal)),* $(,)?) => {
        /// Counters shared by all stages (`Arc<Metrics>`).
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(pub $field: AtomicU64,)*
        }

        impl Metrics {
            /// Every counter as `(metric name, stage label, value)`.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$(($name, $stage, self.$field.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    kernel_events_sent => ("events_sent_total", "kernel"),
    kernel_ringbuf_full => ("events_dropped_total", "ringbuf"),
    kernel_read_user_failed => ("capture_failed_total", "kernel"),
    kernel_inflight_full => ("events_dropped_total", "kernel_inflight"),
    kernel_sendfile_uncaptured => ("body_not_captured_total", "kernel"),
    kernel_port_filtered => ("connections_filtered_total", "kernel_ports"),
    kernel_agent_peer => ("connections_filtered_total", "kernel_agent_peer"),
    kernel_conn_insert_failed => ("events_dropped_total", "kernel_conn_table"),
    kernel_conn_muted => ("connections_filtered_total", "kernel_muted"),
    kernel_proc_events => ("process_events_total", "kernel"),
    kernel_undecoded_call => ("socket_io_undecoded_total", "kernel"),
    processes_muted => ("processes_filtered_total", "kernel_muted"),
    mutes_failed => ("mutes_failed_total", "kernel"),
    events_received => ("events_received_total", "reader"),
    events_malformed => ("events_dropped_total", "reader"),
    events_filtered => ("events_filtered_total", "reader"),
    connections_opened => ("connections_total", "conntable"),
    connections_evicted => ("connections_evicted_total", "conntable"),
    connections_dropped => ("events_dropped_total", "conntable"),
    bytes_uncaptured => ("bytes_uncaptured_total", "conntable"),
    http_messages => ("messages_parsed_total", "http"),
    http_parse_errors => ("parse_errors_total", "http"),
    thrift_messages => ("messages_parsed_total", "thrift"),
    thrift_parse_errors => ("parse_errors_total", "thrift"),
    unknown_protocol => ("connections_unknown_protocol_total", "protocol"),
    spans_created => ("spans_created_total", "assembly"),
    spans_unpaired => ("requests_unanswered_total", "assembly"),
    spans_dropped_pending => ("spans_dropped_total", "assembly"),
    spans_sampled_out => ("spans_sampled_out_total", "sampling"),
    spans_exported => ("spans_exported_total", "exporter"),
    spans_dropped_queue => ("spans_dropped_total", "export_queue"),
    spans_dropped_export => ("spans_dropped_total", "exporter"),
    export_errors => ("export_errors_total", "exporter"),
}

/// Adds one to a counter.
#[inline]
pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Adds `n` to a counter.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
