//! Shard leases: which shards this worker reads, from where, and when it must
//! stop.
//!
//! A [`LeaseSource`] hands the worker a [`Grant`] for every shard it may read.
//! The grant carries the position to start from, the [`Checkpointer`] through
//! which confirmed positions are written, and a cancellation token that fires
//! when the lease is lost or the worker shuts down. The shard consumer knows
//! nothing of how leases are kept: an in-memory source serves a single
//! instance ([`memory::MemoryLeases`]); a DynamoDB source with the KCL's
//! schema plugs in behind the same trait.

#![deny(missing_docs)]

use std::sync::Arc;

use kcld_checkpoint::{Checkpoint, CheckpointError, Checkpointer};
use tokio_util::sync::CancellationToken;

pub mod dynamo;
pub mod memory;

/// What the lease layer needs to know of a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSpec {
    /// The shard's id, e.g. `shardId-000000000000`.
    pub shard_id: String,
    /// The shard's parents: one after a split, two after a merge, none for an
    /// original shard. A child is read only once every parent has ended.
    pub parents: Vec<String>,
    /// The hash key range, as the decimal strings the lease table stores.
    pub starting_hash_key: String,
    /// The range's last hash key, included.
    pub ending_hash_key: String,
    /// The shard has an ending sequence number: it takes no new records.
    pub closed: bool,
}

/// A shard this worker may read until `lost` fires.
#[derive(Clone)]
pub struct Grant {
    /// Which stream the shard is of: its place in the list the source was
    /// started with (0 when it reads one stream).
    pub stream: usize,
    /// The shard granted.
    pub shard: ShardSpec,
    /// Where to resume: a sentinel for a shard never checkpointed, else the
    /// last confirmed position (records at or before it are skipped).
    pub start: Checkpoint,
    /// Writes confirmed positions, conditioned on still holding the lease.
    pub lease: Arc<dyn LeaseHandle>,
    /// Fires when the lease is lost or the worker shuts down: the consumer
    /// stops reading, and writes a final checkpoint (which the lease layer
    /// refuses if the lease was lost).
    pub stop: CancellationToken,
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("stream", &self.stream)
            .field("shard", &self.shard.shard_id)
            .field("start", &self.start)
            .finish()
    }
}

/// The lease side of one grant: checkpoints, and the end of the shard.
#[async_trait::async_trait]
pub trait LeaseHandle: Checkpointer {
    /// The shard was read to its end and every record confirmed: checkpoint
    /// `SHARD_END` and make the children leasable.
    async fn shard_ended(&self, children: &[ShardSpec]) -> Result<(), CheckpointError>;

    /// The consumer stopped reading (shutdown, lost lease, or a handoff to
    /// another worker). `last` is the confirmed position not yet written, if
    /// any. Writes it unless the lease was lost, and completes a handoff.
    async fn stopped(&self, last: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        match last {
            Some(position) => self.checkpoint(position).await,
            None => Ok(()),
        }
    }

    /// True once the lease is known lost (taken by another worker, or not
    /// renewed in time): no checkpoint can be written anymore. A lease
    /// being handed over or released at shutdown is not lost.
    fn is_lost(&self) -> bool {
        false
    }
}

/// Hands out the shards this worker may read.
#[async_trait::async_trait]
pub trait LeaseSource: Send {
    /// Waits for the next shard this worker should start reading. `None` once
    /// the source is closed (shutdown).
    async fn next_grant(&mut self) -> Option<Grant>;

    /// Called once every shard consumer stopped: give up every lease still
    /// held (after their final checkpoints) so that other workers take them
    /// at once instead of waiting for expiry.
    async fn shutdown(&mut self) {}

    /// Why the source closed by itself, if it did (the lease table was
    /// deleted, say): the worker stops with this as its error.
    fn failure(&self) -> Option<LeaseFailure> {
        None
    }
}

/// Why a lease source closed by itself.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LeaseFailure {
    /// The lease table was deleted under a running worker: its checkpoints
    /// are gone, and reading on would re-read or skip without a record.
    #[error(
        "lease table {table} was deleted while kcld ran; its checkpoints are gone. Restart kcld \
         to create it anew (shards start again at initial_position), or restore the table from a \
         backup first"
    )]
    TableDeleted {
        /// The table's name.
        table: String,
    },
    /// A KCL 3.x fleet whose leader assigns leases started on the table:
    /// kcld stops rather than compete with that leader.
    #[error(transparent)]
    Kcl3Fleet(#[from] kcl3::Kcl3Fleet),
}

/// Lists the shards of the stream, for lease sources that create leases.
#[async_trait::async_trait]
pub trait ShardLister: Send + Sync {
    /// Every shard of the stream, open and closed; the error says why they
    /// could not be listed.
    async fn list_shards(&self) -> Result<Vec<ShardSpec>, String>;
}

pub mod balance;
pub mod cadence;
pub mod kcl3;
pub mod key;
pub mod lineage;
pub mod record;
pub mod table;
