//! Leases kept in a DynamoDB table with the KCL's schema, shared by any
//! number of workers (kcld or KCL).
//!
//! The parts, as in the KCL:
//! - [`renewer`]: each held lease renews on its own schedule (counter + 1,
//!   conditioned on the counter this worker wrote last), every call with a
//!   timeout; the watchdog stops a shard whose lease could not be renewed
//!   for `failover - safety`, before any other worker may judge it expired;
//! - [`taker`]: scans the table when the [`crate::cadence`] says (rarely
//!   on a settled fleet, between probes of one lease per other worker),
//!   judges expiry by counters that stopped moving, settles handoffs, and
//!   takes or steals leases toward this worker's fair share (`balance`);
//! - [`sync`]: leases for the shards the lineage needs (ListShards), and
//!   finished parents deleted;
//! - [`handle`]: the checkpointer of one grant, and the end of a shard.
//!
//! On shutdown, after the consumers' final checkpoints, every lease is
//! released so others take it at their next scan. Checkpoints go through
//! the same per-lease lock as renewals, so both always condition on the
//! counter this worker wrote last.

mod handle;
mod renewer;
mod streams;
mod sync;
mod taker;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::{Duration, Instant};

use kcld_checkpoint::Checkpoint;
use tokio::sync::{mpsc, Mutex, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::balance::Observations;
use crate::cadence::{Cadence, CadenceSettings, Next};
use crate::key::StreamScope;
use crate::record::LeaseRecord;
use crate::table::{LeaseTable, OwnedChange, TableError};
use crate::{Grant, LeaseFailure, LeaseSource, ShardLister, ShardSpec};
use handle::DynamoLease;
pub use streams::LeaseStream;
use streams::StreamState;

/// How this worker takes part in the lease protocol.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// This worker's id, written as `leaseOwner` on the leases it holds.
    pub worker_id: String,
    /// A lease whose counter has not moved for this long is expired.
    pub failover: Duration,
    /// How often held leases are renewed.
    pub renew_interval: Duration,
    /// How often a settled fleet's table is scanned for leases to take.
    pub take_interval: Duration,
    /// How often, between scans, one lease of each other worker is read to
    /// see it alive, and how often the table is scanned while leases change
    /// hands. Not below `take_interval`: no probes, every scan at
    /// `take_interval`.
    pub probe_interval: Duration,
    /// The most probes may cost, in percent of this worker's renewals
    /// ([`crate::cadence::CadenceSettings::probe_budget_percent`]).
    pub probe_budget_percent: u32,
    /// How often shards are listed to add missing leases and remove
    /// finished ones.
    pub shard_sync_interval: Duration,
    /// Never hold more than this many leases; `usize::MAX` = no limit.
    pub max_leases: usize,
    /// Steal at most this many leases in one scan (the KCL's
    /// `maxLeasesToStealAtOneTime`).
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
    /// The origin of the renewal schedule every held lease follows.
    epoch: Instant,
    /// Renewals in flight at once.
    renewals: tokio::sync::Semaphore,
    table: LeaseTable,
    settings: LeaseSettings,
    /// The streams read, in the order given: a [`Grant`]'s `stream`.
    /// Append-only ([`StreamAdder`]), so an index stays the same stream;
    /// read as a snapshot ([`Inner::streams`]).
    streams: StdMutex<Arc<Vec<Arc<StreamState>>>>,
    held: StdMutex<HashMap<String, Arc<Held>>>,
    health: Arc<TableHealth>,
    /// Set when the source had to close by itself.
    failure: StdMutex<Option<LeaseFailure>>,
    /// Steals this worker started whose old owner has not handed over yet.
    pending: StdMutex<HashMap<String, PendingSteal>>,
    /// Wakes the taker early (a shard ended: its children are ready).
    take_now: Notify,
    grants: mpsc::UnboundedSender<Grant>,
    shutdown: CancellationToken,
    /// Fires when the coordinator stops (after shutdown): renewals end and
    /// every lease is released.
    closing: CancellationToken,
    /// Unreadable lease items already logged.
    reported_unreadable: StdMutex<HashSet<String>>,
}

/// A lease this worker holds.
struct Held {
    key: String,
    /// The stream's place in [`Inner::streams`].
    stream: usize,
    shard_id: String,
    /// The counter this worker wrote last, and whether another worker asked
    /// for the lease (a handoff); locked across each write.
    state: Mutex<HeldState>,
    /// When the last successful write of this lease was sent.
    renewed_at: StdMutex<Instant>,
    lost: AtomicBool,
    /// Set with `lost` when the lease went to another worker by a handoff
    /// (or was let go at its end): not lost, done.
    handed_over: AtomicBool,
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

/// Renewals in flight at once (the KCL's renewer uses 20 threads).
const RENEWALS_AT_ONCE: usize = 32;

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
        let stream = LeaseStream {
            scope,
            lister,
            multi_stream: false,
            initial: settings.initial.clone(),
        };
        Self::start_streams(table, vec![stream], settings, shutdown).await
    }

    /// [`DynamoLeases::start`] for several streams in one table: one
    /// fleet balances the shards of all of them together, and each
    /// stream's shards are synced and followed through resharding on
    /// their own. A stream whose shards cannot be listed (deleted, access
    /// revoked) is logged and tried again at each sync; the others go on.
    /// Leases of streams not in the list are left alone (the KCL's default
    /// for former streams).
    pub async fn start_streams(
        table: LeaseTable,
        streams: Vec<LeaseStream>,
        settings: LeaseSettings,
        shutdown: CancellationToken,
    ) -> Result<Self, TableError> {
        let streams: Vec<Arc<StreamState>> = streams
            .into_iter()
            .map(|s| Arc::new(StreamState::new(s)))
            .collect();
        table.ensure(Duration::from_secs(60)).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let closing = CancellationToken::new();
        let inner = Arc::new(Inner {
            epoch: Instant::now(),
            renewals: tokio::sync::Semaphore::new(RENEWALS_AT_ONCE),
            table,
            settings,
            streams: StdMutex::new(Arc::new(streams)),
            held: StdMutex::new(HashMap::new()),
            health: Arc::new(TableHealth::default()),
            failure: StdMutex::new(None),
            pending: StdMutex::new(HashMap::new()),
            take_now: Notify::new(),
            grants: tx,
            shutdown: shutdown.clone(),
            closing: closing.clone(),
            reported_unreadable: StdMutex::new(HashSet::new()),
        });
        // The first sync must succeed: without leases there is nothing to do.
        let scan = inner.table.scan_all().await;
        inner.health.record(scan.is_ok());
        let mut scan = scan?;
        // Never beside a live KCL 3.x fleet whose leader assigns leases.
        if let Some(fleet) = inner
            .table
            .live_kcl3_fleet(std::mem::take(&mut scan.coordination))
            .await
        {
            return Err(TableError::Kcl3Fleet(fleet));
        }
        inner.learn_template(&scan.leases);
        let unreadable = inner.unreadable_shards(&scan.unreadable);
        inner
            .sync_shards(&scan.leases, &unreadable)
            .await
            .map_err(TableError::Other)?;
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

    /// Adds streams while the source runs (a configuration reload).
    pub fn adder(&self) -> StreamAdder {
        StreamAdder {
            inner: self.inner.clone(),
        }
    }
}

/// Adds a stream to a running [`DynamoLeases`]: its leases are created
/// (shard sync) and balanced with the others' from the next scan on.
#[derive(Clone)]
pub struct StreamAdder {
    inner: Arc<Inner>,
}

impl StreamAdder {
    /// Adds `stream` after the ones already read; returns its index (a
    /// [`Grant`]'s `stream`). Its shards are synced at once; when that
    /// fails (the table or the stream does not answer) it is logged and
    /// done again at each shard sync, as for the streams read from the
    /// start.
    pub async fn add(&self, stream: LeaseStream) -> usize {
        let inner = &self.inner;
        let index = {
            let mut streams = lock(&inner.streams);
            let mut grown: Vec<Arc<StreamState>> = streams.iter().cloned().collect();
            grown.push(Arc::new(StreamState::new(stream)));
            let index = grown.len() - 1;
            *streams = Arc::new(grown);
            index
        };
        let scan = inner.table.scan_all().await;
        inner.health.record(scan.is_ok());
        match scan {
            Ok(scan) => {
                inner.learn_template(&scan.leases);
                let unreadable = inner.unreadable_shards(&scan.unreadable);
                if let Err(e) = inner.sync_shards(&scan.leases, &unreadable).await {
                    tracing::warn!("shard sync: {e}");
                }
            }
            Err(e) => tracing::warn!("shard sync of an added stream (done again at the next): {e}"),
        }
        inner.take_now.notify_one();
        index
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

    fn failure(&self) -> Option<LeaseFailure> {
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

    /// The watchdog and the taker run side by side (each lease renews in a
    /// task of its own), so that a slow scan never delays a renewal and
    /// nothing delays the watchdog that stops unrenewed shards.
    async fn coordinate(self: Arc<Self>, closing: CancellationToken) {
        let s = &self.settings;
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
            let mut cadence = Cadence::new(CadenceSettings {
                take_interval: s.take_interval,
                probe_interval: s.probe_interval,
                probe_budget_percent: s.probe_budget_percent,
                renew_interval: s.renew_interval,
            });
            let mut sync = tokio::time::interval_at(
                tokio::time::Instant::now() + s.shard_sync_interval,
                s.shard_sync_interval,
            );
            sync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut observations = Observations::default();
            let mut scan_failing = false;
            let mut probe_failing = false;
            loop {
                let next = cadence.next();
                let at = match next {
                    Next::Scan(at) | Next::Probe(at) => at,
                };
                tokio::select! {
                    _ = closing.cancelled() => return,
                    _ = self.shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(at.into()) => {
                        let scan = match next {
                            Next::Scan(_) => true,
                            Next::Probe(_) => self.probe(&mut cadence, &mut probe_failing).await,
                        };
                        if scan {
                            self.take_round(&mut observations, &mut cadence, &mut scan_failing).await;
                        }
                    }
                    _ = self.take_now.notified() => {
                        cadence.unsettle();
                        self.take_round(&mut observations, &mut cadence, &mut scan_failing).await;
                    }
                    _ = sync.tick() => match self.table.scan_all().await {
                        Ok(scan) => {
                            let unreadable = self.unreadable_shards(&scan.unreadable);
                            // New leases wake the taker (`take_now`).
                            if let Err(e) = self.sync_shards(&scan.leases, &unreadable).await {
                                tracing::warn!("shard sync: {e}");
                            }
                            self.clean_up(&scan.leases).await;
                        }
                        Err(e) => tracing::warn!("shard sync: {e}"),
                    },
                }
            }
        };
        tokio::join!(watchdog, taker);
        self.release_all().await;
    }

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
    ///
    /// The taker is woken: the lease has a new owner this worker may not
    /// have seen yet (a thief that joined since the last scan), and until a
    /// scan shows it, neither probes nor the expiry clock follow that
    /// owner; were it to die now, its leases would go unseen until the next
    /// settled scan, a whole `take_interval` later.
    fn forget(&self, h: &Held) {
        h.handed_over.store(true, Ordering::Release);
        h.lost.store(true, Ordering::Release);
        h.stop.cancel();
        let mut held = lock(&self.held);
        held.remove(&h.key);
        metrics::gauge!("kcld_leases_held").set(held.len() as f64);
        drop(held);
        // Once the lease is out of `held`, so that the scan does not see it
        // as this worker's.
        self.take_now.notify_one();
    }

    /// Stops a lease another worker took; the taker is woken, as in
    /// [`Inner::forget`].
    fn lose(&self, h: &Held, why: &str) {
        if !h.lost.swap(true, Ordering::AcqRel) {
            metrics::counter!("kcld_leases_lost_total").increment(1);
            tracing::warn!(shard = %h.shard_id, "lease lost: {why}; stopping the shard");
        }
        h.stop.cancel();
        let mut held = lock(&self.held);
        held.remove(&h.key);
        metrics::gauge!("kcld_leases_held").set(held.len() as f64);
        drop(held);
        self.take_now.notify_one();
    }

    /// its last write left.
    fn grant(self: &Arc<Self>, lease: &LeaseRecord, counter: i64, sent: Instant) {
        let key = lease.key.render();
        let stream = self.stream_of(&lease.key).unwrap_or(0);
        let stop = self.shutdown.child_token();
        let held = Arc::new(Held {
            key: key.clone(),
            stream,
            shard_id: lease.shard_id().to_owned(),
            state: Mutex::new(HeldState {
                counter,
                handoff: false,
            }),
            renewed_at: StdMutex::new(sent),
            lost: AtomicBool::new(false),
            handed_over: AtomicBool::new(false),
            stop: stop.clone(),
        });
        {
            let mut all = lock(&self.held);
            all.insert(key, held.clone());
            metrics::gauge!("kcld_leases_held").set(all.len() as f64);
        }
        tokio::spawn(self.clone().renew_loop(held.clone(), self.closing.clone()));
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
            stream,
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
                            if let Err(e) = self
                                .table
                                .update_owned(&key, lease.counter, self.me(), OwnedChange::Release)
                                .await
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
            match self
                .table
                .update_owned(&h.key, state.counter, self.me(), OwnedChange::Release)
                .await
            {
                Ok(()) => tracing::info!(shard = %h.shard_id, "lease released"),
                Err(e) => {
                    tracing::warn!(shard = %h.shard_id, "cannot release lease (others take it after expiry): {e}")
                }
            }
        }
    }
}
