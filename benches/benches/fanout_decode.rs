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

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kcld_benches::alloc_count;

#[path = "support/fanout.rs"]
mod fanout;
use fanout::{client, kcld_path, sdk_path, Workload, EVENTS, RECORDS_PER_EVENT, STREAM_ARN};

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

fn fanout_decode(c: &mut Criterion) {
    let work = Workload::generate();
    let (stream, data_bytes) = (work.stream.clone(), work.data_bytes);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("runtime: {e}"));
    let arn: kcld_config::StreamArn = STREAM_ARN.parse().unwrap_or_else(|e| panic!("{e}"));
    let kcld_stream = kcld::stream::Stream::new(client(stream.clone()), arn);
    let sdk = client(stream.clone());
    let polling = || work.polling();

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
