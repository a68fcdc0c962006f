//! One leased shard from start to end: read a batch, hand it to the sink,
//! wait for the confirmation, checkpoint when due, repeat; at the shard's
//! end, checkpoint SHARD_END and announce the children.
//!
//! Invariants:
//! - a checkpoint names only records the sink confirmed;
//! - nothing is read while a batch is in flight, so a slow application
//!   slows the reader instead of growing memory;
//! - on stop (shutdown or lost lease) the confirmed position is written one
//!   last time; the lease layer refuses that write if the lease was lost.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kcld_checkpoint::{Checkpoint, CheckpointError, ExtendedSequenceNumber};
use kcld_config::CheckpointSettings;
use kcld_lease::{Grant, ShardSpec};

use crate::error::Error;
use crate::record::Batch;
use crate::retrieval::prefetch::{ByteBudget, Prefetch};
use crate::retrieval::{Fetched, Reader};
use crate::sink::{Sink, SinkError};

/// Batches read ahead of the sink, at most (the byte budget applies too).
pub(crate) const PREFETCH_BATCHES: usize = 2;

/// How a shard consumer ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The shard was read to its end; children were announced.
    ShardEnded,
    /// The lease was lost or the worker is shutting down.
    Stopped,
}

/// When confirmed records are checkpointed, and how batches are gathered.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    pub interval: Duration,
    pub max_records: u64,
    /// Gather up to this many records for up to this long before delivering
    /// (a batching window); `None` delivers each read as it comes.
    pub batching: Option<(usize, Duration)>,
}

impl From<&CheckpointSettings> for CheckpointPolicy {
    fn from(s: &CheckpointSettings) -> Self {
        CheckpointPolicy {
            interval: Duration::from_millis(s.interval_ms),
            max_records: s.max_records,
            batching: None,
        }
    }
}

/// What was confirmed and what was written.
struct Progress {
    confirmed: Option<ExtendedSequenceNumber>,
    unwritten: u64,
    last_write: Instant,
}

impl Progress {
    fn due(&self, policy: &CheckpointPolicy) -> bool {
        self.unwritten > 0
            && (self.unwritten >= policy.max_records
                || self.last_write.elapsed() >= policy.interval)
    }
}

/// Runs one shard until its end, the loss of its lease, or a fatal error.
/// `budget` bounds the record data read ahead of the sink.
pub async fn run(
    grant: Grant,
    reader: Reader,
    sink: Arc<dyn Sink>,
    policy: CheckpointPolicy,
    budget: ByteBudget,
) -> Result<Outcome, Error> {
    let shard_id = grant.shard.shard_id.clone();
    if grant.start == Checkpoint::ShardEnd {
        // Finished before (by us or a KCL worker): only the children remain.
        return end_shard(&grant, &[]).await;
    }
    tracing::info!(shard = %shard_id, start = %grant.start, "reading shard");
    let mut progress = Progress {
        confirmed: None,
        unwritten: 0,
        last_write: Instant::now(),
    };
    let mut prefetch = Prefetch::spawn(reader, grant.stop.clone(), PREFETCH_BATCHES, budget);
    let mut tick = tokio::time::interval(policy.interval.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let item = tokio::select! {
            biased;
            _ = grant.stop.cancelled() => return stop(&grant, &mut progress).await,
            item = prefetch.next() => item,
            _ = tick.tick() => {
                if progress.due(&policy) && !write(&grant, &mut progress).await? {
                    return stop(&grant, &mut progress).await;
                }
                continue;
            }
        };
        let prefetched = match item {
            Some(Ok(p)) => p,
            Some(Err(e)) => return Err(e.into()),
            None => return stop(&grant, &mut progress).await,
        };
        match prefetched.fetched {
            Fetched::Records(mut batch) => {
                let mut ended = None;
                if let Some(window) = policy.batching {
                    ended = fill(&mut batch, &mut prefetch, window).await?;
                }
                if grant.stop.is_cancelled() {
                    // Read ahead, but the lease is going (lost, handed over,
                    // or shutdown): leave these records to the next owner.
                    return stop(&grant, &mut progress).await;
                }
                let confirmed = deliver(&*sink, &batch, &grant).await?;
                if confirmed > 0 {
                    progress.confirmed = Some(batch.records[confirmed - 1].position());
                    progress.unwritten += confirmed as u64;
                }
                if confirmed < batch.records.len() {
                    // Stopped before the application took the rest: it is
                    // neither confirmed nor checkpointed, and is read again
                    // by whoever holds the lease next.
                    return stop(&grant, &mut progress).await;
                }
                record_delivery(&shard_id, &batch);
                if let Some(children) = ended {
                    return end_shard(&grant, &children).await;
                }
                if progress.due(&policy) && !write(&grant, &mut progress).await? {
                    return stop(&grant, &mut progress).await;
                }
            }
            Fetched::ShardEnd { children } => {
                let outcome = end_shard(&grant, &children).await?;
                if outcome == Outcome::ShardEnded {
                    tracing::info!(
                        shard = %shard_id,
                        children = ?children.iter().map(|c| c.shard_id.as_str()).collect::<Vec<_>>(),
                        "shard ended"
                    );
                }
                return Ok(outcome);
            }
        }
    }
}

/// Gathers more reads into `batch` until it holds `size` records or the
/// window closes. Returns the children when the shard ended meanwhile (the
/// gathered records are delivered first).
async fn fill(
    batch: &mut Batch,
    prefetch: &mut Prefetch,
    (size, window): (usize, Duration),
) -> Result<Option<Vec<ShardSpec>>, Error> {
    let deadline = tokio::time::Instant::now() + window;
    while batch.records.len() < size {
        match tokio::time::timeout_at(deadline, prefetch.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(more))) => match more.fetched {
                Fetched::Records(more) => {
                    batch.records.extend(more.records);
                    batch.millis_behind_latest =
                        more.millis_behind_latest.or(batch.millis_behind_latest);
                }
                Fetched::ShardEnd { children } => return Ok(Some(children)),
            },
        }
    }
    Ok(None)
}

/// Counts a confirmed batch: records, bytes, and how far behind the tip it
/// was read.
pub(crate) fn record_delivery(shard_id: &str, batch: &Batch) {
    let shard = shard_id.to_owned();
    metrics::counter!("kcld_records_delivered_total", "shard" => shard.clone())
        .increment(batch.records.len() as u64);
    metrics::counter!("kcld_bytes_delivered_total", "shard" => shard.clone())
        .increment(batch.data_bytes() as u64);
    if let Some(ms) = batch.millis_behind_latest {
        metrics::gauge!("kcld_lag_seconds", "shard" => shard).set(ms as f64 / 1000.0);
    }
}

/// Writes the confirmed position. Returns false when the lease was lost
/// (the shard must stop); a store that is unavailable is retried at the
/// next due time, while reading goes on.
async fn write(grant: &Grant, progress: &mut Progress) -> Result<bool, Error> {
    let Some(position) = progress.confirmed.clone() else {
        return Ok(true);
    };
    match grant.lease.checkpoint(&Checkpoint::At(position)).await {
        Ok(()) => {
            metrics::counter!("kcld_checkpoints_total", "shard" => grant.shard.shard_id.clone())
                .increment(1);
            progress.unwritten = 0;
            progress.last_write = Instant::now();
            Ok(true)
        }
        Err(CheckpointError::LeaseLost { .. }) => Ok(false),
        Err(CheckpointError::Fatal(e)) => Err(Error::Aws(e)),
        Err(e) => {
            tracing::warn!(shard = %grant.shard.shard_id, "checkpoint not written, retrying later: {e}");
            progress.last_write = Instant::now();
            Ok(true)
        }
    }
}

/// The final checkpoint on stop: refused by the lease layer if the lease was
/// lost, so it can only ever cover records this worker confirmed while it
/// held the lease. It also completes a handoff to another worker.
async fn stop(grant: &Grant, progress: &mut Progress) -> Result<Outcome, Error> {
    let last = match (&progress.confirmed, progress.unwritten) {
        (Some(position), n) if n > 0 => Some(Checkpoint::At(position.clone())),
        _ => None,
    };
    match grant.lease.stopped(last.as_ref()).await {
        Ok(()) | Err(CheckpointError::LeaseLost { .. }) => {}
        Err(CheckpointError::Fatal(e)) => return Err(Error::Aws(e)),
        Err(e) => {
            tracing::warn!(shard = %grant.shard.shard_id, "final checkpoint not written: {e}")
        }
    }
    Ok(Outcome::Stopped)
}

/// Offers the batch until the sink confirms it. While the application is
/// down the same batch is offered again after a growing pause, and nothing
/// is checkpointed; shutdown does not interrupt a delivery already started
/// unless the sink itself is retrying. Returns how many records of the batch
/// are confirmed: all of them, or a prefix when the lease was lost (or
/// shutdown began) first.
async fn deliver(sink: &dyn Sink, batch: &Batch, grant: &Grant) -> Result<usize, Error> {
    let mut attempt = 0u32;
    loop {
        match sink.deliver(batch, &grant.stop).await {
            Ok(()) => return Ok(batch.records.len()),
            Err(SinkError::Stopped { confirmed }) => return Ok(confirmed.min(batch.records.len())),
            Err(SinkError::Fatal(e)) => {
                metrics::counter!("kcld_sink_failures_total", "shard" => batch.shard_id.to_string()).increment(1);
                return Err(Error::Sink(e));
            }
            Err(SinkError::Retry(e)) => {
                metrics::counter!("kcld_sink_retries_total", "shard" => batch.shard_id.to_string())
                    .increment(1);
                attempt = attempt.saturating_add(1);
                let wait = Duration::from_millis((100u64 << attempt.min(8)).min(30_000));
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(shard = %batch.shard_id, attempt, "{e}; offering the batch again in {wait:?}");
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = grant.stop.cancelled() => return Ok(0),
                }
            }
        }
    }
}

/// SHARD_END, retried while the lease table is unavailable; a lost lease
/// leaves the end to the next owner (it re-reads the shard's tail).
pub(crate) async fn end_shard(grant: &Grant, children: &[ShardSpec]) -> Result<Outcome, Error> {
    let mut attempt = 0u32;
    loop {
        match grant.lease.shard_ended(children).await {
            Ok(()) => return Ok(Outcome::ShardEnded),
            Err(CheckpointError::LeaseLost { .. }) => return Ok(Outcome::Stopped),
            Err(CheckpointError::Fatal(e)) => return Err(Error::Aws(e)),
            Err(e) => {
                attempt = attempt.saturating_add(1);
                if attempt == 1 || attempt.is_power_of_two() {
                    tracing::warn!(shard = %grant.shard.shard_id, "SHARD_END checkpoint not written, retrying: {e}");
                }
                let wait = Duration::from_millis((200u64 << attempt.min(6)).min(10_000));
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = grant.stop.cancelled() => return Ok(Outcome::Stopped),
                }
            }
        }
    }
}
