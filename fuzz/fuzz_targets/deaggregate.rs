//! Any bytes as a record's data: deaggregation never panics and never loses
//! the record (it comes back whole, or as the user records of a valid
//! aggregate).
#![no_main]

use bytes::Bytes;
use kcld_records::kpl::{self, HashRange, Stats};
use kcld_records::{ByteStr, Record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Inputs that do not start with the magic bytes get them when their
    // first byte is odd, so the protobuf path is reached often; seeds from
    // records/tests/fixtures/*.agg are used as they are.
    let mut bytes = Vec::with_capacity(data.len() + 4);
    if !data.starts_with(&kpl::MAGIC) && data.first().is_some_and(|b| b & 1 == 1) {
        bytes.extend_from_slice(&kpl::MAGIC);
    }
    bytes.extend_from_slice(data);
    let record = Record {
        sequence_number: "1".parse().expect("static"),
        sub_sequence_number: 0,
        aggregated: false,
        partition_key: ByteStr::from("k"),
        explicit_hash_key: None,
        data: Bytes::from(bytes),
        approximate_arrival_ms: 0,
        encryption: None,
    };
    let mut out = Vec::new();
    let mut stats = Stats::default();
    kpl::deaggregate(record.clone(), Some(HashRange { start: 0, end: u128::MAX / 2 }), &mut out, &mut stats);
    if stats.aggregates == 0 {
        assert_eq!(out, vec![record], "a record that is not a valid aggregate must pass unchanged");
    } else {
        assert!(out.iter().enumerate().all(|(i, r)| r.sub_sequence_number == i as u64 && r.aggregated));
    }
});
