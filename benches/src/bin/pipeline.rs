//! The end-to-end pipeline once, for MB/s per core and peak RSS of one path
//! in a fresh process:
//!
//!     cargo run --release -p kcld-benches --bin pipeline -- kcld 256
//!     cargo run --release -p kcld-benches --bin pipeline -- aws_sdk 256

use kcld_benches::pipeline::{run, Path, Workload};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = match args.get(1).map(String::as_str) {
        Some("aws_sdk") => Path::AwsSdk,
        _ => Path::Kcld,
    };
    let shards: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(8);
    let bytes: u64 = args
        .get(3)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000_000);
    let work = Workload::new(shards, 1_000, 1024, bytes / shards as u64);
    let (cpu0, _) = kcld_benches::cpu_and_peak_rss();
    let start = std::time::Instant::now();
    let delivered = run(&work, path);
    let wall = start.elapsed();
    let (cpu1, peak) = kcld_benches::cpu_and_peak_rss();
    let cpu = (cpu1 - cpu0).as_secs_f64();
    let mb = delivered as f64 / 1e6;
    println!(
        "{} shards={shards}: {mb:.0} MB of record data in {:.2} s wall, {cpu:.2} CPU-s: {:.0} MB/s per core, peak RSS {:.0} MiB",
        path.name(),
        wall.as_secs_f64(),
        mb / cpu,
        peak as f64 / (1 << 20) as f64
    );
}
