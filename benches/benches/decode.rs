//! Decoding a GetRecords response body: kcld's decoder beside the AWS SDK's
//! deserializer (fed the same body, no network) and beside the lower bound
//! (serde_json with borrowed strings plus SIMD base64 into one buffer).
//!
//!     cargo bench -p kcld-benches --bench decode

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kcld_benches::{alloc_count, lower_bound, SdkDecoder, SyntheticResponse};

#[global_allocator]
static ALLOC: alloc_count::Counting = alloc_count::Counting;

fn decode(c: &mut Criterion) {
    let sdk = SdkDecoder::new();
    for (count, size, label) in [
        (10_000, 1024, "10000x1KiB"),
        (1_000, 10 * 1024, "1000x10KiB"),
    ] {
        let body = SyntheticResponse::generate(count, size, 42).body();
        // Allocations per response, steady state (second call).
        let _ = kcld_records::getrecords::decode(body.clone());
        let (_, ours) = alloc_count::count(|| kcld_records::getrecords::decode(body.clone()));
        let _ = sdk.decode(body.clone());
        let (_, theirs) = alloc_count::count(|| sdk.decode(body.clone()));
        let (_, floor) = alloc_count::count(|| lower_bound(&body));
        eprintln!("{label}: {} bytes of JSON; allocations per response: kcld {ours}, sdk {theirs}, lower bound {floor}", body.len());

        let mut group = c.benchmark_group(format!("getrecords_decode/{label}"));
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.sample_size(20);
        group.bench_function(BenchmarkId::from_parameter("kcld"), |b| {
            b.iter(|| kcld_records::getrecords::decode(body.clone()).map(|r| r.records.len()))
        });
        group.bench_function(BenchmarkId::from_parameter("aws_sdk"), |b| {
            b.iter(|| sdk.decode(body.clone()).records.len())
        });
        group.bench_function(BenchmarkId::from_parameter("lower_bound"), |b| {
            b.iter(|| lower_bound(&body).len())
        });
        group.finish();
    }
}

criterion_group!(benches, decode);
criterion_main!(benches);
