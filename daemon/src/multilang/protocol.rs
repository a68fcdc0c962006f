//! The KCL MultiLangDaemon protocol's messages, as the Java daemon writes
//! and reads them: one JSON object per line on the record processor's stdin
//! and stdout. Pure: no I/O, so every message shape is unit-tested.
//!
//! To the processor: `initialize`, `processRecords` (records with base64
//! data and `"action":"record"`), `leaseLost`, `shardEnded`,
//! `shutdownRequested`, and the reply to each checkpoint request (the
//! request's own numbers echoed, `error` the KCL exception's class name or
//! null). Null fields are written, not left out: amazon-kclpy reads every
//! key. From the processor: `status` (`responseFor` the action it
//! finished) and `checkpoint` requests; other lines are skipped.
//!
//! The KCL's MultiLangDaemon reads one stream. kcld reads several, whose
//! shard ids repeat, so with several streams `initialize` also names the
//! shard's stream (`streamArn`, a field the KCL's processor libraries pass
//! over), as does the processor's environment (`KCLD_STREAM_ARN`).

use base64::Engine;
use kcld_checkpoint::Checkpoint;
use serde::Serialize;

use crate::record::Batch;

/// The actions kcld sends; a status names one of them in `responseFor`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Tells the processor which shard it reads and where reading resumes.
    Initialize,
    /// Delivers a batch of records.
    ProcessRecords,
    /// Tells the processor the lease is gone; it may not checkpoint.
    LeaseLost,
    /// Tells the processor the shard was read to its end; it must checkpoint.
    ShardEnded,
    /// Tells the processor the worker is shutting down or handing the lease
    /// over; its last chance to checkpoint.
    ShutdownRequested,
}

impl Action {
    /// The action's name on the wire, as in `action` and `responseFor`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Initialize => "initialize",
            Action::ProcessRecords => "processRecords",
            Action::LeaseLost => "leaseLost",
            Action::ShardEnded => "shardEnded",
            Action::ShutdownRequested => "shutdownRequested",
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Initialize<'a> {
    action: &'static str,
    shard_id: &'a str,
    sequence_number: &'a str,
    sub_sequence_number: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    stream_arn: Option<&'a str>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ProcessRecords<'a> {
    action: &'static str,
    records: Vec<JsonRecord<'a>>,
    millis_behind_latest: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonRecord<'a> {
    data: String,
    partition_key: &'a str,
    sequence_number: &'a str,
    approximate_arrival_timestamp: i64,
    sub_sequence_number: u64,
    action: &'static str,
}

#[derive(Serialize)]
struct Bare {
    action: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckpointReply<'a> {
    action: &'static str,
    sequence_number: Option<&'a str>,
    sub_sequence_number: Option<u64>,
    error: Option<&'a str>,
}

fn line(value: &impl Serialize) -> String {
    // Serializing these plain structs cannot fail.
    let mut text = serde_json::to_string(value).unwrap_or_default();
    text.push('\n');
    text
}

/// `initialize` with the lease's checkpoint (a sentinel name or a sequence
/// number, and its sub-sequence number); `stream_arn` with several streams.
pub fn initialize(shard_id: &str, stream_arn: Option<&str>, checkpoint: &Checkpoint) -> String {
    line(&Initialize {
        action: "initialize",
        shard_id,
        sequence_number: checkpoint.as_str(),
        sub_sequence_number: checkpoint.sub_sequence(),
        stream_arn,
    })
}

/// `processRecords` for a batch.
pub fn process_records(batch: &Batch) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    line(&ProcessRecords {
        action: "processRecords",
        records: batch
            .records
            .iter()
            .map(|r| JsonRecord {
                data: b64.encode(&r.data),
                partition_key: r.partition_key.as_str(),
                sequence_number: r.sequence_number.as_str(),
                approximate_arrival_timestamp: r.approximate_arrival_ms,
                sub_sequence_number: r.sub_sequence_number,
                action: "record",
            })
            .collect(),
        millis_behind_latest: batch.millis_behind_latest,
    })
}

/// `leaseLost`, `shardEnded` or `shutdownRequested` (no payload).
pub fn notice(action: Action) -> String {
    line(&Bare {
        action: action.as_str(),
    })
}

/// The reply to a checkpoint request: the request's numbers echoed, and the
/// KCL exception's class name when it was refused.
pub fn checkpoint_reply(request: &CheckpointRequest, error: Option<CheckpointRefusal>) -> String {
    line(&CheckpointReply {
        action: "checkpoint",
        sequence_number: request.sequence_number.as_deref(),
        sub_sequence_number: request.sub_sequence_number,
        error: error.map(CheckpointRefusal::as_str),
    })
}

/// A checkpoint request of the processor: `None` sequence number = the
/// last record delivered (at shard end: SHARD_END).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointRequest {
    /// The sequence number to checkpoint at; `None` = the last record delivered
    /// (SHARD_END at the shard's end).
    pub sequence_number: Option<String>,
    /// The sub-sequence number within a KPL aggregate; `None` = 0.
    pub sub_sequence_number: Option<u64>,
    /// Why the request cannot name a position (a `subSequenceNumber` that
    /// is not a whole number, say): refused with IllegalArgumentException,
    /// as the KCL's checkpointer refuses a position it cannot take.
    pub malformed: Option<String>,
}

/// Why a checkpoint was refused, named as the KCL's exceptions are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointRefusal {
    /// No checkpoint is possible now (during initialize or leaseLost).
    InvalidState,
    /// The lease is no longer held.
    Shutdown,
    /// The lease table is not reachable now; try again.
    Throttling,
    /// The lease table refused for another reason.
    Dependency,
    /// Before the last checkpoint, past the last record delivered, or not
    /// a sequence number.
    IllegalArgument,
}

impl CheckpointRefusal {
    /// The KCL exception's class name, sent in the reply's `error` field.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointRefusal::InvalidState => "InvalidStateException",
            CheckpointRefusal::Shutdown => "ShutdownException",
            CheckpointRefusal::Throttling => "ThrottlingException",
            CheckpointRefusal::Dependency => "KinesisClientLibDependencyException",
            CheckpointRefusal::IllegalArgument => "IllegalArgumentException",
        }
    }
}

/// One line of the processor's stdout, understood.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromChild {
    /// It finished the action named.
    Status {
        /// The action it finished, from `responseFor`.
        response_for: String,
    },
    /// It asks for a checkpoint (`"action":"checkpoint"`).
    Checkpoint(CheckpointRequest),
    /// Not a message kcld acts on (empty, not JSON, another action): the
    /// Java daemon skips these too. Carries the line for the log.
    Skip(String),
}

/// Reads one line of the processor's stdout.
pub fn parse(line: &str) -> FromChild {
    let trimmed = line.trim();
    let skip = || FromChild::Skip(trimmed.to_owned());
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(trimmed)
    else {
        return skip();
    };
    match map.get("action").and_then(|a| a.as_str()) {
        Some("status") => match map.get("responseFor").and_then(|r| r.as_str()) {
            Some(r) => FromChild::Status {
                response_for: r.to_owned(),
            },
            None => skip(),
        },
        Some("checkpoint") => {
            let mut malformed = None;
            let sequence_number = match map.get("sequenceNumber") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                Some(serde_json::Value::Number(n)) => Some(n.to_string()),
                Some(other) => {
                    malformed = Some(format!("sequenceNumber {other} is not a sequence number"));
                    None
                }
            };
            let sub_sequence_number = match map.get("subSequenceNumber") {
                None | Some(serde_json::Value::Null) => None,
                Some(v) => match v.as_u64() {
                    Some(n) => Some(n),
                    None => {
                        malformed = Some(format!(
                            "subSequenceNumber {v} is not a whole number of 0 or more"
                        ));
                        None
                    }
                },
            };
            FromChild::Checkpoint(CheckpointRequest {
                sequence_number,
                sub_sequence_number,
                malformed,
            })
        }
        _ => skip(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{ByteStr, Record};
    use kcld_checkpoint::ExtendedSequenceNumber;
    use std::sync::Arc;

    fn at(seq: &str, sub: u64) -> Checkpoint {
        Checkpoint::At(ExtendedSequenceNumber::new(seq.parse().unwrap(), sub))
    }

    #[test]
    fn messages_to_the_processor_have_the_java_daemons_shape() {
        assert_eq!(
            initialize("shardId-000000000001", None, &Checkpoint::TrimHorizon),
            "{\"action\":\"initialize\",\"shardId\":\"shardId-000000000001\",\"sequenceNumber\":\"TRIM_HORIZON\",\"subSequenceNumber\":0}\n"
        );
        assert_eq!(
            initialize("s", None, &at("4959", 3)),
            "{\"action\":\"initialize\",\"shardId\":\"s\",\"sequenceNumber\":\"4959\",\"subSequenceNumber\":3}\n"
        );
        // With several streams the shard's stream is named.
        assert_eq!(
            initialize("s", Some("arn:aws:kinesis:us-east-1:111111111111:stream/a"), &Checkpoint::Latest),
            "{\"action\":\"initialize\",\"shardId\":\"s\",\"sequenceNumber\":\"LATEST\",\"subSequenceNumber\":0,\"streamArn\":\"arn:aws:kinesis:us-east-1:111111111111:stream/a\"}\n"
        );
        let batch = Batch {
            shard_id: Arc::from("s"),
            records: vec![Record {
                sequence_number: "49590338271490256608559692538361571095921575989136588898"
                    .parse()
                    .unwrap(),
                sub_sequence_number: 0,
                aggregated: false,
                partition_key: ByteStr::from("pk"),
                explicit_hash_key: None,
                data: bytes::Bytes::from_static(b"hello"),
                approximate_arrival_ms: 1_476_889_707_000,
                encryption: None,
            }],
            millis_behind_latest: Some(0),
            filtered_to: None,
        };
        assert_eq!(
            process_records(&batch),
            "{\"action\":\"processRecords\",\"records\":[{\"data\":\"aGVsbG8=\",\"partitionKey\":\"pk\",\"sequenceNumber\":\"49590338271490256608559692538361571095921575989136588898\",\"approximateArrivalTimestamp\":1476889707000,\"subSequenceNumber\":0,\"action\":\"record\"}],\"millisBehindLatest\":0}\n"
        );
        assert_eq!(notice(Action::LeaseLost), "{\"action\":\"leaseLost\"}\n");
        assert_eq!(notice(Action::ShardEnded), "{\"action\":\"shardEnded\"}\n");
        let null = CheckpointRequest {
            sequence_number: None,
            sub_sequence_number: None,
            malformed: None,
        };
        assert_eq!(
            checkpoint_reply(&null, Some(CheckpointRefusal::Shutdown)),
            "{\"action\":\"checkpoint\",\"sequenceNumber\":null,\"subSequenceNumber\":null,\"error\":\"ShutdownException\"}\n"
        );
    }

    #[test]
    fn lines_from_the_processor() {
        // amazon-kclpy writes "\n<json>\n": the empty lines are skipped.
        assert_eq!(parse(""), FromChild::Skip(String::new()));
        assert_eq!(
            parse("{\"action\": \"status\", \"responseFor\": \"initialize\"}"),
            FromChild::Status {
                response_for: "initialize".into()
            }
        );
        assert_eq!(
            parse("{\"action\": \"checkpoint\", \"sequenceNumber\": null, \"subSequenceNumber\": null}"),
            FromChild::Checkpoint(CheckpointRequest {
                sequence_number: None,
                sub_sequence_number: None,
                malformed: None,
            })
        );
        assert_eq!(
            parse("{\"action\":\"checkpoint\",\"sequenceNumber\":\"123\",\"subSequenceNumber\":2}"),
            FromChild::Checkpoint(CheckpointRequest {
                sequence_number: Some("123".into()),
                sub_sequence_number: Some(2),
                malformed: None,
            })
        );
        // A bad position is answered (refused), not dropped: the processor
        // waits for the reply.
        for bad in [
            "{\"action\":\"checkpoint\",\"sequenceNumber\":\"123\",\"subSequenceNumber\":-1}",
            "{\"action\":\"checkpoint\",\"sequenceNumber\":\"123\",\"subSequenceNumber\":\"x\"}",
            "{\"action\":\"checkpoint\",\"sequenceNumber\":[1]}",
        ] {
            match parse(bad) {
                FromChild::Checkpoint(request) => assert!(request.malformed.is_some(), "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        for junk in [
            "Was throttled while checkpointing",
            "{\"action\":\"status\"}",
            "{\"action\":\"log\",\"message\":\"x\"}",
            "[1,2]",
        ] {
            assert!(matches!(parse(junk), FromChild::Skip(_)), "{junk}");
        }
    }
}
