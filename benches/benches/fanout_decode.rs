//! Enhanced fan-out records: one SubscribeToShard event stream, decoded
//! three ways, in record-data bytes per second so they compare per byte:
//!
//! - `kcld`: `Stream::subscribe` and `Stream::next_event`, as the fan-out
//!   reader calls them: the SDK opens the call, kcld takes the event stream
//!   and decodes each event's JSON with its one-buffer decoder;
//! - `aws_sdk`: a plain aws-sdk-kinesis client's `subscribe_to_shard` and
//!   its event receiver (the SDK's event-stream unmarshaller), records
//!   counted (what kcld did before);
//! - `polling`: the same records as GetRecords bodies of the same size,
//!   through kcld's GetRecords decoder (the reference fan-out is held to).
//!
//! The event stream is 10 events of 1,000 records of 1 KiB after the
//! initial response, delivered in 16 KiB chunks as HTTP/2 frames arrive; a
//! canned HTTP client serves it (no network).
//!
//!     cargo bench -p kcld-benches --bench fanout_decode

use aws_smithy_eventstream::frame::write_message_to;
use aws_smithy_types::event_stream::{Header, HeaderValue, Message};
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kcld_benches::{alloc_count, SyntheticResponse};

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

const STREAM_ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/bench";
const CONSUMER_ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/bench/consumer/c:1";
const EVENTS: usize = 10;
const RECORDS_PER_EVENT: usize = 1_000;
const CHUNK: usize = 16 * 1024;

fn message(event_type: &str, payload: Bytes) -> Vec<u8> {
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
fn event_payload(response: &SyntheticResponse, continuation: &str) -> Bytes {
    let body = response.body();
    let mut value: serde_json::Value =
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("body: {e}"));
    let object = value.as_object_mut().unwrap_or_else(|| panic!("an object"));
    object.remove("NextShardIterator");
    object.insert("ContinuationSequenceNumber".into(), continuation.into());
    Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
}

/// A client whose every call is answered with `stream`, in chunks.
fn client(stream: Bytes) -> aws_sdk_kinesis::Client {
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

async fn kcld_path(stream: &kcld::stream::Stream) -> usize {
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

async fn sdk_path(client: &aws_sdk_kinesis::Client) -> usize {
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

fn fanout_decode(c: &mut Criterion) {
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
        let continuation = format!("4959033827149025660855969253836157109592157598913658{i:04}");
        stream.extend(message(
            "SubscribeToShardEvent",
            event_payload(r, &continuation),
        ));
    }
    let stream = Bytes::from(stream);
    let bodies: Vec<Bytes> = responses.iter().map(SyntheticResponse::body).collect();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let arn: kcld_config::StreamArn = STREAM_ARN.parse().unwrap_or_else(|e| panic!("{e}"));
    let kcld_stream = kcld::stream::Stream::new(client(stream.clone()), arn);
    let sdk = client(stream.clone());
    let polling = || {
        bodies
            .iter()
            .map(|b| {
                kcld_records::getrecords::decode(b.clone())
                    .map(|r| r.records.len())
                    .unwrap_or_else(|e| panic!("{e}"))
            })
            .sum::<usize>()
    };

    // Every path reads every record; allocations per event, steady state.
    let expected = EVENTS * RECORDS_PER_EVENT;
    assert_eq!(runtime.block_on(kcld_path(&kcld_stream)), expected);
    assert_eq!(runtime.block_on(sdk_path(&sdk)), expected);
    assert_eq!(polling(), expected);
    let (_, ours) = alloc_count::count(|| runtime.block_on(kcld_path(&kcld_stream)));
    let (_, theirs) = alloc_count::count(|| runtime.block_on(sdk_path(&sdk)));
    let (_, reference) = alloc_count::count(polling);
    eprintln!(
        "{EVENTS} events x {RECORDS_PER_EVENT} records of 1 KiB ({} bytes of event stream, {data_bytes} of record data); allocations per event: kcld {}, sdk {}, polling's decoder {}",
        stream.len(),
        ours / EVENTS as u64,
        theirs / EVENTS as u64,
        reference / EVENTS as u64,
    );

    let mut group = c.benchmark_group("fanout_decode/10x1000x1KiB");
    group.throughput(Throughput::Bytes(data_bytes as u64));
    group.sample_size(20);
    group.bench_function(BenchmarkId::from_parameter("kcld"), |b| {
        b.iter(|| runtime.block_on(kcld_path(&kcld_stream)))
    });
    group.bench_function(BenchmarkId::from_parameter("aws_sdk"), |b| {
        b.iter(|| runtime.block_on(sdk_path(&sdk)))
    });
    group.bench_function(BenchmarkId::from_parameter("polling"), |b| b.iter(polling));
    group.finish();
}

criterion_group!(benches, fanout_decode);
criterion_main!(benches);
