//! Reading one shard with GetShardIterator and GetRecords, by stream ARN.
//!
//! A fetch task per shard reads ahead while the sink works (prefetch),
//! bounded by bytes and by batches so a slow sink applies back-pressure
//! instead of growing memory. Pacing: at most 5 GetRecords calls per second
//! per shard (the service's limit); no wait while a shard has records; after
//! an empty read a wait that doubles up to `max_idle_time_ms`, so an idle
//! shard costs at most 0.2 calls/s at the default. Throttling backs off with
//! jitter. An expired iterator is renewed after the last record fetched.
//! Records come out deaggregated, and a reader positioned at a checkpoint
//! drops what the checkpoint covers, sub-sequence numbers included.

use std::sync::Arc;
use std::time::Duration;

use kcld_checkpoint::Checkpoint;
use kcld_config::PollingSettings;
use kcld_records::kpl::{self, HashRange};
use rand::Rng;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Fetched;
use crate::record::Batch;
use crate::stream::{child_spec, KinesisError, StartAt, Stream};

/// The service allows 5 GetRecords calls per second per shard.
const MIN_CALL_SPACING: Duration = Duration::from_millis(200);

/// Reads one shard, response by response.
pub struct PollingReader {
    stream: Stream,
    shard_id: Arc<str>,
    /// `shard_id` as a metric label, made once.
    shard_label: String,
    range: Option<HashRange>,
    /// Where a fresh iterator starts when nothing was read yet.
    start: StartAt,
    /// Records at or before this position were confirmed earlier: skip them.
    resume_after: Checkpoint,
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
    pending_end: Option<Vec<kcld_lease::ShardSpec>>,
    stats: kpl::Stats,
    failures: u32,
}

impl PollingReader {
    /// `start` is the grant's checkpoint; `at_timestamp_millis` is the
    /// configured AT_TIMESTAMP time (the lease table never stores it);
    /// `range` is the shard's hash key range, for checking KPL user records.
    pub fn new(
        stream: Stream,
        shard_id: &str,
        start: &Checkpoint,
        at_timestamp_millis: Option<i64>,
        range: Option<HashRange>,
        settings: &PollingSettings,
    ) -> Self {
        let start_at = match start {
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
        };
        let idle_min = Duration::from_millis(settings.idle_time_between_reads_ms);
        PollingReader {
            stream,
            shard_id: Arc::from(shard_id),
            shard_label: shard_id.to_owned(),
            range,
            start: start_at,
            resume_after: start.clone(),
            iterator: None,
            last_sequence: None,
            max_records: settings.max_records,
            idle_min,
            idle_max: Duration::from_millis(settings.max_idle_time_ms).max(idle_min),
            idle: Duration::ZERO,
            last_call: None,
            pending_end: None,
            stats: kpl::Stats::default(),
            failures: 0,
        }
    }

    /// The next non-empty batch, or the shard's end. `Ok(None)` when `cancel`
    /// fired first. Transient errors are retried here; the ones returned
    /// need a person (access denied, stream gone).
    pub async fn next(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<Fetched>, KinesisError> {
        if let Some(children) = self.pending_end.take() {
            return Ok(Some(Fetched::ShardEnd { children }));
        }
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
                        if !self.back_off(&e, cancel).await {
                            return Ok(None);
                        }
                        continue;
                    }
                    Err(e) => return Err(e),
                },
            };
            let started = Instant::now();
            self.last_call = Some(started);
            let result = self.stream.get_records(&iterator, self.max_records).await;
            let shard = &self.shard_label;
            metrics::counter!("kcld_getrecords_calls_total", "shard" => shard.clone()).increment(1);
            metrics::histogram!("kcld_getrecords_duration_seconds", "shard" => shard.clone())
                .record(started.elapsed().as_secs_f64());
            if let Err(e) = &result {
                metrics::counter!("kcld_kinesis_errors_total", "operation" => "GetRecords", "kind" => e.kind())
                    .increment(1);
            }
            let response = match result {
                Ok(r) => {
                    self.failures = 0;
                    if let Some(ms) = r.millis_behind_latest {
                        metrics::gauge!("kcld_lag_seconds", "shard" => shard.clone())
                            .set(ms as f64 / 1000.0);
                    }
                    r
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

            self.iterator = response.next_shard_iterator;
            if let Some(last) = response.records.last() {
                self.last_sequence = Some(last.sequence_number.to_string());
            }
            let before = self.stats;
            let mut records = Vec::with_capacity(response.records.len());
            for record in response.records {
                kpl::deaggregate(record, self.range, &mut records, &mut self.stats);
            }
            self.report(&before);
            if matches!(self.resume_after, Checkpoint::At(_)) {
                records.retain(|r| !self.resume_after.covers(&r.position()));
                if !records.is_empty() {
                    // Past the checkpoint: nothing later can be covered.
                    self.resume_after = Checkpoint::TrimHorizon;
                }
            }

            let ended = self.iterator.is_none();
            if ended {
                let children = response
                    .child_shards
                    .unwrap_or_default()
                    .into_iter()
                    .map(child_spec)
                    .collect();
                if records.is_empty() {
                    return Ok(Some(Fetched::ShardEnd { children }));
                }
                self.pending_end = Some(children);
            }
            if records.is_empty() {
                self.idle = next_idle(self.idle, self.idle_min, self.idle_max);
                continue;
            }
            self.idle = Duration::ZERO;
            return Ok(Some(Fetched::Records(Batch {
                shard_id: self.shard_id.clone(),
                records,
                millis_behind_latest: response.millis_behind_latest,
            })));
        }
    }

    async fn position(&mut self) -> Result<String, KinesisError> {
        let at = match &self.last_sequence {
            Some(seq) => StartAt::AfterSequence(seq.clone()),
            None => self.start.clone(),
        };
        let it = self.stream.shard_iterator(&self.shard_id, &at).await?;
        tracing::info!(shard = %self.shard_id, at = ?at, "positioned");
        self.iterator = Some(it.clone());
        Ok(it)
    }

    /// Deaggregation counts: exported, and logged when worth a person's
    /// attention.
    fn report(&self, before: &kpl::Stats) {
        let shard = &self.shard_label;
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
                metrics::counter!(name, "shard" => shard.clone()).increment(now - then);
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

    /// Waits after a transient error: exponential with jitter, capped at
    /// 10 s. Returns false when cancelled while waiting.
    async fn back_off(&mut self, error: &KinesisError, cancel: &CancellationToken) -> bool {
        self.failures = self.failures.saturating_add(1);
        let cap_ms = (100u64 << self.failures.min(7)).min(10_000);
        let wait = Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms));
        if self.failures == 1 || self.failures.is_power_of_two() {
            tracing::warn!(shard = %self.shard_id, failures = self.failures, "{error}; retrying in {wait:?}");
        }
        if matches!(error, KinesisError::Throttled(_)) {
            metrics::counter!("kcld_throttles_total", "shard" => self.shard_label.clone())
                .increment(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = cancel.cancelled() => false,
        }
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

/// Bytes of record data read ahead and not yet delivered, bounded per shard
/// and for the whole worker, so that hundreds of shards with a slow sink
/// cannot grow memory past the configured total.
#[derive(Clone)]
pub struct ByteBudget {
    shard: Arc<Semaphore>,
    shard_max: usize,
    worker: Arc<Semaphore>,
    worker_max: usize,
}

/// Room held in a [`ByteBudget`] until dropped.
pub struct BudgetHeld {
    _shard: OwnedSemaphorePermit,
    _worker: OwnedSemaphorePermit,
}

impl ByteBudget {
    /// A shard's budget of `shard_max` bytes inside the worker's `worker`
    /// semaphore of `worker_max` bytes (see [`ByteBudget::worker`]).
    pub fn new(worker: Arc<Semaphore>, worker_max: usize, shard_max: usize) -> Self {
        let shard_max = shard_max.clamp(1, Semaphore::MAX_PERMITS);
        ByteBudget {
            shard: Arc::new(Semaphore::new(shard_max)),
            shard_max,
            worker,
            worker_max: worker_max.clamp(1, Semaphore::MAX_PERMITS),
        }
    }

    /// The semaphore every shard of a worker shares.
    pub fn worker(max: usize) -> Arc<Semaphore> {
        Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS)))
    }

    /// Waits for room for `size` bytes. A batch larger than a limit waits
    /// for the whole limit, so it still passes, alone.
    pub async fn acquire(&self, size: usize) -> Option<BudgetHeld> {
        let per_shard = size.clamp(1, self.shard_max) as u32;
        let per_worker = size.clamp(1, self.worker_max) as u32;
        let shard = self
            .shard
            .clone()
            .acquire_many_owned(per_shard)
            .await
            .ok()?;
        let worker = self
            .worker
            .clone()
            .acquire_many_owned(per_worker)
            .await
            .ok()?;
        Some(BudgetHeld {
            _shard: shard,
            _worker: worker,
        })
    }
}

/// A batch read ahead, holding its share of the prefetch budget until the
/// consumer is done with it.
pub struct Prefetched {
    pub fetched: Fetched,
    _budget: Option<BudgetHeld>,
}

/// The consumer's end of a shard's fetch task.
pub struct Prefetch {
    rx: mpsc::Receiver<Result<Prefetched, KinesisError>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prefetch {
    /// Starts reading ahead: at most `max_batches` batches, and what
    /// `budget` allows, wait for the consumer.
    pub fn spawn(
        mut reader: PollingReader,
        cancel: CancellationToken,
        max_batches: usize,
        budget: ByteBudget,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_batches.max(1));
        let task = tokio::spawn(async move {
            loop {
                let fetched = match reader.next(&cancel).await {
                    Ok(Some(f)) => f,
                    Ok(None) => return,
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                };
                let size = match &fetched {
                    Fetched::Records(batch) => batch.data_bytes(),
                    Fetched::ShardEnd { .. } => 0,
                };
                let permit = tokio::select! {
                    p = budget.acquire(size) => p,
                    _ = cancel.cancelled() => return,
                };
                let end = matches!(fetched, Fetched::ShardEnd { .. });
                if tx
                    .send(Ok(Prefetched {
                        fetched,
                        _budget: permit,
                    }))
                    .await
                    .is_err()
                    || end
                {
                    return;
                }
            }
        });
        Prefetch { rx, task }
    }

    /// The next batch read ahead; `None` once the fetch task stopped
    /// (cancelled).
    pub async fn next(&mut self) -> Option<Result<Prefetched, KinesisError>> {
        self.rx.recv().await
    }
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

    #[tokio::test]
    async fn read_ahead_is_bounded_per_shard_and_per_worker() {
        let worker = ByteBudget::worker(100);
        let a = ByteBudget::new(worker.clone(), 100, 60);
        let b = ByteBudget::new(worker.clone(), 100, 60);
        let wait = Duration::from_millis(50);
        let a1 = a.acquire(50).await.unwrap();
        // The shard's own limit: 50 + 20 > 60.
        assert!(tokio::time::timeout(wait, a.acquire(20)).await.is_err());
        let b1 = b.acquire(50).await.unwrap();
        // The worker's limit: 100 bytes held by the two shards.
        assert!(tokio::time::timeout(wait, b.acquire(5)).await.is_err());
        drop(a1);
        let b2 = tokio::time::timeout(wait, b.acquire(5))
            .await
            .unwrap()
            .unwrap();
        // A batch larger than every limit still passes once alone.
        drop((b1, b2));
        assert!(tokio::time::timeout(wait, a.acquire(1_000))
            .await
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_minimum_above_the_maximum_wins() {
        assert_eq!(next_idle(Duration::ZERO, 3000 * MS, 1000 * MS), 3000 * MS);
    }
}
