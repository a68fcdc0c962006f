//! A DynamoDB Streams GetRecords body into Lambda's DynamoDB event records:
//! kcld's decoder (each record kept as its JSON) and writer (the record as
//! it came, `eventSourceARN` added), beside the AWS SDK's deserializer fed
//! the same body (no network), which stops at attribute-value trees and
//! writes nothing, and beside parsing the body into a `serde_json::Value`.
//!
//!     cargo bench -p kcld-benches --bench dynamodb_decode

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kcld_benches::dynamodb::{body, SdkDecoder};
use kcld_records::lambda::{encoded_len, write_record, EventContext};

fn decode(c: &mut Criterion) {
    let sdk = SdkDecoder::new();
    let arn = "arn:aws:dynamodb:us-east-1:111111111111:table/orders/stream/2026-12-07T09:12:57.169";
    let ctx = EventContext::dynamodb("us-east-1", arn);
    let body = body(1_000, 1024, 7);
    let mut out: Vec<u8> = Vec::new();
    let kcld = |out: &mut Vec<u8>| {
        let response =
            kcld_records::dynamodb::decode(body.clone(), 0).unwrap_or_else(|e| panic!("{e}"));
        out.clear();
        let size: usize = response
            .records
            .iter()
            .map(|r| encoded_len(&ctx, "shardId-1", r) + 1)
            .sum();
        out.reserve(size);
        for record in &response.records {
            write_record(out, &ctx, "shardId-1", record);
            out.push(b'\n');
        }
        response.records.len()
    };
    assert_eq!(kcld(&mut out), 1_000);
    assert_eq!(sdk.decode(body.clone()), 1_000);
    eprintln!(
        "1000 records with NEW_AND_OLD_IMAGES: {} bytes of JSON",
        body.len()
    );

    let mut group = c.benchmark_group("dynamodb_getrecords/1000xNEW_AND_OLD_IMAGES");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.sample_size(20);
    group.bench_function(BenchmarkId::from_parameter("kcld_to_lambda_lines"), |b| {
        b.iter(|| kcld(&mut out))
    });
    group.bench_function(BenchmarkId::from_parameter("aws_sdk_deserialize"), |b| {
        b.iter(|| sdk.decode(body.clone()))
    });
    group.bench_function(BenchmarkId::from_parameter("serde_json_value"), |b| {
        b.iter(|| {
            serde_json::from_slice::<serde_json::Value>(&body)
                .map(|v| v["Records"].as_array().map_or(0, Vec::len))
                .unwrap_or(0)
        })
    });
    group.finish();
}

criterion_group!(benches, decode);
criterion_main!(benches);
