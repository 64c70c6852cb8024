//! Retry policy of the OTLP export task (span assembly -> exporter queue -> **retry** ->
//! collector): how often and how long a failed batch is re-sent before it is dropped, so that a
//! down collector costs bounded time and never stalls the queue for good.

use std::time::Duration;

/// Exponential backoff with jitter, bounded in attempts and in total time per batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Sends per batch at most, the first included (1 disables retries).
    pub max_attempts: u32,
    /// Backoff before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// Cap on a single backoff.
    pub max_backoff: Duration,
    /// No retry starts once this much time has passed since the batch's first send.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Backoff before retry number `retry` (1 for the first): the exponential delay, capped,
    /// with jitter taking it anywhere between half of it and all of it.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1));
        let delay = self
            .initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff);
        let half = delay / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let policy = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(1000),
            max_elapsed: Duration::from_secs(10),
        };
        for _ in 0..50 {
            let first = policy.backoff(1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = policy.backoff(3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = policy.backoff(40);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }
}
