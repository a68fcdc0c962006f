//! The checkpointer a shard's processor writes through: positions judged
//! as the KCL's checkpointer judges them (never before the last checkpoint,
//! never past the last record given), SHARD_END with the children's leases,
//! and where a replacement processor resumes.

use std::time::SystemTime;

use kcld_checkpoint::{Checkpoint, CheckpointError, ExtendedSequenceNumber};
use kcld_lease::ShardSpec;

use super::Granted;
use crate::retrieval::{Resume, LATEST_MARGIN_MS};

/// The positions the checkpointer judges by, across processor restarts.
#[derive(Debug)]
pub(super) struct Positions {
    /// The last checkpoint written (or the grant's start).
    pub(super) last: Checkpoint,
    /// The last record given to the current processor.
    pub(super) largest: Checkpoint,
    /// The first record given to any processor of this grant.
    pub(super) first: Option<ExtendedSequenceNumber>,
}

impl Positions {
    /// Where a replacement processor starts: after the last checkpoint;
    /// when that is still a sentinel, from the first record given before
    /// (or, nothing given after LATEST, from when LATEST was taken), so
    /// that nothing a failed processor was given, or that was written
    /// since, is skipped.
    pub(super) fn resume(&self, opened_at: SystemTime) -> Resume {
        match (&self.last, &self.first) {
            (Checkpoint::At(_) | Checkpoint::ShardEnd, _) => Resume::After(self.last.clone()),
            (_, Some(first)) => Resume::From(first.clone()),
            (Checkpoint::Latest, None) => Resume::Since(epoch_millis(opened_at) - LATEST_MARGIN_MS),
            (sentinel, None) => Resume::After(sentinel.clone()),
        }
    }
}

fn epoch_millis(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Why a checkpoint was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointFailure {
    /// Before the last checkpoint or past the last record delivered.
    #[error("{position} is outside (last checkpoint {last}, last record delivered {largest}]")]
    OutOfRange {
        /// The position the processor asked to checkpoint.
        position: Checkpoint,
        /// The last checkpoint written.
        last: Checkpoint,
        /// The last record delivered to the processor.
        largest: Checkpoint,
    },
    /// The lease is no longer this worker's.
    #[error("the lease was lost")]
    LeaseLost,
    /// The lease table did not answer; try again later.
    #[error("lease table unavailable: {0}")]
    Unavailable(String),
    /// The lease table refused for good (access, schema), or the store
    /// judged the checkpoint invalid.
    #[error(transparent)]
    Fatal(CheckpointError),
}

/// Checkpoints a shard for its processor, judged as the KCL's checkpointer
/// judges them.
pub struct Checkpointer<'a> {
    pub(super) grant: &'a Granted,
    pub(super) positions: &'a mut Positions,
    /// The children, while the processor is told the shard ended.
    pub(super) end: Option<&'a [ShardSpec]>,
}

impl Checkpointer<'_> {
    /// The last checkpoint written.
    pub fn last(&self) -> &Checkpoint {
        &self.positions.last
    }

    /// The last record delivered (or the last checkpoint, before any).
    pub fn largest(&self) -> &Checkpoint {
        &self.positions.largest
    }

    /// True while the processor is told the shard ended.
    pub fn at_shard_end(&self) -> bool {
        self.end.is_some()
    }

    /// Writes a checkpoint at `position`; `None` means the last record
    /// delivered, or SHARD_END while the shard ended (where the last
    /// record delivered means SHARD_END too). A position equal to the last
    /// checkpoint succeeds and writes nothing, as the KCL's does.
    pub async fn checkpoint(
        &mut self,
        position: Option<Checkpoint>,
    ) -> Result<(), CheckpointFailure> {
        let p = &*self.positions;
        let wanted = position.unwrap_or_else(|| p.largest.clone());
        let target =
            if self.end.is_some() && (wanted == p.largest || wanted == Checkpoint::ShardEnd) {
                Checkpoint::ShardEnd
            } else if wanted < p.last || wanted > p.largest {
                return Err(CheckpointFailure::OutOfRange {
                    position: wanted,
                    last: p.last.clone(),
                    largest: p.largest.clone(),
                });
            } else {
                wanted
            };
        if target == p.last && target != Checkpoint::ShardEnd {
            return Ok(());
        }
        // A processor's position may be a slice of its batch: what is kept
        // (the last checkpoint, the lease's write) holds only the digits.
        let target = target.detached();
        let lease = &self.grant.lease;
        let written = match (&target, self.end) {
            (Checkpoint::ShardEnd, Some(children)) => lease.shard_ended(children).await,
            _ => lease.checkpoint(&target).await,
        };
        match written {
            Ok(()) => {
                metrics::counter!("kcld_checkpoints_total", self.grant.labels.get()).increment(1);
                self.positions.last = target;
                Ok(())
            }
            Err(CheckpointError::LeaseLost { .. }) => Err(CheckpointFailure::LeaseLost),
            Err(CheckpointError::Unavailable(e)) => Err(CheckpointFailure::Unavailable(e)),
            Err(e) => Err(CheckpointFailure::Fatal(e)),
        }
    }
}
