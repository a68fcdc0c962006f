//! Reading a stream shared from the producer account, as the consumer
//! account, against the local stack (`deploy/local/stack`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kcld_checkpoint::SequenceNumber;
use kcld_testkit::{sample_records, unique_name, Delivered, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

fn kcld_env(stack: &Stack, arn: &str, position: &str) -> HashMap<String, String> {
    let mut env = stack.consumer_env();
    env.insert("KCLD_APPLICATION_NAME".into(), unique_name("app"));
    env.insert("KCLD_STREAM_ARN".into(), arn.into());
    env.insert("KCLD_INITIAL_POSITION".into(), position.into());
    env.insert(
        "KCLD_POLLING__IDLE_TIME_BETWEEN_READS_MS".into(),
        "200".into(),
    );
    env.insert("KCLD_POLLING__MAX_RECORDS".into(), "1000".into());
    env
}

/// Waits until kcld has an iterator on every shard (it logs "positioned").
async fn wait_positioned(kcld: &Kcld, shards: usize) {
    for _ in 0..300 {
        if kcld.stderr_text().matches("positioned").count() >= shards {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "kcld did not position on {shards} shards:\n{}",
        kcld.stderr_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_every_record_of_a_shared_stream_once_in_order() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("shared"), 4)
        .await
        .unwrap();
    let records = sample_records(1000, 37);
    let placed = stack.put_records(&arn, &records).await.unwrap();

    let mut kcld = Kcld::spawn(KCLD, &["run"], &kcld_env(&stack, &arn, "TRIM_HORIZON")).unwrap();
    let lines = kcld.take_lines(1000, Duration::from_secs(120)).await;
    assert_eq!(lines.len(), 1000, "stderr:\n{}", kcld.stderr_text());
    let extra = kcld.drain_for(Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "records after the 1000th: {extra:?}");

    // Every record once, bytes and keys intact, at the shard and sequence
    // number the producer was told.
    let expected: HashMap<(String, String), &(String, Vec<u8>)> =
        placed.iter().cloned().zip(records.iter()).collect();
    let mut seen = HashSet::new();
    let mut last_per_shard: HashMap<String, SequenceNumber> = HashMap::new();
    for line in &lines {
        let d = Delivered::parse(line).unwrap();
        let key = (d.shard_id.clone(), d.sequence_number.clone());
        let (pk, data) = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected record {key:?}"));
        assert_eq!(&d.partition_key, pk);
        assert_eq!(&d.data, data);
        assert!(seen.insert(key), "duplicate {line}");
        // Sequence order per shard.
        let seq: SequenceNumber = d.sequence_number.parse().unwrap();
        let prev = last_per_shard.insert(d.shard_id.clone(), seq.clone());
        assert!(
            prev.is_none_or(|p| p < seq),
            "out of order on {}",
            d.shard_id
        );
    }
    assert_eq!(last_per_shard.len(), 4, "records came from every shard");

    // The Lambda record shape around it.
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["eventSource"], "aws:kinesis");
    assert_eq!(v["eventSourceARN"], arn.as_str());
    assert_eq!(v["awsRegion"], "us-east-1");
    assert_eq!(v["kinesis"]["kinesisSchemaVersion"], "1.0");
    assert!(
        v["kinesis"]["approximateArrivalTimestamp"]
            .as_f64()
            .unwrap()
            > 1.7e9
    );

    let status = kcld.terminate(Duration::from_secs(25)).await.unwrap();
    assert!(status.success(), "exit {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latest_skips_what_was_there_before_start() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("latest"), 2)
        .await
        .unwrap();
    stack
        .put_records(&arn, &sample_records(40, 5))
        .await
        .unwrap();

    let mut kcld = Kcld::spawn(KCLD, &["run"], &kcld_env(&stack, &arn, "LATEST")).unwrap();
    wait_positioned(&kcld, 2).await;
    let after: Vec<(String, Vec<u8>)> = (0..25)
        .map(|i| (format!("late-{i}"), format!("after start {i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &after).await.unwrap();

    let lines = kcld.take_lines(25, Duration::from_secs(60)).await;
    let extra = kcld.drain_for(Duration::from_secs(2)).await;
    let got: HashSet<Vec<u8>> = lines
        .iter()
        .map(|l| Delivered::parse(l).unwrap().data)
        .collect();
    let want: HashSet<Vec<u8>> = after.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(got, want, "stderr:\n{}", kcld.stderr_text());
    assert!(extra.is_empty(), "older records were delivered: {extra:?}");
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_timestamp_starts_at_that_time() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("attime"), 2)
        .await
        .unwrap();
    stack
        .put_records(&arn, &sample_records(30, 5))
        .await
        .unwrap();
    // Arrival times have millisecond resolution: leave a clear gap.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cut = std::time::SystemTime::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("t-{i}"), format!("after the cut {i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &later).await.unwrap();

    let rfc3339 = aws_smithy_types::DateTime::from(cut)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap();
    let mut env = kcld_env(&stack, &arn, "AT_TIMESTAMP");
    env.insert("KCLD_INITIAL_TIMESTAMP".into(), rfc3339);
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let lines = kcld.take_lines(20, Duration::from_secs(60)).await;
    let extra = kcld.drain_for(Duration::from_secs(2)).await;
    let got: HashSet<Vec<u8>> = lines
        .iter()
        .map(|l| Delivered::parse(l).unwrap().data)
        .collect();
    let want: HashSet<Vec<u8>> = later.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(got, want, "stderr:\n{}", kcld.stderr_text());
    assert!(
        extra.is_empty(),
        "records from before the timestamp: {extra:?}"
    );
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_shards_follows_pagination_across_accounts() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("pages"), 5)
        .await
        .unwrap();
    let stream = kcld::stream::Stream::new(stack.consumer_kinesis().await, arn.parse().unwrap());
    let shards = stream.list_shards(2).await.unwrap();
    let ids: HashSet<&str> = shards.iter().map(|s| s.shard_id.as_str()).collect();
    assert_eq!(ids.len(), 5, "{shards:?}");
    assert!(shards
        .iter()
        .all(|s| s.parents.is_empty() && !s.ending_hash_key.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_over_tls_trusting_the_configured_ca() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("tls"), 2)
        .await
        .unwrap();
    let records = sample_records(50, 4);
    stack.put_records(&arn, &records).await.unwrap();

    let mut env = kcld_env(&stack, &arn, "TRIM_HORIZON");
    env.insert(
        "AWS_ENDPOINT_URL_KINESIS".into(),
        stack.kinesis_tls_endpoint.clone(),
    );
    env.insert(
        "KCLD_AWS__CA_FILE".into(),
        stack.ca_file.display().to_string(),
    );
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let lines = kcld.take_lines(50, Duration::from_secs(60)).await;
    let got: HashSet<Vec<u8>> = lines
        .iter()
        .map(|l| Delivered::parse(l).unwrap().data)
        .collect();
    let want: HashSet<Vec<u8>> = records.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(got, want, "stderr:\n{}", kcld.stderr_text());
    kcld.terminate(Duration::from_secs(25)).await.unwrap();

    // Without the CA the endpoint's certificate is not trusted: a clear error.
    env.remove("KCLD_AWS__CA_FILE");
    let kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let stderr = kcld.stderr.clone();
    let status = kcld.wait(Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(status.code(), Some(1));
    let text = stderr.lock().unwrap().clone();
    assert!(text.contains("cannot reach Kinesis"), "{text}");
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../records/tests/fixtures/").to_owned() + name,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregates_arrive_as_user_records_and_corrupt_ones_raw() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("kpl"), 1)
        .await
        .unwrap();
    let aggregate = fixture("basic.agg");
    let mut corrupt = aggregate.clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xFF;
    let records = vec![
        ("agg".to_owned(), aggregate),
        ("plain".to_owned(), b"a plain record".to_vec()),
        ("bad".to_owned(), corrupt.clone()),
    ];
    let placed = stack.put_records(&arn, &records).await.unwrap();

    let mut kcld = Kcld::spawn(KCLD, &["run"], &kcld_env(&stack, &arn, "TRIM_HORIZON")).unwrap();
    let lines = kcld.take_lines(8, Duration::from_secs(60)).await;
    assert_eq!(lines.len(), 8, "stderr:\n{}", kcld.stderr_text());
    let got: Vec<Delivered> = lines.iter().map(|l| Delivered::parse(l).unwrap()).collect();
    let expected: Vec<serde_json::Value> = serde_json::from_slice(&fixture("basic.json")).unwrap();
    for (i, (d, e)) in got[..6].iter().zip(&expected).enumerate() {
        assert_eq!(
            d.sequence_number, placed[0].1,
            "user records keep the aggregate's sequence number"
        );
        assert_eq!(d.sub_sequence_number, Some(i as u64));
        assert_eq!(d.partition_key, e["partition_key"].as_str().unwrap());
    }
    assert_eq!(got[6].data, b"a plain record");
    assert_eq!(got[6].sub_sequence_number, None);
    assert_eq!(
        got[7].data, corrupt,
        "a corrupt aggregate is delivered as it arrived"
    );
    assert!(
        kcld.stderr_text().contains("not well formed"),
        "the corrupt record is reported"
    );
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
}
