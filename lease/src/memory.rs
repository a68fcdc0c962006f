//! Leases held in memory by a single instance: every shard the lineage
//! needs is granted to this worker, parents before children, and checkpoints
//! live only as long as the process. This is the lease source for one
//! instance without a lease table.
//!
//! The shards it starts with follow [`Lineage::plan`] (with LATEST only the
//! open shards, at LATEST); a child announced at a shard's end starts at
//! TRIM_HORIZON, so nothing written to it is skipped, as in the DynamoDB
//! source.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use kcld_checkpoint::{Checkpoint, CheckpointError, Checkpointer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lineage::Lineage;
use crate::{Grant, LeaseHandle, LeaseSource, ShardSpec};

/// Grants every shard to this worker; a child once all its parents ended.
pub struct MemoryLeases {
    state: Arc<Mutex<State>>,
    ready: mpsc::UnboundedReceiver<ShardSpec>,
    shutdown: CancellationToken,
}

struct State {
    /// Where each known shard starts when it has no checkpoint.
    starts: HashMap<String, Checkpoint>,
    shards: HashMap<String, ShardSpec>,
    checkpoints: HashMap<String, Checkpoint>,
    granted: HashSet<String>,
    ready: mpsc::UnboundedSender<ShardSpec>,
}

impl State {
    /// A shard is readable once each parent has ended or is not known (a
    /// parent trimmed from the stream cannot hold records anymore).
    fn parents_done(&self, shard: &ShardSpec) -> bool {
        shard.parents.iter().all(|p| {
            !self.shards.contains_key(p)
                || matches!(self.checkpoints.get(p), Some(Checkpoint::ShardEnd))
        })
    }

    fn release_ready(&mut self) {
        let mut ready: Vec<ShardSpec> = self
            .shards
            .values()
            .filter(|s| !self.granted.contains(&s.shard_id) && self.parents_done(s))
            .cloned()
            .collect();
        ready.sort_by(|a, b| a.shard_id.cmp(&b.shard_id));
        for shard in ready {
            self.granted.insert(shard.shard_id.clone());
            // The receiver lives as long as MemoryLeases; a send error means
            // the source is gone and there is nobody left to read the shard.
            let _ = self.ready.send(shard);
        }
    }
}

impl MemoryLeases {
    /// `initial` is where a shard with no checkpoint starts. `shutdown` is
    /// passed on (as child tokens) to every grant.
    pub fn new(shards: Vec<ShardSpec>, initial: Checkpoint, shutdown: CancellationToken) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let plan = Lineage::new(&shards, &[]).plan(&initial);
        let mut state = State {
            starts: plan
                .iter()
                .map(|(s, start)| (s.shard_id.clone(), start.clone()))
                .collect(),
            shards: plan
                .into_iter()
                .map(|(s, _)| (s.shard_id.clone(), s))
                .collect(),
            checkpoints: HashMap::new(),
            granted: HashSet::new(),
            ready: tx,
        };
        state.release_ready();
        MemoryLeases {
            state: Arc::new(Mutex::new(state)),
            ready: rx,
            shutdown,
        }
    }

    /// The checkpoint last written for a shard, if any.
    pub fn checkpoint_of(&self, shard_id: &str) -> Option<Checkpoint> {
        lock(&self.state).checkpoints.get(shard_id).cloned()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // The state stays consistent across every statement that mutates it, so
    // a panic elsewhere while the lock was held leaves nothing half-written.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[async_trait::async_trait]
impl LeaseSource for MemoryLeases {
    async fn next_grant(&mut self) -> Option<Grant> {
        let shard = tokio::select! {
            shard = self.ready.recv() => shard?,
            _ = self.shutdown.cancelled() => return None,
        };
        let start = {
            let state = lock(&self.state);
            state
                .checkpoints
                .get(&shard.shard_id)
                .cloned()
                .or_else(|| state.starts.get(&shard.shard_id).cloned())
                .unwrap_or(Checkpoint::TrimHorizon)
        };
        Some(Grant {
            stream: 0,
            lease: Arc::new(MemoryLease {
                shard_id: shard.shard_id.clone(),
                state: self.state.clone(),
            }),
            shard,
            start,
            stop: self.shutdown.child_token(),
        })
    }
}

struct MemoryLease {
    shard_id: String,
    state: Arc<Mutex<State>>,
}

#[async_trait::async_trait]
impl Checkpointer for MemoryLease {
    async fn checkpoint(&self, position: &Checkpoint) -> Result<(), CheckpointError> {
        let mut state = lock(&self.state);
        if let Some(prev) = state.checkpoints.get(&self.shard_id) {
            if prev > position && !prev.is_initial_position() {
                return Err(CheckpointError::Invalid {
                    shard_id: self.shard_id.clone(),
                    reason: format!("{position} is before the last checkpoint {prev}"),
                });
            }
        }
        state
            .checkpoints
            .insert(self.shard_id.clone(), position.clone());
        Ok(())
    }
}

#[async_trait::async_trait]
impl LeaseHandle for MemoryLease {
    async fn shard_ended(&self, children: &[ShardSpec]) -> Result<(), CheckpointError> {
        let mut state = lock(&self.state);
        state
            .checkpoints
            .insert(self.shard_id.clone(), Checkpoint::ShardEnd);
        for child in children {
            state
                .shards
                .entry(child.shard_id.clone())
                .or_insert_with(|| child.clone());
            // A child found at its parent's end was written to after the
            // parent closed: all of it is new.
            state
                .starts
                .entry(child.shard_id.clone())
                .or_insert(Checkpoint::TrimHorizon);
        }
        state.release_ready();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn shard(id: &str, parents: &[&str]) -> ShardSpec {
        ShardSpec {
            shard_id: id.into(),
            parents: parents.iter().map(|p| p.to_string()).collect(),
            starting_hash_key: "0".into(),
            ending_hash_key: "1".into(),
            closed: false,
        }
    }

    async fn next_id(leases: &mut MemoryLeases) -> Option<String> {
        tokio::time::timeout(Duration::from_millis(50), leases.next_grant())
            .await
            .ok()
            .flatten()
            .map(|g| g.shard.shard_id)
    }

    #[tokio::test]
    async fn children_are_granted_only_after_every_parent_ended() {
        // s0 and s1 merge into s3; s2 is an unrelated shard; s4's parent is
        // trimmed from the stream.
        let shards = vec![
            shard("s0", &[]),
            shard("s1", &[]),
            shard("s2", &[]),
            shard("s3", &["s0", "s1"]),
            shard("s4", &["gone"]),
        ];
        let mut leases =
            MemoryLeases::new(shards, Checkpoint::TrimHorizon, CancellationToken::new());
        let mut first = Vec::new();
        let mut grants = HashMap::new();
        while let Some(g) = tokio::time::timeout(Duration::from_millis(50), leases.next_grant())
            .await
            .ok()
            .flatten()
        {
            first.push(g.shard.shard_id.clone());
            grants.insert(g.shard.shard_id.clone(), g);
        }
        assert_eq!(first, ["s0", "s1", "s2", "s4"]);

        grants["s0"].lease.shard_ended(&[]).await.unwrap();
        assert_eq!(next_id(&mut leases).await, None, "s3 must wait for s1 too");
        grants["s1"].lease.shard_ended(&[]).await.unwrap();
        assert_eq!(next_id(&mut leases).await.as_deref(), Some("s3"));
    }

    #[tokio::test]
    async fn announced_children_are_added_and_granted() {
        let mut leases = MemoryLeases::new(
            vec![shard("p", &[])],
            Checkpoint::Latest,
            CancellationToken::new(),
        );
        let p = leases.next_grant().await.unwrap();
        assert_eq!(p.start, Checkpoint::Latest);
        p.lease
            .shard_ended(&[shard("c1", &["p"]), shard("c2", &["p"])])
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..2 {
            let g = leases.next_grant().await.unwrap();
            got.push((g.shard.shard_id.clone(), g.start.clone()));
        }
        got.sort_by(|a, b| a.0.cmp(&b.0));
        // Children written to after the application started at LATEST are
        // read from their first record, not from a new LATEST.
        assert_eq!(
            got,
            [
                ("c1".to_string(), Checkpoint::TrimHorizon),
                ("c2".to_string(), Checkpoint::TrimHorizon)
            ]
        );
        assert_eq!(leases.checkpoint_of("p"), Some(Checkpoint::ShardEnd));
        // Announcing the same children again (a second end of the parent)
        // grants nothing twice.
        p.lease.shard_ended(&[shard("c1", &["p"])]).await.unwrap();
        assert_eq!(next_id(&mut leases).await, None);
    }

    #[tokio::test]
    async fn latest_starts_at_the_open_shards_and_leaves_closed_ancestors_alone() {
        let mut closed = shard("old", &[]);
        closed.closed = true;
        let mut leases = MemoryLeases::new(
            vec![closed, shard("new1", &["old"]), shard("new2", &["old"])],
            Checkpoint::Latest,
            CancellationToken::new(),
        );
        let mut got = Vec::new();
        while let Some(g) = tokio::time::timeout(Duration::from_millis(50), leases.next_grant())
            .await
            .ok()
            .flatten()
        {
            got.push((g.shard.shard_id.clone(), g.start.clone()));
        }
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            [
                ("new1".to_string(), Checkpoint::Latest),
                ("new2".to_string(), Checkpoint::Latest)
            ]
        );
    }

    #[tokio::test]
    async fn checkpoints_never_move_backwards() {
        let mut leases = MemoryLeases::new(
            vec![shard("s", &[])],
            Checkpoint::TrimHorizon,
            CancellationToken::new(),
        );
        let g = leases.next_grant().await.unwrap();
        let at = |s: &str| Checkpoint::parse(s, None).unwrap();
        g.lease.checkpoint(&at("20")).await.unwrap();
        assert!(g.lease.checkpoint(&at("10")).await.is_err());
        assert_eq!(leases.checkpoint_of("s"), Some(at("20")));
    }

    #[tokio::test]
    async fn shutdown_closes_the_source_and_cancels_grants() {
        let token = CancellationToken::new();
        let mut leases =
            MemoryLeases::new(vec![shard("s", &[])], Checkpoint::Latest, token.clone());
        let g = leases.next_grant().await.unwrap();
        token.cancel();
        assert!(g.stop.is_cancelled());
        assert!(leases.next_grant().await.is_none());
    }
}
