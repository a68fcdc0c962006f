//! One leased shard from its grant to its end: the one state machine that
//! drives every shard, whatever reads it ([`RecordSource`]: polling,
//! fan-out) and whatever takes its records ([`ShardProcessor`]: a sink
//! through [`sink::SinkProcessor`], a MultiLang record processor, an
//! embedding application's own code). The KCL's `ShardConsumer` driving a
//! `ShardRecordProcessor` is the model:
//!
//! ```text
//! initialize ─► processRecords (+ checkpointer) ─► … ─┬─► shardEnded (must checkpoint SHARD_END)
//!                                                      ├─► shutdownRequested, leaseLost (shutdown, handoff)
//!                                                      └─► leaseLost (the lease was lost)
//! ```
//!
//! Invariants:
//! - the [`Checkpointer`] refuses any position outside (last checkpoint,
//!   last record delivered], so no checkpoint passes a record the
//!   processor was not given, and a processor only checkpoints what it
//!   confirmed;
//! - nothing new is delivered once the lease is going: read-ahead records
//!   are left to the next owner;
//! - a shard's children are announced only with its SHARD_END checkpoint;
//! - a processor that fails is replaced and gets everything after the last
//!   checkpoint again (from the first record it was given when it never
//!   checkpointed); one that fails after SHARD_END was written leaves the
//!   shard finished.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use kcld_checkpoint::{Checkpoint, CheckpointError};
use kcld_lease::{Grant, ShardSpec};
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::ops::ShardLabels;
use crate::record::Batch;
use crate::retrieval::prefetch::{ByteBudget, Prefetch};
use crate::retrieval::{Fetched, Reader, Resume};
use crate::stream::KinesisError;
use kcld_records::filter::Filters;

use checkpointer::Positions;
pub use checkpointer::{CheckpointFailure, Checkpointer};

mod checkpointer;
pub mod sink;

/// Batches read ahead of the processor, at most (the byte budget applies
/// too).
pub(crate) const PREFETCH_BATCHES: usize = 2;

/// Where a shard's records come from: one read at a time, in shard order.
#[async_trait::async_trait]
pub trait RecordSource: Send {
    /// The next non-empty batch, or the shard's end; `Ok(None)` once
    /// `cancel` fired. Transient errors are retried inside; the ones
    /// returned need a person (access denied, stream gone).
    async fn next(&mut self, cancel: &CancellationToken) -> Result<Option<Fetched>, KinesisError>;
}

#[async_trait::async_trait]
impl RecordSource for Reader {
    async fn next(&mut self, cancel: &CancellationToken) -> Result<Option<Fetched>, KinesisError> {
        Reader::next(self, cancel).await
    }
}

/// Opens a shard's source at a position: once at the start, and again
/// whenever a processor is replaced.
pub trait Sources: Send {
    /// A source that reads the shard from `at` on.
    fn open(&mut self, at: &Resume) -> Box<dyn RecordSource>;
}

impl<F> Sources for F
where
    F: FnMut(&Resume) -> Box<dyn RecordSource> + Send,
{
    fn open(&mut self, at: &Resume) -> Box<dyn RecordSource> {
        self(at)
    }
}

/// Why a processor stopped working.
#[derive(Debug, thiserror::Error)]
pub enum ProcessorError {
    /// This processor cannot go on (it exited, hung, broke its protocol):
    /// a new one takes over at the last checkpoint.
    #[error("{0}")]
    Failed(String),
    /// Nothing can go on: kcld stops.
    #[error(transparent)]
    Fatal(#[from] Error),
}

/// What a processor is told at `initialize`.
pub struct ShardInfo<'a> {
    /// The shard this processor is given.
    pub shard_id: &'a str,
    /// The last checkpoint: records after it follow.
    pub checkpoint: &'a Checkpoint,
    /// Fires when the lease is going (lost, handed over, shutdown); a
    /// processor waiting on its application should give up then.
    pub stop: &'a CancellationToken,
}

/// Takes one shard's records, with the KCL's callbacks. Every callback but
/// `initialize` and `lease_lost` may checkpoint.
#[async_trait::async_trait]
pub trait ShardProcessor: Send {
    /// Called once before the first records, with the shard and its last
    /// checkpoint (the KCL's `initialize`).
    async fn initialize(&mut self, _shard: &ShardInfo<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }

    /// Records in shard order. The processor checkpoints when it chooses.
    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError>;

    /// How often [`ShardProcessor::idle`] is called while no records
    /// come; `None` never.
    fn idle_interval(&self) -> Option<Duration> {
        None
    }

    /// Called every [`ShardProcessor::idle_interval`]: a chance to write a
    /// checkpoint that is due by time.
    async fn idle(&mut self, _checkpointer: &mut Checkpointer<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }

    /// Gather up to this many records for up to this long before calling
    /// `process_records` (a batching window); `None` hands each read on.
    fn batching(&self) -> Option<(usize, Duration)> {
        None
    }

    /// With [`ShardProcessor::batching`]: stop gathering once the records'
    /// data reaches this many bytes.
    fn batching_bytes(&self) -> Option<u64> {
        None
    }

    /// Whether a batch whose records were all filtered out is still handed
    /// over (empty, with `filtered_to`), so that the processor can
    /// checkpoint past it. Processors that checkpoint for themselves only
    /// see the records that passed, and checkpoint past the others with
    /// the next record they take.
    fn takes_filtered_batches(&self) -> bool {
        false
    }

    /// The shard was read to its end: the processor must checkpoint
    /// (`checkpoint(None)` writes SHARD_END), or the shard is read again.
    async fn shard_ended(
        &mut self,
        checkpointer: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError>;

    /// The worker shuts down or hands the lease to another worker: the
    /// last chance to checkpoint. `lease_lost` follows.
    async fn shutdown_requested(
        &mut self,
        _checkpointer: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        Ok(())
    }

    /// The lease is gone: no checkpoint is possible.
    async fn lease_lost(&mut self) -> Result<(), ProcessorError> {
        Ok(())
    }

    /// After the last callback, or when the processor is replaced or
    /// failed: release what it holds.
    async fn close(self: Box<Self>, _failed: bool) {}
}

/// Makes the processor of a shard (a new one after a failure).
pub trait ProcessorFactory: Send + Sync {
    /// A new processor for `shard`; an error stops the shard's consumer and is
    /// returned from [`run`].
    fn create(&self, shard: &ShardSpec) -> Result<Box<dyn ShardProcessor>, Error>;
}

/// How a shard's consumer ended, when it did not fail.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The shard was read to its end; its children were announced.
    ShardEnded,
    /// The lease was lost or the worker is shutting down.
    Stopped,
}

/// What a shard's consumer is given besides its grant.
#[derive(Clone, Debug)]
pub struct ShardContext {
    /// The shard's (and its stream's) metric labels.
    pub labels: ShardLabels,
    /// The filter criteria: records matching none are passed over
    /// (counted, never delivered, checkpointed past); `None` delivers all.
    pub filters: Option<Arc<Filters>>,
}

impl From<ShardLabels> for ShardContext {
    fn from(labels: ShardLabels) -> Self {
        ShardContext {
            labels,
            filters: None,
        }
    }
}

/// A grant with its context: what a shard's consumer keeps.
pub(crate) struct Granted {
    grant: Grant,
    pub(crate) labels: ShardLabels,
    filters: Option<Arc<Filters>>,
}

impl std::ops::Deref for Granted {
    type Target = Grant;

    fn deref(&self) -> &Grant {
        &self.grant
    }
}

/// How one processor's run ended, when it did not fail.
enum Finish {
    ShardEnded,
    /// The lease was lost, handed over, or kcld is shutting down.
    Stopped,
    /// `shard_ended` returned without SHARD_END written.
    EndNotCheckpointed,
}

/// Runs one shard until its end, the loss of its lease, or a fatal error.
/// `budget` bounds the record data read ahead of the processor.
/// `context` names the shard (and its stream) in the metrics and holds the
/// filter criteria.
pub async fn run(
    grant: Grant,
    context: impl Into<ShardContext>,
    mut sources: impl Sources,
    processors: Arc<dyn ProcessorFactory>,
    budget: ByteBudget,
) -> Result<Outcome, Error> {
    let ShardContext { labels, filters } = context.into();
    let grant = Granted {
        grant,
        labels,
        filters,
    };
    let shard_id = grant.shard.shard_id.clone();
    let mut positions = Positions {
        last: grant.start.clone(),
        largest: grant.start.clone(),
        first: None,
    };
    if grant.start == Checkpoint::ShardEnd {
        // Finished before (by us or a KCL worker): only the children remain.
        return end_again(&grant).await;
    }
    let opened_at = SystemTime::now();
    let mut resume = Resume::After(grant.start.clone());
    // A processor that keeps failing is restarted ever more slowly.
    let mut restarts = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
    loop {
        let mut processor = processors.create(&grant.shard)?;
        tracing::info!(shard = %shard_id, start = %resume, "reading shard");
        let started = tokio::time::Instant::now();
        let source = sources.open(&resume);
        let result = drive(&grant, &mut positions, &mut *processor, source, &budget).await;
        if started.elapsed() > Duration::from_secs(60) {
            restarts.reset();
        }
        match result {
            Ok(Finish::ShardEnded) => {
                processor.close(false).await;
                tracing::info!(shard = %shard_id, "shard ended");
                return Ok(Outcome::ShardEnded);
            }
            Ok(Finish::Stopped) => {
                processor.close(false).await;
                return stopped(&grant).await;
            }
            Ok(Finish::EndNotCheckpointed) => {
                processor.close(false).await;
                tracing::warn!(shard = %shard_id, "the processor did not checkpoint at the shard's end (it must checkpoint there); reading again from the last checkpoint {}", positions.last);
            }
            Err(ProcessorError::Fatal(e)) => {
                processor.close(true).await;
                return Err(e);
            }
            Err(ProcessorError::Failed(e)) => {
                processor.close(true).await;
                metrics::counter!("kcld_processor_failures_total", grant.labels.get()).increment(1);
                tracing::warn!(shard = %shard_id, "{e}; starting a new one at the last checkpoint {}", positions.last);
            }
        }
        if positions.last == Checkpoint::ShardEnd {
            // It failed after SHARD_END was written: the shard is done.
            tracing::info!(shard = %shard_id, "shard ended");
            return Ok(Outcome::ShardEnded);
        }
        if grant.stop.is_cancelled() {
            return stopped(&grant).await;
        }
        if !Backoff::sleep(restarts.next_wait(), &grant.stop).await {
            return stopped(&grant).await;
        }
        resume = positions.resume(opened_at);
        positions.largest = positions.last.clone();
    }
}

/// One processor's life: initialize, records until the shard ends or the
/// lease goes, and the matching goodbye.
async fn drive(
    grant: &Granted,
    positions: &mut Positions,
    processor: &mut dyn ShardProcessor,
    source: Box<dyn RecordSource>,
    budget: &ByteBudget,
) -> Result<Finish, ProcessorError> {
    let shard_id = &grant.shard.shard_id;
    processor
        .initialize(&ShardInfo {
            shard_id,
            checkpoint: &positions.last,
            stop: &grant.stop,
        })
        .await?;
    let mut prefetch =
        Prefetch::spawn(source, grant.stop.clone(), PREFETCH_BATCHES, budget.clone());
    let mut tick = processor.idle_interval().map(|every| {
        let mut t = tokio::time::interval(every.max(Duration::from_millis(100)));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        let item = tokio::select! {
            biased;
            _ = grant.stop.cancelled() => return goodbye(grant, positions, processor).await,
            item = prefetch.next() => item,
            _ = async { tick.as_mut()?.tick().await; Some(()) }, if tick.is_some() => {
                let mut cp = Checkpointer { grant, positions, end: None };
                processor.idle(&mut cp).await?;
                // The processor's interval may have changed (a reload).
                if let (Some(t), Some(every)) = (tick.as_mut(), processor.idle_interval()) {
                    let every = every.max(Duration::from_millis(100));
                    if t.period() != every {
                        *t = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
                continue;
            }
        };
        // The batch's share of the read-ahead budget is held until it was
        // processed, so the budget bounds what is delivered too. (Batches a
        // batching window gathers give theirs back: an S3 buffer may be
        // larger than a shard's read-ahead.)
        let (fetched, _held) = match item {
            None => return goodbye(grant, positions, processor).await,
            Some(Err(e)) => return Err(ProcessorError::Fatal(e.into())),
            Some(Ok(p)) => p.into_parts(),
        };
        let (mut batch, mut children) = match fetched {
            Fetched::Records(batch) => (batch, None),
            Fetched::ShardEnd { children } => {
                return shard_end(grant, positions, processor, &children).await;
            }
        };
        if let Some(window) = processor.batching() {
            let bytes = processor.batching_bytes().unwrap_or(u64::MAX);
            children = fill(&mut batch, &mut prefetch, window, bytes).await?;
        }
        if grant.stop.is_cancelled() {
            // Read ahead, but the lease is going (lost, handed over, or
            // shutdown): leave these records to the next owner.
            return goodbye(grant, positions, processor).await;
        }
        if let Some(position) = batch.last_position() {
            if positions.first.is_none() {
                positions.first = batch.records.first().map(|r| r.position());
            }
            positions.largest = Checkpoint::At(position);
        }
        if let Some(filters) = &grant.filters {
            filter_batch(&mut batch, filters, &grant.labels);
        }
        // A batch filtered out entirely reaches only a processor that
        // checkpoints past it.
        if !batch.records.is_empty()
            || (batch.filtered_to.is_some() && processor.takes_filtered_batches())
        {
            let mut cp = Checkpointer {
                grant,
                positions,
                end: None,
            };
            processor.process_records(&batch, &mut cp).await?;
            record_delivery(&grant.labels, &batch);
        }
        drop((batch, _held));
        if grant.stop.is_cancelled() {
            // The lease went while the processor had the batch: it may not
            // have taken all of it, so the shard's end (gathered with the
            // batch) is the next owner's to reach.
            return goodbye(grant, positions, processor).await;
        }
        if let Some(children) = children {
            return shard_end(grant, positions, processor, &children).await;
        }
    }
}

/// The shard was read to its end: the processor checkpoints SHARD_END (the
/// children's leases are made with it).
async fn shard_end(
    grant: &Granted,
    positions: &mut Positions,
    processor: &mut dyn ShardProcessor,
    children: &[ShardSpec],
) -> Result<Finish, ProcessorError> {
    let mut cp = Checkpointer {
        grant,
        positions,
        end: Some(children),
    };
    processor.shard_ended(&mut cp).await?;
    if positions.last == Checkpoint::ShardEnd {
        tracing::info!(
            shard = %grant.shard.shard_id,
            children = ?children.iter().map(|c| c.shard_id.as_str()).collect::<Vec<_>>(),
            "shard read to its end"
        );
        return Ok(Finish::ShardEnded);
    }
    if grant.stop.is_cancelled() {
        return Ok(Finish::Stopped);
    }
    Ok(Finish::EndNotCheckpointed)
}

/// The lease is going. Lost: `lease_lost` alone (no checkpoint is
/// possible). Shutdown or handoff: `shutdown_requested` (the last chance to
/// checkpoint), then `lease_lost`.
async fn goodbye(
    grant: &Granted,
    positions: &mut Positions,
    processor: &mut dyn ShardProcessor,
) -> Result<Finish, ProcessorError> {
    if !grant.lease.is_lost() {
        let mut cp = Checkpointer {
            grant,
            positions,
            end: None,
        };
        processor.shutdown_requested(&mut cp).await?;
    }
    processor.lease_lost().await?;
    Ok(Finish::Stopped)
}

/// Gathers more reads into `batch` until it holds `size` records or the
/// window closes. Returns the children when the shard ended meanwhile (the
/// gathered records are delivered first).
async fn fill(
    batch: &mut Batch,
    prefetch: &mut Prefetch,
    (size, window): (usize, Duration),
    max_bytes: u64,
) -> Result<Option<Vec<ShardSpec>>, ProcessorError> {
    let deadline = tokio::time::Instant::now() + window;
    let mut bytes = batch.data_bytes() as u64;
    while batch.records.len() < size && bytes < max_bytes {
        match tokio::time::timeout_at(deadline, prefetch.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(Err(e))) => return Err(ProcessorError::Fatal(e.into())),
            Ok(Some(Ok(more))) => match more.fetched {
                Fetched::Records(more) => {
                    bytes += more.data_bytes() as u64;
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

/// Drops the records `filters` do not pass, counting them; `filtered_to`
/// then says how far the batch was read.
fn filter_batch(batch: &mut Batch, filters: &Filters, labels: &ShardLabels) {
    let Some(last) = batch.last_position() else {
        return;
    };
    let before = batch.records.len();
    batch.records.retain(|r| filters.matches(r));
    let dropped = before - batch.records.len();
    if dropped > 0 {
        metrics::counter!("kcld_records_filtered_total", labels.get()).increment(dropped as u64);
        batch.filtered_to = Some(last);
    }
}

/// Counts a processed batch: records, bytes, and how far behind the tip it
/// was read.
fn record_delivery(labels: &ShardLabels, batch: &Batch) {
    let shard = labels.get();
    metrics::counter!("kcld_records_delivered_total", shard.clone())
        .increment(batch.records.len() as u64);
    metrics::counter!("kcld_bytes_delivered_total", shard.clone())
        .increment(batch.data_bytes() as u64);
    if let Some(ms) = batch.millis_behind_latest {
        metrics::gauge!("kcld_lag_seconds", shard.clone()).set(ms as f64 / 1000.0);
    }
}

/// The lease is going and the processor said goodbye: complete a handoff
/// nobody wrote yet. Nothing else is written here: checkpoints are the
/// processor's.
async fn stopped(grant: &Granted) -> Result<Outcome, Error> {
    match grant.lease.stopped(None).await {
        Err(e @ CheckpointError::Fatal(_)) => Err(e.into()),
        _ => Ok(Outcome::Stopped),
    }
}

/// A lease granted at SHARD_END (finished before, the end not yet handed
/// on): SHARD_END again, so the children are made and the lease let go.
/// Retried while the lease table is unavailable.
async fn end_again(grant: &Granted) -> Result<Outcome, Error> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match grant.lease.shard_ended(&[]).await {
            Ok(()) => return Ok(Outcome::ShardEnded),
            Err(CheckpointError::LeaseLost { .. }) => return Ok(Outcome::Stopped),
            Err(e @ CheckpointError::Fatal(_)) => return Err(e.into()),
            Err(e) => {
                let wait = backoff.next_wait();
                if backoff.worth_logging() {
                    tracing::warn!(shard = %grant.shard.shard_id, "SHARD_END checkpoint not written, retrying: {e}");
                }
                if !Backoff::sleep(wait, &grant.stop).await {
                    return Ok(Outcome::Stopped);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
