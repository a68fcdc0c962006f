//! One read of the `--bench fanout_decode` event stream (10 events of 1,000
//! records of 1 KiB), for instruction counting; `polling` decodes the same
//! records as GetRecords bodies:
//!     valgrind --tool=callgrind target/release/examples/fanout_once kcld|polling|sdk
//! The workload is built and read once before; compare the inclusive cost
//! of `fanout_once::read`, the steady-state read.

#[path = "../benches/support/fanout.rs"]
mod fanout;
use fanout::{client, kcld_path, sdk_path, Workload, EVENTS, RECORDS_PER_EVENT, STREAM_ARN};

struct Readers {
    work: Workload,
    kcld: kcld::stream::Stream,
    sdk: aws_sdk_kinesis::Client,
    runtime: tokio::runtime::Runtime,
}

/// Reads the workload the way `which` names; returns the records read.
fn read_once(which: &str, r: &Readers) -> usize {
    match which {
        "kcld" => r.runtime.block_on(kcld_path(&r.kcld)),
        "sdk" => r.runtime.block_on(sdk_path(&r.sdk)),
        _ => r.work.polling(),
    }
}

#[inline(never)]
fn warm_up(which: &str, r: &Readers) -> usize {
    read_once(which, r)
}

#[inline(never)]
fn read(which: &str, r: &Readers) -> usize {
    read_once(which, r)
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
    let records = warm_up(&which, &readers) + std::hint::black_box(read(&which, &readers));
    assert_eq!(records, 2 * EVENTS * RECORDS_PER_EVENT);
    eprintln!(
        "{which}: {records} records read, {} bytes of record data each time",
        readers.work.data_bytes
    );
}
