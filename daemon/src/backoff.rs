//! The one back-off policy of every retry loop kcld owns (a sink offering a
//! batch again, a throttled control-plane call, SHARD_END not written, a
//! processor restarted, a shard's reader). The AWS SDK retries each call
//! itself first (3 attempts, its standard policy); these loops are the
//! outer policy on top of it: capped exponential waits with jitter, so
//! that many shards or instances failing together do not retry in step,
//! and logs at the first failure of a burst and then at the 2nd, 4th,
//! 8th... rather than once per retry.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Retries of throttled control-plane calls (DescribeStreamSummary,
/// ListShards) on top of the SDK's own attempts, before giving up.
pub const CONTROL_PLANE_RETRIES: u32 = 4;

/// Waits between the tries of one operation.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// Waits start near `base` and double up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base: base.max(Duration::from_millis(1)),
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// A try succeeded: the next failure starts a new burst.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Counts one more failure and returns the wait before the next try:
    /// `base * 2^(failures - 1)` capped at `cap`, jittered down to half of
    /// it at random.
    pub fn next_wait(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let exp = (self.failures - 1).min(20);
        let ceiling = self.base.saturating_mul(1 << exp).min(self.cap);
        let ms = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::rng().random_range(ms.div_ceil(2)..=ms))
    }

    /// Whether the failure just counted should be logged: the first of a
    /// burst, then the 2nd, 4th, 8th...
    pub fn worth_logging(&self) -> bool {
        self.failures <= 1 || self.failures.is_power_of_two()
    }

    /// Waits `wait` (from [`Backoff::next_wait`]); false when `cancel`
    /// fired first.
    pub async fn sleep(wait: Duration, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = cancel.cancelled() => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let ceilings = [100, 200, 400, 800, 1000, 1000];
        for ceiling in ceilings {
            let w = b.next_wait().as_millis() as u64;
            assert!(
                (ceiling / 2..=ceiling).contains(&w),
                "{w} ms outside {}..={ceiling}",
                ceiling / 2
            );
        }
        assert_eq!(b.failures(), 6);
        b.reset();
        assert!(b.next_wait() <= Duration::from_millis(100));
    }

    #[test]
    fn logs_the_first_failure_of_a_burst_then_powers_of_two() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        let logged: Vec<u32> = (1..=9)
            .filter(|_| {
                b.next_wait();
                b.worth_logging()
            })
            .collect();
        assert_eq!(logged, [1, 2, 4, 8]);
    }

    #[test]
    fn a_long_burst_neither_overflows_nor_passes_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..1000 {
            assert!(b.next_wait() <= Duration::from_secs(30));
        }
    }
}
