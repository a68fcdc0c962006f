//! One lease item, in the KCL's schema (`DynamoDBLeaseSerializer` and its
//! multi-stream variant): attribute names and types are the KCL's exactly,
//! so that a KCL worker reads what kcld writes and the other way round.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::AttributeValue;
use kcld_checkpoint::Checkpoint;

use crate::key::LeaseKey;

/// A DynamoDB item.
pub type Item = HashMap<String, AttributeValue>;

/// The attribute names of the KCL's lease table.
pub mod attr {
    /// The item's key: the shard id, or `account:stream:creationEpoch:shardId`
    /// for a multi-stream lease.
    pub const LEASE_KEY: &str = "leaseKey";
    /// The worker id of the holder; absent when nobody holds the lease.
    pub const LEASE_OWNER: &str = "leaseOwner";
    /// Incremented by every write of the owner; conditional writes check it.
    pub const LEASE_COUNTER: &str = "leaseCounter";
    /// How often the lease changed owner since its last checkpoint.
    pub const OWNER_SWITCHES: &str = "ownerSwitchesSinceCheckpoint";
    /// The confirmed position: a sequence number or a sentinel such as
    /// `SHARD_END`.
    pub const CHECKPOINT: &str = "checkpoint";
    /// The sub-sequence number beside `checkpoint`.
    pub const CHECKPOINT_SUB: &str = "checkpointSubSequenceNumber";
    /// A checkpoint prepared but not yet committed (the KCL's two-phase
    /// checkpoint).
    pub const PENDING_CHECKPOINT: &str = "pendingCheckpoint";
    /// The sub-sequence number beside `pendingCheckpoint`.
    pub const PENDING_CHECKPOINT_SUB: &str = "pendingCheckpointSubSequenceNumber";
    /// The application state the KCL stores with a prepared checkpoint.
    pub const PENDING_CHECKPOINT_STATE: &str = "pendingCheckpointState";
    /// The ids of the shard's parents, a string set.
    pub const PARENT_SHARD_ID: &str = "parentShardId";
    /// The ids of the shard's children, a string set written when the shard
    /// ended.
    pub const CHILD_SHARD_IDS: &str = "childShardIds";
    /// The first hash key of the shard's range, as a decimal string.
    pub const STARTING_HASH_KEY: &str = "startingHashKey";
    /// The last hash key of the shard's range, included, as a decimal string.
    pub const ENDING_HASH_KEY: &str = "endingHashKey";
    /// KCL 3 graceful handoff: the worker that still checkpoints while
    /// `leaseOwner` already names the next one.
    pub const CHECKPOINT_OWNER: &str = "checkpointOwner";
    /// What an item is; KCL 3 keeps items other than leases in the same table.
    pub const ENTITY_TYPE: &str = "entityType";
    /// `account:stream:creationEpoch` of a multi-stream lease.
    pub const STREAM_NAME: &str = "streamName";
    /// The shard id of a multi-stream lease.
    pub const SHARD_ID: &str = "shardId";
    /// `entityType` of a lease; items of any other type are not leases.
    pub const ENTITY_LEASE: &str = "LEASE";
}

/// Keys of the KCL 3 coordinator items that may share the lease table
/// (leader lock, client and table migration state).
const NON_LEASE_KEYS: [&str; 3] = ["Leader", "Migration3.0", "TableMigration3.5"];

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The `leaseKey`, parsed.
    pub key: LeaseKey,
    /// Absent: nobody holds the lease.
    pub owner: Option<String>,
    /// Bumped by every write of the owner; a counter that stops moving for
    /// the failover time means the owner is gone.
    pub counter: i64,
    /// The last confirmed position (`checkpoint` and
    /// `checkpointSubSequenceNumber`).
    pub checkpoint: Checkpoint,
    /// A checkpoint the KCL prepared but did not commit; kept, never acted on.
    pub pending_checkpoint: Option<Checkpoint>,
    /// `ownerSwitchesSinceCheckpoint`: how often the lease changed owner since
    /// the last checkpoint.
    pub owner_switches: i64,
    /// `parentShardId`: the shards this one was split or merged from.
    pub parents: Vec<String>,
    /// `childShardIds`: the shards that follow this one, recorded once it
    /// ended.
    pub children: Vec<String>,
    /// `startingHashKey`, a decimal string; absent when the lease does not
    /// record its range.
    pub starting_hash_key: Option<String>,
    /// `endingHashKey`, included in the range; absent like `starting_hash_key`.
    pub ending_hash_key: Option<String>,
    /// KCL 3 graceful handoff: the old owner still checkpoints.
    pub checkpoint_owner: Option<String>,
}

impl LeaseRecord {
    /// A new, unowned lease as the KCL creates one.
    pub fn new(
        key: LeaseKey,
        checkpoint: Checkpoint,
        parents: Vec<String>,
        hash_range: Option<(String, String)>,
    ) -> Self {
        let (starting_hash_key, ending_hash_key) = match hash_range {
            Some((s, e)) => (Some(s), Some(e)),
            None => (None, None),
        };
        LeaseRecord {
            key,
            owner: None,
            counter: 0,
            checkpoint,
            pending_checkpoint: None,
            owner_switches: 0,
            parents,
            children: Vec::new(),
            starting_hash_key,
            ending_hash_key,
            checkpoint_owner: None,
        }
    }

    /// The shard the lease is for.
    pub fn shard_id(&self) -> &str {
        self.key.shard_id()
    }

    /// Reads an item. `Ok(None)` for items that are not leases (KCL 3 keeps
    /// worker metrics, leader and migration state in the same table).
    pub fn from_item(item: &Item) -> Result<Option<Self>, String> {
        match get_s(item, attr::ENTITY_TYPE) {
            Some(kind) if kind != attr::ENTITY_LEASE => return Ok(None),
            Some(_) => {}
            None => {
                // Before KCL 3.5 no item carried `entityType`. Coordinator
                // state that a 3.5 table migration copied without a
                // recognised type is known by its key, and no KCL lease
                // lacks `leaseCounter`.
                let key = get_s(item, attr::LEASE_KEY);
                if key.is_some_and(|k| NON_LEASE_KEYS.contains(&k))
                    || !item.contains_key(attr::LEASE_COUNTER)
                {
                    return Ok(None);
                }
            }
        }
        let key = get_s(item, attr::LEASE_KEY).ok_or("item without leaseKey")?;
        let sub = get_n(item, attr::CHECKPOINT_SUB)?.map(|n| n.max(0) as u64);
        let checkpoint = match get_s(item, attr::CHECKPOINT) {
            Some(s) => {
                Checkpoint::parse(s, sub).map_err(|e| format!("lease {key}: checkpoint {e}"))?
            }
            // A lease the KCL created before its first checkpoint.
            None => Checkpoint::TrimHorizon,
        };
        let pending_checkpoint = match get_s(item, attr::PENDING_CHECKPOINT) {
            Some(s) if !s.is_empty() => {
                let sub = get_n(item, attr::PENDING_CHECKPOINT_SUB)?.map(|n| n.max(0) as u64);
                Some(
                    Checkpoint::parse(s, sub)
                        .map_err(|e| format!("lease {key}: pendingCheckpoint {e}"))?,
                )
            }
            _ => None,
        };
        Ok(Some(LeaseRecord {
            key: LeaseKey::parse(key),
            owner: get_s(item, attr::LEASE_OWNER).map(str::to_owned),
            counter: get_n(item, attr::LEASE_COUNTER)?.unwrap_or(0),
            checkpoint,
            pending_checkpoint,
            owner_switches: get_n(item, attr::OWNER_SWITCHES)?.unwrap_or(0),
            parents: get_ss(item, attr::PARENT_SHARD_ID),
            children: get_ss(item, attr::CHILD_SHARD_IDS),
            starting_hash_key: get_s(item, attr::STARTING_HASH_KEY).map(str::to_owned),
            ending_hash_key: get_s(item, attr::ENDING_HASH_KEY).map(str::to_owned),
            checkpoint_owner: get_s(item, attr::CHECKPOINT_OWNER).map(str::to_owned),
        }))
    }

    /// The item as the KCL's `toDynamoRecord` writes it.
    pub fn to_item(&self) -> Item {
        let mut item = Item::new();
        item.insert(attr::LEASE_KEY.into(), s(self.key.render()));
        item.insert(attr::LEASE_COUNTER.into(), n(self.counter));
        if let Some(owner) = &self.owner {
            item.insert(attr::LEASE_OWNER.into(), s(owner.clone()));
        }
        item.insert(attr::OWNER_SWITCHES.into(), n(self.owner_switches));
        item.insert(
            attr::CHECKPOINT.into(),
            s(self.checkpoint.as_str().to_owned()),
        );
        item.insert(
            attr::CHECKPOINT_SUB.into(),
            n(self.checkpoint.sub_sequence() as i64),
        );
        if !self.parents.is_empty() {
            item.insert(
                attr::PARENT_SHARD_ID.into(),
                AttributeValue::Ss(self.parents.clone()),
            );
        }
        if !self.children.is_empty() {
            item.insert(
                attr::CHILD_SHARD_IDS.into(),
                AttributeValue::Ss(self.children.clone()),
            );
        }
        if let Some(p) = &self.pending_checkpoint {
            item.insert(attr::PENDING_CHECKPOINT.into(), s(p.as_str().to_owned()));
            item.insert(
                attr::PENDING_CHECKPOINT_SUB.into(),
                n(p.sub_sequence() as i64),
            );
        }
        if let (Some(start), Some(end)) = (&self.starting_hash_key, &self.ending_hash_key) {
            item.insert(attr::STARTING_HASH_KEY.into(), s(start.clone()));
            item.insert(attr::ENDING_HASH_KEY.into(), s(end.clone()));
        }
        if let Some(owner) = &self.checkpoint_owner {
            item.insert(attr::CHECKPOINT_OWNER.into(), s(owner.clone()));
        }
        item.insert(attr::ENTITY_TYPE.into(), s(attr::ENTITY_LEASE.to_owned()));
        if let Some(stream) = self.key.stream_identifier() {
            item.insert(attr::STREAM_NAME.into(), s(stream));
            item.insert(attr::SHARD_ID.into(), s(self.shard_id().to_owned()));
        }
        item
    }
}

pub(crate) fn s(v: String) -> AttributeValue {
    AttributeValue::S(v)
}

pub(crate) fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn get_s<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

fn get_n(item: &Item, name: &str) -> Result<Option<i64>, String> {
    match item.get(name) {
        None => Ok(None),
        Some(AttributeValue::N(v)) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| format!("{name} = {v:?} is not an integer")),
        Some(other) => Err(format!("{name} has type {other:?}, expected N")),
    }
}

fn get_ss(item: &Item, name: &str) -> Vec<String> {
    match item.get(name) {
        Some(AttributeValue::Ss(v)) => v.clone(),
        // Tolerate a single string where a set is expected.
        Some(AttributeValue::S(v)) => vec![v.clone()],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(pairs: &[(&str, AttributeValue)]) -> Item {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn reads_a_kcl_2_item() {
        let it = item(&[
            ("leaseKey", s("shardId-000000000003".into())),
            ("leaseOwner", s("worker-a".into())),
            ("leaseCounter", n(42)),
            (
                "checkpoint",
                s("49590338271490256608559692538361571095921575989136588898".into()),
            ),
            ("checkpointSubSequenceNumber", n(4)),
            ("ownerSwitchesSinceCheckpoint", n(1)),
            (
                "parentShardId",
                AttributeValue::Ss(vec!["shardId-000000000001".into()]),
            ),
        ]);
        let lease = LeaseRecord::from_item(&it).unwrap().unwrap();
        assert_eq!(lease.shard_id(), "shardId-000000000003");
        assert_eq!(lease.owner.as_deref(), Some("worker-a"));
        assert_eq!(lease.counter, 42);
        assert_eq!(lease.checkpoint.sub_sequence(), 4);
        assert_eq!(lease.parents, ["shardId-000000000001"]);
        assert!(lease.children.is_empty());
    }

    #[test]
    fn skips_items_that_are_not_leases() {
        // KCL 3.5's entity types, as its EntityType enum names them.
        for kind in [
            "STREAM",
            "LEADER",
            "CLIENT_VERSION_MIGRATION",
            "TABLE_MIGRATION",
            "WORKER_METRIC_STATS",
        ] {
            let it = item(&[
                ("leaseKey", s("x".into())),
                ("leaseCounter", n(1)),
                ("entityType", s(kind.into())),
            ]);
            assert_eq!(LeaseRecord::from_item(&it), Ok(None), "{kind}");
        }
        // Coordinator state copied without a type, and items that no KCL
        // version writes as a lease.
        for key in ["Leader", "Migration3.0", "TableMigration3.5"] {
            let it = item(&[("leaseKey", s(key.into())), ("leaseCounter", n(3))]);
            assert_eq!(LeaseRecord::from_item(&it), Ok(None), "{key}");
        }
        let it = item(&[("leaseKey", s("shardId-0".into())), ("cv", s("3.x".into()))]);
        assert_eq!(LeaseRecord::from_item(&it), Ok(None));
        let it = item(&[
            ("leaseKey", s("shardId-0".into())),
            ("leaseCounter", n(0)),
            ("entityType", s("LEASE".into())),
        ]);
        assert!(LeaseRecord::from_item(&it).unwrap().is_some());
        let it = item(&[("leaseKey", s("shardId-0".into())), ("leaseCounter", n(0))]);
        assert!(
            LeaseRecord::from_item(&it).unwrap().is_some(),
            "KCL 2 lease"
        );
    }

    #[test]
    fn writes_the_kcl_names_and_types() {
        let mut lease = LeaseRecord::new(
            LeaseKey::parse("111111111111:orders:1700000000:shardId-000000000004"),
            Checkpoint::TrimHorizon,
            vec!["shardId-000000000001".into(), "shardId-000000000002".into()],
            Some(("0".into(), "340282366920938463463374607431768211455".into())),
        );
        lease.owner = Some("w".into());
        let it = lease.to_item();
        assert_eq!(
            it["leaseKey"].as_s().unwrap(),
            "111111111111:orders:1700000000:shardId-000000000004"
        );
        assert_eq!(it["leaseCounter"].as_n().unwrap(), "0");
        assert_eq!(it["checkpoint"].as_s().unwrap(), "TRIM_HORIZON");
        assert_eq!(it["checkpointSubSequenceNumber"].as_n().unwrap(), "0");
        assert_eq!(it["ownerSwitchesSinceCheckpoint"].as_n().unwrap(), "0");
        assert_eq!(it["parentShardId"].as_ss().unwrap().len(), 2);
        assert_eq!(
            it["endingHashKey"].as_s().unwrap(),
            "340282366920938463463374607431768211455"
        );
        assert_eq!(
            it["streamName"].as_s().unwrap(),
            "111111111111:orders:1700000000"
        );
        assert_eq!(it["shardId"].as_s().unwrap(), "shardId-000000000004");
        assert_eq!(it["entityType"].as_s().unwrap(), "LEASE");
        assert!(
            !it.contains_key("childShardIds"),
            "empty sets are not written"
        );
        assert_eq!(LeaseRecord::from_item(&it).unwrap().unwrap(), lease);
    }

    #[test]
    fn a_bad_counter_is_an_error_not_a_panic() {
        let it = item(&[("leaseKey", s("k".into())), ("leaseCounter", s("x".into()))]);
        assert!(LeaseRecord::from_item(&it).is_err());
    }
}
