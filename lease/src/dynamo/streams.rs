//! The streams a source leases: which leases of the table are whose, and
//! the key format of each stream's new leases.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex as StdMutex};

use kcld_checkpoint::Checkpoint;

use super::sync::Known;
use super::{lock, Inner};
use crate::key::{LeaseKey, StreamScope};
use crate::record::LeaseRecord;
use crate::ShardLister;

/// One stream whose shards the source leases.
pub struct LeaseStream {
    /// Which leases of the table are this stream's.
    pub scope: StreamScope,
    /// Its shards, for shard sync.
    pub lister: Arc<dyn ShardLister>,
    /// New leases get the KCL's multi-stream keys
    /// (`account:stream:creationEpoch:shardId`, with `streamName` and
    /// `shardId` beside them), as a KCL application reading several
    /// streams writes them. Otherwise they follow what the table already
    /// holds of this stream, shard ids alone for a new table (the KCL's
    /// single-stream keys).
    pub multi_stream: bool,
    /// Where this stream's shards start when the table has no lease of it
    /// yet.
    pub initial: Checkpoint,
}

/// What the source keeps of one stream.
pub(super) struct StreamState {
    pub(super) scope: StreamScope,
    pub(super) lister: Arc<dyn ShardLister>,
    /// The key format of this stream's new leases.
    pub(super) template: StdMutex<LeaseKey>,
    /// The last listing and leases, for telling a finished child at a
    /// shard's end.
    pub(super) known: StdMutex<Known>,
    /// The last shard sync of this stream failed (logged once a run).
    pub(super) sync_failing: AtomicBool,
    pub(super) initial: Checkpoint,
}

impl StreamState {
    pub(super) fn new(s: LeaseStream) -> Self {
        StreamState {
            template: StdMutex::new(if s.multi_stream {
                s.scope.multi_key()
            } else {
                LeaseKey::Single {
                    shard_id: String::new(),
                }
            }),
            scope: s.scope,
            lister: s.lister,
            known: StdMutex::new(Known::default()),
            sync_failing: AtomicBool::new(false),
            initial: s.initial,
        }
    }
}

impl Inner {
    /// The streams read now (a snapshot: streams are only ever added).
    pub(super) fn streams(&self) -> Arc<Vec<Arc<StreamState>>> {
        lock(&self.streams).clone()
    }

    /// Which stream a lease is of, if it is of one read here. Shard ids
    /// alone name the one stream of a single-stream application: with
    /// several streams they are nobody's.
    pub(super) fn stream_of(&self, key: &LeaseKey) -> Option<usize> {
        let streams = self.streams();
        match key {
            LeaseKey::Single { .. } => (streams.len() == 1).then_some(0),
            LeaseKey::Multi { .. } => streams.iter().position(|s| s.scope.owns(key)),
        }
    }

    /// The leases of the streams read here.
    pub(super) fn ours<'a>(&self, leases: &'a [LeaseRecord]) -> Vec<&'a LeaseRecord> {
        leases
            .iter()
            .filter(|l| self.stream_of(&l.key).is_some())
            .collect()
    }

    /// `ours` split by stream, in [`Inner::streams`]' order.
    pub(super) fn by_stream<'a>(&self, ours: &[&'a LeaseRecord]) -> Vec<Vec<&'a LeaseRecord>> {
        let mut split = vec![Vec::new(); self.streams().len()];
        for lease in ours {
            if let Some(i) = self.stream_of(&lease.key) {
                // A stream added meanwhile comes at the end.
                if split.len() <= i {
                    split.resize(i + 1, Vec::new());
                }
                split[i].push(*lease);
            }
        }
        split
    }

    /// New leases follow the format the table already uses for a stream.
    pub(super) fn learn_template(&self, leases: &[LeaseRecord]) {
        for lease in self.ours(leases) {
            if let (LeaseKey::Multi { .. }, Some(i)) = (&lease.key, self.stream_of(&lease.key)) {
                *lock(&self.streams()[i].template) = lease.key.clone();
            }
        }
    }

    pub(super) fn key_for(&self, stream: usize, shard_id: &str) -> LeaseKey {
        lock(&self.streams()[stream].template).sibling(shard_id)
    }
}
