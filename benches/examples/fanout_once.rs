//! Reads of the `--bench fanout_decode` event stream (10 events of 1,000
//! records of 1 KiB), for instruction counting; `polling` decodes the same
//! records as GetRecords bodies:
//!     valgrind --tool=callgrind target/release/examples/fanout_once kcld|polling|sdk
//! The workload is built first; compare the inclusive cost of
//! `fanout_once::read`, two reads of it.

#[path = "../benches/support/fanout.rs"]
mod fanout;
use fanout::{client, kcld_path, sdk_path, Workload, EVENTS, RECORDS_PER_EVENT, STREAM_ARN};

struct Readers {
    work: Workload,
    kcld: kcld::stream::Stream,
    sdk: aws_sdk_kinesis::Client,
    runtime: tokio::runtime::Runtime,
}

/// Reads the workload twice the way `which` names (the first read warms
/// up what the second reuses); returns the records read.
#[inline(never)]
fn read(which: &str, r: &Readers) -> usize {
    (0..2)
        .map(|_| match which {
            "kcld" => r.runtime.block_on(kcld_path(&r.kcld)),
            "sdk" => r.runtime.block_on(sdk_path(&r.sdk)),
            _ => r.work.polling(),
        })
        .sum()
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_default();
    let work = Workload::generate();
    let arn: kcld_config::StreamArn = STREAM_ARN.parse().unwrap_or_else(|e| panic!("{e}"));
    let readers = Readers {
        kcld: kcld::stream::Stream::new(client(work.stream.clone()), arn),
        sdk: client(work.stream.clone()),
        work,
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}")),
    };
    let records = std::hint::black_box(read(&which, &readers));
    assert_eq!(records, 2 * EVENTS * RECORDS_PER_EVENT);
    eprintln!(
        "{which}: {records} records read, {} bytes of record data each time",
        readers.work.data_bytes
    );
}
