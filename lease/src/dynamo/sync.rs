//! Shard sync and clean-up: leases for the shards the lineage needs, and
//! finished parents removed once their children started.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use kcld_checkpoint::Checkpoint;

use super::{lock, Inner};
use crate::lineage::{Leased, Lineage};
use crate::record::LeaseRecord;
use crate::table::TableError;
use crate::ShardSpec;

/// What the last shard sync and scan saw, so that a shard's end can tell
/// a child that is new from one that was finished and cleaned up.
#[derive(Default)]
pub(super) struct Known {
    pub(super) listed: Vec<ShardSpec>,
    pub(super) leased: Vec<Leased>,
}

impl Known {
    pub(super) fn lineage(&self) -> Lineage {
        Lineage::new(&self.listed, &self.leased)
    }
}

/// This stream's leases as lineage sees them; items that could not be
/// read count as leased (their shard exists in the table).
pub(super) fn leased(ours: &[&LeaseRecord], unreadable: &HashSet<String>) -> Vec<Leased> {
    ours.iter()
        .map(|l| Leased {
            shard_id: l.shard_id().to_owned(),
            parents: l.parents.clone(),
        })
        .chain(unreadable.iter().map(|shard_id| Leased {
            shard_id: shard_id.clone(),
            parents: Vec::new(),
        }))
        .collect()
}

impl Inner {
    /// Creates the leases [`Lineage::plan`] asks for, stream by stream: at
    /// an application's first start the shards the initial position names,
    /// later only shards descending from a leased shard (at TRIM_HORIZON).
    /// Finished ancestors are never leased again. A stream whose shards
    /// cannot be listed is logged (once a run of failures) and left to the
    /// next sync; the others go on. An error only when no stream synced.
    pub(super) async fn sync_shards(
        &self,
        leases: &[LeaseRecord],
        unreadable: &[HashSet<String>],
    ) -> Result<(), String> {
        let streams = self.streams();
        let ours = self.ours(leases);
        let split = self.by_stream(&ours);
        let mut first_error = None;
        let mut synced = 0;
        let nothing = HashSet::new();
        for (i, stream) in streams.iter().enumerate() {
            // A stream added since `leases` were read has none in them.
            let (of_stream, unreadable) = (
                split.get(i).map(Vec::as_slice).unwrap_or_default(),
                unreadable.get(i).unwrap_or(&nothing),
            );
            match self.sync_stream(i, of_stream, unreadable).await {
                Ok(()) => {
                    synced += 1;
                    if stream.sync_failing.swap(false, Ordering::AcqRel) {
                        tracing::info!(stream = %stream.scope.stream_name, account = %stream.scope.account, "shards listed again");
                    }
                }
                Err(e) => {
                    if streams.len() > 1 && !stream.sync_failing.swap(true, Ordering::AcqRel) {
                        tracing::error!(
                            stream = %stream.scope.stream_name,
                            account = %stream.scope.account,
                            "cannot sync this stream's shards (its leases wait, the other streams go on): {e}"
                        );
                    }
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) if synced == 0 => Err(e),
            _ => Ok(()),
        }
    }

    /// [`Inner::sync_shards`] for one stream; stops at the first failed
    /// write, so a child is never created before its parent.
    async fn sync_stream(
        &self,
        stream: usize,
        ours: &[&LeaseRecord],
        unreadable: &HashSet<String>,
    ) -> Result<(), String> {
        let streams = self.streams();
        let state = &streams[stream];
        let shards = state.lister.list_shards().await?;
        let first_start = ours.is_empty() && unreadable.is_empty();
        let leased = leased(ours, unreadable);
        let lineage = Lineage::new(&shards, &leased);
        let plan = lineage.plan(&state.initial);
        {
            let mut known = lock(&state.known);
            known.listed = shards;
            known.leased = leased;
        }
        let mut created = 0;
        for (shard, start) in plan {
            let lease = LeaseRecord::new(
                self.key_for(stream, &shard.shard_id),
                start.clone(),
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
                tracing::info!(shard = %shard.shard_id, start = %start, "lease created");
                created += 1;
            }
        }
        if created > 0 {
            tracing::info!(stream = %state.scope.stream_name, created, first_start, "leases created for shards");
            self.take_now.notify_one();
        }
        Ok(())
    }

    /// Deletes parents that ended once every child moved past its start
    /// (as the KCL's lease cleanup does). Their shards are then finished
    /// by lineage: ancestors of leased shards never get a lease again.
    pub(super) async fn clean_up(&self, leases: &[LeaseRecord]) {
        let ours = self.ours(leases);
        for stream in self.by_stream(&ours) {
            self.clean_up_stream(&stream).await;
        }
    }

    async fn clean_up_stream(&self, ours: &[&LeaseRecord]) {
        let by_shard: HashMap<&str, &LeaseRecord> =
            ours.iter().map(|l| (l.shard_id(), *l)).collect();
        for lease in ours {
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
}
