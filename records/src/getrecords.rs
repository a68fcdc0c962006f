//! Decoding a GetRecords response body.
//!
//! The AWS SDK parses the JSON into owned strings and base64-decodes every
//! record into its own allocation. This decoder parses with borrowed
//! strings, decodes all record data with SIMD base64 into one buffer, copies
//! every sequence number and partition key behind it, and hands out records
//! whose fields are slices of that buffer; the body is dropped once decoded.
//! A response costs a few allocations whatever its record count.
//!
//! [`scan`] finds the fields of the shape the service writes in one pass;
//! anything else (escapes, unexpected types) goes through serde, so both
//! paths decode the same bodies to the same records.

mod scan;
mod split;

pub use split::EventSplitter;

use std::borrow::Cow;
use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use kcld_checkpoint::SequenceNumber;
use serde::Deserialize;

use crate::{ByteStr, Encryption, Record};

/// A decoded GetRecords response: every field the API returns.
#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    /// The records, in shard order, as Kinesis stored them (KPL aggregates not
    /// yet split).
    pub records: Vec<Record>,
    /// `None` once the shard is closed and read to its end.
    pub next_shard_iterator: Option<String>,
    /// `MillisBehindLatest`: how far this read was behind the tip of the shard,
    /// in milliseconds.
    pub millis_behind_latest: Option<i64>,
    /// Present at the end of a closed shard.
    pub child_shards: Option<Vec<ChildShard>>,
}

/// A shard that continues a closed one, as `ChildShards` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildShard {
    /// The child's shard id.
    pub shard_id: String,
    /// The shards it continues: one after a split, two after a merge.
    pub parent_shards: Vec<String>,
    /// The first hash key of its range, as a decimal string.
    pub starting_hash_key: String,
    /// The last hash key of its range, included, as a decimal string.
    pub ending_hash_key: String,
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The body is not JSON of the GetRecords shape.
    #[error("GetRecords response is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A record's `Data` is not valid base64.
    #[error("GetRecords record {index}: Data is not base64")]
    Base64 {
        /// The record's position in `Records`, from 0.
        index: usize,
    },
    /// A record's field has a value that cannot be used (a bad sequence number
    /// or arrival time).
    #[error("GetRecords record {index}: {message}")]
    Field {
        /// The record's position in `Records`, from 0.
        index: usize,
        /// What is wrong with the field.
        message: String,
    },
}

/// A string borrowed from the body where it has no escapes. (serde borrows
/// a `Cow` only when it is the field's own type, not inside an `Option`,
/// hence the newtype.)
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

/// `Records` is required: a body without it is an error, never an empty
/// read (which, without an iterator, would look like the end of the shard).
#[derive(Deserialize)]
struct RawResponse<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<RawRecord<'a>>,
    #[serde(rename = "NextShardIterator", borrow, default)]
    next_shard_iterator: Option<Text<'a>>,
    #[serde(rename = "MillisBehindLatest", default)]
    millis_behind_latest: Option<i64>,
    #[serde(rename = "ChildShards", default)]
    child_shards: Option<Vec<RawChildShard>>,
}

#[derive(Deserialize)]
struct RawRecord<'a> {
    #[serde(rename = "SequenceNumber", borrow)]
    sequence_number: Cow<'a, str>,
    /// Kept as its text: parsed to whole milliseconds exactly, without a
    /// float on the way.
    #[serde(rename = "ApproximateArrivalTimestamp", borrow, default)]
    approximate_arrival_timestamp: Option<&'a serde_json::value::RawValue>,
    #[serde(rename = "Data", borrow)]
    data: Cow<'a, str>,
    #[serde(rename = "PartitionKey", borrow, default)]
    partition_key: Option<Text<'a>>,
    #[serde(rename = "EncryptionType", borrow, default)]
    encryption_type: Option<Text<'a>>,
}

#[derive(Deserialize)]
struct RawChildShard {
    #[serde(rename = "ShardId")]
    shard_id: String,
    #[serde(rename = "ParentShards", default)]
    parent_shards: Vec<String>,
    #[serde(rename = "HashKeyRange")]
    hash_key_range: RawHashKeyRange,
}

#[derive(Deserialize)]
struct RawHashKeyRange {
    #[serde(rename = "StartingHashKey")]
    starting_hash_key: String,
    #[serde(rename = "EndingHashKey")]
    ending_hash_key: String,
}

/// Epoch seconds as a JSON number (`1709100911.667`, `1.709100911667E9`)
/// to whole milliseconds, exactly (rounding half up past the third
/// decimal), with integer arithmetic only, in one pass over the bytes.
fn epoch_millis(text: &str) -> Option<i64> {
    let bytes = text.trim().as_bytes();
    let (negative, bytes) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    let mut digits: u128 = 0;
    let mut int_digits = 0usize;
    let mut frac_digits = 0i32;
    let mut i = 0;
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        digits = digits
            .checked_mul(10)?
            .checked_add(u128::from(bytes[i] - b'0'))?;
        int_digits += 1;
        i += 1;
    }
    if int_digits == 0 {
        return None;
    }
    if i < bytes.len() && bytes[i] == b'.' {
        i += 1;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            digits = digits
                .checked_mul(10)?
                .checked_add(u128::from(bytes[i] - b'0'))?;
            frac_digits += 1;
            i += 1;
        }
    }
    let mut exponent: i32 = 0;
    if i < bytes.len() && (bytes[i] == b'e' || bytes[i] == b'E') {
        i += 1;
        let negative_exp = match bytes.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            exponent = exponent
                .checked_mul(10)?
                .checked_add(i32::from(bytes[i] - b'0'))?;
            i += 1;
        }
        if i == start {
            return None;
        }
        if negative_exp {
            exponent = -exponent;
        }
    }
    if i != bytes.len() {
        return None;
    }
    // digits * 10^(exponent - frac_digits) seconds, in milliseconds.
    let shift = exponent.checked_add(3)?.checked_sub(frac_digits)?;
    let millis = if shift >= 0 {
        digits.checked_mul(10u128.checked_pow(shift as u32)?)?
    } else {
        let div = 10u128.checked_pow(shift.unsigned_abs())?;
        (digits + div / 2) / div
    };
    let millis = i64::try_from(millis).ok()?;
    Some(if negative { -millis } else { millis })
}

/// Decoded length of standard, padded base64 text.
fn decoded_len(text: &[u8]) -> usize {
    let pad = text.iter().rev().take(2).filter(|b| **b == b'=').count();
    (text.len() / 4 * 3).saturating_sub(pad)
}

/// Decodes a GetRecords response body.
pub fn decode(body: Bytes) -> Result<Response, DecodeError> {
    if let Some(s) = scan::scan(&body) {
        return Ok(Response {
            records: decode_records(&s.records)?,
            next_shard_iterator: s.next_shard_iterator.map(str::to_owned),
            millis_behind_latest: s.millis_behind_latest,
            child_shards: scanned_children(s.child_shards)?,
        });
    }
    let raw: RawResponse<'_> = serde_json::from_slice(&body)?;
    Ok(Response {
        records: decode_records(&fields(&raw.records))?,
        next_shard_iterator: raw.next_shard_iterator.map(|t| t.0.into_owned()),
        millis_behind_latest: raw.millis_behind_latest,
        child_shards: raw.child_shards.map(child_shards),
    })
}

/// Whether [`scan`] takes `body` (the fast path), for tests and benches.
#[doc(hidden)]
pub fn takes_fast_path(body: &[u8]) -> bool {
    scan::scan(body).is_some()
}

/// A record's fields as the decoder needs them, from either path.
struct Fields<'a> {
    sequence_number: &'a [u8],
    /// The JSON number's text.
    arrival: Option<&'a str>,
    /// The base64 text.
    data: &'a [u8],
    partition_key: Option<&'a str>,
    encryption_type: Option<&'a str>,
}

/// serde's records as [`Fields`].
fn fields<'a>(raw: &'a [RawRecord<'a>]) -> Vec<Fields<'a>> {
    raw.iter()
        .map(|r| Fields {
            sequence_number: r.sequence_number.as_bytes(),
            arrival: r.approximate_arrival_timestamp.map(|v| v.get()),
            data: r.data.as_bytes(),
            partition_key: r.partition_key.as_ref().map(|t| t.0.as_ref()),
            encryption_type: r.encryption_type.as_ref().map(|t| t.0.as_ref()),
        })
        .collect()
}

/// `ChildShards` as the scanner found it: decoded by serde (it is small and
/// comes once per shard).
fn scanned_children(raw: Option<&[u8]>) -> Result<Option<Vec<ChildShard>>, DecodeError> {
    match raw {
        None => Ok(None),
        Some(raw) => Ok(Some(child_shards(serde_json::from_slice(raw)?))),
    }
}

/// A decoded `SubscribeToShardEvent`: the payload of one enhanced fan-out
/// event message, which carries records of the same shape as GetRecords.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscribeEvent {
    /// The records, in shard order, as Kinesis stored them.
    pub records: Vec<Record>,
    /// Where the next subscription resumes (AFTER_SEQUENCE_NUMBER); `None`
    /// (or empty in the payload) on the event that ends a closed shard.
    pub continuation_sequence_number: Option<String>,
    /// How far this event was behind the tip of the shard, in milliseconds.
    pub millis_behind_latest: Option<i64>,
    /// Present on the event that ends a closed shard.
    pub child_shards: Option<Vec<ChildShard>>,
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<RawRecord<'a>>,
    #[serde(rename = "ContinuationSequenceNumber", borrow, default)]
    continuation_sequence_number: Option<Text<'a>>,
    #[serde(rename = "MillisBehindLatest", default)]
    millis_behind_latest: Option<i64>,
    #[serde(rename = "ChildShards", default)]
    child_shards: Option<Vec<RawChildShard>>,
}

/// Decodes the JSON payload of a `SubscribeToShardEvent` message with the
/// same one-buffer decoder as GetRecords (the event-stream framing around
/// it is the caller's).
pub fn decode_subscribe_event(payload: &[u8]) -> Result<SubscribeEvent, DecodeError> {
    if let Some(s) = scan::scan(payload) {
        return Ok(SubscribeEvent {
            records: decode_records(&s.records)?,
            continuation_sequence_number: s
                .continuation_sequence_number
                .filter(|c| !c.is_empty())
                .map(str::to_owned),
            millis_behind_latest: s.millis_behind_latest,
            child_shards: scanned_children(s.child_shards)?,
        });
    }
    let raw: RawEvent<'_> = serde_json::from_slice(payload)?;
    Ok(SubscribeEvent {
        records: decode_records(&fields(&raw.records))?,
        continuation_sequence_number: raw
            .continuation_sequence_number
            .map(|t| t.0.into_owned())
            .filter(|s| !s.is_empty()),
        millis_behind_latest: raw.millis_behind_latest,
        child_shards: raw.child_shards.map(child_shards),
    })
}

fn child_shards(children: Vec<RawChildShard>) -> Vec<ChildShard> {
    children
        .into_iter()
        .map(|c| ChildShard {
            shard_id: c.shard_id,
            parent_shards: c.parent_shards,
            starting_hash_key: c.hash_key_range.starting_hash_key,
            ending_hash_key: c.hash_key_range.ending_hash_key,
        })
        .collect()
}

/// The records of a response or event as slices of one buffer.
fn decode_records(raw: &[Fields<'_>]) -> Result<Vec<Record>, DecodeError> {
    let mut records = Vec::with_capacity(raw.len());
    decode_records_into(raw, &mut records)?;
    Ok(records)
}

/// [`decode_records`], appended to `records` (a run of a large fan-out
/// event gathers several pushes' records); after an error `records` may
/// hold some of them.
fn decode_records_into(raw: &[Fields<'_>], records: &mut Vec<Record>) -> Result<(), DecodeError> {
    // One buffer for the whole batch: each record's data (SIMD base64),
    // then its sequence number and partition key. Nothing keeps the body
    // alive once decoded, so a batch read ahead holds its data and keys,
    // not also the 4/3-larger JSON text it came in.
    let total: usize = raw
        .iter()
        .map(|r| {
            decoded_len(r.data) + r.sequence_number.len() + r.partition_key.map_or(0, str::len)
        })
        .sum();
    let mut data = BytesMut::with_capacity(total);
    // Per record: where its data, its sequence number and its key end.
    let mut ends = Vec::with_capacity(raw.len());
    for (index, r) in raw.iter().enumerate() {
        let spare: &mut [MaybeUninit<u8>] = data.spare_capacity_mut();
        let written = base64_simd::STANDARD
            .decode(r.data, base64_simd::Out::from_uninit_slice(spare))
            .map_err(|_| DecodeError::Base64 { index })?
            .len();
        // SAFETY: `decode` initialised exactly `written` bytes at the start
        // of the spare capacity (it returns that prefix), and `written` is at
        // most the spare length, so the new length covers initialised bytes
        // only.
        unsafe { data.set_len(data.len() + written) };
        let data_end = data.len();
        data.extend_from_slice(r.sequence_number);
        let sequence_end = data.len();
        if let Some(pk) = r.partition_key {
            data.extend_from_slice(pk.as_bytes());
        }
        ends.push((data_end, sequence_end, data.len()));
    }
    let data = data.freeze();

    records.reserve(raw.len());
    let mut start = 0;
    for (index, (r, (data_end, sequence_end, key_end))) in raw.iter().zip(ends).enumerate() {
        let sequence_number = SequenceNumber::from_bytes(data.slice(data_end..sequence_end))
            .map_err(|e| DecodeError::Field {
                index,
                message: e.to_string(),
            })?;
        let partition_key = match r.partition_key {
            // Copied from text already checked as UTF-8.
            Some(_) => ByteStr(data.slice(sequence_end..key_end)),
            None => ByteStr::default(),
        };
        let encryption = match r.encryption_type {
            None => None,
            Some("KMS") => Some(Encryption::Kms),
            Some(_) => Some(Encryption::None),
        };
        records.push(Record {
            sequence_number,
            sub_sequence_number: 0,
            aggregated: false,
            partition_key,
            explicit_hash_key: None,
            data: data.slice(start..data_end),
            approximate_arrival_ms: match r.arrival {
                Some(raw) => epoch_millis(raw).ok_or_else(|| DecodeError::Field {
                    index,
                    message: format!("ApproximateArrivalTimestamp {raw} is not a time"),
                })?,
                None => 0,
            },
            encryption,
        });
        start = key_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decoded_batch_does_not_hold_the_body() {
        let text = br#"{"Records":[{"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","Data":"aGVsbG8=","PartitionKey":"key-1"}],"NextShardIterator":"AAAA"}"#;
        let body = Bytes::from(text.to_vec());
        let r = decode(body.clone()).unwrap();
        assert!(body.is_unique(), "the decoder kept a reference to the body");
        assert_eq!(r.records[0].partition_key.as_str(), "key-1");
        assert_eq!(&r.records[0].data[..], b"hello");
    }

    #[test]
    fn decodes_every_field() {
        let body = Bytes::from_static(
            br#"{"Records":[
              {"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ApproximateArrivalTimestamp":1.709100911667E9,"Data":"eyJ0aGlzX2lzIjogInRlc3QgcmVjb3JkIn0=","PartitionKey":"DUMMY1","EncryptionType":"KMS"},
              {"SequenceNumber":"49590338271490256608559692538361571095921575989136588899","ApproximateArrivalTimestamp":1709100912.5,"Data":"","PartitionKey":"k\u00e9y \"q\""}
            ],"NextShardIterator":"AAAA/BBB=","MillisBehindLatest":1500,
            "ChildShards":[{"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000000","shardId-000000000001"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"340282366920938463463374607431768211455"}}]}"#,
        );
        let r = decode(body.clone()).unwrap();
        assert_eq!(r.records.len(), 2);
        let a = &r.records[0];
        assert_eq!(
            a.sequence_number.as_str(),
            "49590338271490256608559692538361571095921575989136588898"
        );
        assert_eq!(&a.data[..], br#"{"this_is": "test record"}"#);
        assert_eq!(a.partition_key.as_str(), "DUMMY1");
        assert_eq!(a.approximate_arrival_ms, 1_709_100_911_667);
        assert_eq!(a.encryption, Some(Encryption::Kms));
        // Nothing decoded points into the body: a batch read ahead does not
        // keep the JSON text alive.
        assert!(!body.as_ptr_range().contains(&a.partition_key.as_ptr()));
        assert!(!body
            .as_ptr_range()
            .contains(&a.sequence_number.as_str().as_ptr()));
        let b = &r.records[1];
        assert!(b.data.is_empty());
        assert_eq!(b.partition_key.as_str(), "k\u{e9}y \"q\"");
        assert_eq!(b.approximate_arrival_ms, 1_709_100_912_500);
        assert_eq!(b.encryption, None);
        assert_eq!(r.next_shard_iterator.as_deref(), Some("AAAA/BBB="));
        assert_eq!(r.millis_behind_latest, Some(1500));
        let c = &r.child_shards.as_ref().unwrap()[0];
        assert_eq!(c.parent_shards.len(), 2);
        assert_eq!(c.ending_hash_key, "340282366920938463463374607431768211455");
    }

    #[test]
    fn decodes_a_subscribe_to_shard_event() {
        let payload = br#"{"ContinuationSequenceNumber":"49590338271490256608559692538361571095921575989136588899","MillisBehindLatest":0,"Records":[{"SequenceNumber":"49590338271490256608559692538361571095921575989136588898","ApproximateArrivalTimestamp":1.709100911667E9,"Data":"aGVsbG8=","PartitionKey":"key-1"}]}"#;
        let e = decode_subscribe_event(payload).unwrap();
        assert_eq!(e.records.len(), 1);
        assert_eq!(&e.records[0].data[..], b"hello");
        assert_eq!(e.records[0].partition_key.as_str(), "key-1");
        assert_eq!(e.records[0].approximate_arrival_ms, 1_709_100_911_667);
        assert_eq!(
            e.continuation_sequence_number.as_deref(),
            Some("49590338271490256608559692538361571095921575989136588899")
        );
        assert_eq!(e.millis_behind_latest, Some(0));
        assert!(e.child_shards.is_none());
        // The end of a closed shard: no continuation (absent, null or
        // empty), the children.
        for end in [
            &br#"{"Records":[],"MillisBehindLatest":0,"ChildShards":[{"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000000"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]}"#[..],
            br#"{"Records":[],"ContinuationSequenceNumber":null,"ChildShards":[{"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000000"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]}"#,
            br#"{"Records":[],"ContinuationSequenceNumber":"","ChildShards":[{"ShardId":"shardId-000000000002","ParentShards":["shardId-000000000000"],"HashKeyRange":{"StartingHashKey":"0","EndingHashKey":"9"}}]}"#,
        ] {
            let e = decode_subscribe_event(end).unwrap();
            assert_eq!(e.continuation_sequence_number, None);
            assert_eq!(e.child_shards.unwrap()[0].shard_id, "shardId-000000000002");
        }
        for bad in [&b"{}"[..], b"", br#"{"Records":[{"Data":""}]}"#] {
            assert!(decode_subscribe_event(bad).is_err());
        }
    }

    #[test]
    fn arrival_times_parse_exactly() {
        for (text, ms) in [
            ("1709100911.667", 1_709_100_911_667),
            ("1.709100911667E9", 1_709_100_911_667),
            ("1.709100911667e+9", 1_709_100_911_667),
            ("1709100911", 1_709_100_911_000),
            ("1709100911.6675", 1_709_100_911_668),
            ("1.7091009116E9", 1_709_100_911_600),
            ("0", 0),
        ] {
            assert_eq!(epoch_millis(text), Some(ms), "{text}");
        }
        for bad in [
            "", "x", "1.2.3", "1e", "--1", "1e999999", ".5", "1.5x", "1e+",
        ] {
            assert_eq!(epoch_millis(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_end_of_a_shard_has_no_iterator() {
        let r = decode(Bytes::from_static(
            br#"{"Records":[],"MillisBehindLatest":0,"ChildShards":[]}"#,
        ))
        .unwrap();
        assert!(r.records.is_empty() && r.next_shard_iterator.is_none());
        let r = decode(Bytes::from_static(
            br#"{"Records":[],"NextShardIterator":null}"#,
        ))
        .unwrap();
        assert!(r.next_shard_iterator.is_none());
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"{}",
            br#"{"NextShardIterator":null}"#,
            br#"{"Records":[{"SequenceNumber":"1","Data":"!!!!"}]}"#,
            br#"{"Records":[{"SequenceNumber":"x1","Data":""}]}"#,
            br#"{"Records":[{"Data":""}]}"#,
            br#"{"Records":[{"SequenceNumber":"1","Data":"QQ"}]}"#,
        ] {
            assert!(
                decode(Bytes::copy_from_slice(body)).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
