//! Reading ahead of the sink, whatever the retrieval strategy: a fetch task
//! per shard keeps up to a few batches ready while the sink works, bounded
//! by bytes per shard and for the whole worker, so a slow sink applies
//! back-pressure instead of growing memory.

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::Fetched;
use crate::lifecycle::RecordSource;
use crate::stream::KinesisError;

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
    shard: OwnedSemaphorePermit,
    worker: OwnedSemaphorePermit,
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
        let (per_shard, per_worker) = self.permits(size);
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
        Some(BudgetHeld { shard, worker })
    }

    /// Room for a batch of `size` bytes that was read with `reserved` held
    /// (room for a batch like the last one). The room is resized in place
    /// when it can be at once: the excess given back, what is missing taken
    /// if it is free. Otherwise it is all given back and the whole size
    /// waited for, as if nothing had been reserved: a shard never waits
    /// for more while holding some, or two shards could wait on each other.
    pub async fn settle(&self, reserved: Option<BudgetHeld>, size: usize) -> Option<BudgetHeld> {
        let (per_shard, per_worker) = self.permits(size);
        // A permit not resized is dropped here, given back before the wait.
        let resized = reserved.and_then(|held| {
            Some(BudgetHeld {
                shard: resize_now(held.shard, per_shard, &self.shard)?,
                worker: resize_now(held.worker, per_worker, &self.worker)?,
            })
        });
        match resized {
            Some(held) => Some(held),
            None => self.acquire(size).await,
        }
    }

    /// The permits `size` bytes take of the shard's and the worker's
    /// semaphores: a batch larger than a limit takes the whole limit.
    fn permits(&self, size: usize) -> (u32, u32) {
        let of = |max: usize| u32::try_from(size.clamp(1, max)).unwrap_or(u32::MAX);
        (of(self.shard_max), of(self.worker_max))
    }
}

/// `permit` resized to `want` without waiting; `None` (the permit given
/// back) when what is missing is not free now.
fn resize_now(
    mut permit: OwnedSemaphorePermit,
    want: u32,
    pool: &Arc<Semaphore>,
) -> Option<OwnedSemaphorePermit> {
    let held = permit.num_permits();
    let want = want as usize;
    if want < held {
        drop(permit.split(held - want));
    } else if want > held {
        let more = u32::try_from(want - held).ok()?;
        permit.merge(pool.clone().try_acquire_many_owned(more).ok()?);
    }
    Some(permit)
}

/// A batch read ahead, holding its share of the prefetch budget until the
/// consumer is done with it.
pub struct Prefetched {
    /// What the read produced.
    pub fetched: Fetched,
    budget: Option<BudgetHeld>,
}

impl Prefetched {
    /// The batch, and its share of the budget: held while the batch is
    /// processed, the budget bounds every batch in memory (read ahead and
    /// being delivered), not only those waiting.
    pub fn into_parts(self) -> (Fetched, Option<BudgetHeld>) {
        (self.fetched, self.budget)
    }
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
        mut reader: Box<dyn RecordSource>,
        cancel: CancellationToken,
        max_batches: usize,
        budget: ByteBudget,
    ) -> Self {
        let (tx, rx) = mpsc::channel(max_batches.max(1));
        let task = tokio::spawn(async move {
            // The size of the last batch: what the next read likely brings.
            let mut expected = 0;
            loop {
                // Room for a batch like the last one before reading the
                // next, so that a reader of large batches (fan-out events
                // of megabytes at catch-up) holds at most the budget, not
                // the budget and a batch read while it was full.
                let reserved = if expected > 0 {
                    tokio::select! {
                        p = budget.acquire(expected) => p,
                        _ = cancel.cancelled() => return,
                    }
                } else {
                    None
                };
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
                expected = size;
                // The room reserved becomes the batch's, so a batch read is
                // never outside the budget while it waits for room.
                let permit = tokio::select! {
                    p = budget.settle(reserved, size) => p,
                    _ = cancel.cancelled() => return,
                };
                let end = matches!(fetched, Fetched::ShardEnd { .. });
                if tx
                    .send(Ok(Prefetched {
                        fetched,
                        budget: permit,
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
    use std::time::Duration;

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

    #[tokio::test]
    async fn room_reserved_before_a_read_becomes_the_batch_room() {
        let worker = ByteBudget::worker(100);
        let a = ByteBudget::new(worker.clone(), 100, 100);
        let b = ByteBudget::new(worker.clone(), 100, 100);
        let wait = Duration::from_millis(50);
        // A reserved 60 for its read while B waits for all 100: A's batch
        // came smaller and keeps 20 of its room without waiting (given
        // back whole, B would have taken it and A's batch would wait
        // outside the budget until B's was delivered).
        let reserved = a.acquire(60).await;
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(100).await }
        });
        tokio::time::sleep(wait).await;
        let batch = tokio::time::timeout(wait, a.settle(reserved, 20))
            .await
            .expect("the room reserved became the batch's")
            .unwrap();
        assert!(!waiting.is_finished());
        drop(batch);
        drop(tokio::time::timeout(wait, waiting).await.unwrap().unwrap());
        assert_eq!(worker.available_permits(), 100);
        let batch = a.acquire(20).await.unwrap();
        // A larger batch takes what is missing if it is free...
        let batch = tokio::time::timeout(wait, a.settle(Some(batch), 50))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(worker.available_permits(), 50);
        drop(batch);
        // Two shards whose batches both came larger than the room left:
        // each gives its reservation back and waits for the whole size, so
        // one of them goes on (holding some while waiting for more, they
        // would wait on each other for ever).
        let (ra, rb) = (a.acquire(50).await, b.acquire(50).await);
        assert_eq!(worker.available_permits(), 0);
        let first = tokio::spawn({
            let a = a.clone();
            async move { a.settle(ra, 60).await }
        });
        let second = tokio::spawn({
            let b = b.clone();
            async move { b.settle(rb, 60).await }
        });
        let held = tokio::time::timeout(wait, first).await.unwrap().unwrap();
        assert!(held.is_some());
        drop(held);
        let held = tokio::time::timeout(wait, second).await.unwrap().unwrap();
        assert!(held.is_some());
        drop(held);
        assert_eq!(worker.available_permits(), 100);
    }

    /// A source of endless batches of `size` bytes that counts its reads.
    struct Large {
        size: usize,
        reads: Arc<std::sync::atomic::AtomicUsize>,
    }

    #[async_trait::async_trait]
    impl RecordSource for Large {
        async fn next(
            &mut self,
            _cancel: &CancellationToken,
        ) -> Result<Option<Fetched>, KinesisError> {
            let n = self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(Some(Fetched::Records(crate::record::Batch {
                shard_id: Arc::from("s"),
                records: vec![crate::record::Record {
                    sequence_number: (n + 1).to_string().parse().unwrap(),
                    sub_sequence_number: 0,
                    aggregated: false,
                    partition_key: crate::record::ByteStr::from("pk"),
                    explicit_hash_key: None,
                    data: bytes::Bytes::from(vec![0u8; self.size]),
                    approximate_arrival_ms: 0,
                    encryption: None,
                }],
                millis_behind_latest: None,
                filtered_to: None,
            })))
        }
    }

    #[tokio::test]
    async fn large_batches_are_read_only_when_there_is_room_for_them() {
        use std::sync::atomic::Ordering;
        let reads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let source = Large {
            size: 60,
            reads: reads.clone(),
        };
        // Room for 100 bytes: one batch of 60 read ahead, and no second
        // one read while the first is held (it would wait for room with
        // its 60 bytes in memory).
        let budget = ByteBudget::new(ByteBudget::worker(1_000), 1_000, 100);
        let cancel = CancellationToken::new();
        let mut prefetch = Prefetch::spawn(Box::new(source), cancel.clone(), 4, budget);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // The consumer takes the first and finishes with it: the next read.
        let first = prefetch.next().await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 1, "still held");
        drop(first);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        cancel.cancel();
    }
}
