//! The lease side of one grant: checkpoints conditioned on the counter this
//! worker wrote last, the handoff's closing write, and the end of a shard.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use kcld_checkpoint::{Checkpoint, CheckpointError, Checkpointer};

use super::{lock, Held, HeldState, Inner};
use crate::record::LeaseRecord;
use crate::table::{OwnedChange, TableError};
use crate::{LeaseHandle, ShardSpec};

/// The lease side of one grant.
pub(super) struct DynamoLease {
    pub(super) inner: Arc<Inner>,
    pub(super) held: Arc<Held>,
}

impl DynamoLease {
    fn lost(&self) -> CheckpointError {
        CheckpointError::LeaseLost {
            shard_id: self.held.shard_id.clone(),
        }
    }

    /// One conditional checkpoint write under the lease's lock. While a
    /// handoff is pending, the write is the old owner's last one: it also
    /// removes `checkpointOwner`, and the lease is then the new owner's.
    async fn write(
        &self,
        position: Option<&Checkpoint>,
        children: &[String],
    ) -> Result<(), CheckpointError> {
        if self.held.lost.load(Ordering::Acquire) {
            return Err(self.lost());
        }
        let mut state = self.held.state.lock().await;
        if self.held.lost.load(Ordering::Acquire) {
            return Err(self.lost());
        }
        let me = self.inner.me();
        if position.is_none() && !state.handoff {
            // Nothing to write (the consumer stopped with everything
            // checkpointed); only a handoff nobody noticed yet needs its
            // closing write.
            if let Ok(Some(record)) = self.inner.table.get(&self.held.key).await {
                if record.checkpoint_owner.as_deref() == Some(me) {
                    self.inner.reconcile(&self.held, &mut state, &record);
                }
            }
            if !state.handoff {
                return Ok(());
            }
        }
        let mut sent = Instant::now();
        let mut result = self.attempt(&state, position, children).await;
        if matches!(result, Err(TableError::ConditionFailed)) && !state.handoff {
            // Refused: lost, or another worker asked for the lease since the
            // last renewal. In a handoff this write is the last one.
            if let Ok(Some(record)) = self.inner.table.get(&self.held.key).await {
                self.inner.reconcile(&self.held, &mut state, &record);
                if state.handoff || record.owner.as_deref() == Some(me) {
                    sent = Instant::now();
                    result = self.attempt(&state, position, children).await;
                }
            }
        }
        match result {
            Ok(()) => {
                state.counter += 1;
                *lock(&self.held.renewed_at) = sent;
                if state.handoff {
                    tracing::info!(shard = %self.held.shard_id, "lease handed over");
                    self.inner.forget(&self.held);
                }
                Ok(())
            }
            Err(TableError::ConditionFailed) | Err(TableError::NotFound(_)) => {
                drop(state);
                self.inner
                    .lose(&self.held, "the checkpoint found another owner");
                Err(self.lost())
            }
            Err(e) => Err(to_checkpoint_error(e)),
        }
    }

    async fn attempt(
        &self,
        state: &HeldState,
        position: Option<&Checkpoint>,
        children: &[String],
    ) -> Result<(), TableError> {
        let me = self.inner.me();
        let timeout = self.inner.call_timeout();
        let table = &self.inner.table;
        let write = async {
            if state.handoff {
                // At a shard's end this writes SHARD_END and the children:
                // the new owner goes straight on to them.
                table
                    .finish_handoff(&self.held.key, state.counter, me, position, children)
                    .await
            } else {
                let Some(position) = position else {
                    // Unreachable by `write`'s early return; writes nothing.
                    return Err(TableError::Other("no checkpoint to write".into()));
                };
                table
                    .checkpoint(&self.held.key, state.counter, me, position, children)
                    .await
            }
        };
        self.inner.timed(timeout, write).await
    }
}

pub(super) fn to_checkpoint_error(e: TableError) -> CheckpointError {
    match e {
        TableError::AccessDenied(m) | TableError::WrongSchema(m) => CheckpointError::Fatal(m),
        other => CheckpointError::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Checkpointer for DynamoLease {
    async fn checkpoint(&self, position: &Checkpoint) -> Result<(), CheckpointError> {
        self.write(Some(position), &[]).await
    }
}

#[async_trait::async_trait]
impl LeaseHandle for DynamoLease {
    /// Creates the children's leases (at TRIM_HORIZON, so nothing written to
    /// them is skipped) unless lineage shows a child finished, then
    /// checkpoints SHARD_END with `childShardIds`, then lets go of the
    /// finished lease. A crash in between re-reads the end of the parent:
    /// duplicates, never a gap. During a handoff the SHARD_END write is the
    /// closing one and the lease is the new owner's.
    async fn shard_ended(&self, children: &[ShardSpec]) -> Result<(), CheckpointError> {
        let lineage = lock(&self.inner.streams()[self.held.stream].known).lineage();
        for child in children {
            if lineage.is_finished(&child.shard_id) {
                // Read to its end and cleaned up already (a descendant has
                // a lease): creating it again would read it twice.
                tracing::info!(shard = %self.held.shard_id, child = %child.shard_id, "child already finished; not leased again");
                continue;
            }
            let lease = LeaseRecord::new(
                self.inner.key_for(self.held.stream, &child.shard_id),
                Checkpoint::TrimHorizon,
                child.parents.clone(),
                Some((
                    child.starting_hash_key.clone(),
                    child.ending_hash_key.clone(),
                )),
            );
            self.inner
                .table
                .create_if_absent(&lease)
                .await
                .map_err(to_checkpoint_error)?;
        }
        let ids: Vec<String> = children.iter().map(|c| c.shard_id.clone()).collect();
        self.write(Some(&Checkpoint::ShardEnd), &ids).await?;
        if self.held.lost.load(Ordering::Acquire) {
            // Handed over with SHARD_END: the new owner lets it go.
            self.inner.take_now.notify_one();
            return Ok(());
        }
        // The shard is done: release it so it does not look owned, and wake
        // the taker so the children start without waiting for the next scan.
        if !self.held.lost.swap(true, Ordering::AcqRel) {
            let state = self.held.state.lock().await;
            if let Err(e) = self
                .inner
                .table
                .update_owned(
                    &self.held.key,
                    state.counter,
                    self.inner.me(),
                    OwnedChange::Release,
                )
                .await
            {
                tracing::debug!(shard = %self.held.shard_id, "finished lease not released: {e}");
            }
        }
        lock(&self.inner.held).remove(&self.held.key);
        self.inner.take_now.notify_one();
        Ok(())
    }

    fn is_lost(&self) -> bool {
        self.held.lost.load(Ordering::Acquire) && !self.held.handed_over.load(Ordering::Acquire)
    }

    async fn stopped(&self, last: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        match self.write(last, &[]).await {
            // Lost: nothing may be written, and nothing needs to be.
            Err(CheckpointError::LeaseLost { .. }) => Ok(()),
            other => other,
        }
    }
}
