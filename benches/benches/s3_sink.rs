//! The S3 sink's CPU per object: a 5 MiB buffer of 1 KiB JSON records made
//! into an object (lines joined, then gzip or zstd) beside the compressor
//! alone on the same bytes already joined (the baseline: what any writer
//! pays), and cutting a buffer by a JSON field (dynamic partitioning)
//! beside cutting it by size alone and beside parsing the data alone.
//!
//!     cargo bench -p kcld-benches --bench s3_sink

use std::io::Write;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use kcld::sink::event::EventContext;
use kcld::sink::s3::{body, layout};
use kcld_config::{S3Compression, S3SinkSettings};
use kcld_records::Record;

const ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";

/// About 1 KiB of order JSON per record, `n` records.
fn records(n: usize) -> Vec<Record> {
    (0..n)
        .map(|i| {
            let mut data = format!(
                r#"{{"order_id":{i},"customer":"customer-{}","status":"{}","total":{}.{:02},"note":""#,
                i % 97,
                ["shipped", "placed", "cancelled", "returned"][i % 4],
                i % 500,
                i % 100,
            );
            while data.len() < 1020 {
                data.push_str(&format!("item-{} ", (i * 7 + data.len()) % 1000));
            }
            data.truncate(1020);
            data.push_str("\"}");
            Record {
                sequence_number: format!("4959033827149025660855969253836157109592157598913{i:07}")
                    .parse()
                    .unwrap_or_else(|e| panic!("{e}")),
                sub_sequence_number: 0,
                aggregated: false,
                partition_key: format!("customer-{}", i % 97).into(),
                explicit_hash_key: None,
                data: Bytes::from(data),
                approximate_arrival_ms: 1_796_635_713_000,
                encryption: None,
            }
        })
        .collect()
}

fn settings(prefix: Option<&str>) -> S3SinkSettings {
    let mut env = vec![
        ("KCLD_APPLICATION_NAME".to_owned(), "bench".to_owned()),
        ("KCLD_STREAM_ARN".to_owned(), ARN.to_owned()),
        ("KCLD_SINK__TYPE".to_owned(), "s3".to_owned()),
        (
            "KCLD_SINK__S3__BUCKET_ARN".to_owned(),
            "arn:aws:s3:::landing".to_owned(),
        ),
        (
            "KCLD_SINK__S3__BUFFER_SIZE_MIB".to_owned(),
            "128".to_owned(),
        ),
    ];
    if let Some(p) = prefix {
        env.push(("KCLD_SINK__S3__PREFIX".to_owned(), p.to_owned()));
    }
    kcld_config::load(None, env)
        .and_then(|s| {
            s.sink
                .s3
                .ok_or(kcld_config::ConfigError::Other("no s3".into()))
        })
        .unwrap_or_else(|e| panic!("{e}"))
}

fn objects(c: &mut Criterion) {
    let batch = records(5 * 1024);
    let context = EventContext::new("us-east-1", ARN, "");
    let joined: Vec<u8> = batch.iter().fold(Vec::new(), |mut out, r| {
        out.extend_from_slice(&r.data);
        out.push(b'\n');
        out
    });
    let mut group = c.benchmark_group("s3_object_5MiB");
    group.throughput(Throughput::Bytes(joined.len() as u64));
    group.sample_size(20);
    group.bench_function("kcld gzip (raw lines)", |b| {
        b.iter(|| {
            body::encode(
                &context,
                "shardId-000000000000",
                batch.iter(),
                false,
                S3Compression::Gzip,
            )
            .unwrap()
        })
    });
    group.bench_function("baseline flate2 gzip of the joined bytes", |b| {
        b.iter(|| {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&joined).unwrap();
            gz.finish().unwrap()
        })
    });
    group.bench_function("kcld zstd (raw lines)", |b| {
        b.iter(|| {
            body::encode(
                &context,
                "shardId-000000000000",
                batch.iter(),
                false,
                S3Compression::Zstd,
            )
            .unwrap()
        })
    });
    group.bench_function("baseline zstd of the joined bytes", |b| {
        b.iter(|| zstd::bulk::compress(&joined, 3).unwrap())
    });
    group.bench_function("kcld lambda lines, no compression", |b| {
        b.iter(|| {
            body::encode(
                &context,
                "shardId-000000000000",
                batch.iter(),
                true,
                S3Compression::None,
            )
            .unwrap()
        })
    });
    group.finish();
}

fn partitions(c: &mut Criterion) {
    let batch = records(1_000);
    let by_size = settings(None);
    let by_field = settings(Some("customers/!{data:customer}/!{timestamp:yyyy/MM/dd}/"));
    let by_key = settings(Some("customers/!{partitionKey}/"));
    let mut group = c.benchmark_group("s3_plan_1000_records");
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("baseline by size only", |b| {
        b.iter(|| layout::plan(&by_size, "orders", "shardId-000000000000", &batch))
    });
    group.bench_function("by partition key (97 partitions)", |b| {
        b.iter(|| layout::plan(&by_key, "orders", "shardId-000000000000", &batch))
    });
    group.bench_function("by a JSON field (97 partitions)", |b| {
        b.iter(|| layout::plan(&by_field, "orders", "shardId-000000000000", &batch))
    });
    group.bench_function("floor: parsing every record's data", |b| {
        b.iter(|| {
            batch
                .iter()
                .filter(|r| serde_json::from_slice::<serde_json::Value>(&r.data).is_ok())
                .count()
        })
    });
    group.finish();
}

criterion_group!(benches, objects, partitions);
criterion_main!(benches);
