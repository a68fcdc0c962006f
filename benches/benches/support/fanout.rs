//! The SubscribeToShard event stream of `--bench fanout_decode` and of the
//! `fanout_once` example (instruction counts), and the three ways of
//! reading it: one definition for both.

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use kcld_benches::SyntheticResponse;

pub const STREAM_ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/bench";
pub const CONSUMER_ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/bench/consumer/c:1";
pub const EVENTS: usize = 10;
pub const RECORDS_PER_EVENT: usize = 1_000;
pub const CHUNK: usize = 16 * 1024;

pub fn message(event_type: &str, payload: Bytes) -> Vec<u8> {
    let m = Message::new(payload)
        .add_header(Header::new(
            ":message-type",
            HeaderValue::String("event".into()),
        ))
        .add_header(Header::new(
            ":event-type",
            HeaderValue::String(event_type.to_owned().into()),
        ))
        .add_header(Header::new(
            ":content-type",
            HeaderValue::String("application/json".into()),
        ));
    let mut out = Vec::new();
    write_message_to(&m, &mut out).unwrap_or_else(|e| panic!("framing: {e}"));
    out
}

/// The event payload: a GetRecords body's records with the event's fields.
pub fn event_payload(response: &SyntheticResponse, continuation: &str) -> Bytes {
    let body = response.body();
    let mut value: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("body: {e}"));
    let object = value.as_object_mut().unwrap_or_else(|| panic!("an object"));
    object.remove("NextShardIterator");
    object.insert("ContinuationSequenceNumber".into(), continuation.into());
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// A client whose every call is answered with `stream`, in chunks.
pub fn client(stream: Bytes) -> aws_sdk_kinesis::Client {
    let http = aws_smithy_http_client::test_util::infallible_client_fn(move |_req| {
        let chunks: Vec<Result<hyper::body::Frame<Bytes>, std::io::Error>> = (0..stream.len())
            .step_by(CHUNK)
            .map(|at| {
                Ok(hyper::body::Frame::data(
                    stream.slice(at..(at + CHUNK).min(stream.len())),
                ))
            })
            .collect();
        let body = aws_smithy_types::body::SdkBody::from_body_1_x(http_body_util::StreamBody::new(
            futures::stream::iter(chunks),
        ));
        let mut response = http::Response::new(body);
        response.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/vnd.amazon.eventstream"),
        );
        response
    });
    aws_sdk_kinesis::Client::from_conf(
        aws_sdk_kinesis::Config::builder()
            .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
            .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                "AKID", "SECRET", None, None, "bench",
            ))
            .http_client(http)
            .build(),
    )
}

pub async fn kcld_path(stream: &kcld::stream::Stream) -> usize {
    let at = kcld::stream::StartAt::TrimHorizon;
    let mut subscription = stream
        .subscribe(CONSUMER_ARN, "shardId-000000000000", &at)
        .await
        .unwrap_or_else(|e| panic!("kcld subscribe: {e}"));
    let mut records = 0;
    while let Some(event) = stream
        .next_event(&mut subscription, CONSUMER_ARN)
        .await
        .unwrap_or_else(|e| panic!("kcld event: {e}"))
    {
        records += event.records().len();
    }
    records
}

pub async fn sdk_path(client: &aws_sdk_kinesis::Client) -> usize {
    use aws_sdk_kinesis::types::{
        ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
    };
    let position = StartingPosition::builder()
        .r#type(ShardIteratorType::TrimHorizon)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = client
        .subscribe_to_shard()
        .consumer_arn(CONSUMER_ARN)
        .shard_id("shardId-000000000000")
        .starting_position(position)
        .send()
        .await
        .unwrap_or_else(|e| panic!("SDK subscribe: {e:?}"));
    let mut records = 0;
    while let Some(event) = out
        .event_stream
        .recv()
        .await
        .unwrap_or_else(|e| panic!("SDK event: {e:?}"))
    {
        if let SubscribeToShardEventStream::SubscribeToShardEvent(e) = event {
            records += e.records.len();
        }
    }
    records
}

/// The workload: the event stream (the initial response, then `EVENTS`
/// events of `RECORDS_PER_EVENT` records of 1 KiB), the same records as
/// GetRecords bodies, and their record-data bytes.
pub struct Workload {
    pub stream: Bytes,
    pub bodies: Vec<Bytes>,
    pub data_bytes: usize,
}

impl Workload {
    pub fn generate() -> Self {
        let responses: Vec<SyntheticResponse> = (0..EVENTS)
            .map(|i| SyntheticResponse::generate(RECORDS_PER_EVENT, 1024, 42 + i as u64))
            .collect();
        let data_bytes: usize = responses
            .iter()
            .flat_map(|r| &r.records)
            .map(|r| r.data.len())
            .sum();
        let mut stream = message("initial-response", Bytes::from_static(b"{}"));
        for (i, r) in responses.iter().enumerate() {
            let continuation =
                format!("4959033827149025660855969253836157109592157598913658{i:04}");
            stream.extend(message(
                "SubscribeToShardEvent",
                event_payload(r, &continuation),
            ));
        }
        Workload {
            stream: Bytes::from(stream),
            bodies: responses.iter().map(SyntheticResponse::body).collect(),
            data_bytes,
        }
    }

    /// Polling's decoder over the same records: the records read.
    pub fn polling(&self) -> usize {
        self.bodies
            .iter()
            .map(|b| {
                kcld_records::getrecords::decode(b.clone())
                    .map(|r| r.records.len())
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .sum::<usize>()
    }
}
