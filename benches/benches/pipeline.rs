//! End to end inside one process: N shards served by a synthetic GetRecords
//! source at memory speed (the same body over and over), each shard decoded,
//! deaggregated, filtered against its checkpoint and handed to a null sink
//! on a 2-thread tokio runtime. kcld's path beside the same pipeline with
//! the AWS SDK's decoding. Throughput is record data per second; CPU time
//! and peak RSS are printed by `cargo run --release -p kcld-benches --bin
//! pipeline`.
//!
//!     cargo bench -p kcld-benches --bench pipeline

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kcld_benches::pipeline::{run, Path, Workload};

fn pipeline(c: &mut Criterion) {
    for shards in [8usize, 256] {
        let work = Workload::new(shards, 1_000, 1024, 4_000_000);
        let mut group = c.benchmark_group(format!("pipeline/{shards}_shards"));
        group.throughput(Throughput::Bytes(work.data_bytes_per_run()));
        group.sample_size(10);
        for path in [Path::Kcld, Path::AwsSdk] {
            group.bench_function(BenchmarkId::from_parameter(path.name()), |b| {
                b.iter(|| run(&work, path))
            });
        }
        group.finish();
    }
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
