//! Reading one shard with GetShardIterator and GetRecords, by stream ARN.
//!
//! Pacing: at most 5 GetRecords calls per second
//! per shard (the service's limit); no wait while a shard has records; after
//! an empty read a wait that doubles up to `max_idle_time_ms`, so an idle
//! shard costs at most 0.2 calls/s at the default. Throttling backs off with
//! jitter. An expired iterator is renewed after the last record fetched.
//! Records come out deaggregated, and a reader positioned at a checkpoint
//! drops what the checkpoint covers, sub-sequence numbers included.

use std::time::Duration;

use kcld_config::PollingSettings;
use kcld_records::kpl::HashRange;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Fetched, Unpacker};
use crate::record::Batch;
use crate::stream::{child_spec, KinesisError, StartAt, Stream};

/// The service allows 5 GetRecords calls per second per shard.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);

/// Reads one shard, response by response.
pub struct PollingReader {
    stream: Stream,
    unpacker: Unpacker,
    /// Where a fresh iterator starts when nothing was read yet.
    start: StartAt,
    iterator: Option<String>,
    /// Sequence number of the last record fetched.
    last_sequence: Option<String>,
    max_records: i32,
    idle_min: Duration,
    idle_max: Duration,
    /// The wait before the next call (grows while the shard is empty).
    idle: Duration,
    last_call: Option<Instant>,
    /// The last response closed the shard but carried records: report the
    /// end (with these children) on the next call.
    pub(super) pending_end: super::PendingEnd,
    backoff: Backoff,
}

impl PollingReader {
    /// `start` is the grant's checkpoint; `at_timestamp_millis` is the
    /// configured AT_TIMESTAMP time (the lease table never stores it);
    /// `range` is the shard's hash key range, for checking KPL user records.
    pub fn new(
        stream: Stream,
        shard_id: &str,
        start: &super::Resume,
        at_timestamp_millis: Option<i64>,
        range: Option<HashRange>,
        settings: &PollingSettings,
    ) -> Self {
        let idle_min = settings.idle_time_between_reads;
        let unpacker = Unpacker::new(shard_id, stream.metric_label(), start, range);
        PollingReader {
            stream,
            unpacker,
            start: super::start_at(shard_id, start, at_timestamp_millis),
            iterator: None,
            last_sequence: None,
            max_records: settings.max_records,
            idle_min,
            idle_max: settings.max_idle_time.max(idle_min),
            idle: Duration::ZERO,
            last_call: None,
            pending_end: Default::default(),
            backoff: Backoff::new(Duration::from_millis(100)),
        }
    }

    /// The next non-empty batch, or the shard's end. `Ok(None)` when `cancel`
    /// fired first. Transient errors are retried here; the ones returned
    /// need a person (access denied, stream gone).
    /// A shard end met with records is held in `pending_end` and handed
    /// on by [`super::Reader::next`].
    pub async fn read(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<Fetched>, KinesisError> {
        loop {
            // Pacing: the idle wait after an empty read, and never more than
            // 5 calls a second.
            let earliest = match self.last_call {
                Some(at) => next_call_at(at, self.idle),
                None => Instant::now(),
            };
            tokio::select! {
                _ = tokio::time::sleep_until(earliest) => {}
                _ = cancel.cancelled() => return Ok(None),
            }
            let iterator = match self.iterator.clone() {
                Some(it) => it,
                None => match self.position().await {
                    Ok(it) => it,
                    Err(e) if e.is_transient() => {
                        back_off_then_continue!(self, &e, "retrying", cancel);
                    }
                    Err(e) => return self.give_up(e, cancel).await,
                },
            };
            let started = Instant::now();
            self.last_call = Some(started);
            let result = self
                .stream
                .get_shard_records(Some(&self.unpacker.shard_id), &iterator, self.max_records)
                .await;
            let shard = self.unpacker.labels.get();
            metrics::counter!("kcld_getrecords_calls_total", shard.clone()).increment(1);
            metrics::histogram!("kcld_getrecords_duration_seconds", shard.clone())
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                metrics::counter!("kcld_kinesis_errors_total", "operation" => "GetRecords", "kind" => e.kind())
                    .increment(1);
            }
            let response = match result {
                Ok(r) => {
                    self.backoff.reset();
                    if let Some(ms) = r.millis_behind_latest {
                        metrics::gauge!("kcld_lag_seconds", shard.clone()).set(ms as f64 / 1000.0);
                    }
                    r
                }
                Err(KinesisError::ExpiredIterator) => {
                    tracing::info!(shard = %self.unpacker.shard_id, "shard iterator expired; renewing after the last record read");
                    self.iterator = None;
                    continue;
                }
                Err(e) if e.is_transient() => {
                    back_off_then_continue!(self, &e, "retrying", cancel);
                }
                Err(e) => return self.give_up(e, cancel).await,
            };

            self.iterator = response.next_shard_iterator;
            if let Some(last) = response.records.last() {
                self.last_sequence = Some(last.sequence_number.to_string());
            }
            let records = self.unpacker.unpack(response.records.into_iter());

            let end = self.iterator.is_none().then(|| {
                response
                    .child_shards
                    .unwrap_or_default()
                    .into_iter()
                    .map(child_spec)
                    .collect()
            });
            let batch = Batch {
                shard_id: self.unpacker.shard_id.clone(),
                records,
                millis_behind_latest: response.millis_behind_latest,
                filtered_to: None,
            };
            match self.pending_end.hand_on(batch, end) {
                Some(fetched) => {
                    self.idle = Duration::ZERO;
                    return Ok(Some(fetched));
                }
                None => self.idle = next_idle(self.idle, self.idle_min, self.idle_max),
            }
        }
    }

    /// An error retrying does not fix. A ResourceNotFound for this shard
    /// is its end when the shard expired (see [`super::end_if_gone`]);
    /// anything else is returned.
    async fn give_up(
        &mut self,
        err: KinesisError,
        cancel: &CancellationToken,
    ) -> Result<Option<Fetched>, KinesisError> {
        if !matches!(err, KinesisError::NotFound(_)) {
            return Err(err);
        }
        let last = (self.last_sequence.as_deref(), &self.start);
        let (stream, unpacker) = (&self.stream, &self.unpacker);
        super::end_if_gone(stream, unpacker, &mut self.backoff, last, err, cancel).await
    }

    async fn position(&mut self) -> Result<String, KinesisError> {
        let at = match &self.last_sequence {
            Some(seq) => StartAt::AfterSequence(seq.clone()),
            None => self.start.clone(),
        };
        let shard_id = &self.unpacker.shard_id;
        let taken_at = std::time::SystemTime::now();
        let it = self.stream.shard_iterator(shard_id, &at).await?;
        // Positioned again before a first record (an expired iterator):
        // from when LATEST was taken, never a new LATEST.
        self.start = super::pin_latest(&self.start, taken_at);
        tracing::info!(shard = %shard_id, at = ?at, "positioned");
        self.iterator = Some(it.clone());
        Ok(it)
    }
}

/// The wait after one more empty read: the minimum first, then doubling up
/// to the maximum.
fn next_idle(current: Duration, min: Duration, max: Duration) -> Duration {
    (current * 2).clamp(min, max.max(min))
}

/// When the next GetRecords may start: never sooner than 200 ms after the
/// last one (5 calls a second per shard), later while the shard is idle.
fn next_call_at(last_call: Instant, idle: Duration) -> Instant {
    last_call + MIN_CALL_SPACING.max(idle)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_idle_shard_backs_off_to_one_call_per_max_idle() {
        let (min, max) = (1000 * MS, 5000 * MS);
        let mut idle = Duration::ZERO;
        let mut waits = Vec::new();
        for _ in 0..6 {
            idle = next_idle(idle, min, max);
            waits.push(idle.as_millis());
        }
        assert_eq!(waits, [1000, 2000, 4000, 5000, 5000, 5000]);
        // Once backed off: one call per 5 s, 0.2 calls per second.
        let t0 = Instant::now();
        assert_eq!(next_call_at(t0, idle) - t0, 5000 * MS);
    }

    #[test]
    fn a_busy_shard_is_read_at_most_five_times_a_second() {
        let t0 = Instant::now();
        // Records in the last response: no idle wait, only the service's
        // per-shard limit.
        assert_eq!(next_call_at(t0, Duration::ZERO) - t0, 200 * MS);
        assert_eq!(next_call_at(t0, 50 * MS) - t0, 200 * MS);
    }

    #[test]
    fn a_minimum_above_the_maximum_wins() {
        assert_eq!(next_idle(Duration::ZERO, 3000 * MS, 1000 * MS), 3000 * MS);
    }
}
