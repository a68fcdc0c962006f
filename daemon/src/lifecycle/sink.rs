//! A [`Sink`] as a shard processor: each batch is offered until the sink
//! confirms it (back-pressure: nothing new is read meanwhile), and the
//! confirmed position is checkpointed on the checkpoint policy (a number
//! of records or a time), at shutdown and handoff, and as SHARD_END at the
//! shard's end. The stdout and HTTP sinks, and any application's own
//! `Sink`, run through it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kcld_checkpoint::{Checkpoint, ExtendedSequenceNumber};
use kcld_config::CheckpointSettings;
use kcld_lease::ShardSpec;
use tokio_util::sync::CancellationToken;

use super::{
    CheckpointFailure, Checkpointer, ProcessorError, ProcessorFactory, ShardInfo, ShardProcessor,
};
use crate::backoff::Backoff;
use crate::error::Error;
use crate::ops::ShardLabels;
use crate::record::Batch;
use crate::sink::{Sink, SinkError};

/// When confirmed records are checkpointed.
#[derive(Clone, Copy, Debug)]
pub struct CheckpointPolicy {
    /// Checkpoint confirmed records at least this often...
    pub interval: Duration,
    /// ...and whenever this many were confirmed since the last checkpoint.
    pub max_records: u64,
}

impl From<&CheckpointSettings> for CheckpointPolicy {
    fn from(s: &CheckpointSettings) -> Self {
        CheckpointPolicy {
            interval: s.interval,
            max_records: s.max_records,
        }
    }
}

/// The checkpoint policy as it stands now: fixed, or followed as a
/// configuration reload changes it (each processor reads it at every
/// decision, so a change applies to the shards already held).
#[derive(Clone, Debug)]
pub struct LivePolicy(tokio::sync::watch::Receiver<CheckpointPolicy>);

impl LivePolicy {
    /// A policy that follows `changes`.
    pub fn following(changes: tokio::sync::watch::Receiver<CheckpointPolicy>) -> Self {
        LivePolicy(changes)
    }

    /// The policy now.
    pub fn get(&self) -> CheckpointPolicy {
        *self.0.borrow()
    }
}

impl From<CheckpointPolicy> for LivePolicy {
    fn from(policy: CheckpointPolicy) -> Self {
        // The sender goes at once: the receiver keeps the value.
        LivePolicy(tokio::sync::watch::channel(policy).1)
    }
}

/// Makes a [`SinkProcessor`] per shard, all delivering to one sink.
pub struct SinkProcessors {
    /// Where every shard's records are delivered.
    pub sink: Arc<dyn Sink>,
    /// When each shard's confirmed records are checkpointed.
    pub policy: LivePolicy,
    /// The `stream` label of the shards' series when several streams are
    /// read ([`crate::ops::ShardLabels`]); `None` with one.
    pub stream_label: Option<Arc<str>>,
}

impl ProcessorFactory for SinkProcessors {
    fn create(&self, shard: &ShardSpec) -> Result<Box<dyn ShardProcessor>, Error> {
        Ok(Box::new(SinkProcessor {
            sink: self.sink.clone(),
            policy: self.policy.clone(),
            confirmed: None,
            unwritten: 0,
            last_write: Instant::now(),
            stop: CancellationToken::new(),
            shard_id: String::new(),
            labels: ShardLabels::new(self.stream_label.as_deref(), &shard.shard_id),
        }))
    }
}

/// One shard's records into a sink, checkpointed once confirmed.
pub struct SinkProcessor {
    sink: Arc<dyn Sink>,
    policy: LivePolicy,
    /// The last record the sink confirmed.
    confirmed: Option<ExtendedSequenceNumber>,
    /// Records confirmed since the last checkpoint written.
    unwritten: u64,
    last_write: Instant,
    stop: CancellationToken,
    shard_id: String,
    labels: ShardLabels,
}

impl SinkProcessor {
    fn due(&self) -> bool {
        let policy = self.policy.get();
        self.unwritten > 0
            && (self.unwritten >= policy.max_records
                || self.last_write.elapsed() >= policy.interval)
    }

    /// Writes the confirmed position. A lost lease is left to the
    /// lifecycle (the lease layer stops the shard); an unavailable table
    /// is tried again at the next due time, while reading goes on.
    async fn write(&mut self, cp: &mut Checkpointer<'_>) -> Result<(), ProcessorError> {
        let Some(position) = self.confirmed.clone() else {
            return Ok(());
        };
        match cp.checkpoint(Some(Checkpoint::At(position))).await {
            Ok(()) => {
                self.unwritten = 0;
                self.last_write = Instant::now();
                Ok(())
            }
            Err(CheckpointFailure::LeaseLost) => Ok(()),
            Err(CheckpointFailure::Fatal(e)) => Err(ProcessorError::Fatal(e.into())),
            Err(e) => {
                tracing::warn!(shard = %self.shard_id, "checkpoint not written, retrying later: {e}");
                self.last_write = Instant::now();
                Ok(())
            }
        }
    }
}

#[async_trait::async_trait]
impl ShardProcessor for SinkProcessor {
    async fn initialize(&mut self, shard: &ShardInfo<'_>) -> Result<(), ProcessorError> {
        self.stop = shard.stop.clone();
        self.shard_id = shard.shard_id.to_owned();
        Ok(())
    }

    async fn process_records(
        &mut self,
        batch: &Batch,
        cp: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        let confirmed = match batch.records.is_empty() {
            true => 0,
            false => deliver(&*self.sink, batch, &self.labels, &self.stop).await?,
        };
        if confirmed > 0 {
            self.confirmed = Some(batch.records[confirmed - 1].position());
            self.unwritten += confirmed as u64;
        }
        if confirmed == batch.records.len() {
            // Records filtered out after the last delivered one are done too.
            if let Some(to) = &batch.filtered_to {
                self.confirmed = Some(to.clone());
                self.unwritten += 1;
            }
        }
        if confirmed < batch.records.len() {
            // Stopped before the application took the rest: it is neither
            // confirmed nor checkpointed, and is read again by whoever
            // holds the lease next.
            return Ok(());
        }
        if self.due() {
            self.write(cp).await?;
        }
        Ok(())
    }

    fn idle_interval(&self) -> Option<Duration> {
        Some(self.policy.get().interval)
    }

    fn takes_filtered_batches(&self) -> bool {
        true
    }

    async fn idle(&mut self, cp: &mut Checkpointer<'_>) -> Result<(), ProcessorError> {
        if self.due() {
            self.write(cp).await?;
        }
        Ok(())
    }

    /// The sink's own batching window (the HTTP sink's, as a Lambda event
    /// source mapping gathers records).
    fn batching(&self) -> Option<(usize, Duration)> {
        self.sink.batching_window()
    }

    fn batching_bytes(&self) -> Option<u64> {
        self.sink.batching_bytes()
    }

    /// SHARD_END, retried while the lease table is unavailable; a lost
    /// lease leaves the end to the next owner (it reads the shard's tail
    /// again).
    async fn shard_ended(&mut self, cp: &mut Checkpointer<'_>) -> Result<(), ProcessorError> {
        let delivered = cp.largest();
        let all_confirmed = match (&self.confirmed, delivered) {
            (Some(confirmed), Checkpoint::At(last)) => confirmed == last,
            // Nothing was delivered since the last checkpoint.
            (_, largest) => !matches!(largest, Checkpoint::At(_)) || *largest == *cp.last(),
        };
        if !all_confirmed {
            // SHARD_END would pass records the sink did not confirm: leave
            // the end to be read again.
            return Ok(());
        }
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match cp.checkpoint(None).await {
                Ok(()) | Err(CheckpointFailure::LeaseLost) => return Ok(()),
                Err(CheckpointFailure::Fatal(e)) => return Err(ProcessorError::Fatal(e.into())),
                Err(e) => {
                    let wait = backoff.next_wait();
                    if backoff.worth_logging() {
                        tracing::warn!(shard = %self.shard_id, "SHARD_END checkpoint not written, retrying: {e}");
                    }
                    if !Backoff::sleep(wait, &self.stop).await {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// The final checkpoint: what was confirmed and not yet written. It
    /// also completes a handoff to another worker.
    async fn shutdown_requested(
        &mut self,
        cp: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        if self.unwritten == 0 {
            return Ok(());
        }
        match self.write(cp).await {
            Ok(()) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Offers the batch until the sink confirms it. While the application is
/// down the same batch is offered again after a growing pause, and nothing
/// is checkpointed; shutdown does not interrupt a delivery already started
/// unless the sink itself is retrying. Returns how many records of the batch
/// are confirmed: all of them, or a prefix when the lease was lost (or
/// shutdown began) first.
async fn deliver(
    sink: &dyn Sink,
    batch: &Batch,
    labels: &ShardLabels,
    stop: &CancellationToken,
) -> Result<usize, ProcessorError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    loop {
        match sink.deliver(batch, stop).await {
            Ok(()) => return Ok(batch.records.len()),
            Err(SinkError::Stopped { confirmed }) => return Ok(confirmed.min(batch.records.len())),
            Err(SinkError::Fatal(e)) => {
                metrics::counter!("kcld_sink_failures_total", labels.get()).increment(1);
                return Err(ProcessorError::Fatal(Error::Sink(SinkError::Fatal(e))));
            }
            Err(SinkError::Retry(e)) => {
                metrics::counter!("kcld_sink_retries_total", labels.get()).increment(1);
                let wait = backoff.next_wait();
                if backoff.worth_logging() {
                    tracing::warn!(shard = %batch.shard_id, attempt = backoff.failures(), "{e}; offering the batch again in {wait:?}");
                }
                if !Backoff::sleep(wait, stop).await {
                    return Ok(0);
                }
            }
        }
    }
}
