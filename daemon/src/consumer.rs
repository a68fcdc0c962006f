//! One leased shard from start to end: read a batch, hand it to the sink,
//! wait for the confirmation, checkpoint, repeat; at the shard's end,
//! checkpoint SHARD_END and announce the children.
//!
//! Invariant: a checkpoint is written only for the last record of a batch
//! the sink confirmed. Nothing is read while a batch is in flight, so a slow
//! application slows the reader instead of growing memory.

use std::sync::Arc;
use std::time::Duration;

use kcld_checkpoint::{Checkpoint, CheckpointError};
use kcld_lease::Grant;

use crate::error::Error;
use crate::retrieval::polling::PollingReader;
use crate::retrieval::Fetched;
use crate::sink::{Sink, SinkError};

/// How a shard consumer ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The shard was read to its end; children were announced.
    ShardEnded,
    /// The lease was lost or the worker is shutting down.
    Stopped,
}

/// Runs one shard until its end, the loss of its lease, or a fatal error.
pub async fn run(
    grant: Grant,
    mut reader: PollingReader,
    sink: Arc<dyn Sink>,
) -> Result<Outcome, Error> {
    let shard_id = grant.shard.shard_id.clone();
    if grant.start == Checkpoint::ShardEnd {
        // Finished before (by us or a KCL worker): only the children remain.
        end_shard(&grant, &[]).await?;
        return Ok(Outcome::ShardEnded);
    }
    tracing::info!(shard = %shard_id, start = %grant.start, "reading shard");
    loop {
        let fetched = match reader.next(&grant.lost).await? {
            Some(f) => f,
            None => return Ok(Outcome::Stopped),
        };
        match fetched {
            Fetched::Records(batch) => {
                if !deliver(&*sink, &batch, &grant).await? {
                    // Stopped before the application took the batch: it is
                    // neither confirmed nor checkpointed, and is read again
                    // by whoever holds the lease next.
                    return Ok(Outcome::Stopped);
                }
                let Some(last) = batch.last_position() else {
                    continue;
                };
                match grant.lease.checkpoint(&Checkpoint::At(last)).await {
                    Ok(()) => {}
                    Err(CheckpointError::LeaseLost { .. }) => {
                        tracing::warn!(shard = %shard_id, "lease lost; stopping this shard");
                        return Ok(Outcome::Stopped);
                    }
                    Err(e) => return Err(Error::Other(format!("checkpoint of {shard_id}: {e}"))),
                }
            }
            Fetched::ShardEnd { children } => {
                end_shard(&grant, &children).await?;
                tracing::info!(
                    shard = %shard_id,
                    children = ?children.iter().map(|c| c.shard_id.as_str()).collect::<Vec<_>>(),
                    "shard ended"
                );
                return Ok(Outcome::ShardEnded);
            }
        }
    }
}

/// Offers the batch until the sink confirms it. While the application is
/// down the same batch is offered again after a growing pause, and nothing
/// is checkpointed; shutdown does not interrupt a delivery already started.
/// Returns false when the lease was lost (or shutdown began) before the
/// application confirmed the batch.
async fn deliver(
    sink: &dyn Sink,
    batch: &crate::record::Batch,
    grant: &Grant,
) -> Result<bool, Error> {
    let mut attempt = 0u32;
    loop {
        match sink.deliver(batch).await {
            Ok(()) => return Ok(true),
            Err(SinkError::Fatal(e)) => return Err(Error::Sink(e)),
            Err(SinkError::Retry(e)) => {
                attempt = attempt.saturating_add(1);
                let wait = Duration::from_millis((100u64 << attempt.min(8)).min(30_000));
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(shard = %batch.shard_id, attempt, "{e}; offering the batch again in {wait:?}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = grant.lost.cancelled() => return Ok(false),
                }
            }
        }
    }
}

async fn end_shard(grant: &Grant, children: &[kcld_lease::ShardSpec]) -> Result<(), Error> {
    match grant.lease.shard_ended(children).await {
        Ok(()) | Err(CheckpointError::LeaseLost { .. }) => Ok(()),
        Err(e) => Err(Error::Other(format!(
            "SHARD_END checkpoint of {}: {e}",
            grant.shard.shard_id
        ))),
    }
}
