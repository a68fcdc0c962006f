//! The S3 sink (`sink.type = "s3"`): a stream's records land as gzip
//! objects in a bucket of another account, each record once, the checkpoint
//! moving only past written objects; a kill -9 while buffering loses
//! nothing. Against the local stack (moto's S3 behind the account relay).

use std::collections::HashMap;
use std::io::Read;
use std::time::{Duration, Instant};

use kcld_testkit::{unique_name, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

/// A bucket of the producer account (the bucket owner) whose policy lets
/// the consumer account write.
async fn bucket(stack: &Stack) -> String {
    stack.create_bucket("landing", true).await.unwrap()
}

fn config(app: &str, arn: &str, bucket: &str, interval_s: u64) -> tempfile::NamedTempFile {
    config_with(app, arn, bucket, interval_s, "buffer_size_mib = 1\n")
}

/// [`config`] with more `[sink.s3]` lines.
fn config_with(
    app: &str,
    arn: &str,
    bucket: &str,
    interval_s: u64,
    s3: &str,
) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        format!(
            "application_name = \"{app}\"\nstream_arn = \"{arn}\"\ninitial_position = \"TRIM_HORIZON\"\n\
             [checkpoint]\ninterval_ms = 200\n[polling]\nidle_time_between_reads_ms = 200\n\
             [sink]\ntype = \"s3\"\n[sink.s3]\nbucket_arn = \"arn:aws:s3:::{bucket}\"\n\
             buffer_interval_seconds = {interval_s}\n{s3}"
        ),
    )
    .unwrap();
    file
}

/// An object's lines, decompressed as its extension says.
fn lines_of(key: &str, body: &[u8]) -> Vec<Vec<u8>> {
    let text = if key.ends_with(".gz") {
        let mut text = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut text)
            .unwrap_or_else(|e| panic!("{key} is not gzip: {e}"));
        text
    } else if key.ends_with(".zst") {
        zstd::decode_all(body).unwrap_or_else(|e| panic!("{key} is not zstd: {e}"))
    } else {
        body.to_vec()
    };
    text.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Runs kcld as the consumer with the configuration `file` until every
/// shard's checkpoint is its last record's, then stops it.
async fn run_until_checkpointed(
    stack: &Stack,
    app: &str,
    file: &tempfile::NamedTempFile,
    placed: &[(String, String)],
) {
    let mut env = stack.consumer_env();
    env.insert("KCLD_CONFIG".into(), file.path().to_str().unwrap().into());
    let kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    wait_checkpointed(stack, app, placed, &kcld).await;
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

/// Every line of every object, gunzipped, with how often it appears.
async fn landed(stack: &Stack, bucket: &str) -> (HashMap<Vec<u8>, usize>, Vec<String>) {
    let objects = stack.bucket_objects(bucket).await.unwrap();
    let mut lines: HashMap<Vec<u8>, usize> = HashMap::new();
    // `kcld doctor`'s probe aside.
    let objects: Vec<(String, Vec<u8>)> = objects
        .into_iter()
        .filter(|(key, _)| key != "_kcld/doctor-probe")
        .collect();
    for (key, body) in &objects {
        assert!(key.ends_with(".gz"), "{key}");
        for line in lines_of(key, body) {
            *lines.entry(line).or_default() += 1;
        }
    }
    (lines, objects.into_iter().map(|(k, _)| k).collect())
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
    run_until_checkpointed(&stack, &app, &file, &placed).await;

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
    // Written by the consumer account, fully controlled by the bucket
    // owner.
    let s3 = stack.s3_as(&stack.producer_account).await;
    let owner = s3.get_bucket_acl().bucket(&bucket).send().await.unwrap();
    let owner_id = owner.owner().and_then(|o| o.id()).unwrap().to_owned();
    for key in &keys {
        let acl = s3
            .get_object_acl()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_ne!(
            acl.owner().and_then(|o| o.id()),
            Some(owner_id.as_str()),
            "{key}"
        );
        assert!(
            acl.grants().iter().any(|g| {
                g.permission().map(|p| p.as_str()) == Some("FULL_CONTROL")
                    && g.grantee().and_then(|g| g.id()) == Some(owner_id.as_str())
            }),
            "{key}: {acl:?}"
        );
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_are_partitioned_by_a_json_field_across_accounts() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("partitions"), 2)
        .await
        .unwrap();
    let bucket = bucket(&stack).await;
    let mut records: Vec<(String, Vec<u8>)> = (0..600)
        .map(|i| {
            (
                format!("key-{i}"),
                format!(r#"{{"customer":{{"id":"c/{}"}},"n":{i}}}"#, i % 3).into_bytes(),
            )
        })
        .collect();
    // Records whose partition cannot be read: not JSON, no such field.
    records.push(("odd-1".into(), b"not json".to_vec()));
    records.push(("odd-2".into(), br#"{"customer":{}}"#.to_vec()));
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let app = unique_name("partitions-app");
    let file = config_with(
        &app,
        &arn,
        &bucket,
        1,
        "prefix = \"customers/!{data:customer.id}/!{timestamp:yyyy}/\"\ncompression = \"zstd\"\n",
    );
    run_until_checkpointed(&stack, &app, &file, &placed).await;

    // Each record once, under its customer's prefix (the '/' of the value
    // escaped), the unreadable ones under the error prefix.
    let objects = stack.bucket_objects(&bucket).await.unwrap();
    let mut seen: HashMap<Vec<u8>, Vec<String>> = HashMap::new();
    for (key, body) in &objects {
        assert!(key.ends_with(".zst"), "{key}");
        for line in lines_of(key, body) {
            seen.entry(line).or_default().push(key.clone());
        }
    }
    assert_eq!(seen.len(), records.len());
    for (i, (_, data)) in records.iter().enumerate() {
        let keys = &seen[data];
        assert_eq!(
            keys.len(),
            1,
            "{} in {keys:?}",
            String::from_utf8_lossy(data)
        );
        let expected = if i < 600 {
            format!("customers/c%2F{}/", i % 3)
        } else {
            "processing-failed/".to_owned()
        };
        assert!(
            keys[0].starts_with(&expected),
            "{} under {}",
            String::from_utf8_lossy(data),
            keys[0]
        );
    }
    let partitions: std::collections::BTreeSet<&str> = objects
        .keys()
        .filter_map(|k| k.strip_prefix("customers/"))
        .filter_map(|k| k.split('/').next())
        .collect();
    assert_eq!(
        partitions.into_iter().collect::<Vec<_>>(),
        ["c%2F0", "c%2F1", "c%2F2"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_buffer_is_a_multipart_upload_encrypted_as_asked() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("multipart"), 1)
        .await
        .unwrap();
    let bucket = bucket(&stack).await;
    // 7,000 records of 1 KiB: one buffer of about 7 MiB, above the 5 MiB
    // threshold.
    let records: Vec<(String, Vec<u8>)> = (0..7_000)
        .map(|i| {
            let mut data = format!("{i:08}-").into_bytes();
            data.resize(1024, b'a' + (i % 26) as u8);
            (format!("k{i}"), data)
        })
        .collect();
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let app = unique_name("multipart-app");
    let file = config_with(
        &app,
        &arn,
        &bucket,
        20,
        "buffer_size_mib = 8\nmultipart_threshold_mib = 5\ncompression = \"none\"\nencryption = \"sse-s3\"\n",
    );
    run_until_checkpointed(&stack, &app, &file, &placed).await;

    let objects = stack.bucket_objects(&bucket).await.unwrap();
    let mut seen: HashMap<Vec<u8>, usize> = HashMap::new();
    for (key, body) in &objects {
        assert!(
            !key.contains('.'),
            "no extension without compression: {key}"
        );
        for line in lines_of(key, body) {
            *seen.entry(line).or_default() += 1;
        }
    }
    assert_eq!(seen.len(), records.len());
    assert!(records.iter().all(|(_, d)| seen.get(d) == Some(&1)));
    let s3 = stack.s3_as(&stack.producer_account).await;
    let mut multipart = 0;
    for key in objects.keys() {
        let head = s3
            .head_object()
            .bucket(&bucket)
            .key(key)
            .send()
            .await
            .unwrap();
        assert_eq!(
            head.server_side_encryption().map(|e| e.as_str()),
            Some("AES256"),
            "{key}"
        );
        // A multipart object's ETag ends with its number of parts.
        if head
            .e_tag()
            .unwrap_or_default()
            .trim_matches('"')
            .contains('-')
        {
            multipart += 1;
        }
    }
    assert!(
        multipart >= 1,
        "no object above 5 MiB went by multipart upload: {:?}",
        objects
            .iter()
            .map(|(k, b)| (k, b.len()))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_that_refuses_the_consumer_is_one_clear_error_until_its_policy_is_added() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("refused"), 1)
        .await
        .unwrap();
    let bucket = stack.create_bucket("refused", false).await.unwrap();
    let records: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| (format!("k{i}"), format!("refused {i}").into_bytes()))
        .collect();
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let app = unique_name("refused-app");
    let file = config(&app, &arn, &bucket, 1);
    let mut env = stack.consumer_env();
    env.insert("KCLD_CONFIG".into(), file.path().to_str().unwrap().into());
    // moto's STS behind the relay, for doctor's caller identity.
    env.insert(
        "AWS_ENDPOINT_URL_STS".into(),
        stack.streams_endpoint.clone(),
    );

    // kcld stops with one message naming the action and the statement.
    let kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let exited = kcld.exited(Duration::from_secs(60)).await.unwrap();
    let error = exited.one_error();
    for needed in [
        "s3:PutObject",
        "bucket policy",
        "kcld-cross-account-delivery",
        &format!("arn:aws:s3:::{bucket}/*"),
    ] {
        assert!(error.contains(needed), "{needed} missing: {error}");
    }
    // Nothing written, nothing checkpointed.
    assert!(stack.bucket_objects(&bucket).await.unwrap().is_empty());
    let checkpoints = stack.checkpoints(&app).await;
    assert!(
        checkpoints.values().all(|(c, _)| c == "TRIM_HORIZON"),
        "{checkpoints:?}"
    );

    // doctor names the same; the bucket policy kcld policy prints mends it.
    let checks = kcld_testkit::doctor_checks(KCLD, &env).await.unwrap();
    let probe = checks
        .iter()
        .find(|c| {
            c["check"]
                .as_str()
                .unwrap_or_default()
                .contains("s3:PutObject")
        })
        .unwrap_or_else(|| panic!("no bucket check: {checks:?}"));
    assert_eq!(probe["ok"], false, "{probe}");
    assert_eq!(probe["fix"]["missing_action"], "s3:PutObject", "{probe}");
    let role = format!("arn:aws:iam::{}:role/kcld", stack.consumer_account);
    let out = std::process::Command::new(KCLD)
        .args(["policy", "--consumer-role-arn", &role])
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let policy = &doc["bucket_policy"];
    assert_eq!(
        policy["Statement"][0]["Principal"]["AWS"],
        role.as_str(),
        "{doc}"
    );
    assert!(
        doc["consumer_role_policy"]["Statement"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["Sid"] == "DeliverToBucket"),
        "{doc}"
    );
    stack
        .put_bucket_policy(&bucket, &policy.to_string())
        .await
        .unwrap();
    let out = std::process::Command::new(KCLD)
        .args(["doctor", "--json"])
        .env_clear()
        .envs(&env)
        .output()
        .unwrap();
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "{checks:?}");
    assert!(
        checks.iter().any(|c| c["check"]
            .as_str()
            .unwrap_or_default()
            .contains("s3:PutObject")
            && c["ok"] == true),
        "{checks:?}"
    );

    // Started again: every record lands once.
    let kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    wait_checkpointed(&stack, &app, &placed, &kcld).await;
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    let (lines, keys) = landed(&stack, &bucket).await;
    assert_eq!(lines.len(), records.len());
    assert!(records.iter().all(|(_, d)| lines.get(d) == Some(&1)));
    assert!(keys.iter().all(|k| !k.starts_with("_kcld/")), "{keys:?}");
}
