//! Renewals and the watchdog. Each held lease renews on its own schedule,
//! and every call has a timeout, so one slow or stuck UpdateItem (or a
//! checkpoint holding one lease's lock) ages only that lease. The watchdog
//! stops a shard whose lease could not be renewed in time; it does no I/O.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::{interval, lock, Held, Inner};
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

    /// Renews `h` every `renew_interval` until it is lost, handed over or
    /// released at shutdown (`closing`).
    pub(super) async fn renew_loop(self: Arc<Self>, h: Arc<Held>, closing: CancellationToken) {
        let mut tick = interval(self.settings.renew_interval);
        // The take or takeover that granted the lease was its first write.
        tick.tick().await;
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
