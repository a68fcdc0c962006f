//! The taker: it scans the table when the [`Cadence`] says (every
//! `take_interval` on a settled fleet, every `probe_interval` while leases
//! change hands or a probe of another worker calls for it), notices leases
//! held here that another worker wrote, settles steals in progress, and
//! takes or steals leases toward this worker's fair share (`balance`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use kcld_checkpoint::Checkpoint;

use super::{lock, Held, Inner, PendingSteal};
use crate::balance::{self, Observations, TakeLimits};
use crate::cadence::{Cadence, Probe};
use crate::record::LeaseRecord;
use crate::table::{OwnedChange, TableError};
use crate::LeaseFailure;

impl Inner {
    /// One scan, then the takes and steals it calls for. While the fleet is
    /// settled the scan is eventually consistent, and repeated strongly
    /// consistent only when it shows something to do (`cadence`).
    pub(super) async fn take_round(
        self: &Arc<Self>,
        observations: &mut Observations,
        cadence: &mut Cadence,
        scan_failing: &mut bool,
    ) {
        let mut consistent = cadence.is_unsettled();
        let (leases, unreadable, now) = loop {
            let Some((leases, unreadable)) = self.scan(consistent, scan_failing).await else {
                cadence.scan_failed(Instant::now());
                return;
            };
            let now = Instant::now();
            let ours = self.ours(&leases);
            let renewed = cadence.last_renewals(&ours);
            observations.observe_vouched(ours.iter().copied(), now, |owner| {
                renewed.get(owner).copied()
            });
            if !consistent && self.calls_for_action(&ours, &unreadable, observations, now) {
                consistent = true;
                continue;
            }
            break (leases, unreadable, now);
        };
        let ours = self.ours(&leases);
        let streams = self.streams();
        let nothing = HashSet::new();
        for (i, stream) in self.by_stream(&ours).iter().enumerate() {
            if let Some(state) = streams.get(i) {
                lock(&state.known).leased =
                    super::sync::leased(stream, unreadable.get(i).unwrap_or(&nothing));
            }
        }

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

        let readable = self.readable(&ours, &unreadable);
        let plan = self.plan(&readable, observations, now);
        let changing =
            !plan.take.is_empty() || !plan.steal.is_empty() || !lock(&self.pending).is_empty();
        let expiry = observations.next_expiry(self.me(), now, self.settings.failover);
        cadence.scanned(self.me(), &ours, changing, expiry, now);
        tracing::debug!(
            consistent,
            unsettled = cadence.is_unsettled(),
            expires_in = ?expiry.map(|e| e.saturating_duration_since(now)),
            "scanned the lease table"
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
                Err(TableError::ConditionFailed) if self.landed(lease, None).await => {
                    // The SDK retried a take that had landed.
                    self.grant(lease, lease.counter + 1, sent);
                }
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
            let victim = lease.owner.as_deref().unwrap_or_default();
            let stolen = match self.table.steal(lease, self.me()).await {
                // The SDK retried a steal that had landed.
                Err(TableError::ConditionFailed) if self.landed(lease, Some(victim)).await => {
                    Ok(())
                }
                other => other,
            };
            match stolen {
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

    /// One scan of the table, its failures handled: `None` when there is
    /// nothing to act on (the scan failed, or the worker is stopping).
    async fn scan(
        &self,
        consistent: bool,
        scan_failing: &mut bool,
    ) -> Option<(Vec<LeaseRecord>, Vec<HashSet<String>>)> {
        let scanned = self.table.scan_with(consistent).await;
        self.health.record(scanned.is_ok());
        match scanned {
            Ok(scan) => {
                if std::mem::take(scan_failing) {
                    tracing::info!("lease table reachable again");
                }
                if let Some(fleet) = scan
                    .coordination
                    .live_assigning_fleet(self.table.name(), crate::kcl3::now())
                {
                    // A KCL 3.x leader now assigns these leases: stop (the
                    // leases are released) rather than take them back.
                    *lock(&self.failure) = Some(LeaseFailure::Kcl3Fleet(fleet));
                    self.shutdown.cancel();
                    return None;
                }
                let unreadable = self.unreadable_shards(&scan.unreadable);
                Some((scan.leases, unreadable))
            }
            Err(TableError::NotFound(table)) => {
                // Deleted under a running worker: its checkpoints are gone.
                // Stop every shard (their renewals fail too) and exit with
                // the reason rather than read on without checkpoints.
                *lock(&self.failure) = Some(LeaseFailure::TableDeleted { table });
                self.shutdown.cancel();
                None
            }
            Err(e) => {
                if !std::mem::replace(scan_failing, true) {
                    tracing::warn!("cannot scan the lease table: {e}");
                }
                None
            }
        }
    }

    /// Whether an (eventually consistent) scan shows anything for this
    /// worker to do: a held lease another worker wrote, a steal to settle,
    /// or leases to take or steal.
    fn calls_for_action(
        &self,
        ours: &[&LeaseRecord],
        unreadable: &[HashSet<String>],
        observations: &Observations,
        now: Instant,
    ) -> bool {
        if !lock(&self.pending).is_empty() {
            return true;
        }
        let held = lock(&self.held).keys().cloned().collect::<HashSet<_>>();
        let foreign_write = ours.iter().any(|l| {
            held.contains(&l.key.render())
                && (l.owner.as_deref() != Some(self.me()) || l.checkpoint_owner.is_some())
        });
        if foreign_write {
            return true;
        }
        let readable = self.readable(ours, unreadable);
        let plan = self.plan(&readable, observations, now);
        !plan.take.is_empty() || !plan.steal.is_empty()
    }

    /// The leases that can be read now: not ended, every parent (in its
    /// own stream) ended.
    fn readable<'a>(
        &self,
        ours: &[&'a LeaseRecord],
        unreadable: &[HashSet<String>],
    ) -> Vec<&'a LeaseRecord> {
        let mut readable = Vec::with_capacity(ours.len());
        for (i, stream) in self.by_stream(ours).into_iter().enumerate() {
            let by_shard: HashMap<&str, &LeaseRecord> =
                stream.iter().map(|l| (l.shard_id(), *l)).collect();
            readable.extend(
                stream
                    .iter()
                    .copied()
                    .filter(|l| l.checkpoint != Checkpoint::ShardEnd)
                    .filter(|l| {
                        l.parents.iter().all(|p| {
                            // A parent whose item cannot be read may still
                            // hold records: the child waits (the error was
                            // logged).
                            !unreadable[i].contains(p)
                                && by_shard
                                    .get(p.as_str())
                                    .is_none_or(|parent| parent.checkpoint == Checkpoint::ShardEnd)
                        })
                    }),
            );
        }
        readable
    }

    /// This worker's share of `readable`, and what to take or steal for it.
    fn plan(
        &self,
        readable: &[&LeaseRecord],
        observations: &Observations,
        now: Instant,
    ) -> balance::Plan {
        // Steals in progress count as held, so they are not stolen twice.
        let held_keys: HashSet<String> = lock(&self.held)
            .keys()
            .cloned()
            .chain(lock(&self.pending).keys().cloned())
            .collect();
        let failover = self.settings.failover;
        balance::plan(
            self.me(),
            readable,
            &held_keys,
            |l| observations.is_expired(l, now, failover),
            TakeLimits {
                max_leases: self.settings.max_leases,
                max_steal: self.settings.max_steal,
            },
            &mut rand::rng(),
        )
    }

    /// Reads one lease of another worker, the next in turn (eventually
    /// consistent): true when what it shows calls for a scan now. A failed
    /// probe asks for a scan; the first of a run of failures is logged
    /// (a role without `dynamodb:GetItem` would otherwise scan every
    /// probe interval, unseen).
    pub(super) async fn probe(&self, cadence: &mut Cadence, probe_failing: &mut bool) -> bool {
        let Some((owner, key)) = cadence.sample() else {
            return false;
        };
        let read = self.timed(self.call_timeout(), self.table.peek(&key)).await;
        let now = Instant::now();
        self.health.record(read.is_ok());
        match read {
            Ok(seen) => {
                if std::mem::take(probe_failing) {
                    tracing::info!("lease probes answered again");
                }
                let verdict = cadence.probed(&owner, seen.as_ref(), now);
                tracing::debug!(
                    %owner,
                    lease = %key,
                    counter = seen.as_ref().map(|l| l.counter),
                    ?verdict,
                    "probed another worker's lease"
                );
                verdict == Probe::Scan
            }
            Err(e) => {
                if !std::mem::replace(probe_failing, true) {
                    tracing::warn!(
                        lease = %key,
                        "cannot read another worker's lease, scanning the table instead: {e}"
                    );
                }
                cadence.probe_failed(now);
                true
            }
        }
    }

    /// Completes the steals whose old owner stepped aside (it removed
    /// `checkpointOwner` with its last checkpoint), forces those whose old
    /// owner did not within the failover time, and forgets those another
    /// worker took meanwhile.
    pub(super) async fn settle_steals(self: &Arc<Self>, ours: &[&LeaseRecord], now: Instant) {
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
                self.complete_steal(lease).await;
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

    /// The old owner stepped aside. A renewal marks the takeover, and the
    /// watchdog counts from when it was sent (the counter others watch
    /// moved then). A shard the old owner finished is let go instead: its
    /// children are what remains.
    async fn complete_steal(self: &Arc<Self>, lease: &LeaseRecord) {
        let key = lease.key.render();
        if lease.checkpoint == Checkpoint::ShardEnd {
            if let Err(e) = self
                .table
                .update_owned(&key, lease.counter, self.me(), OwnedChange::Release)
                .await
            {
                tracing::debug!(lease = %key, "finished lease not released: {e}");
            }
            tracing::info!(shard = %lease.shard_id(), "handed over at its end; its children follow");
            self.take_now.notify_one();
            return;
        }
        let sent = Instant::now();
        match self
            .table
            .update_owned(&key, lease.counter, self.me(), OwnedChange::Renew)
            .await
        {
            Ok(()) => self.grant(lease, lease.counter + 1, sent),
            Err(TableError::ConditionFailed) if self.landed(lease, None).await => {
                self.grant(lease, lease.counter + 1, sent)
            }
            Err(e) => {
                tracing::info!(lease = %key, "handed-over lease not confirmed, left to the next scan: {e}")
            }
        }
    }

    /// After a refused take, steal or renewal: whether the item shows this
    /// worker's write (owner, counter one past what it expected, and the
    /// old owner named for a steal), meaning the first attempt landed and
    /// the SDK's retry is what the condition refused.
    async fn landed(&self, lease: &LeaseRecord, victim: Option<&str>) -> bool {
        match self.table.get(&lease.key.render()).await {
            Ok(Some(now)) => {
                now.owner.as_deref() == Some(self.me())
                    && now.counter == lease.counter + 1
                    && now.checkpoint_owner.as_deref() == victim
            }
            _ => false,
        }
    }

    /// Shards whose lease items cannot be read, by stream, each logged
    /// once: their children wait, and shard sync does not create them
    /// again.
    pub(super) fn unreadable_shards(
        &self,
        unreadable: &[crate::table::Unreadable],
    ) -> Vec<HashSet<String>> {
        let mut reported = lock(&self.reported_unreadable);
        let mut shards = vec![HashSet::new(); self.streams().len()];
        for item in unreadable {
            let key = crate::key::LeaseKey::parse(&item.key);
            let Some(stream) = self.stream_of(&key) else {
                continue;
            };
            if reported.insert(item.key.clone()) {
                tracing::error!(
                    lease = %item.key,
                    "lease item cannot be read ({}); its shard is not read and its children wait until the item \
                     is fixed or deleted",
                    item.error
                );
            }
            if shards.len() <= stream {
                // A stream added meanwhile.
                shards.resize(stream + 1, HashSet::new());
            }
            shards[stream].insert(key.shard_id().to_owned());
        }
        shards
    }
}
