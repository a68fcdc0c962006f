//! Getting records out of a shard. Two strategies, one shape: polling with
//! GetRecords ([`polling`]) and enhanced fan-out with SubscribeToShard
//! ([`fanout`]) both yield [`Fetched`] values, deaggregated and filtered by
//! the same [`Unpacker`], so the shard consumer, the leases, checkpoints,
//! sinks and metrics do not care how records arrived. [`prefetch`] reads
//! ahead of the sink for either.

use std::sync::Arc;
use std::time::Duration;

use kcld_checkpoint::{Checkpoint, ExtendedSequenceNumber};
use kcld_lease::ShardSpec;
use kcld_records::kpl::{self, HashRange};
use tokio_util::sync::CancellationToken;

use crate::ops::ShardLabels;
use crate::record::{Batch, Record};
use crate::stream::{KinesisError, StartAt, Stream};

/// In a reader's loop, after the transient error `$err`: wait out the
/// reader's back-off, then `continue` the loop; `return Ok(None)` when
/// `$cancel` fires first. Both readers retry the same way.
macro_rules! back_off_then_continue {
    ($reader:ident, $err:expr, $what:expr, $cancel:expr) => {
        if !$reader
            .backoff
            .wait($err, &$reader.unpacker, $what, $cancel)
            .await
        {
            return Ok(None);
        }
        continue;
    };
}

pub mod fanout;
pub mod isolation;
pub mod polling;
pub mod prefetch;
pub mod registration;

pub use registration::RegistrationError;

/// What one read of a shard produced.
#[derive(Debug)]
pub enum Fetched {
    /// Records, in shard order, none of them covered by the starting checkpoint.
    Records(Batch),
    /// The shard is closed and every record was read; these shards follow it.
    ShardEnd {
        /// The child shards: two after a split, one after a merge.
        children: Vec<ShardSpec>,
    },
}

/// One shard's reader, by the configured strategy (boxed: made once per
/// shard, moved into its fetch task).
pub enum Reader {
    /// Reads with GetRecords.
    Polling(Box<polling::PollingReader>),
    /// Reads through an enhanced fan-out subscription (SubscribeToShard).
    FanOut(Box<fanout::FanOutReader>),
}

impl Reader {
    /// The next non-empty batch, or the shard's end; `Ok(None)` once
    /// `cancel` fired. Transient errors are retried inside; the ones
    /// returned need a person (access denied, stream or consumer gone).
    pub async fn next(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<Fetched>, KinesisError> {
        let pending = match self {
            Reader::Polling(r) => r.pending_end.take(),
            Reader::FanOut(r) => r.pending_end.take(),
        };
        if pending.is_some() {
            return Ok(pending);
        }
        match self {
            Reader::Polling(r) => r.read(cancel).await,
            Reader::FanOut(r) => r.read(cancel).await,
        }
    }
}

/// A closed shard's end met together with its last records: the records
/// are handed on first, the end at the next call. Both readers meet ends
/// this way.
#[derive(Debug, Default)]
pub(crate) struct PendingEnd(Option<Vec<ShardSpec>>);

impl PendingEnd {
    /// The end held back by the last read, to hand on now.
    pub(crate) fn take(&mut self) -> Option<Fetched> {
        self.0.take().map(|children| Fetched::ShardEnd { children })
    }

    /// What to hand on for `batch`, read from a shard that `end` says
    /// closed with these children: the end at once when the batch is
    /// empty, else the batch now and the end at the next call; `None` when
    /// there is nothing to hand on (no records, not ended).
    pub(crate) fn hand_on(&mut self, batch: Batch, end: Option<Vec<ShardSpec>>) -> Option<Fetched> {
        match (batch.records.is_empty(), end) {
            (true, None) => None,
            (true, Some(children)) => Some(Fetched::ShardEnd { children }),
            (false, end) => {
                self.0 = end;
                Some(Fetched::Records(batch))
            }
        }
    }
}

/// Where a shard's reader starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// After a checkpoint: at a sentinel's position, or past every record
    /// the checkpoint covers (sub-sequence numbers included).
    After(Checkpoint),
    /// At this record, which is read again: a processor replaced before it
    /// checkpointed past a sentinel gets what it was given once more.
    From(ExtendedSequenceNumber),
    /// At this time (epoch milliseconds): a replaced processor that started
    /// at LATEST and was given nothing misses nothing written meanwhile.
    Since(i64),
}

impl std::fmt::Display for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Resume::After(checkpoint) => write!(f, "{checkpoint}"),
            Resume::From(esn) => write!(f, "{esn} (again)"),
            Resume::Since(ms) => write!(f, "AT_TIMESTAMP {ms} ms"),
        }
    }
}

/// Where a reader with nothing read yet starts, from the grant's
/// checkpoint and the configured AT_TIMESTAMP time (which the lease table
/// never stores).
pub fn start_at(shard_id: &str, resume: &Resume, at_timestamp_millis: Option<i64>) -> StartAt {
    let start = match resume {
        Resume::After(checkpoint) => checkpoint,
        Resume::From(esn) => return StartAt::AtSequence(esn.sequence.to_string()),
        Resume::Since(epoch_millis) => {
            return StartAt::AtTimestamp {
                epoch_millis: *epoch_millis,
            }
        }
    };
    match start {
        Checkpoint::TrimHorizon | Checkpoint::ShardEnd => StartAt::TrimHorizon,
        Checkpoint::Latest => StartAt::Latest,
        Checkpoint::AtTimestamp => match at_timestamp_millis {
            Some(epoch_millis) => StartAt::AtTimestamp { epoch_millis },
            None => {
                tracing::warn!(
                    shard = shard_id,
                    "checkpoint is AT_TIMESTAMP but no initial_timestamp is configured; starting at TRIM_HORIZON"
                );
                StartAt::TrimHorizon
            }
        },
        Checkpoint::At(esn) => StartAt::AtSequence(esn.sequence.to_string()),
    }
}

/// How far before the moment a LATEST position was first taken a reader
/// that must position again (an expired iterator or a new subscription
/// before any record) starts, at AT_TIMESTAMP: covers the clock difference
/// with the service, so nothing written after the start is skipped.
pub(crate) const LATEST_MARGIN_MS: i64 = 1_000;

/// Where to position again after `at` was used once: LATEST becomes
/// AT_TIMESTAMP of when it was taken (less [`LATEST_MARGIN_MS`]), so a
/// second positioning before the first record skips nothing; every other
/// position stays what it is.
pub(crate) fn pin_latest(at: &StartAt, taken_at: std::time::SystemTime) -> StartAt {
    match at {
        StartAt::Latest => {
            let millis = taken_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0);
            StartAt::AtTimestamp {
                epoch_millis: millis - LATEST_MARGIN_MS,
            }
        }
        other => other.clone(),
    }
}

/// After a ResourceNotFound on a shard-level call: if the stream is there
/// and the shard is not, the shard expired (past the retention period, so
/// records after the last one read (or the reader's start) that were never
/// read are lost) and its end is
/// reported with the children ListShards names, after one error line and
/// the `kcld_shards_lost_total` metric. Otherwise `err` stands: the stream
/// (or the fan-out consumer) is gone, which stops kcld.
///
/// The check is retried (with `backoff`) while it fails transiently;
/// `Ok(None)` when cancelled meanwhile.
pub(crate) async fn end_if_gone(
    stream: &Stream,
    unpacker: &Unpacker,
    backoff: &mut Backoff,
    (last_read, start): (Option<&str>, &StartAt),
    err: KinesisError,
    cancel: &CancellationToken,
) -> Result<Option<Fetched>, KinesisError> {
    let last = match last_read {
        Some(seq) => format!("sequence number {seq}"),
        None => start.to_string(),
    };
    let last = last.as_str();
    loop {
        match shard_gone(stream, unpacker, last, err.clone()).await {
            Ok(end) => return Ok(Some(end)),
            Err(e) if e.is_transient() => {
                if !backoff
                    .wait(&e, unpacker, "checking the shard again", cancel)
                    .await
                {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

async fn shard_gone(
    stream: &Stream,
    unpacker: &Unpacker,
    last: &str,
    err: KinesisError,
) -> Result<Fetched, KinesisError> {
    if stream.describe().await?.status == "DELETING" {
        return Err(err);
    }
    let shard = &*unpacker.shard_id;
    match stream.shard_iterator(shard, &StartAt::TrimHorizon).await {
        Err(KinesisError::NotFound(_)) => {}
        Ok(_) => return Err(err),
        Err(other) => return Err(other),
    }
    let children: Vec<ShardSpec> = stream
        .list_shards(1000)
        .await?
        .into_iter()
        .filter(|s| s.parents.iter().any(|p| p == shard))
        .collect();
    let ids: Vec<&str> = children.iter().map(|c| c.shard_id.as_str()).collect();
    tracing::error!(
        shard,
        last_position = last,
        children = ?ids,
        "shard no longer exists ({err}): it expired past the stream's retention period before it was read \
         to its end, so records after {last} that were not read are lost; reading its children next"
    );
    metrics::counter!("kcld_shards_lost_total", unpacker.labels.get()).increment(1);
    Ok(Fetched::ShardEnd { children })
}

/// Waiting after transient errors of one shard's reader: the shared
/// [`crate::backoff::Backoff`] (up to 10 s), with the shard named in the
/// log and throttles counted.
pub(crate) struct Backoff {
    inner: crate::backoff::Backoff,
}

impl Backoff {
    pub(crate) fn new(base: Duration) -> Self {
        Backoff {
            inner: crate::backoff::Backoff::new(base, Duration::from_secs(10)),
        }
    }

    /// A call succeeded: the next failure starts a new burst.
    pub(crate) fn reset(&mut self) {
        self.inner.reset();
    }

    /// Counts one more failure of `shard` and waits before `retrying`
    /// (what happens next, for the log). False when cancelled meanwhile.
    pub(crate) async fn wait(
        &mut self,
        error: &KinesisError,
        shard: &Unpacker,
        retrying: &str,
        cancel: &CancellationToken,
    ) -> bool {
        let wait = self.inner.next_wait();
        let failures = self.inner.failures();
        if matches!(error, KinesisError::InUse(_)) {
            if failures == 1 {
                tracing::info!(shard = %shard.shard_id, "another subscription to this shard is still open; waiting for it to end");
            }
        } else if self.inner.worth_logging() {
            tracing::warn!(shard = %shard.shard_id, failures, "{error}; {retrying} in {wait:?}");
        }
        if matches!(error, KinesisError::Throttled(_)) {
            metrics::counter!("kcld_throttles_total", shard.labels.get()).increment(1);
        }
        crate::backoff::Backoff::sleep(wait, cancel).await
    }
}

/// What an [`Unpacker`] leaves out at the start of its shard.
enum Skip {
    Nothing,
    /// Records a checkpoint covers: confirmed before.
    Covered(Checkpoint),
    /// Records before the first one to read again.
    Before(ExtendedSequenceNumber),
}

/// Turns the records of one response or event into what the sink gets:
/// KPL aggregates split into user records (counted, corrupt ones passed
/// through as they arrived), and records the starting checkpoint covers
/// dropped, sub-sequence numbers included.
pub struct Unpacker {
    pub(crate) shard_id: Arc<str>,
    /// The shard's metric labels, made once.
    pub(crate) labels: ShardLabels,
    range: Option<HashRange>,
    /// Records the reader's start leaves out (until the first one kept).
    skip: Skip,
    stats: kpl::Stats,
}

impl Unpacker {
    /// An unpacker for `shard_id` that drops what `start` says was read before;
    /// `range` is the shard's hash key range, when known, for counting
    /// out-of-range user records. `stream` labels its series when several
    /// streams are read ([`ShardLabels`]).
    pub fn new(
        shard_id: &str,
        stream: Option<&str>,
        start: &Resume,
        range: Option<HashRange>,
    ) -> Self {
        Unpacker {
            shard_id: Arc::from(shard_id),
            labels: ShardLabels::new(stream, shard_id),
            range,
            skip: match start {
                Resume::After(checkpoint @ Checkpoint::At(_)) => Skip::Covered(checkpoint.clone()),
                Resume::From(esn) => Skip::Before(esn.clone()),
                _ => Skip::Nothing,
            },
            stats: kpl::Stats::default(),
        }
    }

    /// Deaggregates and filters `records`, in order.
    pub fn unpack(&mut self, records: impl ExactSizeIterator<Item = Record>) -> Vec<Record> {
        let before = self.stats;
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            kpl::deaggregate(record, self.range, &mut out, &mut self.stats);
        }
        self.report(&before);
        match &self.skip {
            Skip::Nothing => return out,
            Skip::Covered(checkpoint) => out.retain(|r| !checkpoint.covers(&r.position_in_batch())),
            Skip::Before(first) => out.retain(|r| r.position_in_batch() >= *first),
        }
        if !out.is_empty() {
            // Past the start: nothing later is left out.
            self.skip = Skip::Nothing;
        }
        out
    }

    /// Deaggregation counts: exported, and logged when worth a person's
    /// attention.
    fn report(&self, before: &kpl::Stats) {
        let shard = self.labels.get();
        for (name, now, then) in [
            (
                "kcld_kpl_aggregates_total",
                self.stats.aggregates,
                before.aggregates,
            ),
            (
                "kcld_kpl_user_records_total",
                self.stats.sub_records,
                before.sub_records,
            ),
            ("kcld_kpl_corrupt_total", self.stats.corrupt, before.corrupt),
            (
                "kcld_kpl_out_of_range_total",
                self.stats.out_of_range,
                before.out_of_range,
            ),
        ] {
            if now > then {
                metrics::counter!(name, shard.clone()).increment(now - then);
            }
        }
        let corrupt = self.stats.corrupt - before.corrupt;
        let out_of_range = self.stats.out_of_range - before.out_of_range;
        if corrupt > 0 {
            tracing::warn!(shard = %self.shard_id, corrupt, total = self.stats.corrupt, "records looked like KPL aggregates but were not well formed; delivered as they arrived");
        }
        if out_of_range > 0 {
            tracing::warn!(shard = %self.shard_id, out_of_range, total = self.stats.out_of_range, "KPL user records hash outside this shard's range; delivered (the KCL would drop their aggregates)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn latest_is_pinned_to_when_it_was_taken_and_nothing_else_moves() {
        let taken = UNIX_EPOCH + Duration::from_millis(1_700_000_000_500);
        assert_eq!(
            pin_latest(&StartAt::Latest, taken),
            StartAt::AtTimestamp {
                epoch_millis: 1_700_000_000_500 - LATEST_MARGIN_MS
            }
        );
        // Pinned once: a third positioning keeps the first time.
        let pinned = pin_latest(&StartAt::Latest, taken);
        assert_eq!(
            pin_latest(&pinned, taken + Duration::from_secs(600)),
            pinned
        );
        for other in [
            StartAt::TrimHorizon,
            StartAt::AtTimestamp { epoch_millis: 5 },
            StartAt::AtSequence("7".into()),
            StartAt::AfterSequence("7".into()),
        ] {
            assert_eq!(pin_latest(&other, taken), other);
        }
    }
}
