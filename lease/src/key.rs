//! Lease keys. A single-stream KCL application keys each lease by the shard
//! id; a multi-stream one by `account:stream:creationEpoch:shardId` (with
//! `streamName` = `account:stream:creationEpoch` and `shardId` attributes
//! beside it). kcld reads one stream but understands both, so it can take
//! over a table written either way and leave other streams' leases alone.

/// A parsed lease key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeaseKey {
    /// The shard id alone.
    Single {
        /// The shard id, which is the whole `leaseKey`.
        shard_id: String,
    },
    /// `account:stream:creationEpoch:shardId`.
    Multi {
        /// The 12-digit id of the account that owns the stream.
        account: String,
        /// The stream's name.
        stream: String,
        /// The stream's creation time in epoch seconds, as written in the key.
        creation_epoch: String,
        /// The shard the lease is for.
        shard_id: String,
    },
}

impl LeaseKey {
    /// Reads a `leaseKey`: multi-stream when it has four `:`-separated parts
    /// with a 12-digit account and a numeric epoch, else a shard id.
    pub fn parse(key: &str) -> Self {
        let parts: Vec<&str> = key.split(':').collect();
        match parts.as_slice() {
            [account, stream, epoch, shard]
                if account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && epoch.bytes().all(|b| b.is_ascii_digit())
                    && !stream.is_empty()
                    && !shard.is_empty() =>
            {
                LeaseKey::Multi {
                    account: (*account).to_owned(),
                    stream: (*stream).to_owned(),
                    creation_epoch: (*epoch).to_owned(),
                    shard_id: (*shard).to_owned(),
                }
            }
            _ => LeaseKey::Single {
                shard_id: key.to_owned(),
            },
        }
    }

    /// The shard the lease is for, in either format.
    pub fn shard_id(&self) -> &str {
        match self {
            LeaseKey::Single { shard_id } | LeaseKey::Multi { shard_id, .. } => shard_id,
        }
    }

    /// The `streamName` attribute of a multi-stream lease.
    pub fn stream_identifier(&self) -> Option<String> {
        match self {
            LeaseKey::Single { .. } => None,
            LeaseKey::Multi {
                account,
                stream,
                creation_epoch,
                ..
            } => Some(format!("{account}:{stream}:{creation_epoch}")),
        }
    }

    /// The key as stored in `leaseKey`.
    pub fn render(&self) -> String {
        match self {
            LeaseKey::Single { shard_id } => shard_id.clone(),
            LeaseKey::Multi { shard_id, .. } => {
                format!(
                    "{}:{shard_id}",
                    self.stream_identifier().unwrap_or_default()
                )
            }
        }
    }

    /// The key of another shard of the same stream, in the same format.
    pub fn sibling(&self, shard_id: &str) -> LeaseKey {
        match self {
            LeaseKey::Single { .. } => LeaseKey::Single {
                shard_id: shard_id.to_owned(),
            },
            LeaseKey::Multi {
                account,
                stream,
                creation_epoch,
                ..
            } => LeaseKey::Multi {
                account: account.clone(),
                stream: stream.clone(),
                creation_epoch: creation_epoch.clone(),
                shard_id: shard_id.to_owned(),
            },
        }
    }
}

/// The stream kcld reads: which leases of a table are its own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamScope {
    /// The 12-digit id of the account that owns the stream.
    pub account: String,
    /// The stream's name.
    pub stream_name: String,
    /// The stream's creation time in epoch seconds (the KCL's
    /// `creationEpoch`), when known. A stream deleted and created again
    /// under the same name has a new one, and the old stream's leases are
    /// not this stream's.
    pub creation_epoch: Option<u64>,
}

impl StreamScope {
    /// A multi-stream key of this stream (its shard id left empty: a
    /// template for [`LeaseKey::sibling`]). A stream whose creation time is
    /// unknown gets epoch 0.
    pub fn multi_key(&self) -> LeaseKey {
        LeaseKey::Multi {
            account: self.account.clone(),
            stream: self.stream_name.clone(),
            creation_epoch: self.creation_epoch.unwrap_or(0).to_string(),
            shard_id: String::new(),
        }
    }

    /// Single-stream keys belong to the table's one stream; multi-stream
    /// keys only when account, stream name and (when known) creation epoch
    /// match.
    pub fn owns(&self, key: &LeaseKey) -> bool {
        match key {
            LeaseKey::Single { .. } => true,
            LeaseKey::Multi {
                account,
                stream,
                creation_epoch,
                ..
            } => {
                *account == self.account
                    && *stream == self.stream_name
                    && self
                        .creation_epoch
                        .is_none_or(|created| !older_than(creation_epoch, created))
            }
        }
    }
}

/// Whether a key's creation epoch names a stream created before `created`
/// (epoch seconds): a former stream of the same name. The KCL leaves the
/// unit to the application (its docs say the creation timestamp, its own
/// tests use milliseconds), so values past year 5138 in seconds are read
/// as milliseconds.
fn older_than(key_epoch: &str, created: u64) -> bool {
    match key_epoch.parse::<u64>() {
        Ok(e) if e >= 100_000_000_000 => e / 1000 < created,
        Ok(e) => e < created,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_formats() {
        assert_eq!(
            LeaseKey::parse("shardId-000000000007"),
            LeaseKey::Single {
                shard_id: "shardId-000000000007".into()
            }
        );
        let multi = LeaseKey::parse("111111111111:orders:1700000000:shardId-000000000002");
        assert_eq!(multi.shard_id(), "shardId-000000000002");
        assert_eq!(
            multi.stream_identifier().as_deref(),
            Some("111111111111:orders:1700000000")
        );
        assert_eq!(
            multi.render(),
            "111111111111:orders:1700000000:shardId-000000000002"
        );
        assert_eq!(
            multi.sibling("shardId-000000000009").render(),
            "111111111111:orders:1700000000:shardId-000000000009"
        );
        // Colons that do not make the multi-stream shape stay a single key.
        assert!(matches!(
            LeaseKey::parse("a:b:c:d"),
            LeaseKey::Single { .. }
        ));
    }

    #[test]
    fn scope_keeps_other_streams_out() {
        let scope = StreamScope {
            account: "111111111111".into(),
            stream_name: "orders".into(),
            creation_epoch: None,
        };
        assert!(scope.owns(&LeaseKey::parse("shardId-000000000000")));
        assert!(scope.owns(&LeaseKey::parse("111111111111:orders:1:shardId-0")));
        assert!(!scope.owns(&LeaseKey::parse("111111111111:payments:1:shardId-0")));
        assert!(!scope.owns(&LeaseKey::parse("222222222222:orders:1:shardId-0")));
    }

    #[test]
    fn leases_of_a_former_stream_of_the_same_name_are_not_this_streams() {
        let scope = StreamScope {
            account: "111111111111".into(),
            stream_name: "orders".into(),
            creation_epoch: Some(1_800_000_000),
        };
        assert!(scope.owns(&LeaseKey::parse("111111111111:orders:1800000000:shardId-0")));
        assert!(scope.owns(&LeaseKey::parse(
            "111111111111:orders:1800000000123:shardId-0"
        )));
        assert!(!scope.owns(&LeaseKey::parse("111111111111:orders:1700000000:shardId-0")));
        assert!(!scope.owns(&LeaseKey::parse(
            "111111111111:orders:1700000000000:shardId-0"
        )));
    }
}
