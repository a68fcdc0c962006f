//! Records as kcld hands them on: one shard's batch, each record's bytes
//! shared rather than copied, each with its position in the shard.

use std::sync::Arc;

use bytes::Bytes;
use kcld_checkpoint::{ExtendedSequenceNumber, SequenceNumber};

/// One record of a shard (or one sub-record of a KPL aggregate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub sequence_number: SequenceNumber,
    /// Index inside a KPL aggregate; 0 for a plain record.
    pub sub_sequence_number: u64,
    /// True for a sub-record of a KPL aggregate (it shares its sequence
    /// number with its siblings).
    pub aggregated: bool,
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
    /// When Kinesis accepted the record, in milliseconds since the epoch.
    pub approximate_arrival_ms: i64,
    /// `NONE` or `KMS`, as Kinesis reports it.
    pub encryption_type: Option<String>,
}

impl Record {
    /// The record's position, as a checkpoint stores it.
    pub fn position(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::new(self.sequence_number.clone(), self.sub_sequence_number)
    }
}

/// Consecutive records of one shard, in shard order.
#[derive(Clone, Debug)]
pub struct Batch {
    pub shard_id: Arc<str>,
    pub records: Vec<Record>,
    /// How far the read was behind the tip of the shard, when known.
    pub millis_behind_latest: Option<i64>,
}

impl Batch {
    /// Position of the last record: what a checkpoint after this batch says.
    pub fn last_position(&self) -> Option<ExtendedSequenceNumber> {
        self.records.last().map(Record::position)
    }
}
