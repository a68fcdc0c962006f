//! Decoding a DynamoDB Streams GetRecords response body.
//!
//! A DynamoDB stream record is an item change (`eventName` INSERT, MODIFY
//! or REMOVE, and the item's keys and images in DynamoDB JSON). Lambda hands
//! it to a function as GetRecords returns it, with `eventSourceARN` added;
//! the AWS SDK instead builds a tree of attribute values for every image.
//! This decoder keeps each record as the bytes of its JSON object, a slice
//! of the body (no copy, no tree), and reads only what a consumer needs to
//! place it: its sequence number and creation time. The record is then
//! written out as it came ([`crate::lambda::write_dynamodb_record`]), and
//! the KCL's DynamoDB Streams adapter gives a MultiLang processor the same
//! JSON as the record's data.
//!
//! A record maps onto [`Record`] as the adapter maps it: `data` is the
//! record's JSON, the sequence number is `dynamodb.SequenceNumber` (with
//! sub-sequence number 0), the partition key is the sequence number, and
//! the arrival time is `dynamodb.ApproximateCreationDateTime`.

use std::borrow::Cow;

use bytes::Bytes;
use kcld_checkpoint::SequenceNumber;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::getrecords::{DecodeError, Response};
use crate::{ByteStr, Record};

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(rename = "Records", default, borrow)]
    records: Vec<&'a RawValue>,
    #[serde(rename = "NextShardIterator", default)]
    next_shard_iterator: Option<String>,
}

/// The fields of one record a consumer reads; the rest is skipped.
#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    dynamodb: Change<'a>,
}

#[derive(Deserialize)]
struct Change<'a> {
    #[serde(rename = "SequenceNumber", borrow)]
    sequence_number: Cow<'a, str>,
    /// Epoch seconds, a JSON number (whole, with a fraction, or in
    /// exponent form such as `1.46480431E9`).
    #[serde(rename = "ApproximateCreationDateTime", default)]
    created: Option<f64>,
}

/// Decodes a DynamoDB Streams GetRecords body. `millis_behind_latest` is
/// how long ago the last record was made (the service does not say how far
/// behind a read is; the KCL's adapter works it out the same way), `None`
/// for an empty read; `now_ms` is the time to measure it from. A missing
/// `NextShardIterator` is the end of a closed shard; the children are not in
/// the body (the caller asks DescribeStream).
pub fn decode(body: Bytes, now_ms: i64) -> Result<Response, DecodeError> {
    let parsed: Body<'_> = serde_json::from_slice(&body)?;
    let mut records = Vec::with_capacity(parsed.records.len());
    for (index, raw) in parsed.records.iter().enumerate() {
        let text = raw.get();
        let fields: Fields<'_> = serde_json::from_str(text)?;
        let field = |message: String| DecodeError::Field { index, message };
        // The digits as a slice of the body (no copy) where they were
        // written without escapes, which is always.
        let digits = match &fields.dynamodb.sequence_number {
            Cow::Borrowed(seq) => body.slice_ref(seq.as_bytes()),
            Cow::Owned(seq) => Bytes::copy_from_slice(seq.as_bytes()),
        };
        let sequence_number = SequenceNumber::from_bytes(digits.clone())
            .map_err(|e| field(format!("dynamodb.SequenceNumber: {e}")))?;
        // Digits are UTF-8: this cannot fail.
        let partition_key = ByteStr::from_utf8(digits)
            .map_err(|e| field(format!("dynamodb.SequenceNumber: {e}")))?;
        let approximate_arrival_ms = match fields.dynamodb.created {
            Some(seconds) if seconds.is_finite() && seconds >= 0.0 => {
                (seconds * 1000.0).round() as i64
            }
            Some(other) => {
                return Err(field(format!(
                    "dynamodb.ApproximateCreationDateTime {other} is not a time"
                )))
            }
            None => 0,
        };
        // The record's own bytes, a slice of the body: `text` points into it.
        let data = body.slice_ref(text.as_bytes());
        records.push(Record {
            partition_key,
            sequence_number,
            sub_sequence_number: 0,
            aggregated: false,
            explicit_hash_key: None,
            data,
            approximate_arrival_ms,
            encryption: None,
        });
    }
    let millis_behind_latest = records
        .last()
        .filter(|r| r.approximate_arrival_ms > 0)
        .map(|r| (now_ms - r.approximate_arrival_ms).max(0));
    Ok(Response {
        records,
        next_shard_iterator: parsed.next_shard_iterator,
        millis_behind_latest,
        child_shards: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A response as DynamoDB Streams writes it: an INSERT, a MODIFY with
    /// both images, a TTL REMOVE with its `userIdentity`.
    pub(crate) const BODY: &str = r#"{"NextShardIterator":"it-2","Records":[{"awsRegion":"us-east-1","dynamodb":{"ApproximateCreationDateTime":1.46480431E9,"Keys":{"Id":{"N":"101"}},"NewImage":{"Message":{"S":"New item!"},"Id":{"N":"101"}},"SequenceNumber":"111","SizeBytes":26,"StreamViewType":"NEW_AND_OLD_IMAGES"},"eventID":"a","eventName":"INSERT","eventSource":"aws:dynamodb","eventVersion":"1.1"},{"awsRegion":"us-east-1","dynamodb":{"ApproximateCreationDateTime":1464804311,"Keys":{"Id":{"N":"101"}},"NewImage":{"Message":{"S":"This \"item\" has changed"},"Id":{"N":"101"}},"OldImage":{"Message":{"S":"New item!"},"Id":{"N":"101"}},"SequenceNumber":"222","SizeBytes":59,"StreamViewType":"NEW_AND_OLD_IMAGES"},"eventID":"b","eventName":"MODIFY","eventSource":"aws:dynamodb","eventVersion":"1.1"},{"awsRegion":"us-east-1","dynamodb":{"ApproximateCreationDateTime":1464804312.5,"Keys":{"Id":{"N":"101"}},"OldImage":{"Id":{"N":"101"}},"SequenceNumber":"333","SizeBytes":38,"StreamViewType":"NEW_AND_OLD_IMAGES"},"eventID":"c","eventName":"REMOVE","eventSource":"aws:dynamodb","eventVersion":"1.1","userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"}}]}"#;

    #[test]
    fn records_keep_their_json_and_are_placed_by_sequence_number_and_time() {
        let response = decode(Bytes::from_static(BODY.as_bytes()), 1_464_804_320_000).unwrap();
        assert_eq!(response.next_shard_iterator.as_deref(), Some("it-2"));
        let seqs: Vec<&str> = response
            .records
            .iter()
            .map(|r| r.sequence_number.as_str())
            .collect();
        assert_eq!(seqs, ["111", "222", "333"]);
        let times: Vec<i64> = response
            .records
            .iter()
            .map(|r| r.approximate_arrival_ms)
            .collect();
        assert_eq!(
            times,
            [1_464_804_310_000, 1_464_804_311_000, 1_464_804_312_500]
        );
        // Each record's data is its JSON object, exactly as in the body.
        let whole: serde_json::Value = serde_json::from_str(BODY).unwrap();
        for (record, expected) in response
            .records
            .iter()
            .zip(whole["Records"].as_array().unwrap())
        {
            let got: serde_json::Value = serde_json::from_slice(&record.data).unwrap();
            assert_eq!(&got, expected);
            assert_eq!(
                record.partition_key.as_str(),
                record.sequence_number.as_str()
            );
        }
        assert_eq!(response.millis_behind_latest, Some(7_500));
    }

    #[test]
    fn the_end_of_a_closed_shard_and_an_empty_read() {
        let end = decode(Bytes::from_static(br#"{"Records":[]}"#), 0).unwrap();
        assert!(end.next_shard_iterator.is_none() && end.records.is_empty());
        assert_eq!(end.millis_behind_latest, None);
        let bad = decode(
            Bytes::from_static(br#"{"Records":[{"dynamodb":{"SequenceNumber":"x1"}}]}"#),
            0,
        )
        .unwrap_err();
        assert!(bad.to_string().contains("SequenceNumber"), "{bad}");
        assert!(decode(Bytes::from_static(b"<html>"), 0).is_err());
    }

    #[test]
    fn records_are_written_as_lambda_hands_them_over() {
        use crate::lambda::{write_record, EventContext};
        let response = decode(Bytes::from_static(BODY.as_bytes()), 0).unwrap();
        let arn =
            "arn:aws:dynamodb:us-east-1:111111111111:table/orders/stream/2026-12-07T09:12:57.169";
        let ctx = EventContext::dynamodb("us-east-1", arn);
        let whole: serde_json::Value = serde_json::from_str(BODY).unwrap();
        for (record, original) in response
            .records
            .iter()
            .zip(whole["Records"].as_array().unwrap())
        {
            let mut out = Vec::new();
            write_record(&mut out, &ctx, "shardId-1", record);
            let mut expected = original.clone();
            expected["eventSourceARN"] = serde_json::json!(arn);
            let got: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(got, expected);
        }
    }
}
