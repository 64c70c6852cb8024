//! Reader stage: drains the kernel ring buffer through tokio's `AsyncFd`, decodes each record
//! at once and hands it to the pipeline over a bounded channel. It never waits for the
//! pipeline: when the channel is full the event is dropped and counted.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use tracing::{debug, warn};

use crate::{
    event::{Event, decode},
    metrics::{Metrics, inc},
};

/// Runs until the channel's receiver is gone or the ring buffer fd fails.
pub async fn run(ring: RingBuf<MapData>, tx: mpsc::Sender<Event>, metrics: Arc<Metrics>) {
    // SAFETY: the RingBuf owns its map fd; it stays open and unchanged for as long as the
    // AsyncFd owns the RingBuf.
    let mut fd = match unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll the ring buffer: {e}");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(guard) => guard,
            Err(e) => {
                warn!("ring buffer poll failed: {e}");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            inc(&metrics.events_received);
            match decode(&item) {
                Ok(event) => match tx.try_send(event) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => inc(&metrics.events_dropped_queue),
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
                Err(e) => {
                    inc(&metrics.events_malformed);
                    debug!("dropping malformed record: {e}");
                }
            }
        }
        guard.clear_ready();
    }
}
