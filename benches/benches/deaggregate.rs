//! KPL deaggregation of a 50 KiB aggregate (built by the published Python
//! aws-kinesis-agg package: records/tests/fixtures/bench-50k.agg) beside MD5
//! alone over the same protobuf bytes, the ceiling for verified
//! deaggregation. The Python and Node packages run on the same file through
//! benches/baselines/run.
//!
//!     cargo bench -p kcld-benches --bench deaggregate

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kcld_records::kpl::{self, Stats};
use kcld_records::{ByteStr, Record};
use md5::{Digest, Md5};

fn fixture() -> Bytes {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../records/tests/fixtures/bench-50k.agg"
    );
    Bytes::from(std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

fn deaggregate(c: &mut Criterion) {
    let data = fixture();
    let record = Record {
        sequence_number: "49590338271490256608559692538361571095921575989136588898"
            .parse()
            .unwrap_or_else(|e| panic!("{e}")),
        sub_sequence_number: 0,
        aggregated: false,
        partition_key: ByteStr::from("k"),
        explicit_hash_key: None,
        data: data.clone(),
        approximate_arrival_ms: 0,
        encryption: None,
    };
    let mut group = c.benchmark_group("kpl_deaggregate/50KiB");
    group.throughput(Throughput::Bytes(data.len() as u64));
    let mut out = Vec::with_capacity(128);
    group.bench_function(BenchmarkId::from_parameter("kcld"), |b| {
        b.iter(|| {
            out.clear();
            let mut stats = Stats::default();
            kpl::deaggregate(record.clone(), None, &mut out, &mut stats);
            out.len()
        })
    });
    let proto = &data[4..data.len() - 16];
    group.bench_function(BenchmarkId::from_parameter("md5_only"), |b| {
        b.iter(|| Md5::digest(proto)[0])
    });
    group.finish();
}

criterion_group!(benches, deaggregate);
criterion_main!(benches);
