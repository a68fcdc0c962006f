use super::*;
use base64::Engine;
use kcld_checkpoint::Checkpoint;
use proptest::prelude::*;

const SEQ: &str = "49590338271490256608559692538361571095921575989136588898";

fn fixture(name: &str) -> Bytes {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    Bytes::from(std::fs::read(path).unwrap())
}

fn record(data: Bytes) -> Record {
    Record {
        sequence_number: SEQ.parse().unwrap(),
        sub_sequence_number: 0,
        aggregated: false,
        partition_key: ByteStr::from("outer-key"),
        explicit_hash_key: None,
        data,
        approximate_arrival_ms: 1_700_000_000_123,
        encryption: None,
    }
}

fn run(data: Bytes, range: Option<HashRange>) -> (Vec<Record>, Stats) {
    let mut out = Vec::new();
    let mut stats = Stats::default();
    deaggregate(record(data), range, &mut out, &mut stats);
    (out, stats)
}

#[derive(serde::Deserialize)]
struct Expected {
    partition_key: String,
    explicit_hash_key: Option<String>,
    data: String,
}

#[test]
fn splits_an_aggregate_built_by_the_published_python_package() {
    let data = fixture("basic.agg");
    let expected: Vec<Expected> = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/basic.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let (out, stats) = run(data.clone(), None);
    assert_eq!(out.len(), expected.len());
    assert_eq!(
        stats,
        Stats {
            aggregates: 1,
            sub_records: 6,
            ..Stats::default()
        }
    );
    let range = data.as_ptr_range();
    for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
        assert_eq!(got.sequence_number.as_str(), SEQ);
        assert_eq!(got.sub_sequence_number, i as u64);
        assert!(got.aggregated);
        assert_eq!(got.partition_key.as_str(), want.partition_key);
        assert_eq!(
            got.explicit_hash_key.as_deref(),
            want.explicit_hash_key.as_deref()
        );
        assert_eq!(
            got.data,
            base64::engine::general_purpose::STANDARD
                .decode(&want.data)
                .unwrap()
        );
        assert_eq!(got.approximate_arrival_ms, 1_700_000_000_123);
        // Zero copy: the user record's bytes are the aggregate's bytes.
        if !got.data.is_empty() {
            assert!(range.contains(&got.data.as_ptr()), "record {i} was copied");
        }
    }
}

#[test]
fn a_plain_record_passes_untouched() {
    for data in [
        &b"just a record"[..],
        &b""[..],
        &MAGIC[..],
        &[0xF3, 0x89, 0x9A, 0xC2, 1, 2, 3][..],
    ] {
        let (out, stats) = run(Bytes::copy_from_slice(data), None);
        assert_eq!(out, vec![record(Bytes::copy_from_slice(data))]);
        assert_eq!(
            stats,
            Stats {
                plain: 1,
                ..Stats::default()
            }
        );
    }
}

fn assert_delivered_raw(data: Bytes, why: &str) {
    let (out, stats) = run(data.clone(), None);
    assert_eq!(
        out,
        vec![record(data)],
        "{why}: must be delivered as it arrived"
    );
    assert_eq!(
        stats,
        Stats {
            corrupt: 1,
            ..Stats::default()
        },
        "{why}"
    );
}

#[test]
fn corrupt_aggregates_are_delivered_raw_and_counted() {
    let good = fixture("basic.agg").to_vec();

    let mut bad_digest = good.clone();
    let last = bad_digest.len() - 1;
    bad_digest[last] ^= 0xFF;
    assert_delivered_raw(Bytes::from(bad_digest), "bad MD5");

    let mut bad_body = good.clone();
    bad_body[10] ^= 0x55;
    assert_delivered_raw(Bytes::from(bad_body), "body changed, MD5 not");

    // A protobuf that does not parse, with a correct MD5 over it.
    let garbage = [0x0A, 0xFF, 0xFF, 0xFF, 0xFF, 0x0F, 0x01];
    let mut bad_proto = MAGIC.to_vec();
    bad_proto.extend_from_slice(&garbage);
    bad_proto.extend_from_slice(&Md5::digest(garbage));
    assert_delivered_raw(Bytes::from(bad_proto), "bad protobuf");

    // Well-formed protobuf, but an index outside the partition key table.
    let agg = AggregatedRecord {
        partition_key_table: vec![Bytes::from_static(b"only")],
        explicit_hash_key_table: vec![],
        records: vec![
            UserRecord {
                partition_key_index: 0,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"a"),
            },
            UserRecord {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: Bytes::from_static(b"b"),
            },
        ],
    };
    assert_delivered_raw(Bytes::from(frame(&agg)), "partition key index out of range");

    let agg = AggregatedRecord {
        partition_key_table: vec![Bytes::from_static(b"\xff\xfe not utf-8")],
        explicit_hash_key_table: vec![],
        records: vec![UserRecord {
            partition_key_index: 0,
            explicit_hash_key_index: None,
            data: Bytes::new(),
        }],
    };
    assert_delivered_raw(Bytes::from(frame(&agg)), "partition key not UTF-8");

    let agg = AggregatedRecord {
        partition_key_table: vec![Bytes::from_static(b"k")],
        explicit_hash_key_table: vec![],
        records: vec![UserRecord {
            partition_key_index: 0,
            explicit_hash_key_index: Some(0),
            data: Bytes::new(),
        }],
    };
    assert_delivered_raw(
        Bytes::from(frame(&agg)),
        "explicit hash key index out of range",
    );
}

fn frame(agg: &AggregatedRecord) -> Vec<u8> {
    let body = agg.encode_to_vec();
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    out
}

#[test]
fn out_of_range_user_records_are_delivered_and_counted() {
    // The lower half of the hash key space.
    let lower = HashRange {
        start: 0,
        end: (1u128 << 127) - 1,
    };
    let expected: Vec<Expected> = serde_json::from_slice(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/basic.json"
        ))
        .unwrap(),
    )
    .unwrap();
    // Count independently: explicit key as given, else the MD5's top bit.
    let outside = expected
        .iter()
        .filter(|e| match &e.explicit_hash_key {
            Some(k) => k.parse::<u128>().unwrap() > lower.end,
            None => Md5::digest(e.partition_key.as_bytes())[0] & 0x80 != 0,
        })
        .count() as u64;
    assert!(outside >= 1, "the fixture has a record in the upper half");
    let (out, stats) = run(fixture("basic.agg"), Some(lower));
    assert_eq!(out.len(), 6, "every user record is delivered");
    assert_eq!(stats.out_of_range, outside);
    let (_, stats) = run(
        fixture("basic.agg"),
        Some(HashRange {
            start: 0,
            end: u128::MAX,
        }),
    );
    assert_eq!(stats.out_of_range, 0);
}

#[test]
fn resuming_inside_an_aggregate_skips_exactly_the_confirmed_user_records() {
    let (out, _) = run(fixture("basic.agg"), None);
    let checkpoint = Checkpoint::At(out[2].position());
    let left: Vec<u64> = out
        .iter()
        .filter(|r| !checkpoint.covers(&r.position()))
        .map(|r| r.sub_sequence_number)
        .collect();
    assert_eq!(left, [3, 4, 5]);
}

#[test]
fn the_bench_fixture_is_one_large_aggregate() {
    let data = fixture("bench-50k.agg");
    assert!(data.len() > 50_000);
    let (out, stats) = run(data, None);
    assert_eq!((out.len(), stats.aggregates), (100, 1));
    assert!(out.iter().all(|r| r.data.len() == 500));
}

proptest! {
    #[test]
    fn aggregate_then_deaggregate_round_trips(
        users in prop::collection::vec(
            ("[a-z0-9\u{e9}\u{30ad}]{1,12}", prop::option::of(any::<u128>()), prop::collection::vec(any::<u8>(), 0..64)),
            0..40,
        )
    ) {
        let input: Vec<(String, Option<String>, Vec<u8>)> =
            users.iter().map(|(pk, ehk, d)| (pk.clone(), ehk.map(|h| h.to_string()), d.clone())).collect();
        let (out, stats) = run(Bytes::from(aggregate(&input)), None);
        prop_assert_eq!(stats.aggregates, 1);
        prop_assert_eq!(out.len(), input.len());
        for (i, (got, (pk, ehk, data))) in out.iter().zip(&input).enumerate() {
            prop_assert_eq!(got.sub_sequence_number, i as u64);
            prop_assert_eq!(got.partition_key.as_str(), pk.as_str());
            prop_assert_eq!(got.explicit_hash_key.as_deref(), ehk.as_deref());
            prop_assert_eq!(&got.data[..], &data[..]);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_lose_the_record(tail in prop::collection::vec(any::<u8>(), 0..200)) {
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&tail);
        let (out, stats) = run(Bytes::from(data), None);
        prop_assert!(!out.is_empty() || stats.aggregates == 1);
    }
}
