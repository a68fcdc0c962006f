//! Records in the Lambda event shape, as the stdout and HTTP sinks write
//! them: kcld's encoder (`kcld_records::lambda::write_record`, SIMD base64
//! into one reused buffer, constant parts preformatted) beside serde_json's
//! derive encoding of the same records (`write_record_with_serde`, which the
//! encoder matches byte for byte). 1,000 records of 1 KiB and of 100 bytes;
//! throughput is output bytes per second.
//!
//!     cargo bench -p kcld-benches --bench encode

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kcld_records::lambda::{write_record, write_record_with_serde, EventContext};
use kcld_records::{ByteStr, Record};
use rand::{Rng, SeedableRng};

fn records(count: usize, size: usize) -> Vec<Record> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    (0..count)
        .map(|i| Record {
            sequence_number: format!(
                "4959033827149025660855969253836157109592157598913658{:04}",
                i
            )
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
            sub_sequence_number: 0,
            aggregated: false,
            partition_key: ByteStr::from(format!("customer-{}", i % 97).as_str()),
            explicit_hash_key: None,
            data: (0..size)
                .map(|_| rng.random::<u8>())
                .collect::<Vec<u8>>()
                .into(),
            approximate_arrival_ms: 1_709_100_911_667 + i as i64,
            encryption: None,
        })
        .collect()
}

fn encode(c: &mut Criterion) {
    let ctx = EventContext::new(
        "us-east-1",
        "arn:aws:kinesis:us-east-1:111111111111:stream/orders",
        "",
    );
    for (label, size) in [("1000x1KiB", 1024), ("1000x100B", 100)] {
        let batch = records(1000, size);
        let mut out = Vec::new();
        for r in &batch {
            write_record(&mut out, &ctx, "shardId-000000000001", r);
            out.push(b'\n');
        }
        let mut group = c.benchmark_group(format!("lambda_encode/{label}"));
        group.throughput(Throughput::Bytes(out.len() as u64));
        for (name, f) in [
            (
                "kcld",
                write_record as fn(&mut Vec<u8>, &EventContext, &str, &Record),
            ),
            ("serde_json_derive", write_record_with_serde),
        ] {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter(|| {
                    out.clear();
                    for r in &batch {
                        f(&mut out, &ctx, "shardId-000000000001", r);
                        out.push(b'\n');
                    }
                    out.len()
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, encode);
criterion_main!(benches);
