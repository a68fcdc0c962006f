//! Reading one shard with GetShardIterator and GetRecords, by stream ARN.
//!
//! The reader resumes at the checkpoint (AT_SEQUENCE_NUMBER, then drops what
//! the checkpoint covers, sub-sequence numbers included, as the KCL does),
//! renews an expired iterator after the last record it returned, waits out
//! throttling with jittered back-off, and reports shard end with the children
//! GetRecords announced.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kcld_checkpoint::Checkpoint;
use kcld_config::PollingSettings;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use super::Fetched;
use crate::record::{Batch, Record};
use crate::stream::{child_spec, KinesisError, StartAt, Stream};

/// Reads one shard, batch by batch.
pub struct PollingReader {
    stream: Stream,
    shard_id: Arc<str>,
    /// Where a fresh iterator starts when nothing was read yet.
    start: StartAt,
    /// Records at or before this position were confirmed earlier: skip them.
    resume_after: Checkpoint,
    iterator: Option<String>,
    /// Sequence number of the last record handed out.
    last_sequence: Option<String>,
    max_records: i32,
    idle: Duration,
    /// The last call returned nothing: wait `idle` before the next one.
    idle_before_next: bool,
    /// The last response closed the shard but carried records: report the
    /// end (with these children) on the next call.
    pending_end: Option<Vec<kcld_lease::ShardSpec>>,
    failures: u32,
}

impl PollingReader {
    /// `start` is the grant's checkpoint; `at_timestamp_millis` is the
    /// configured AT_TIMESTAMP time (the lease table never stores it).
    pub fn new(
        stream: Stream,
        shard_id: &str,
        start: &Checkpoint,
        at_timestamp_millis: Option<i64>,
        settings: &PollingSettings,
    ) -> Self {
        let start_at = match start {
            Checkpoint::TrimHorizon | Checkpoint::ShardEnd => StartAt::TrimHorizon,
            Checkpoint::Latest => StartAt::Latest,
            Checkpoint::AtTimestamp => match at_timestamp_millis {
                Some(epoch_millis) => StartAt::AtTimestamp { epoch_millis },
                None => {
                    tracing::warn!(shard = shard_id, "checkpoint is AT_TIMESTAMP but no initial_timestamp is configured; starting at TRIM_HORIZON");
                    StartAt::TrimHorizon
                }
            },
            Checkpoint::At(esn) => StartAt::AtSequence(esn.sequence.to_string()),
        };
        PollingReader {
            stream,
            shard_id: Arc::from(shard_id),
            start: start_at,
            resume_after: start.clone(),
            iterator: None,
            last_sequence: None,
            max_records: settings.max_records,
            idle: Duration::from_millis(settings.idle_time_between_reads_ms),
            idle_before_next: false,
            pending_end: None,
            failures: 0,
        }
    }

    /// The next batch (empty when the shard had nothing new, so the caller
    /// can checkpoint on time), or the shard's end. `Ok(None)` when `cancel`
    /// fired first. Transient errors are retried here; the ones returned
    /// need a person (access denied, stream gone).
    pub async fn next(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<Fetched>, KinesisError> {
        if let Some(children) = self.pending_end.take() {
            return Ok(Some(Fetched::ShardEnd { children }));
        }
        if std::mem::take(&mut self.idle_before_next) {
            tokio::select! {
                _ = tokio::time::sleep(self.idle) => {}
                _ = cancel.cancelled() => return Ok(None),
            }
        }
        loop {
            if cancel.is_cancelled() {
                return Ok(None);
            }
            let iterator = match &self.iterator {
                Some(it) => it.clone(),
                None => {
                    let at = match &self.last_sequence {
                        Some(seq) => StartAt::AfterSequence(seq.clone()),
                        None => self.start.clone(),
                    };
                    match self.stream.shard_iterator(&self.shard_id, &at).await {
                        Ok(it) => {
                            tracing::info!(shard = %self.shard_id, at = ?at, "positioned");
                            self.iterator = Some(it.clone());
                            it
                        }
                        Err(e) if e.is_transient() => {
                            if !self.back_off(&e, cancel).await {
                                return Ok(None);
                            }
                            continue;
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            let output = match self.stream.get_records(&iterator, self.max_records).await {
                Ok(out) => {
                    self.failures = 0;
                    out
                }
                Err(KinesisError::ExpiredIterator) => {
                    tracing::info!(shard = %self.shard_id, "shard iterator expired; renewing after the last record read");
                    self.iterator = None;
                    continue;
                }
                Err(e) if e.is_transient() => {
                    if !self.back_off(&e, cancel).await {
                        return Ok(None);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };

            self.iterator = output.next_shard_iterator.clone();
            let millis_behind_latest = output.millis_behind_latest;
            let mut records = Vec::with_capacity(output.records.len());
            for r in output.records {
                let sequence_number = match r.sequence_number.parse() {
                    Ok(s) => s,
                    Err(e) => {
                        // Kinesis never sends this; if it did, the record
                        // could not be checkpointed, so stop loudly.
                        return Err(KinesisError::Other(format!(
                            "GetRecords on {}: {e}",
                            self.shard_id
                        )));
                    }
                };
                let record = Record {
                    sequence_number,
                    sub_sequence_number: 0,
                    aggregated: false,
                    partition_key: r.partition_key.unwrap_or_default(),
                    explicit_hash_key: None,
                    data: Bytes::from(r.data.into_inner()),
                    approximate_arrival_ms: r
                        .approximate_arrival_timestamp
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or(0),
                    encryption_type: r.encryption_type.map(|e| e.as_str().to_owned()),
                };
                self.last_sequence = Some(record.sequence_number.to_string());
                if !self.resume_after.covers(&record.position()) {
                    records.push(record);
                }
            }

            if self.iterator.is_none() {
                let children = output
                    .child_shards
                    .unwrap_or_default()
                    .iter()
                    .map(child_spec)
                    .collect();
                if records.is_empty() {
                    return Ok(Some(Fetched::ShardEnd { children }));
                }
                // The shard's last records: deliver them, then report the end.
                self.pending_end = Some(children);
            }
            // Nothing new: wait before asking again.
            self.idle_before_next = records.is_empty();
            return Ok(Some(Fetched::Records(Batch {
                shard_id: self.shard_id.clone(),
                records,
                millis_behind_latest,
            })));
        }
    }

    /// Waits after a transient error: exponential with full jitter, capped at
    /// 10 s. Returns false when cancelled while waiting.
    async fn back_off(&mut self, error: &KinesisError, cancel: &CancellationToken) -> bool {
        self.failures = self.failures.saturating_add(1);
        let cap_ms = (100u64 << self.failures.min(7)).min(10_000);
        let wait = Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms));
        if self.failures == 1 || self.failures.is_power_of_two() {
            tracing::warn!(shard = %self.shard_id, failures = self.failures, "{error}; retrying in {wait:?}");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = cancel.cancelled() => false,
        }
    }
}
