//! The S3 sink (`sink.type = "s3"`): a stream's records land as gzip
//! objects in a bucket of another account, each record once, the checkpoint
//! moving only past written objects; a kill -9 while buffering loses
//! nothing. Against the local stack (moto's S3 behind the account relay).

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use kcld_testkit::{unique_name, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

/// A bucket of the producer account (the bucket owner).
async fn bucket(stack: &Stack) -> String {
    let name = unique_name("landing").to_lowercase();
    stack
        .s3_as(&stack.producer_account)
        .await
        .create_bucket()
        .bucket(&name)
        .send()
        .await
        .unwrap();
    name
}

fn config(app: &str, arn: &str, bucket: &str, interval_s: u64) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "application_name = \"{app}\"\nstream_arn = \"{arn}\"\ninitial_position = \"TRIM_HORIZON\"\n\
             [checkpoint]\ninterval_ms = 200\n[polling]\nidle_time_between_reads_ms = 200\n\
             [sink]\ntype = \"s3\"\n[sink.s3]\nbucket_arn = \"arn:aws:s3:::{bucket}\"\n\
             buffer_size_mib = 1\nbuffer_interval_seconds = {interval_s}\n"
        ),
    )
    .unwrap();
    file
}

/// Every line of every object, gunzipped, with how often it appears.
async fn landed(stack: &Stack, bucket: &str) -> (HashMap<Vec<u8>, usize>, Vec<String>) {
    let objects = stack.bucket_objects(bucket).await.unwrap();
    let mut lines: HashMap<Vec<u8>, usize> = HashMap::new();
    for (key, body) in &objects {
        assert!(key.ends_with(".gz"), "{key}");
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut text)
            .unwrap_or_else(|e| panic!("{key} is not gzip: {e}"));
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            *lines.entry(line.to_vec()).or_default() += 1;
        }
    }
    (lines, objects.into_keys().collect())
}

/// Waits until every shard's checkpoint is its last record's.
async fn wait_checkpointed(stack: &Stack, app: &str, placed: &[(String, String)], kcld: &Kcld) {
    if let Err(e) = stack
        .wait_checkpointed(app, placed, Duration::from_secs(90))
        .await
    {
        panic!("{e}\n{}", kcld.stderr_text());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_records_land_in_another_accounts_bucket_each_once() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("landing"), 4)
        .await
        .unwrap();
    let bucket = bucket(&stack).await;
    let records: Vec<(String, Vec<u8>)> = (0..10_000)
        .map(|i| {
            (
                format!("key-{}", i % 101),
                format!(r#"{{"order":{i},"status":"shipped"}}"#).into_bytes(),
            )
        })
        .collect();
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let app = unique_name("landing-app");
    let file = config(&app, &arn, &bucket, 2);
    let mut env = stack.consumer_env();
    env.insert("KCLD_CONFIG".into(), file.path().to_str().unwrap().into());
    let kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    wait_checkpointed(&stack, &app, &placed, &kcld).await;
    kcld.stop_cleanly(Duration::from_secs(25)).await;

    // Exactly the records, each once, under Firehose's hour prefixes.
    let (lines, keys) = landed(&stack, &bucket).await;
    assert_eq!(lines.len(), records.len());
    for (_, data) in &records {
        assert_eq!(
            lines.get(data),
            Some(&1),
            "{}",
            String::from_utf8_lossy(data)
        );
    }
    for key in &keys {
        let parts: Vec<&str> = key.split('/').collect();
        assert_eq!(parts.len(), 5, "{key}");
        assert!(
            parts[..4]
                .iter()
                .all(|p| p.bytes().all(|b| b.is_ascii_digit())),
            "{key}"
        );
        assert!(parts[4].contains("shardId-"), "{key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_while_buffering_loses_nothing() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("buffering"), 2)
        .await
        .unwrap();
    let bucket = bucket(&stack).await;
    let app = unique_name("buffering-app");
    // A long buffer: the first records wait in it when kcld is killed.
    let file = config(&app, &arn, &bucket, 30);
    let mut env = stack.consumer_env();
    env.insert("KCLD_CONFIG".into(), file.path().to_str().unwrap().into());
    let first: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("k{i}"), format!("first {i}").into_bytes()))
        .collect();
    let mut placed = stack.put_records(&arn, &first).await.unwrap();
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    // Reading (and buffering) has begun: the shards are positioned.
    let deadline = Instant::now() + Duration::from_secs(30);
    while kcld.stderr_text().matches("positioned").count() < 2 {
        assert!(Instant::now() < deadline, "{}", kcld.stderr_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    kcld.kill9().await;
    let (lines, _) = landed(&stack, &bucket).await;
    assert!(
        lines.is_empty(),
        "written before the buffer interval: {}",
        lines.len()
    );

    // Started again with a short buffer: everything lands, once.
    let file = config(&app, &arn, &bucket, 1);
    env.insert("KCLD_CONFIG".into(), file.path().to_str().unwrap().into());
    let second: Vec<(String, Vec<u8>)> = (0..300)
        .map(|i| (format!("k{i}"), format!("second {i}").into_bytes()))
        .collect();
    placed.extend(stack.put_records(&arn, &second).await.unwrap());
    let kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    wait_checkpointed(&stack, &app, &placed, &kcld).await;
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    let (lines, _) = landed(&stack, &bucket).await;
    for (_, data) in first.iter().chain(&second) {
        assert_eq!(
            lines.get(data),
            Some(&1),
            "{}",
            String::from_utf8_lossy(data)
        );
    }
    assert_eq!(lines.len(), first.len() + second.len());
}
