//! Records in the shape of a Lambda Kinesis event record, written straight
//! into a reused byte buffer: the stdout sink writes one per line and the
//! HTTP sink puts them in its event bodies, so a Lambda handler's code reads
//! kcld's output unchanged.
//!
//! The output is byte for byte what serde_json writes for the same record
//! ([`write_record_with_serde`], the reference this encoder is tested and
//! benchmarked against), produced without its machinery: the constant parts
//! are preformatted (the context's tail once per consumer), record data go
//! through SIMD base64 into the buffer (base64 needs no JSON escaping, so
//! there is no escape scan over it), and only the partition key and shard id
//! are escaped.

use std::io::Write;

use serde::Serialize;

use crate::Record;

/// What every record of one consumer shares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventContext {
    aws_region: String,
    event_source_arn: String,
    invoke_identity_arn: String,
    /// Everything after `eventID`'s value, preformatted.
    tail: Vec<u8>,
    /// The records are DynamoDB stream records: written as they came, with
    /// `eventSourceARN` added ([`write_dynamodb_record`]).
    dynamodb: bool,
}

impl EventContext {
    /// `awsRegion`, `eventSourceARN` and `invokeIdentityArn` of every
    /// record (the last empty when not configured).
    pub fn new(
        aws_region: impl Into<String>,
        event_source_arn: impl Into<String>,
        invoke_identity_arn: impl Into<String>,
    ) -> Self {
        let (aws_region, event_source_arn, invoke_identity_arn) = (
            aws_region.into(),
            event_source_arn.into(),
            invoke_identity_arn.into(),
        );
        let mut tail = Vec::new();
        tail.extend_from_slice(br#"","eventName":"aws:kinesis:record","invokeIdentityArn":""#);
        escape_into(&mut tail, &invoke_identity_arn);
        tail.extend_from_slice(br#"","awsRegion":""#);
        escape_into(&mut tail, &aws_region);
        tail.extend_from_slice(br#"","eventSourceARN":""#);
        escape_into(&mut tail, &event_source_arn);
        tail.extend_from_slice(br#""}"#);
        EventContext {
            aws_region,
            event_source_arn,
            invoke_identity_arn,
            tail,
            dynamodb: false,
        }
    }

    /// The context of a DynamoDB stream's records: Lambda's DynamoDB event
    /// record shape, which has no `invokeIdentityArn`.
    pub fn dynamodb(aws_region: impl Into<String>, event_source_arn: impl Into<String>) -> Self {
        let mut ctx = EventContext::new(aws_region, event_source_arn, "");
        ctx.tail.clear();
        ctx.tail.extend_from_slice(br#","eventSourceARN":""#);
        escape_into(&mut ctx.tail, &ctx.event_source_arn.clone());
        ctx.tail.extend_from_slice(br#""}"#);
        ctx.dynamodb = true;
        ctx
    }

    /// `awsRegion`: the stream's region.
    pub fn aws_region(&self) -> &str {
        &self.aws_region
    }

    /// `eventSourceARN`: the stream's ARN.
    pub fn event_source_arn(&self) -> &str {
        &self.event_source_arn
    }

    /// `invokeIdentityArn`; empty when not configured.
    pub fn invoke_identity_arn(&self) -> &str {
        &self.invoke_identity_arn
    }
}

/// About how many bytes [`write_record`] appends for `record` (at least
/// that many unless its key needs escaping): size a buffer for a batch once
/// instead of letting it grow and copy.
pub fn encoded_len(ctx: &EventContext, shard_id: &str, record: &Record) -> usize {
    if ctx.dynamodb {
        return record.data.len() + ctx.tail.len();
    }
    // The constant parts and the numbers fit in 300 bytes.
    300 + ctx.tail.len()
        + record.partition_key.len()
        + 2 * record.sequence_number.as_str().len()
        + shard_id.len()
        + base64_simd::STANDARD.encoded_length(record.data.len())
}

/// Appends `record` as one Lambda event record (JSON, no newline) to `out`.
/// The sinks size `out` once per batch with [`encoded_len`]; nothing is
/// reserved here, so that the size is not worked out twice per record.
pub fn write_record(out: &mut Vec<u8>, ctx: &EventContext, shard_id: &str, record: &Record) {
    if ctx.dynamodb {
        return write_dynamodb_record(out, ctx, record);
    }
    let seq = record.sequence_number.as_str();
    out.extend_from_slice(br#"{"kinesis":{"kinesisSchemaVersion":"1.0","partitionKey":""#);
    escape_into(out, record.partition_key.as_str());
    out.extend_from_slice(br#"","sequenceNumber":""#);
    escape_into(out, seq);
    out.push(b'"');
    if record.aggregated {
        out.extend_from_slice(br#","subSequenceNumber":"#);
        // Writing into a Vec cannot fail.
        let _ = write!(out, "{}", record.sub_sequence_number);
    }
    out.extend_from_slice(br#","data":""#);
    base64_simd::STANDARD.encode_append(&record.data, out);
    out.extend_from_slice(br#"","approximateArrivalTimestamp":"#);
    write_seconds(out, record.approximate_arrival_ms);
    out.extend_from_slice(br#"},"eventSource":"aws:kinesis","eventVersion":"1.0","eventID":""#);
    escape_into(out, shard_id);
    out.push(b':');
    escape_into(out, seq);
    if record.aggregated {
        let _ = write!(out, ":{}", record.sub_sequence_number);
    }
    out.extend_from_slice(&ctx.tail);
}

/// Appends a DynamoDB stream record (its JSON object as GetRecords returned
/// it, [`crate::dynamodb`]) as Lambda's DynamoDB event record: the same
/// object with `eventSourceARN` added at its end. The images stay the
/// DynamoDB JSON they were.
pub fn write_dynamodb_record(out: &mut Vec<u8>, ctx: &EventContext, record: &Record) {
    let data = record.data.trim_ascii_end();
    match data.split_last() {
        Some((b'}', body)) => {
            out.extend_from_slice(body);
            // `{}`: nothing before the added field, so no comma.
            let tail = if body.trim_ascii() == b"{" {
                &ctx.tail[1..]
            } else {
                &ctx.tail[..]
            };
            out.extend_from_slice(tail);
        }
        // Not an object (never from the decoder): as it came.
        _ => out.extend_from_slice(data),
    }
}

/// Milliseconds since the epoch as seconds with a fraction, exactly as
/// serde_json writes the `f64` `ms / 1000.0` (the shortest form that reads
/// back as that number: up to three decimals, trailing zeros dropped, `.0`
/// for whole seconds). Times before 1970 or past year 33658 take serde's
/// own path.
fn write_seconds(out: &mut Vec<u8>, ms: i64) {
    if !(0..1_000_000_000_000_000).contains(&ms) {
        let _ = serde_json::to_writer(&mut *out, &(ms as f64 / 1000.0));
        return;
    }
    let (secs, frac) = (ms / 1000, ms % 1000);
    let _ = write!(out, "{secs}.");
    if frac == 0 {
        out.push(b'0');
        return;
    }
    let digits = [
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ];
    let len = 3 - digits.iter().rev().take_while(|d| **d == b'0').count();
    out.extend_from_slice(&digits[..len]);
}

/// Appends `text` as the inside of a JSON string, escaped as serde_json
/// escapes it: `"` and `\`, the short forms of backspace, form feed, line
/// feed, carriage return and tab, `\u00XX` for the other control
/// characters, everything else as it is.
fn escape_into(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            0x08 => b'b',
            0x0c => b'f',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(&[b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 0xf) as usize]]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kinesis<'a> {
    kinesis_schema_version: &'static str,
    partition_key: &'a str,
    sequence_number: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub_sequence_number: Option<u64>,
    data: String,
    approximate_arrival_timestamp: f64,
}

#[derive(Serialize)]
struct EventRecord<'a> {
    kinesis: Kinesis<'a>,
    #[serde(rename = "eventSource")]
    event_source: &'static str,
    #[serde(rename = "eventVersion")]
    event_version: &'static str,
    #[serde(rename = "eventID")]
    event_id: String,
    #[serde(rename = "eventName")]
    event_name: &'static str,
    #[serde(rename = "invokeIdentityArn")]
    invoke_identity_arn: &'a str,
    #[serde(rename = "awsRegion")]
    aws_region: &'a str,
    #[serde(rename = "eventSourceARN")]
    event_source_arn: &'a str,
}

/// The same record through serde_json's derive: the reference
/// [`write_record`] must match byte for byte, and its benchmark baseline.
pub fn write_record_with_serde(
    out: &mut Vec<u8>,
    ctx: &EventContext,
    shard_id: &str,
    record: &Record,
) {
    use base64::Engine;
    let seq = record.sequence_number.as_str();
    let event_id = if record.aggregated {
        format!("{shard_id}:{seq}:{}", record.sub_sequence_number)
    } else {
        format!("{shard_id}:{seq}")
    };
    let event = EventRecord {
        kinesis: Kinesis {
            kinesis_schema_version: "1.0",
            partition_key: record.partition_key.as_str(),
            sequence_number: seq,
            sub_sequence_number: record.aggregated.then_some(record.sub_sequence_number),
            data: base64::engine::general_purpose::STANDARD.encode(&record.data),
            approximate_arrival_timestamp: record.approximate_arrival_ms as f64 / 1000.0,
        },
        event_source: "aws:kinesis",
        event_version: "1.0",
        event_id,
        event_name: "aws:kinesis:record",
        invoke_identity_arn: &ctx.invoke_identity_arn,
        aws_region: &ctx.aws_region,
        event_source_arn: &ctx.event_source_arn,
    };
    // Serializing plain strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(out, &event);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ByteStr;
    use bytes::Bytes;
    use proptest::prelude::*;

    fn record(seq: &str, sub: u64, aggregated: bool, key: &str, data: Vec<u8>, ms: i64) -> Record {
        Record {
            sequence_number: seq.parse().unwrap(),
            sub_sequence_number: sub,
            aggregated,
            partition_key: ByteStr::from(key),
            explicit_hash_key: None,
            data: Bytes::from(data),
            approximate_arrival_ms: ms,
            encryption: None,
        }
    }

    fn both(ctx: &EventContext, shard: &str, r: &Record) -> (String, String) {
        let (mut fast, mut reference) = (Vec::new(), Vec::new());
        write_record(&mut fast, ctx, shard, r);
        write_record_with_serde(&mut reference, ctx, shard, r);
        (
            String::from_utf8(fast).unwrap(),
            String::from_utf8(reference).unwrap(),
        )
    }

    #[test]
    fn matches_the_lambda_event_record_shape() {
        let ctx = EventContext::new(
            "us-east-1",
            "arn:aws:kinesis:us-east-1:999900009999:stream/kds-sharing-example1",
            "arn:aws:iam::888800008888:role/service-role/kds-reader1-role",
        );
        let r = record(
            "49649683864473953433843496278632352517587667908684677122",
            0,
            false,
            "DUMMY1",
            br#"{"this_is": "test record"}"#.to_vec(),
            1_709_100_911_667,
        );
        let mut out = Vec::new();
        write_record(&mut out, &ctx, "shardId-000000000000", &r);
        let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
        // The record printed in the seed article, field for field.
        let want = serde_json::json!({
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": "DUMMY1",
                "sequenceNumber": "49649683864473953433843496278632352517587667908684677122",
                "data": "eyJ0aGlzX2lzIjogInRlc3QgcmVjb3JkIn0=",
                "approximateArrivalTimestamp": 1709100911.667
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": "shardId-000000000000:49649683864473953433843496278632352517587667908684677122",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": "arn:aws:iam::888800008888:role/service-role/kds-reader1-role",
            "awsRegion": "us-east-1",
            "eventSourceARN": "arn:aws:kinesis:us-east-1:999900009999:stream/kds-sharing-example1"
        });
        assert_eq!(got, want);
    }

    #[test]
    fn edge_cases_match_serde_byte_for_byte() {
        let ctx = EventContext::new("eu-west-1", "arn:x", "");
        for (key, ms, aggregated) in [
            ("plain", 0, false),
            ("quote\"back\\slash", 1_000, true),
            ("ctl\u{1}\u{1f}\n\r\t\u{8}\u{c}", 5, false),
            ("é漢字🙂\u{7f}", 120, true),
            ("", 1_709_100_911_100, false),
            ("neg", -1_500, false),
            ("far", 999_999_999_999_999, false),
        ] {
            let r = record("123", 7, aggregated, key, vec![0, 255, 10], ms);
            let (fast, reference) = both(&ctx, "shardId-1", &r);
            assert_eq!(fast, reference, "{key:?} {ms}");
        }
    }

    proptest! {
        #[test]
        fn any_record_matches_serde_byte_for_byte(
            key in "\\PC{0,40}|[\\x00-\\x7f]{0,20}",
            data in proptest::collection::vec(any::<u8>(), 0..300),
            seq in "[1-9][0-9]{0,55}",
            sub in any::<u64>(),
            aggregated in any::<bool>(),
            ms in 0i64..4_000_000_000_000,
            shard in "[a-zA-Z0-9\\-]{1,30}",
            region in "[a-z0-9\\-\"]{0,12}",
        ) {
            let ctx = EventContext::new(region, "arn:aws:kinesis:r:1:stream/s", "arn:aws:iam::1:role/r");
            let r = record(&seq, sub, aggregated, &key, data, ms);
            let (fast, reference) = both(&ctx, &shard, &r);
            prop_assert_eq!(fast, reference);
        }
    }
}
