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

/// Whether the lease table answered lately: the readiness of a worker.
#[derive(Debug, Default)]
pub struct TableHealth {
    last_ok: StdMutex<Option<Instant>>,
    failing: AtomicBool,
}

impl TableHealth {
    /// Records one call: `answered` when the table replied (a refused
    /// condition is an answer too).
    fn record(&self, answered: bool) {
        if answered {
            *lock(&self.last_ok) = Some(Instant::now());
        }
        self.failing.store(!answered, Ordering::Release);
    }

    /// True when the last call succeeded, no longer ago than `within`.
    pub fn healthy(&self, within: Duration) -> bool {
        !self.failing.load(Ordering::Acquire)
            && lock(&self.last_ok).is_some_and(|t| t.elapsed() <= within)
    }
}

/// The DynamoDB lease source.
pub struct DynamoLeases {
    inner: Arc<Inner>,
    health: Arc<TableHealth>,
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
    health: Arc<TableHealth>,
    /// Set when the source had to close by itself.
    failure: StdMutex<Option<String>>,
    /// Steals this worker started whose old owner has not handed over yet.
    pending: StdMutex<HashMap<String, PendingSteal>>,
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
    /// The counter this worker wrote last, and whether another worker asked
    /// for the lease (a handoff); locked across each write.
    state: Mutex<HeldState>,
    /// When the last successful write of this lease was sent.
    renewed_at: StdMutex<Instant>,
    lost: AtomicBool,
    stop: CancellationToken,
}

struct HeldState {
    counter: i64,
    handoff: bool,
}

/// A steal this worker started: the old owner still finishes its batch.
struct PendingSteal {
    /// Past this, the old owner is presumed gone and the steal is completed
    /// without it (its watchdog has stopped it by then).
    deadline: Instant,
}

fn interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
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
            health: Arc::new(TableHealth::default()),
            failure: StdMutex::new(None),
            pending: StdMutex::new(HashMap::new()),
            template: StdMutex::new(LeaseKey::Single {
                shard_id: String::new(),
            }),
            take_now: Notify::new(),
            grants: tx,
            shutdown: shutdown.clone(),
        });
        // The first sync must succeed: without leases there is nothing to do.
        let leases = inner.table.scan().await;
        inner.health.record(leases.is_ok());
        let leases = leases?;
        inner.learn_template(&leases);
        inner
            .sync_shards(&leases)
            .await
            .map_err(TableError::Other)?;
        let closing = CancellationToken::new();
        let task = tokio::spawn(inner.clone().coordinate(closing.clone()));
        Ok(DynamoLeases {
            inner: inner.clone(),
            health: inner.health.clone(),
            grants: rx,
            shutdown,
            closing,
            task: Some(task),
        })
    }
}

impl DynamoLeases {
    /// The lease table's health, for readiness checks.
    pub fn health(&self) -> Arc<TableHealth> {
        self.health.clone()
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

    fn failure(&self) -> Option<String> {
        lock(&self.inner.failure).clone()
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

    /// Three independent loops, so that a slow scan never delays a renewal
    /// and nothing delays the watchdog that stops unrenewed shards.
    async fn coordinate(self: Arc<Self>, closing: CancellationToken) {
        let s = &self.settings;
        let renewer = async {
            let mut tick = interval(s.renew_interval);
            loop {
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = tick.tick() => self.renew_all().await,
                }
            }
        };
        let watchdog = async {
            let mut tick = interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = tick.tick() => self.expire_unrenewed(),
                }
            }
        };
        let taker = async {
            let mut take = interval(s.take_interval);
            let mut sync = tokio::time::interval_at(
                tokio::time::Instant::now() + s.shard_sync_interval,
                s.shard_sync_interval,
            );
            sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut observations = Observations::default();
            let mut scan_failing = false;
            loop {
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = self.shutdown.cancelled() => return,
                    _ = take.tick() => self.take_round(&mut observations, &mut scan_failing).await,
                    _ = self.take_now.notified() => {
                        self.take_round(&mut observations, &mut scan_failing).await;
                    }
                    _ = sync.tick() => match self.table.scan().await {
                        Ok(leases) => {
                            if let Err(e) = self.sync_shards(&leases).await {
                                tracing::warn!("shard sync: {e}");
                            }
                            self.clean_up(&leases).await;
                        }
                        Err(e) => tracing::warn!("shard sync: {e}"),
                    },
                }
            }
        };
        tokio::join!(renewer, watchdog, taker);
        self.release_all().await;
    }

    async fn renew_all(&self) {
        let held: Vec<Arc<Held>> = lock(&self.held).values().cloned().collect();
        stream::iter(held)
            .for_each_concurrent(16, |h| async move {
                if h.lost.load(Ordering::Acquire) {
                    return;
                }
                let mut state = h.state.lock().await;
                if state.handoff {
                    return;
                }
                let sent = Instant::now();
                let result = self.table.renew(&h.key, state.counter, self.me()).await;
                self.health
                    .record(matches!(result, Ok(()) | Err(TableError::ConditionFailed)));
                match result {
                    Ok(()) => {
                        state.counter += 1;
                        *lock(&h.renewed_at) = sent;
                    }
                    Err(TableError::ConditionFailed) | Err(TableError::NotFound(_)) => {
                        // Lost, or asked to hand over: the item tells which.
                        match self.table.get(&h.key).await {
                            Ok(Some(record)) => self.reconcile(&h, &mut state, &record),
                            Ok(None) => self.lose(&h, "its lease item was deleted"),
                            Err(e) => tracing::warn!(shard = %h.shard_id, "renewal refused and lease unreadable: {e}"),
                        }
                    }
                    Err(e) => {
                        metrics::counter!("kcld_lease_renewal_failures_total").increment(1);
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

    /// A held lease whose item says someone else wrote it: either another
    /// worker asked for it (it names us as `checkpointOwner`: stop reading,
    /// then hand over after the last checkpoint), or it is lost.
    fn reconcile(&self, h: &Held, state: &mut HeldState, record: &LeaseRecord) {
        if record.owner.as_deref() == Some(self.me()) && record.checkpoint_owner.is_none() {
            // Still ours (a counter we missed): adopt it.
            state.counter = record.counter;
            return;
        }
        if record.checkpoint_owner.as_deref() == Some(self.me()) {
            if !state.handoff {
                tracing::info!(
                    shard = %h.shard_id,
                    to = record.owner.as_deref().unwrap_or("?"),
                    "handing the lease over after the batch in hand"
                );
            }
            state.counter = record.counter;
            state.handoff = true;
            h.stop.cancel();
            return;
        }
        self.lose(h, "another worker took it");
    }

    /// Drops a lease that is no longer this worker's, without alarm.
    fn forget(&self, h: &Held) {
        h.lost.store(true, Ordering::Release);
        h.stop.cancel();
        let mut held = lock(&self.held);
        held.remove(&h.key);
        metrics::gauge!("kcld_leases_held").set(held.len() as f64);
    }

    fn lose(&self, h: &Held, why: &str) {
        if !h.lost.swap(true, Ordering::AcqRel) {
            metrics::counter!("kcld_leases_lost_total").increment(1);
            tracing::warn!(shard = %h.shard_id, "lease lost: {why}; stopping the shard");
        }
        h.stop.cancel();
        let mut held = lock(&self.held);
        held.remove(&h.key);
        metrics::gauge!("kcld_leases_held").set(held.len() as f64);
    }

    async fn take_round(
        self: &Arc<Self>,
        observations: &mut Observations,
        scan_failing: &mut bool,
    ) {
        let scanned = self.table.scan().await;
        self.health.record(scanned.is_ok());
        let leases = match scanned {
            Ok(l) => {
                if std::mem::take(scan_failing) {
                    tracing::info!("lease table reachable again");
                }
                l
            }
            Err(TableError::NotFound(table)) => {
                // Deleted under a running worker: its checkpoints are gone.
                // Stop every shard (their renewals fail too) and exit with
                // the reason rather than read on without checkpoints.
                *lock(&self.failure) = Some(format!(
                    "lease table {table} was deleted while kcld ran; its checkpoints are gone. Restart kcld to create \
                     it anew (shards start again at initial_position), or restore the table from a backup first"
                ));
                self.shutdown.cancel();
                return;
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

        // Leases held here that the table says belong to someone else (or
        // that another worker asked for).
        let held: HashMap<String, Arc<Held>> = lock(&self.held).clone();
        for lease in &ours {
            if let Some(h) = held.get(&lease.key.render()) {
                if lease.owner.as_deref() != Some(self.me()) || lease.checkpoint_owner.is_some() {
                    let mut state = h.state.lock().await;
                    if lease.counter >= state.counter {
                        self.reconcile(h, &mut state, lease);
                    }
                }
            }
        }
        self.settle_steals(&ours, now).await;

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
        // Steals in progress count as held, so they are not stolen twice.
        let held_keys: HashSet<String> = lock(&self.held)
            .keys()
            .cloned()
            .chain(lock(&self.pending).keys().cloned())
            .collect();
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
        for key in &plan.take {
            let Some(lease) = by_key.get(key) else {
                continue;
            };
            let sent = Instant::now();
            match self.table.take(lease, self.me()).await {
                Ok(()) => self.grant(lease, lease.counter + 1, sent),
                Err(TableError::ConditionFailed) => {
                    tracing::debug!(lease = %key, "another worker wrote the lease first");
                }
                Err(e) => {
                    tracing::warn!(lease = %key, "cannot take lease: {e}");
                    return;
                }
            }
        }
        for key in &plan.steal {
            let Some(lease) = by_key.get(key) else {
                continue;
            };
            match self.table.steal(lease, self.me()).await {
                Ok(()) => {
                    metrics::counter!("kcld_leases_stolen_total").increment(1);
                    tracing::info!(
                        shard = %lease.shard_id(),
                        from = lease.owner.as_deref().unwrap_or("?"),
                        "lease requested from a busier worker"
                    );
                    lock(&self.pending).insert(
                        key.clone(),
                        PendingSteal {
                            deadline: now + self.settings.failover,
                        },
                    );
                }
                Err(TableError::ConditionFailed) => {}
                Err(e) => {
                    tracing::warn!(lease = %key, "cannot steal lease: {e}");
                    return;
                }
            }
        }
    }

    /// Completes the steals whose old owner stepped aside (it removed
    /// `checkpointOwner` with its last checkpoint), forces those whose old
    /// owner did not within the failover time, and forgets those another
    /// worker took meanwhile.
    async fn settle_steals(self: &Arc<Self>, ours: &[&LeaseRecord], now: Instant) {
        let by_key: HashMap<String, &LeaseRecord> =
            ours.iter().map(|l| (l.key.render(), *l)).collect();
        let mut pending = std::mem::take(&mut *lock(&self.pending));
        let keys: Vec<String> = pending.keys().cloned().collect();
        for key in keys {
            let Some(lease) = by_key.get(&key) else {
                pending.remove(&key);
                continue;
            };
            if lease.owner.as_deref() != Some(self.me()) {
                pending.remove(&key);
                continue;
            }
            if lease.checkpoint_owner.is_none() {
                pending.remove(&key);
                self.grant(lease, lease.counter, now);
                continue;
            }
            if now >= pending[&key].deadline {
                pending.remove(&key);
                let sent = Instant::now();
                match self.table.take(lease, self.me()).await {
                    Ok(()) => {
                        tracing::warn!(shard = %lease.shard_id(), "previous owner did not hand over in time; taking the lease");
                        self.grant(lease, lease.counter + 1, sent);
                    }
                    Err(e) => tracing::debug!(lease = %key, "forced steal refused: {e}"),
                }
            }
        }
        lock(&self.pending).extend(pending);
    }

    /// Starts reading a lease this worker now owns; `counter` is the value
    /// its last write left.
    fn grant(self: &Arc<Self>, lease: &LeaseRecord, counter: i64, sent: Instant) {
        let key = lease.key.render();
        let stop = self.shutdown.child_token();
        let held = Arc::new(Held {
            key: key.clone(),
            shard_id: lease.shard_id().to_owned(),
            state: Mutex::new(HeldState {
                counter,
                handoff: false,
            }),
            renewed_at: StdMutex::new(sent),
            lost: AtomicBool::new(false),
            stop: stop.clone(),
        });
        {
            let mut all = lock(&self.held);
            all.insert(key, held.clone());
            metrics::gauge!("kcld_leases_held").set(all.len() as f64);
        }
        metrics::counter!("kcld_leases_taken_total").increment(1);
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
        // Steals still in progress: give the old owner a moment to hand
        // over (its last checkpoint lands), then let the lease go either way,
        // so that nobody waits for it to expire.
        let pending: Vec<String> = lock(&self.pending).drain().map(|(k, _)| k).collect();
        for key in pending {
            let deadline = Instant::now() + Duration::from_secs(2);
            loop {
                match self.table.get(&key).await {
                    Ok(Some(lease)) if lease.owner.as_deref() == Some(self.me()) => {
                        if lease.checkpoint_owner.is_none() || Instant::now() >= deadline {
                            if let Err(e) = self.table.release(&key, lease.counter, self.me()).await
                            {
                                tracing::debug!(lease = %key, "requested lease not released: {e}");
                            }
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    _ => break,
                }
            }
        }
        let held: Vec<Arc<Held>> = lock(&self.held).drain().map(|(_, h)| h).collect();
        metrics::gauge!("kcld_leases_held").set(0.0);
        for h in held {
            if h.lost.swap(true, Ordering::AcqRel) {
                continue;
            }
            let state = h.state.lock().await;
            if state.handoff {
                continue;
            }
            match self.table.release(&h.key, state.counter, self.me()).await {
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

    /// One conditional checkpoint write under the lease's lock. While a
    /// handoff is pending, the write is the old owner's last one: it also
    /// removes `checkpointOwner`, and the lease is then the new owner's.
    async fn write(
        &self,
        position: Option<&Checkpoint>,
        children: &[String],
    ) -> Result<(), CheckpointError> {
        if self.held.lost.load(Ordering::Acquire) {
            return Err(self.lost());
        }
        let mut state = self.held.state.lock().await;
        if self.held.lost.load(Ordering::Acquire) {
            return Err(self.lost());
        }
        let me = self.inner.me();
        if position.is_none() && !state.handoff {
            // Nothing to write (the consumer stopped with everything
            // checkpointed); only a handoff nobody noticed yet needs its
            // closing write.
            if let Ok(Some(record)) = self.inner.table.get(&self.held.key).await {
                if record.checkpoint_owner.as_deref() == Some(me) {
                    self.inner.reconcile(&self.held, &mut state, &record);
                }
            }
            if !state.handoff {
                return Ok(());
            }
        }
        let sent = Instant::now();
        let mut result = self.attempt(&state, position, children).await;
        if matches!(result, Err(TableError::ConditionFailed)) && !state.handoff {
            // Refused: lost, or another worker asked for the lease since the
            // last renewal. In a handoff this write is the last one.
            if let Ok(Some(record)) = self.inner.table.get(&self.held.key).await {
                self.inner.reconcile(&self.held, &mut state, &record);
                if state.handoff || record.owner.as_deref() == Some(me) {
                    result = self.attempt(&state, position, children).await;
                }
            }
        }
        match result {
            Ok(()) => {
                state.counter += 1;
                *lock(&self.held.renewed_at) = sent;
                if state.handoff {
                    tracing::info!(shard = %self.held.shard_id, "lease handed over");
                    self.inner.forget(&self.held);
                }
                Ok(())
            }
            Err(TableError::ConditionFailed) | Err(TableError::NotFound(_)) => {
                drop(state);
                self.inner
                    .lose(&self.held, "the checkpoint found another owner");
                Err(self.lost())
            }
            Err(e) => Err(to_checkpoint_error(e)),
        }
    }

    async fn attempt(
        &self,
        state: &HeldState,
        position: Option<&Checkpoint>,
        children: &[String],
    ) -> Result<(), TableError> {
        let me = self.inner.me();
        if state.handoff {
            if !children.is_empty() {
                // Ending the shard during a handoff: the next owner re-reads
                // the shard's tail and ends it.
                return Err(TableError::ConditionFailed);
            }
            self.inner
                .table
                .finish_handoff(&self.held.key, state.counter, me, position)
                .await
        } else {
            let Some(position) = position else {
                // Unreachable by `write`'s early return; writes nothing.
                return Err(TableError::Other("no checkpoint to write".into()));
            };
            self.inner
                .table
                .checkpoint(&self.held.key, state.counter, me, position, children)
                .await
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
        self.write(Some(position), &[]).await
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
        self.write(Some(&Checkpoint::ShardEnd), &ids).await?;
        // The shard is done: release it so it does not look owned, and wake
        // the taker so the children start without waiting for the next scan.
        if !self.held.lost.swap(true, Ordering::AcqRel) {
            let state = self.held.state.lock().await;
            if let Err(e) = self
                .inner
                .table
                .release(&self.held.key, state.counter, self.inner.me())
                .await
            {
                tracing::debug!(shard = %self.held.shard_id, "finished lease not released: {e}");
            }
        }
        lock(&self.inner.held).remove(&self.held.key);
        self.inner.take_now.notify_one();
        Ok(())
    }

    async fn stopped(&self, last: Option<&Checkpoint>) -> Result<(), CheckpointError> {
        match self.write(last, &[]).await {
            // Lost: nothing may be written, and nothing needs to be.
            Err(CheckpointError::LeaseLost { .. }) => Ok(()),
            other => other,
        }
    }
}
