//! Getting records out of a shard. Polling with GetRecords is the one
//! strategy so far; each strategy yields the same [`Fetched`] values so the
//! shard consumer does not care how records arrived.

use kcld_lease::ShardSpec;

use crate::record::Batch;

pub mod polling;

/// What one read of a shard produced.
#[derive(Debug)]
pub enum Fetched {
    /// Records, in shard order, none of them covered by the starting checkpoint.
    Records(Batch),
    /// The shard is closed and every record was read; these shards follow it.
    ShardEnd { children: Vec<ShardSpec> },
}
