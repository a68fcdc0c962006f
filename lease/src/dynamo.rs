//! Leases kept in a DynamoDB table with the KCL's schema, shared by any
//! number of workers (kcld or KCL).
//!
//! One coordinator task per worker:
//! - renews every held lease each `renew_interval` (counter + 1, conditioned
//!   on the counter it last wrote);
//! - stops a shard whose lease it could not renew for `failover - safety`,
//!   so it has stopped before any other worker may judge the lease expired;
//! - scans the table each `take_interval`, judges expiry by counters that
//!   stopped moving, and takes or steals leases toward its fair share
//!   (`balance`);
//! - syncs the table with ListShards and deletes finished parents;
//! - on shutdown, after the consumers' final checkpoints, releases every
//!   lease so others take them at their next scan.
//!
//! Checkpoints go through the same per-lease lock as renewals, so both always
//! condition on the counter this worker wrote last.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};
use kcld_checkpoint::{Checkpoint, CheckpointError, Checkpointer};
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::balance::{self, Observations, TakeLimits};
use crate::key::{LeaseKey, StreamScope};
use crate::record::LeaseRecord;
use crate::table::{LeaseTable, TableError};
use crate::{Grant, LeaseHandle, LeaseSource, ShardLister, ShardSpec};

/// How this worker takes part in the lease protocol.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub worker_id: String,
    /// A lease whose counter has not moved for this long is expired.
    pub failover: Duration,
    /// How often held leases are renewed.
    pub renew_interval: Duration,
    /// How often the table is scanned for leases to take.
    pub take_interval: Duration,
    /// How often shards are listed to add missing leases and remove
    /// finished ones.
    pub shard_sync_interval: Duration,
    pub max_leases: usize,
    pub max_steal: usize,
    /// Where shards start when the table has no lease of this stream yet.
    pub initial: Checkpoint,
}

impl LeaseSettings {
    /// The KCL's renewal period for a failover time: a third of it, less
    /// 25 ms, so that two renewals can fail before the lease expires.
    pub fn kcl_renew_interval(failover: Duration) -> Duration {
        (failover / 3)
            .saturating_sub(Duration::from_millis(25))
            .max(Duration::from_millis(100))
    }

    /// How long before others may judge a lease expired this worker stops
    /// reading it, covering the time a consumer needs to notice.
    fn safety(&self) -> Duration {
        (self.failover / 10).min(Duration::from_secs(1))
    }
}

/// The DynamoDB lease source.
pub struct DynamoLeases {
    grants: mpsc::UnboundedReceiver<Grant>,
    shutdown: CancellationToken,
    closing: CancellationToken,
    task: Option<JoinHandle<()>>,
}

struct Inner {
    table: LeaseTable,
    settings: LeaseSettings,
    scope: StreamScope,
    lister: Arc<dyn ShardLister>,
    held: StdMutex<HashMap<String, Arc<Held>>>,
    /// The key format of this stream's leases (single or multi-stream).
    template: StdMutex<LeaseKey>,
    /// Wakes the taker early (a shard ended: its children are ready).
    take_now: Notify,
    grants: mpsc::UnboundedSender<Grant>,
    shutdown: CancellationToken,
}

/// A lease this worker holds.
struct Held {
    key: String,
    shard_id: String,
    /// The counter this worker wrote last; locked across each write.
    counter: Mutex<i64>,
    /// When the last successful write of this lease was sent.
    renewed_at: StdMutex<Instant>,
    lost: AtomicBool,
    stop: CancellationToken,
}

fn lock<T>(m: &StdMutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its data consistent; a poisoned lock
    // only means another thread panicked after finishing its update.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DynamoLeases {
    /// Ensures the table exists, creates leases for the stream's shards when
    /// needed, and starts the coordinator. `shutdown` stops taking and
    /// cancels every grant; [`LeaseSource::shutdown`] then releases.
    pub async fn start(
        table: LeaseTable,
        lister: Arc<dyn ShardLister>,
        scope: StreamScope,
        settings: LeaseSettings,
        shutdown: CancellationToken,
    ) -> Result<Self, TableError> {
        table.ensure(Duration::from_secs(60)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            table,
            settings,
            scope,
            lister,
            held: StdMutex::new(HashMap::new()),
            template: StdMutex::new(LeaseKey::Single {
                shard_id: String::new(),
            }),
            take_now: Notify::new(),
            grants: tx,
            shutdown: shutdown.clone(),
        });
        // The first sync must succeed: without leases there is nothing to do.
        let leases = inner.table.scan().await?;
        inner.learn_template(&leases);
        inner
            .sync_shards(&leases)
            .await
            .map_err(TableError::Other)?;
        let closing = CancellationToken::new();
        let task = tokio::spawn(inner.clone().coordinate(closing.clone()));
        Ok(DynamoLeases {
            grants: rx,
            shutdown,
            closing,
            task: Some(task),
        })
    }
}

#[async_trait::async_trait]
impl LeaseSource for DynamoLeases {
    async fn next_grant(&mut self) -> Option<Grant> {
        tokio::select! {
            grant = self.grants.recv() => grant,
            _ = self.shutdown.cancelled() => None,
        }
    }

    async fn shutdown(&mut self) {
        self.shutdown.cancel();
        self.closing.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for DynamoLeases {
    fn drop(&mut self) {
        self.closing.cancel();
    }
}

impl Inner {
    fn me(&self) -> &str {
        &self.settings.worker_id
    }

    fn ours<'a>(&self, leases: &'a [LeaseRecord]) -> Vec<&'a LeaseRecord> {
        leases.iter().filter(|l| self.scope.owns(&l.key)).collect()
    }

    /// New leases follow the format the table already uses for this stream.
    fn learn_template(&self, leases: &[LeaseRecord]) {
        if let Some(multi) = self
            .ours(leases)
            .into_iter()
            .find(|l| matches!(l.key, LeaseKey::Multi { .. }))
        {
            *lock(&self.template) = multi.key.clone();
        }
    }

    fn key_for(&self, shard_id: &str) -> LeaseKey {
        lock(&self.template).sibling(shard_id)
    }

    async fn coordinate(self: Arc<Self>, closing: CancellationToken) {
        let s = &self.settings;
        let mut renew = tokio::time::interval(s.renew_interval);
        let mut take = tokio::time::interval(s.take_interval);
        let mut sync = tokio::time::interval_at(
            tokio::time::Instant::now() + s.shard_sync_interval,
            s.shard_sync_interval,
        );
        let mut watchdog = tokio::time::interval(Duration::from_millis(250));
        for i in [&mut renew, &mut take, &mut sync, &mut watchdog] {
            i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        }
        let mut observations = Observations::default();
        let mut scan_failing = false;
        loop {
            tokio::select! {
                _ = closing.cancelled() => break,
                _ = renew.tick() => self.renew_all().await,
                _ = watchdog.tick() => self.expire_unrenewed(),
                _ = take.tick(), if !self.shutdown.is_cancelled() => {
                    self.take_round(&mut observations, &mut scan_failing).await;
                }
                _ = self.take_now.notified(), if !self.shutdown.is_cancelled() => {
                    self.take_round(&mut observations, &mut scan_failing).await;
                }
                _ = sync.tick(), if !self.shutdown.is_cancelled() => {
                    match self.table.scan().await {
                        Ok(leases) => {
                            if let Err(e) = self.sync_shards(&leases).await {
                                tracing::warn!("shard sync: {e}");
                            }
                            self.clean_up(&leases).await;
                        }
                        Err(e) => tracing::warn!("shard sync: {e}"),
                    }
                }
            }
        }
        self.release_all().await;
    }

    async fn renew_all(&self) {
        let held: Vec<Arc<Held>> = lock(&self.held).values().cloned().collect();
        stream::iter(held)
            .for_each_concurrent(16, |h| async move {
                if h.lost.load(Ordering::Acquire) {
                    return;
                }
                let mut counter = h.counter.lock().await;
                let sent = Instant::now();
                match self.table.renew(&h.key, *counter, self.me()).await {
                    Ok(()) => {
                        *counter += 1;
                        *lock(&h.renewed_at) = sent;
                    }
                    Err(TableError::ConditionFailed) | Err(TableError::NotFound(_)) => {
                        self.lose(&h, "another worker took it");
                    }
                    Err(e) => {
                        tracing::warn!(shard = %h.shard_id, "renewal failed: {e}");
                    }
                }
            })
            .await;
    }

    /// Stops every shard whose lease could not be renewed in time.
    fn expire_unrenewed(&self) {
        let limit = self
            .settings
            .failover
            .saturating_sub(self.settings.safety());
        let held: Vec<Arc<Held>> = lock(&self.held).values().cloned().collect();
        for h in held {
            if lock(&h.renewed_at).elapsed() >= limit {
                self.lose(&h, "it could not be renewed within the failover time");
            }
        }
    }

    fn lose(&self, h: &Held, why: &str) {
        if !h.lost.swap(true, Ordering::AcqRel) {
            tracing::warn!(shard = %h.shard_id, "lease lost: {why}; stopping the shard");
        }
        h.stop.cancel();
        lock(&self.held).remove(&h.key);
    }

    async fn take_round(
        self: &Arc<Self>,
        observations: &mut Observations,
        scan_failing: &mut bool,
    ) {
        let leases = match self.table.scan().await {
            Ok(l) => {
                if std::mem::take(scan_failing) {
                    tracing::info!("lease table reachable again");
                }
                l
            }
            Err(e) => {
                if !std::mem::replace(scan_failing, true) {
                    tracing::warn!("cannot scan the lease table: {e}");
                }
                return;
            }
        };
        let now = Instant::now();
        let ours = self.ours(&leases);
        observations.observe(ours.iter().copied(), now);

        // Leases held here that the table says belong to someone else.
        let held: HashMap<String, Arc<Held>> = lock(&self.held).clone();
        for lease in &ours {
            if let Some(h) = held.get(&lease.key.render()) {
                if lease.owner.as_deref() != Some(self.me()) {
                    self.lose(h, "the table names another owner");
                }
            }
        }

        let by_shard: HashMap<&str, &LeaseRecord> =
            ours.iter().map(|l| (l.shard_id(), *l)).collect();
        let readable: Vec<&LeaseRecord> = ours
            .iter()
            .copied()
            .filter(|l| l.checkpoint != Checkpoint::ShardEnd)
            .filter(|l| {
                l.parents.iter().all(|p| {
                    by_shard
                        .get(p.as_str())
                        .is_none_or(|parent| parent.checkpoint == Checkpoint::ShardEnd)
                })
            })
            .collect();
        let held_keys: HashSet<String> = lock(&self.held).keys().cloned().collect();
        let failover = self.settings.failover;
        let plan = balance::plan(
            self.me(),
            &readable,
            &held_keys,
            |l| observations.is_expired(l, now, failover),
            TakeLimits {
                max_leases: self.settings.max_leases,
                max_steal: self.settings.max_steal,
            },
            &mut rand::rng(),
        );
        if plan.take.is_empty() && plan.steal.is_empty() {
            return;
        }
        tracing::info!(
            target_leases = plan.target,
            workers = plan.workers,
            taking = plan.take.len(),
            stealing = plan.steal.len(),
            "taking leases"
        );
        let by_key: HashMap<String, &LeaseRecord> =
            readable.iter().map(|l| (l.key.render(), *l)).collect();
        for key in plan.take.iter().chain(plan.steal.iter()) {
            let Some(lease) = by_key.get(key) else {
                continue;
            };
            let sent = Instant::now();
            match self.table.take(lease, self.me()).await {
                Ok(()) => self.grant(lease, sent),
                Err(TableError::ConditionFailed) => {
                    tracing::debug!(lease = %key, "another worker wrote the lease first");
                }
                Err(e) => {
                    tracing::warn!(lease = %key, "cannot take lease: {e}");
                    break;
                }
            }
        }
    }

    fn grant(self: &Arc<Self>, lease: &LeaseRecord, sent: Instant) {
        let key = lease.key.render();
        let stop = self.shutdown.child_token();
        let held = Arc::new(Held {
            key: key.clone(),
            shard_id: lease.shard_id().to_owned(),
            counter: Mutex::new(lease.counter + 1),
            renewed_at: StdMutex::new(sent),
            lost: AtomicBool::new(false),
            stop: stop.clone(),
        });
        lock(&self.held).insert(key, held.clone());
        let shard = ShardSpec {
            shard_id: lease.shard_id().to_owned(),
            parents: lease.parents.clone(),
            starting_hash_key: lease.starting_hash_key.clone().unwrap_or_default(),
            ending_hash_key: lease.ending_hash_key.clone().unwrap_or_default(),
            closed: false,
        };
        tracing::info!(
            shard = %shard.shard_id,
            checkpoint = %lease.checkpoint,
            previous_owner = lease.owner.as_deref().unwrap_or("none"),
            "lease taken"
        );
        let grant = Grant {
            shard,
            start: lease.checkpoint.clone(),
            lease: Arc::new(DynamoLease {
                inner: self.clone(),
                held,
            }),
            stop,
        };
        let _ = self.grants.send(grant);
    }

    /// Creates leases for shards the table does not know. On the first start
    /// of an application on this stream, shards start at the configured
    /// initial position (with LATEST, only open shards get leases, as in the
    /// KCL); later, new shards start at TRIM_HORIZON so nothing is missed,
    /// and closed shards whose children have leases are left out (they were
    /// read and cleaned up).
    async fn sync_shards(&self, leases: &[LeaseRecord]) -> Result<(), String> {
        let shards = self.lister.list_shards().await?;
        let ours = self.ours(leases);
        let first_start = ours.is_empty();
        let known: HashSet<&str> = ours.iter().map(|l| l.shard_id()).collect();
        let parents_of_known: HashSet<&str> = ours
            .iter()
            .flat_map(|l| l.parents.iter().map(String::as_str))
            .collect();
        let in_stream: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
        let initial = &self.settings.initial;
        let mut created = 0;
        for shard in &shards {
            if known.contains(shard.shard_id.as_str()) {
                continue;
            }
            let checkpoint = if first_start {
                let descendant = shard.parents.iter().any(|p| in_stream.contains(p.as_str()));
                match initial {
                    Checkpoint::Latest if shard.closed => continue,
                    Checkpoint::TrimHorizon | Checkpoint::AtTimestamp if descendant => {
                        if *initial == Checkpoint::AtTimestamp {
                            Checkpoint::AtTimestamp
                        } else {
                            Checkpoint::TrimHorizon
                        }
                    }
                    other => other.clone(),
                }
            } else {
                if shard.closed && parents_of_known.contains(shard.shard_id.as_str()) {
                    continue;
                }
                Checkpoint::TrimHorizon
            };
            let lease = LeaseRecord::new(
                self.key_for(&shard.shard_id),
                checkpoint,
                shard.parents.clone(),
                Some((
                    shard.starting_hash_key.clone(),
                    shard.ending_hash_key.clone(),
                )),
            );
            if self
                .table
                .create_if_absent(&lease)
                .await
                .map_err(|e| e.to_string())?
            {
                created += 1;
            }
        }
        if created > 0 {
            tracing::info!(created, first_start, "leases created for shards");
            self.take_now.notify_one();
        }
        Ok(())
    }

    /// Deletes parents that ended once every child moved past its start
    /// (as the KCL's lease cleanup does).
    async fn clean_up(&self, leases: &[LeaseRecord]) {
        let ours = self.ours(leases);
        let by_shard: HashMap<&str, &LeaseRecord> =
            ours.iter().map(|l| (l.shard_id(), *l)).collect();
        for lease in &ours {
            if lease.checkpoint != Checkpoint::ShardEnd {
                continue;
            }
            let mut children: Vec<&str> = lease.children.iter().map(String::as_str).collect();
            if children.is_empty() {
                children = ours
                    .iter()
                    .filter(|c| c.parents.iter().any(|p| p == lease.shard_id()))
                    .map(|c| c.shard_id())
                    .collect();
            }
            let done = !children.is_empty()
                && children.iter().all(|c| {
                    by_shard.get(c).is_some_and(|child| {
                        matches!(child.checkpoint, Checkpoint::At(_) | Checkpoint::ShardEnd)
                    })
                });
            if done {
                match self.table.delete(&lease.key.render(), lease.counter).await {
                    Ok(()) => {
                        tracing::info!(shard = %lease.shard_id(), "finished parent lease removed")
                    }
                    Err(TableError::ConditionFailed) => {}
                    Err(e) => {
                        tracing::warn!(shard = %lease.shard_id(), "cannot remove finished lease: {e}")
                    }
                }
            }
        }
    }

    async fn release_all(&self) {
        let held: Vec<Arc<Held>> = lock(&self.held).drain().map(|(_, h)| h).collect();
        for h in held {
            if h.lost.swap(true, Ordering::AcqRel) {
                continue;
            }
            let counter = h.counter.lock().await;
            match self.table.release(&h.key, *counter, self.me()).await {
                Ok(()) => tracing::info!(shard = %h.shard_id, "lease released"),
                Err(e) => {
                    tracing::warn!(shard = %h.shard_id, "cannot release lease (others take it after expiry): {e}")
                }
            }
        }
    }
}

/// The lease side of one grant.
struct DynamoLease {
    inner: Arc<Inner>,
    held: Arc<Held>,
}

impl DynamoLease {
    fn lost(&self) -> CheckpointError {
        CheckpointError::LeaseLost {
            shard_id: self.held.shard_id.clone(),
        }
    }

    /// One conditional checkpoint write under the lease's lock.
    async fn write(
        &self,
        position: &Checkpoint,
        children: &[String],
    ) -> Result<(), CheckpointError> {
        if self.held.lost.load(Ordering::Acquire) {
            return Err(self.lost());
        }
        let mut counter = self.held.counter.lock().await;
        let sent = Instant::now();
        match self
            .inner
            .table
            .checkpoint(
                &self.held.key,
                *counter,
                self.inner.me(),
                position,
                children,
            )
            .await
        {
            Ok(()) => {
                *counter += 1;
                *lock(&self.held.renewed_at) = sent;
                Ok(())
            }
            Err(TableError::ConditionFailed) | Err(TableError::NotFound(_)) => {
                drop(counter);
                self.inner
                    .lose(&self.held, "the checkpoint found another owner");
                Err(self.lost())
            }
            Err(e) => Err(to_checkpoint_error(e)),
        }
    }
}

fn to_checkpoint_error(e: TableError) -> CheckpointError {
    match e {
        TableError::AccessDenied(m) | TableError::WrongSchema(m) => CheckpointError::Fatal(m),
        other => CheckpointError::Unavailable(other.to_string()),
    }
}

#[async_trait::async_trait]
impl Checkpointer for DynamoLease {
    async fn checkpoint(&self, position: &Checkpoint) -> Result<(), CheckpointError> {
        self.write(position, &[]).await
    }
}

#[async_trait::async_trait]
impl LeaseHandle for DynamoLease {
    /// Creates the children's leases (at TRIM_HORIZON, so nothing written to
    /// them is skipped), then checkpoints SHARD_END with `childShardIds`, then
    /// lets go of the finished lease. A crash in between re-reads the end of
    /// the parent: duplicates, never a gap.
    async fn shard_ended(&self, children: &[ShardSpec]) -> Result<(), CheckpointError> {
        for child in children {
            let lease = LeaseRecord::new(
                self.inner.key_for(&child.shard_id),
                Checkpoint::TrimHorizon,
                child.parents.clone(),
                Some((
                    child.starting_hash_key.clone(),
                    child.ending_hash_key.clone(),
                )),
            );
            self.inner
                .table
                .create_if_absent(&lease)
                .await
                .map_err(to_checkpoint_error)?;
        }
        let ids: Vec<String> = children.iter().map(|c| c.shard_id.clone()).collect();
        self.write(&Checkpoint::ShardEnd, &ids).await?;
        // The shard is done: release it so it does not look owned, and wake
        // the taker so the children start without waiting for the next scan.
        if !self.held.lost.swap(true, Ordering::AcqRel) {
            let counter = self.held.counter.lock().await;
            if let Err(e) = self
                .inner
                .table
                .release(&self.held.key, *counter, self.inner.me())
                .await
            {
                tracing::debug!(shard = %self.held.shard_id, "finished lease not released: {e}");
            }
        }
        lock(&self.inner.held).remove(&self.held.key);
        self.inner.take_now.notify_one();
        Ok(())
    }
}
