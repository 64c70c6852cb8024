//! Reader stage: the kernel ring buffer, drained in place by the pipeline. Each record is
//! decoded where it lies and handed to a callback (the connection table) before the next one
//! is read: no copy, no allocation and no queue between the ring buffer and the pipeline, so
//! the ring buffer (sized by `--ringbuf-bytes`) is the only buffer and the kernel counts what
//! does not fit.
//!
//! Wakeups: the kernel side wakes the reader at a new connection, or once a fraction of the
//! ring holds unread records; otherwise the pipeline drains every [`DRAIN_INTERVAL`]. Each
//! call here reads one batch; the pipeline (`agent.rs`) reads batches until the ring is empty
//! or its time budget has passed.

use std::{io, sync::Arc, time::Duration};

use aya::maps::{MapData, RingBuf};
use tokio::io::{Interest, unix::AsyncFd};
use tracing::debug;

use crate::{
    event::{Event, decode},
    metrics::{Metrics, inc},
};

/// How often the pipeline drains the ring buffer when the kernel has not woken it.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(10);

/// Records handled per batch: between batches the pipeline checks how long it has drained.
pub const DRAIN_BATCH: usize = 1024;

pub struct RingReader {
    fd: AsyncFd<RingBuf<MapData>>,
    metrics: Arc<Metrics>,
}

impl RingReader {
    pub fn new(ring: RingBuf<MapData>, metrics: Arc<Metrics>) -> io::Result<Self> {
        // SAFETY: the RingBuf owns its map fd; it stays open and unchanged for as long as the
        // AsyncFd owns the RingBuf.
        let fd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }?;
        Ok(Self { fd, metrics })
    }

    /// Waits for the kernel's wakeup. Readiness is cleared before the caller drains, so a
    /// record written meanwhile wakes the reader again.
    pub async fn woken(&mut self) -> io::Result<()> {
        let mut guard = self.fd.readable_mut().await?;
        guard.clear_ready();
        Ok(())
    }

    /// Hands up to one batch of records to `handle`, in ring order; returns how many were read
    /// (fewer than a batch: the ring is empty).
    pub fn drain(&mut self, mut handle: impl FnMut(&Event<'_>)) -> usize {
        let ring = self.fd.get_mut();
        for read in 0..DRAIN_BATCH {
            let Some(item) = ring.next() else {
                return read;
            };
            inc(&self.metrics.events_received);
            match decode(&item) {
                Ok(event) => handle(&event),
                Err(e) => {
                    inc(&self.metrics.events_malformed);
                    debug!("dropping malformed record: {e}");
                }
            }
        }
        DRAIN_BATCH
    }
}
