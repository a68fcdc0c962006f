//! Filter criteria (Lambda's syntax) on Kinesis records whose data is JSON:
//! the cost per record of two patterns (a status and a numeric range, or a
//! partition key prefix), beside no filter (the baseline: every record
//! passes untouched) and beside parsing the data alone (the floor of any
//! filter on `data`).
//!
//!     cargo bench -p kcld-benches --bench filter

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kcld_records::filter::{Filters, RecordShape};
use kcld_records::Record;

fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let status = ["shipped", "placed", "cancelled", "returned"][i % 4];
            let data = format!(
                r#"{{"order_id":{i},"customer":"customer-{}","status":"{status}","total":{}.{:02},"items":[{{"sku":"sku-{}","qty":{}}},{{"sku":"sku-{}","qty":1}}],"address":{{"city":"Lisbon","zip":"1000-{:03}"}}}}"#,
                i % 97,
                i % 500,
                i % 100,
                i % 31,
                1 + i % 3,
                i % 17,
                i % 1000
            );
            Record {
                sequence_number: format!("4959033827149025660855969253836157109592157598913{i:07}")
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
                sub_sequence_number: 0,
                aggregated: false,
                partition_key: format!("eu-customer-{}", i % 97).into(),
                explicit_hash_key: None,
                data: Bytes::from(data),
                approximate_arrival_ms: 1_709_100_911_000,
                encryption: None,
            }
        })
        .collect()
}

fn filter(c: &mut Criterion) {
    let batch = records(1_000);
    let parse = |patterns: &[&str]| {
        let owned: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        Filters::parse(&owned, RecordShape::Kinesis).unwrap_or_else(|e| panic!("{e}"))
    };
    let on_data = parse(&[
        r#"{"data": {"status": ["shipped"], "total": [{"numeric": [">", 100]}]}}"#,
        r#"{"data": {"status": [{"prefix": "cancel"}]}}"#,
    ]);
    let on_key = parse(&[r#"{"partitionKey": [{"prefix": "eu-customer-1"}]}"#]);
    let none = parse(&[]);
    let passed = batch.iter().filter(|r| on_data.matches(r)).count();
    eprintln!(
        "1000 records of {} bytes of JSON on average; the data patterns pass {passed}",
        batch.iter().map(|r| r.data.len()).sum::<usize>() / batch.len()
    );
    let mut group = c.benchmark_group("filter/1000_records");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function(BenchmarkId::from_parameter("no_filter"), |b| {
        b.iter(|| batch.iter().filter(|r| none.matches(r)).count())
    });
    group.bench_function(BenchmarkId::from_parameter("partition_key_prefix"), |b| {
        b.iter(|| batch.iter().filter(|r| on_key.matches(r)).count())
    });
    group.bench_function(BenchmarkId::from_parameter("data_status_and_total"), |b| {
        b.iter(|| batch.iter().filter(|r| on_data.matches(r)).count())
    });
    group.bench_function(BenchmarkId::from_parameter("parse_data_only"), |b| {
        b.iter(|| {
            batch
                .iter()
                .filter(|r| serde_json::from_slice::<serde_json::Value>(&r.data).is_ok())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, filter);
criterion_main!(benches);
