//! The record shape of a Lambda Kinesis event, shared by the sinks so that a
//! Lambda handler's code reads kcld's output unchanged.

use base64::Engine;
use kcld_config::Settings;
use serde::Serialize;

use crate::record::Record;

/// What every record of this consumer shares.
#[derive(Clone, Debug)]
pub struct EventContext {
    /// `awsRegion` of each record: the stream's region.
    pub aws_region: String,
    /// `eventSourceARN` of each record: the stream's ARN.
    pub event_source_arn: String,
    /// `invokeIdentityArn` of each record; empty when not configured.
    pub invoke_identity_arn: String,
}

impl EventContext {
    /// The context for the configured stream and `sink.invoke_identity_arn`.
    pub fn from_settings(settings: &Settings) -> Self {
        EventContext {
            aws_region: settings.stream_arn.region.clone(),
            event_source_arn: settings.stream_arn.to_string(),
            invoke_identity_arn: settings.sink.invoke_identity_arn.clone(),
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Kinesis<'a> {
    kinesis_schema_version: &'static str,
    partition_key: &'a str,
    sequence_number: &'a str,
    /// Only for sub-records of a KPL aggregate, which share a sequence number.
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

/// Appends `record` as one Lambda event record (JSON, no newline) to `out`.
pub fn write_record(out: &mut Vec<u8>, ctx: &EventContext, shard_id: &str, record: &Record) {
    let aggregated = record.aggregated;
    let seq = record.sequence_number.as_str();
    let event_id = if aggregated {
        format!("{shard_id}:{seq}:{}", record.sub_sequence_number)
    } else {
        format!("{shard_id}:{seq}")
    };
    let event = EventRecord {
        kinesis: Kinesis {
            kinesis_schema_version: "1.0",
            partition_key: record.partition_key.as_str(),
            sequence_number: seq,
            sub_sequence_number: aggregated.then_some(record.sub_sequence_number),
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
    use bytes::Bytes;

    #[test]
    fn matches_the_lambda_event_record_shape() {
        let ctx = EventContext {
            aws_region: "us-east-1".into(),
            event_source_arn: "arn:aws:kinesis:us-east-1:999900009999:stream/kds-sharing-example1"
                .into(),
            invoke_identity_arn: "arn:aws:iam::888800008888:role/service-role/kds-reader1-role"
                .into(),
        };
        let record = Record {
            sequence_number: "49649683864473953433843496278632352517587667908684677122"
                .parse()
                .unwrap(),
            sub_sequence_number: 0,
            aggregated: false,
            partition_key: "DUMMY1".into(),
            explicit_hash_key: None,
            data: Bytes::from_static(br#"{"this_is": "test record"}"#),
            approximate_arrival_ms: 1_709_100_911_667,
            encryption: None,
        };
        let mut out = Vec::new();
        write_record(&mut out, &ctx, "shardId-000000000000", &record);
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
}
