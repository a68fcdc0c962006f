//! KPL aggregated records (awslabs/amazon-kinesis-producer,
//! aggregation-format.md): the magic bytes `F3 89 9A C2`, a protobuf
//! `AggregatedRecord`, and the MD5 of the protobuf bytes.
//!
//! Deaggregation never loses a record: anything that is not a well-formed
//! aggregate (no magic, bad checksum, bad protobuf, an index out of its
//! table, a partition key that is not UTF-8) is delivered as the plain
//! record it arrived as, and counted. User records whose hash key falls
//! outside the shard's range are delivered and counted too, where the KCL
//! drops the whole aggregate.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

use crate::{ByteStr, Record};

/// The first four bytes of every KPL aggregate.
pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

/// `AggregatedRecord`, with the string tables read as bytes so that keys
/// stay slices of the record (the wire format of `string` and `bytes` is the
/// same); UTF-8 is checked when a key is used.
#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    partition_key_table: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    explicit_hash_key_table: Vec<Bytes>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<UserRecord>,
}

/// `Record` of the format; field 4 (`tags`) is skipped as unknown: the KCL
/// does not hand tags to applications either.
#[derive(Clone, PartialEq, Message)]
struct UserRecord {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", required, tag = "3")]
    data: Bytes,
}

/// What deaggregation saw, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Records that were not aggregates.
    pub plain: u64,
    /// Well-formed aggregates split into user records.
    pub aggregates: u64,
    /// User records taken out of aggregates.
    pub sub_records: u64,
    /// Records that started with the magic bytes but were not well formed;
    /// delivered as they arrived.
    pub corrupt: u64,
    /// User records whose hash key lies outside the shard's hash key range;
    /// delivered anyway.
    pub out_of_range: u64,
}

impl Stats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Stats) {
        self.plain += other.plain;
        self.aggregates += other.aggregates;
        self.sub_records += other.sub_records;
        self.corrupt += other.corrupt;
        self.out_of_range += other.out_of_range;
    }
}

/// An inclusive hash key range of a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HashRange {
    /// The lowest hash key in the range.
    pub start: u128,
    /// The highest hash key in the range, included.
    pub end: u128,
}

impl HashRange {
    /// From the decimal strings Kinesis and the lease table use.
    pub fn parse(start: &str, end: &str) -> Option<Self> {
        Some(HashRange {
            start: start.parse().ok()?,
            end: end.parse().ok()?,
        })
    }

    /// Whether `hash` lies in the range, either end included.
    pub fn contains(&self, hash: u128) -> bool {
        (self.start..=self.end).contains(&hash)
    }
}

/// The hash key Kinesis routes a user record by: its explicit hash key, or
/// the MD5 of its partition key read as a big-endian 128-bit number.
pub fn hash_key(partition_key: &str, explicit_hash_key: Option<&str>) -> Option<u128> {
    match explicit_hash_key {
        Some(ehk) => ehk.parse().ok(),
        None => Some(u128::from_be_bytes(
            Md5::digest(partition_key.as_bytes()).into(),
        )),
    }
}

/// True when `data` starts like a KPL aggregate.
pub fn is_aggregate(data: &[u8]) -> bool {
    data.len() >= MAGIC.len() + DIGEST_LEN && data[..MAGIC.len()] == MAGIC
}

/// Appends the user records of `record` to `out` (or `record` itself when it
/// is not a well-formed aggregate). `range`, when known, is the shard's
/// hash key range, checked for every user record.
pub fn deaggregate(
    record: Record,
    range: Option<HashRange>,
    out: &mut Vec<Record>,
    stats: &mut Stats,
) {
    if !is_aggregate(&record.data) {
        stats.plain += 1;
        out.push(record);
        return;
    }
    let body = record
        .data
        .slice(MAGIC.len()..record.data.len() - DIGEST_LEN);
    let digest = &record.data[record.data.len() - DIGEST_LEN..];
    if Md5::digest(&body).as_slice() != digest {
        stats.corrupt += 1;
        out.push(record);
        return;
    }
    let Ok(agg) = AggregatedRecord::decode(body) else {
        stats.corrupt += 1;
        out.push(record);
        return;
    };
    // Check every user record before emitting any: an aggregate is split
    // whole or delivered whole.
    let mut keys: Vec<Option<ByteStr>> = vec![None; agg.partition_key_table.len()];
    let mut ehks: Vec<Option<ByteStr>> = vec![None; agg.explicit_hash_key_table.len()];
    for user in &agg.records {
        let key_ok = utf8_entry(
            &agg.partition_key_table,
            &mut keys,
            user.partition_key_index,
        )
        .is_some();
        let ehk_ok = user
            .explicit_hash_key_index
            .is_none_or(|i| utf8_entry(&agg.explicit_hash_key_table, &mut ehks, i).is_some());
        if !(key_ok && ehk_ok) {
            stats.corrupt += 1;
            out.push(record);
            return;
        }
    }
    stats.aggregates += 1;
    out.reserve(agg.records.len());
    for (i, user) in agg.records.into_iter().enumerate() {
        // Both lookups succeeded above.
        let partition_key = keys[user.partition_key_index as usize]
            .clone()
            .unwrap_or_default();
        let explicit_hash_key = user
            .explicit_hash_key_index
            .and_then(|i| ehks[i as usize].clone());
        if let Some(range) = range {
            let inside = hash_key(&partition_key, explicit_hash_key.as_deref())
                .is_some_and(|h| range.contains(h));
            if !inside {
                stats.out_of_range += 1;
            }
        }
        stats.sub_records += 1;
        out.push(Record {
            sequence_number: record.sequence_number.clone(),
            sub_sequence_number: i as u64,
            aggregated: true,
            partition_key,
            explicit_hash_key,
            data: user.data,
            approximate_arrival_ms: record.approximate_arrival_ms,
            encryption: record.encryption,
        });
    }
}

/// The table entry at `index` as UTF-8, checked once per entry.
fn utf8_entry(table: &[Bytes], cache: &mut [Option<ByteStr>], index: u64) -> Option<ByteStr> {
    let i = usize::try_from(index).ok()?;
    if let Some(done) = cache.get(i)?.clone() {
        return Some(done);
    }
    let s = ByteStr::from_utf8(table.get(i)?.clone()).ok()?;
    cache[i] = Some(s.clone());
    Some(s)
}

/// Builds an aggregate from user records (partition key, explicit hash key,
/// data): the inverse of [`deaggregate`], for tests, benches and fuzzing.
pub fn aggregate(records: &[(String, Option<String>, Vec<u8>)]) -> Vec<u8> {
    let mut pks: Vec<String> = Vec::new();
    let mut ehks: Vec<String> = Vec::new();
    let mut users = Vec::with_capacity(records.len());
    for (pk, ehk, data) in records {
        let pki = index_of(&mut pks, pk);
        let ehki = ehk.as_ref().map(|e| index_of(&mut ehks, e));
        users.push(UserRecord {
            partition_key_index: pki,
            explicit_hash_key_index: ehki,
            data: Bytes::copy_from_slice(data),
        });
    }
    let agg = AggregatedRecord {
        partition_key_table: pks
            .into_iter()
            .map(|s| Bytes::from(s.into_bytes()))
            .collect(),
        explicit_hash_key_table: ehks
            .into_iter()
            .map(|s| Bytes::from(s.into_bytes()))
            .collect(),
        records: users,
    };
    let body = agg.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

fn index_of(table: &mut Vec<String>, value: &str) -> u64 {
    match table.iter().position(|v| v == value) {
        Some(i) => i as u64,
        None => {
            table.push(value.to_owned());
            (table.len() - 1) as u64
        }
    }
}

#[cfg(test)]
mod tests;
