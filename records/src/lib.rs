//! Kinesis records on kcld's critical path.
//!
//! - [`getrecords`] decodes a GetRecords response body into records whose
//!   data are slices of one buffer and whose strings are slices of the body:
//!   per response a handful of allocations, none per record.
//! - [`kpl`] splits KPL aggregates into their user records, again as slices.
//! - [`lambda`] writes records in a Lambda Kinesis event's shape into a
//!   reused buffer, for the sinks.
//!
//! Nothing here does I/O, so both are fuzzed and benchmarked on their own.

#![deny(missing_docs)]

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

use bytes::Bytes;
use kcld_checkpoint::{ExtendedSequenceNumber, SequenceNumber};

pub mod dynamodb;
pub mod filter;
pub mod getrecords;
pub mod kpl;
pub mod lambda;

/// A UTF-8 string kept as a shared byte slice (of a response body or a KPL
/// aggregate), so that partition keys cost no allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ByteStr(Bytes);

impl ByteStr {
    /// Takes `bytes` if they are UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Self, std::str::Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(ByteStr(bytes))
    }

    /// The string, borrowed.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor checks (or receives a `str`), and the
        // bytes are immutable afterwards.
        unsafe { std::str::from_utf8_unchecked(&self.0) }
    }

    /// The underlying bytes, shared rather than copied.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<String> for ByteStr {
    fn from(s: String) -> Self {
        ByteStr(Bytes::from(s.into_bytes()))
    }
}

impl From<&str> for ByteStr {
    fn from(s: &str) -> Self {
        ByteStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl Deref for ByteStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Display for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for ByteStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

/// Server-side encryption of a record, as GetRecords reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// The record is not encrypted.
    None,
    /// The record is encrypted with a KMS key.
    Kms,
}

impl Encryption {
    /// The name GetRecords uses: `NONE` or `KMS`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Encryption::None => "NONE",
            Encryption::Kms => "KMS",
        }
    }
}

/// One record of a shard, or one user record of a KPL aggregate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record's sequence number; the user records of one KPL aggregate
    /// share it.
    pub sequence_number: SequenceNumber,
    /// Index inside a KPL aggregate; 0 for a plain record.
    pub sub_sequence_number: u64,
    /// True for a user record taken out of a KPL aggregate (it shares its
    /// sequence number with its siblings).
    pub aggregated: bool,
    /// The key Kinesis routes the record by; for a KPL user record, its own
    /// key.
    pub partition_key: ByteStr,
    /// The explicit hash key of a KPL user record that has one; `None` for
    /// records as GetRecords returns them.
    pub explicit_hash_key: Option<ByteStr>,
    /// The record's payload (of a KPL user record: its own data).
    pub data: Bytes,
    /// When Kinesis accepted the record, in milliseconds since the epoch.
    pub approximate_arrival_ms: i64,
    /// `EncryptionType`; `None` when GetRecords did not report it.
    pub encryption: Option<Encryption>,
}

impl Record {
    /// The record's position, as a checkpoint stores it: detached from the
    /// batch's buffer, because positions outlive their batch (the last
    /// record given, a checkpoint) and a slice would keep the whole batch
    /// in memory. Comparing records within a batch needs no copy:
    /// [`Record::position_in_batch`].
    pub fn position(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::new(self.sequence_number.detached(), self.sub_sequence_number)
    }

    /// The record's position as a slice of the batch's buffer: for
    /// comparisons while the batch is in hand, never to keep.
    pub fn position_in_batch(&self) -> ExtendedSequenceNumber {
        ExtendedSequenceNumber::new(self.sequence_number.clone(), self.sub_sequence_number)
    }
}

/// Consecutive records of one shard, in shard order.
#[derive(Clone, Debug)]
pub struct Batch {
    /// The shard the records are from.
    pub shard_id: Arc<str>,
    /// The records, in shard order.
    pub records: Vec<Record>,
    /// How far the read was behind the tip of the shard, when known.
    pub millis_behind_latest: Option<i64>,
    /// Records were read after the last of `records` and filtered out (filter
    /// criteria), up to this position: once `records` are confirmed, the
    /// shard is done up to here. `None` when nothing was filtered out.
    pub filtered_to: Option<ExtendedSequenceNumber>,
}

impl Batch {
    /// Position of the last record: what a checkpoint after this batch says.
    pub fn last_position(&self) -> Option<ExtendedSequenceNumber> {
        self.records.last().map(Record::position)
    }

    /// Bytes of record data in the batch.
    pub fn data_bytes(&self) -> usize {
        self.records.iter().map(|r| r.data.len()).sum()
    }
}
