//! Renewals and the watchdog. Each held lease renews in a task of its own,
//! and every call has a timeout, so one slow or stuck UpdateItem (or a
//! checkpoint holding one lease's lock) ages only that lease. The tasks
//! share one schedule, as the KCL's renewer renews all its leases in one
//! pass: other workers can then tell from one lease when all of this
//! worker's leases were last renewed (`cadence`), and an idle worker wakes
//! once per renewal period, not once per lease. The watchdog stops a shard
//! whose lease could not be renewed in time; it does no I/O.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{lock, Held, Inner};
use crate::table::{OwnedChange, TableError};

impl Inner {
    /// How long one lease table call may take before it counts as failed:
    /// the renewal period, so that a stuck call still leaves two more
    /// renewals before the failover time. A call that timed out may have
    /// landed; the next write finds the counter moved and adopts it.
    pub(super) fn call_timeout(&self) -> Duration {
        self.settings.renew_interval
    }

    /// `call` with [`Inner::call_timeout`].
    pub(super) async fn timed<T>(
        &self,
        timeout: Duration,
        call: impl std::future::Future<Output = Result<T, TableError>>,
    ) -> Result<T, TableError> {
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(TableError::Unavailable(format!(
                "no answer from DynamoDB within {timeout:?}"
            ))),
        }
    }

    /// Renews `h` every `renew_interval`, on the worker's common schedule,
    /// until it is lost, handed over or released at shutdown (`closing`).
    pub(super) async fn renew_loop(self: Arc<Self>, h: Arc<Held>, closing: CancellationToken) {
        // The take or takeover that granted the lease was its first write;
        // the next is at the schedule's next beat, within one period.
        let period = self.settings.renew_interval;
        let mut tick =
            tokio::time::interval_at(next_beat(self.epoch, period, Instant::now()).into(), period);
        // A late beat is skipped, not caught up, so the schedule stays.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                _ = closing.cancelled() => return,
                _ = tick.tick() => {}
            }
            if h.lost.load(Ordering::Acquire) {
                return;
            }
            self.renew(&h).await;
        }
    }

    async fn renew(&self, h: &Held) {
        let timeout = self.call_timeout();
        // A checkpoint in flight holds the lock; it renews the lease too
        // when it lands, and it has the same timeout.
        let Ok(mut state) = tokio::time::timeout(timeout, h.state.lock()).await else {
            return;
        };
        // All leases renew on one beat: a bounded number of calls at once
        // keeps a worker with many leases to a few connections.
        let Ok(Ok(_permit)) = tokio::time::timeout(timeout, self.renewals.acquire()).await else {
            return;
        };
        if state.handoff || h.lost.load(Ordering::Acquire) {
            return;
        }
        let sent = Instant::now();
        let result = self
            .timed(
                timeout,
                self.table
                    .update_owned(&h.key, state.counter, self.me(), OwnedChange::Renew),
            )
            .await;
        self.health
            .record(matches!(result, Ok(()) | Err(TableError::ConditionFailed)));
        match result {
            Ok(()) => {
                state.counter += 1;
                *lock(&h.renewed_at) = sent;
            }
            Err(TableError::ConditionFailed) | Err(TableError::NotFound(_)) => {
                // Lost, asked to hand over, or a write that timed out but
                // landed: the item tells which.
                match self.timed(timeout, self.table.get(&h.key)).await {
                    Ok(Some(record)) => self.reconcile(h, &mut state, &record),
                    Ok(None) => self.lose(h, "its lease item was deleted"),
                    Err(e) => {
                        tracing::warn!(shard = %h.shard_id, "renewal refused and lease unreadable: {e}")
                    }
                }
            }
            Err(e) => {
                metrics::counter!("kcld_lease_renewal_failures_total").increment(1);
                tracing::warn!(shard = %h.shard_id, "renewal failed: {e}");
            }
        }
    }

    /// Stops every shard whose lease could not be renewed in time.
    pub(super) fn expire_unrenewed(&self) {
        let limit = self
            .settings
            .failover
            .saturating_sub(self.settings.safety());
        let held: Vec<Arc<Held>> = lock(&self.held).values().cloned().collect();
        for h in held {
            if lock(&h.renewed_at).elapsed() >= limit {
                self.lose(&h, "it could not be renewed within the failover time");
            }
        }
    }
}

/// The first beat of the schedule `epoch + k * period` after `now`.
fn next_beat(epoch: Instant, period: Duration, now: Instant) -> Instant {
    let period_ns = period.as_nanos().max(1);
    let beats = now.saturating_duration_since(epoch).as_nanos() / period_ns + 1;
    let offset = beats.saturating_mul(period_ns);
    epoch + Duration::from_nanos(u64::try_from(offset).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_granted_at_any_time_renew_on_the_same_beats() {
        let epoch = Instant::now();
        let period = Duration::from_millis(3308);
        let ms = |m: u64| epoch + Duration::from_millis(m);
        assert_eq!(next_beat(epoch, period, epoch), ms(3308));
        assert_eq!(next_beat(epoch, period, ms(1)), ms(3308));
        assert_eq!(next_beat(epoch, period, ms(3308)), ms(6616));
        assert_eq!(next_beat(epoch, period, ms(10_000)), ms(13_232));
    }
}
