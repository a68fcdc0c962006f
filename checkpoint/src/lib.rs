//! Positions in a shard, ordered exactly as the KCL orders them, and the
//! seam through which a shard consumer records how far the application got.
//!
//! The KCL stores a checkpoint as a string (a sequence number or one of the
//! sentinels `TRIM_HORIZON`, `LATEST`, `AT_TIMESTAMP`, `SHARD_END`) plus a
//! sub-sequence number for records that came out of a KPL aggregate. kcld reads
//! and writes the very same values so that a lease table can move between the
//! KCL and kcld in both directions.

#![deny(missing_docs)]

use std::fmt;

mod sequence;

pub use sequence::{ParseSequenceError, SequenceNumber};

/// A sequence number extended with the index of a sub-record inside a KPL
/// aggregate. Plain records have sub-sequence number 0.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExtendedSequenceNumber {
    /// The Kinesis sequence number of the record, or of the aggregate it came
    /// from.
    pub sequence: SequenceNumber,
    /// The sub-record's index inside its KPL aggregate; 0 for plain records.
    pub sub_sequence: u64,
}

impl ExtendedSequenceNumber {
    /// Pairs a sequence number with a sub-sequence number.
    pub fn new(sequence: SequenceNumber, sub_sequence: u64) -> Self {
        Self {
            sequence,
            sub_sequence,
        }
    }

    /// The same position, its digits in an allocation of their own (see
    /// [`SequenceNumber::detached`]).
    pub fn detached(&self) -> Self {
        Self::new(self.sequence.detached(), self.sub_sequence)
    }
}

impl fmt::Display for ExtendedSequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.sequence, self.sub_sequence)
    }
}

/// A position in a shard as the KCL's lease table stores it.
///
/// The derived order is the KCL's (`ExtendedSequenceNumber.compareTo`):
/// `AT_TIMESTAMP < TRIM_HORIZON < LATEST < any sequence number < SHARD_END`,
/// and sequence numbers compare numerically, then by sub-sequence number.
/// The variant order below is therefore load-bearing.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Checkpoint {
    /// Start at a time given by configuration; the time itself is never stored.
    AtTimestamp,
    /// Start at the oldest record still in the shard.
    TrimHorizon,
    /// Start after the newest record at the time the shard is first read.
    Latest,
    /// Every record up to and including this one was confirmed.
    At(ExtendedSequenceNumber),
    /// The shard was read to its end and every record confirmed.
    ShardEnd,
}

impl Checkpoint {
    /// The same checkpoint holding no slice of a batch's buffer (see
    /// [`SequenceNumber::detached`]).
    pub fn detached(&self) -> Self {
        match self {
            Checkpoint::At(esn) => Checkpoint::At(esn.detached()),
            other => other.clone(),
        }
    }

    /// The `checkpoint` string the lease table stores for
    /// [`Checkpoint::TrimHorizon`].
    pub const TRIM_HORIZON: &'static str = "TRIM_HORIZON";
    /// The `checkpoint` string the lease table stores for
    /// [`Checkpoint::Latest`].
    pub const LATEST: &'static str = "LATEST";
    /// The `checkpoint` string the lease table stores for
    /// [`Checkpoint::AtTimestamp`].
    pub const AT_TIMESTAMP: &'static str = "AT_TIMESTAMP";
    /// The `checkpoint` string the lease table stores for
    /// [`Checkpoint::ShardEnd`].
    pub const SHARD_END: &'static str = "SHARD_END";

    /// Reads a checkpoint as the lease table stores it: the `checkpoint`
    /// string and the optional `checkpointSubSequenceNumber`.
    pub fn parse(value: &str, sub_sequence: Option<u64>) -> Result<Self, ParseSequenceError> {
        Ok(match value {
            Self::TRIM_HORIZON => Checkpoint::TrimHorizon,
            Self::LATEST => Checkpoint::Latest,
            Self::AT_TIMESTAMP => Checkpoint::AtTimestamp,
            Self::SHARD_END => Checkpoint::ShardEnd,
            other => Checkpoint::At(ExtendedSequenceNumber::new(
                other.parse()?,
                sub_sequence.unwrap_or(0),
            )),
        })
    }

    /// The `checkpoint` string written to the lease table.
    pub fn as_str(&self) -> &str {
        match self {
            Checkpoint::AtTimestamp => Self::AT_TIMESTAMP,
            Checkpoint::TrimHorizon => Self::TRIM_HORIZON,
            Checkpoint::Latest => Self::LATEST,
            Checkpoint::At(esn) => esn.sequence.as_str(),
            Checkpoint::ShardEnd => Self::SHARD_END,
        }
    }

    /// The `checkpointSubSequenceNumber` written beside the string; the KCL
    /// writes 0 for sentinels.
    pub fn sub_sequence(&self) -> u64 {
        match self {
            Checkpoint::At(esn) => esn.sub_sequence,
            _ => 0,
        }
    }

    /// True for the three positions that say where to start rather than
    /// what was confirmed.
    pub fn is_initial_position(&self) -> bool {
        matches!(
            self,
            Checkpoint::AtTimestamp | Checkpoint::TrimHorizon | Checkpoint::Latest
        )
    }

    /// Whether a record at `position` was already confirmed by this
    /// checkpoint, so that a resumed reader must skip it.
    pub fn covers(&self, position: &ExtendedSequenceNumber) -> bool {
        match self {
            Checkpoint::At(done) => position <= done,
            Checkpoint::ShardEnd => true,
            _ => false,
        }
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Checkpoint::At(esn) => write!(f, "{esn}"),
            other => f.write_str(other.as_str()),
        }
    }
}

impl From<ExtendedSequenceNumber> for Checkpoint {
    fn from(esn: ExtendedSequenceNumber) -> Self {
        Checkpoint::At(esn)
    }
}

/// Why a checkpoint was not written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Another worker holds the lease now (or it expired): the shard must stop
    /// and nothing may be written on its behalf.
    #[error("the lease on {shard_id} was lost; the checkpoint was not written")]
    LeaseLost {
        /// The shard whose lease was lost.
        shard_id: String,
    },
    /// The store could not be reached or refused for another reason; the
    /// checkpoint may be retried.
    #[error("checkpoint store unavailable: {0}")]
    Unavailable(String),
    /// The store refuses for a reason retrying will not fix (access
    /// denied, a table of another shape): needs a person.
    #[error("{0}")]
    Fatal(String),
    /// A checkpoint that would move backwards or past what was delivered.
    #[error("invalid checkpoint for {shard_id}: {reason}")]
    Invalid {
        /// The shard the checkpoint was meant for.
        shard_id: String,
        /// Why the checkpoint was refused.
        reason: String,
    },
}

/// Writes the confirmed position of one leased shard.
///
/// Implementations condition the write on still holding the lease (the KCL
/// conditions on `leaseCounter`), so a worker that lost its lease can never
/// move another worker's checkpoint.
#[async_trait::async_trait]
pub trait Checkpointer: Send + Sync {
    /// Records that every record up to and including `position` was confirmed
    /// by the application.
    async fn checkpoint(&self, position: &Checkpoint) -> Result<(), CheckpointError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    fn at(seq: &str, sub: u64) -> Checkpoint {
        Checkpoint::At(ExtendedSequenceNumber::new(seq.parse().unwrap(), sub))
    }

    #[test]
    fn sentinels_order_as_the_kcl_orders_them() {
        let mut all = [
            Checkpoint::ShardEnd,
            at(
                "49590338271490256608559692538361571095921575989136588898",
                0,
            ),
            Checkpoint::Latest,
            Checkpoint::TrimHorizon,
            Checkpoint::AtTimestamp,
        ];
        all.sort();
        assert_eq!(
            all.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
            [
                "AT_TIMESTAMP",
                "TRIM_HORIZON",
                "LATEST",
                "49590338271490256608559692538361571095921575989136588898",
                "SHARD_END"
            ]
        );
    }

    #[test]
    fn sequence_numbers_compare_numerically_then_by_sub_sequence() {
        // A shorter number is smaller even when its first digit is larger.
        assert!(at("9", 0) < at("10", 0));
        assert!(
            at(
                "49590338271490256608559692538361571095921575989136588898",
                7
            ) < at(
                "49590338271490256608559692538361571095921575989136588899",
                0
            )
        );
        assert!(at("100", 1) > at("100", 0));
        assert_eq!(at("100", 3).cmp(&at("100", 3)), Ordering::Equal);
    }

    #[test]
    fn parse_round_trips_the_lease_table_strings() {
        for s in ["TRIM_HORIZON", "LATEST", "AT_TIMESTAMP", "SHARD_END"] {
            let c = Checkpoint::parse(s, None).unwrap();
            assert_eq!(c.as_str(), s);
            assert_eq!(c.sub_sequence(), 0);
        }
        let c = Checkpoint::parse("4959", Some(3)).unwrap();
        assert_eq!(c, at("4959", 3));
        assert_eq!((c.as_str(), c.sub_sequence()), ("4959", 3));
        assert!(Checkpoint::parse("12ab", None).is_err());
        assert!(Checkpoint::parse("", None).is_err());
    }

    #[test]
    fn covers_skips_exactly_what_was_confirmed() {
        let cp = at("500", 2);
        let pos = |s: &str, sub| ExtendedSequenceNumber::new(s.parse().unwrap(), sub);
        assert!(cp.covers(&pos("499", 9)));
        assert!(cp.covers(&pos("500", 2)));
        assert!(!cp.covers(&pos("500", 3)));
        assert!(!cp.covers(&pos("501", 0)));
        assert!(!Checkpoint::TrimHorizon.covers(&pos("1", 0)));
        assert!(Checkpoint::ShardEnd.covers(&pos("1", 0)));
    }
}
