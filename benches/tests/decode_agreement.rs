//! kcld's GetRecords decoder (its scanner's fast path and its serde path)
//! and the AWS SDK's agree on every field, for generated responses (keys with escapes and any Unicode, binary data of
//! any length, optional fields present or not, child shards).

use kcld_benches::{SdkDecoder, SyntheticChild, SyntheticRecord, SyntheticResponse};
use proptest::prelude::*;

fn record() -> impl Strategy<Value = SyntheticRecord> {
    (
        "[1-9][0-9]{0,55}",
        1_000_000_000_000i64..2_000_000_000_000,
        "\\PC{1,40}",
        prop::collection::vec(any::<u8>(), 0..600),
        prop::option::of(prop::sample::select(vec!["NONE", "KMS"])),
    )
        .prop_map(
            |(sequence_number, arrival_ms, partition_key, data, encryption)| SyntheticRecord {
                sequence_number,
                arrival_ms,
                partition_key,
                data,
                encryption,
            },
        )
}

fn response() -> impl Strategy<Value = SyntheticResponse> {
    (
        prop::collection::vec(record(), 0..30),
        prop::option::of("[A-Za-z0-9+/=]{1,200}"),
        prop::option::of(0i64..100_000_000),
        prop::option::of(prop::collection::vec(
            (
                "shardId-[0-9]{12}",
                prop::collection::vec("shardId-[0-9]{12}", 1..3),
                "[0-9]{1,39}",
                "[0-9]{1,39}",
            ),
            0..3,
        )),
    )
        .prop_map(
            |(records, next_shard_iterator, millis_behind_latest, child_shards)| {
                SyntheticResponse {
                    records,
                    next_shard_iterator,
                    millis_behind_latest,
                    child_shards,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]
    #[test]
    fn fast_decoder_agrees_with_the_sdk(resp in response()) {
        thread_local!(static SDK: SdkDecoder = SdkDecoder::new());
        let body = resp.body();
        // Bodies without escapes take the scanner's fast path; the others
        // serde's (both are compared with the SDK below).
        if !body.contains(&b'\\') {
            prop_assert!(kcld_records::getrecords::takes_fast_path(&body));
        }
        let sdk = SDK.with(|s| s.decode(body.clone()));
        let ours = kcld_records::getrecords::decode(body).unwrap();

        prop_assert_eq!(ours.records.len(), sdk.records().len());
        for (a, b) in ours.records.iter().zip(sdk.records()) {
            // The SDK keeps the digits as sent; ours drops leading zeros
            // (there are none in real sequence numbers).
            prop_assert_eq!(a.sequence_number.as_str(), b.sequence_number());
            prop_assert_eq!(a.partition_key.as_str(), b.partition_key().unwrap_or_default());
            prop_assert_eq!(&a.data[..], b.data().as_ref());
            prop_assert_eq!(a.encryption.map(|e| e.as_str()), b.encryption_type().map(|e| e.as_str()));
            // Arrival: seconds as a JSON float. The SDK truncates to whole
            // milliseconds after float rounding, kcld rounds: 1 ms apart at
            // most.
            let sdk_ms = b.approximate_arrival_timestamp().and_then(|t| t.to_millis().ok()).unwrap_or(0);
            prop_assert!((a.approximate_arrival_ms - sdk_ms).abs() <= 1, "{} vs {}", a.approximate_arrival_ms, sdk_ms);
        }
        prop_assert_eq!(ours.next_shard_iterator.as_deref(), sdk.next_shard_iterator());
        prop_assert_eq!(ours.millis_behind_latest, sdk.millis_behind_latest());
        let sdk_children: Option<Vec<SyntheticChild>> = sdk.child_shards.as_ref().map(|cs| {
            cs.iter()
                .map(|c| {
                    let r = c.hash_key_range();
                    (
                        c.shard_id().to_owned(),
                        c.parent_shards().to_vec(),
                        r.map(|r| r.starting_hash_key().to_owned()).unwrap_or_default(),
                        r.map(|r| r.ending_hash_key().to_owned()).unwrap_or_default(),
                    )
                })
                .collect()
        });
        let our_children: Option<Vec<SyntheticChild>> = ours.child_shards.map(|cs| {
            cs.into_iter()
                .map(|c| (c.shard_id, c.parent_shards, c.starting_hash_key, c.ending_hash_key))
                .collect()
        });
        prop_assert_eq!(our_children, sdk_children);
    }
}
