//! On-failure destinations of the HTTP sink (`sink.on_failure_destination`):
//! a batch that exhausted its retries is described, in Lambda's invocation
//! record shape, in an SQS queue, SNS topic or S3 bucket of another account,
//! and only then checkpointed past. Against the local stack (moto behind the
//! account relay, which judges the queue, topic and bucket policies).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use base64::Engine;
use kcld_testkit::{unique_name, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

/// An application that refuses every request: its URL and how many
/// requests it saw.
async fn refusing_app() -> (String, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = Router::new().route(
        "/events",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                (StatusCode::INTERNAL_SERVER_ERROR, "down")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn env(
    stack: &Stack,
    app: &str,
    arn: &str,
    url: &str,
    destination: &str,
) -> HashMap<String, String> {
    let mut env = stack.consumer_env();
    for (k, v) in [
        ("KCLD_APPLICATION_NAME", app),
        ("KCLD_STREAM_ARN", arn),
        ("KCLD_INITIAL_POSITION", "TRIM_HORIZON"),
        ("KCLD_POLLING__IDLE_TIME_BETWEEN_READS_MS", "200"),
        ("KCLD_CHECKPOINT__INTERVAL_MS", "200"),
        ("KCLD_SINK__TYPE", "http"),
        ("KCLD_SINK__URL", url),
        ("KCLD_SINK__BATCH_SIZE", "10"),
        ("KCLD_SINK__MAX_RETRY_ATTEMPTS", "1"),
        ("KCLD_SINK__ON_FAILURE_DESTINATION", destination),
    ] {
        env.insert(k.into(), v.into());
    }
    env
}

async fn wait_checkpointed(stack: &Stack, app: &str, placed: &[(String, String)], kcld: &Kcld) {
    if let Err(e) = stack
        .wait_checkpointed(app, placed, Duration::from_secs(60))
        .await
    {
        panic!("{e}\n{}", kcld.stderr_text());
    }
}

/// Checks one invocation record against Lambda's shape; its
/// (start, end, size).
fn batch_info(record: &serde_json::Value, arn: &str) -> (String, String, u64) {
    assert_eq!(record["version"], "1.0", "{record}");
    assert_eq!(
        record["requestContext"]["condition"], "RetryAttemptsExhausted",
        "{record}"
    );
    assert_eq!(
        record["requestContext"]["approximateInvokeCount"], 2,
        "{record}"
    );
    assert_eq!(record["responseContext"]["statusCode"], 500, "{record}");
    assert_eq!(
        record["responseContext"]["functionError"], "Unhandled",
        "{record}"
    );
    let info = &record["KinesisBatchInfo"];
    assert_eq!(info["streamArn"], arn, "{record}");
    assert_eq!(info["shardId"], "shardId-000000000000", "{record}");
    for time in [
        &record["timestamp"],
        &info["approximateArrivalOfFirstRecord"],
        &info["approximateArrivalOfLastRecord"],
    ] {
        // 2026-12-07T09:28:33.120Z
        let t = time.as_str().unwrap_or_default();
        assert!(
            t.len() == 24 && t.ends_with('Z') && t.as_bytes()[10] == b'T',
            "{record}"
        );
    }
    (
        info["startSequenceNumber"].as_str().unwrap().to_owned(),
        info["endSequenceNumber"].as_str().unwrap().to_owned(),
        info["batchSize"].as_u64().unwrap(),
    )
}

/// Sequence numbers in numeric order (they are decimal strings).
fn seq_key(s: &str) -> (usize, String) {
    (s.len(), s.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_exhaust_their_retries_are_described_in_another_accounts_queue() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("dlq"), 1)
        .await
        .unwrap();
    let (queue_arn, queue_url) = stack.create_queue("failed").await.unwrap();
    let records: Vec<(String, Vec<u8>)> = (0..25)
        .map(|i| (format!("k{i}"), format!("failing {i}").into_bytes()))
        .collect();
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let (url, seen) = refusing_app().await;
    let app = unique_name("dlq-app");
    let vars = env(&stack, &app, &arn, &url, &queue_arn);

    // The queue's owner has not shared it yet: kcld stops with the
    // statement to add, and checkpoints nothing.
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let exited = kcld.exited(Duration::from_secs(60)).await.unwrap();
    let error = exited.one_error();
    for needed in [
        "sqs:SendMessage",
        "queue policy",
        queue_arn.as_str(),
        "kcld-on-failure-destination",
    ] {
        assert!(error.contains(needed), "{needed} missing: {error}");
    }
    let checkpoints = stack.checkpoints(&app).await;
    assert!(
        checkpoints.values().all(|(c, _)| c == "TRIM_HORIZON"),
        "{checkpoints:?}"
    );

    // Shared: each batch of the 25 records is described once, in order,
    // and the shard is checkpointed past them.
    stack.share_queue(&queue_arn, &queue_url).await.unwrap();
    let before = seen.load(Ordering::SeqCst);
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    wait_checkpointed(&stack, &app, &placed, &kcld).await;
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    let bodies = stack
        .receive_messages(&queue_url, 3, Duration::from_secs(20))
        .await
        .unwrap();
    let mut batches: Vec<(String, String, u64)> = bodies
        .iter()
        .map(|b| batch_info(&serde_json::from_str(b).unwrap(), &arn))
        .collect();
    batches.sort_by_key(|(start, _, _)| seq_key(start));
    assert_eq!(batches.iter().map(|b| b.2).sum::<u64>(), 25, "{bodies:?}");
    let sequence: Vec<&str> = placed.iter().map(|(_, s)| s.as_str()).collect();
    let mut next = 0;
    for (start, end, size) in &batches {
        assert_eq!(start, sequence[next], "{bodies:?}");
        next += *size as usize;
        assert_eq!(end, sequence[next - 1], "{bodies:?}");
    }
    // Each request was tried twice (one retry) before it was given up.
    assert_eq!(seen.load(Ordering::SeqCst) - before, 2 * batches.len());

    // Started again: nothing is sent to the application or the queue again.
    let before = seen.load(Ordering::SeqCst);
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    assert_eq!(seen.load(Ordering::SeqCst), before);
    let again = stack
        .receive_messages(&queue_url, 1, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(again.is_empty(), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_and_a_bucket_of_another_account_take_failed_batches_too() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("dlq-more"), 1)
        .await
        .unwrap();
    let records: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("k{i}"), format!("refused {i}").into_bytes()))
        .collect();
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let (url, _) = refusing_app().await;

    // SNS: the record is the notification's message.
    let (topic, subscribed) = stack.create_shared_topic("failed").await.unwrap();
    let app = unique_name("dlq-topic");
    let kcld = Kcld::spawn(KCLD, &["run"], &env(&stack, &app, &arn, &url, &topic)).unwrap();
    wait_checkpointed(&stack, &app, &placed, &kcld).await;
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    let notes = stack
        .receive_messages(&subscribed, 1, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(notes.len(), 1, "{notes:?}");
    let note: serde_json::Value = serde_json::from_str(&notes[0]).unwrap();
    assert_eq!(note["TopicArn"], topic.as_str(), "{note}");
    let record: serde_json::Value =
        serde_json::from_str(note["Message"].as_str().unwrap()).unwrap();
    assert_eq!(batch_info(&record, &arn).2, 5);

    // S3: the record and the refused request itself, under the shard.
    let bucket = stack.create_bucket("failed", true).await.unwrap();
    let app = unique_name("dlq-bucket");
    let destination = format!("arn:aws:s3:::{bucket}");
    let kcld = Kcld::spawn(KCLD, &["run"], &env(&stack, &app, &arn, &url, &destination)).unwrap();
    wait_checkpointed(&stack, &app, &placed, &kcld).await;
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    let objects = stack.bucket_objects(&bucket).await.unwrap();
    assert_eq!(objects.len(), 1, "{:?}", objects.keys());
    let (key, body) = objects.into_iter().next().unwrap();
    assert!(
        key.starts_with(&format!("kcld/{app}/shardId-000000000000/")),
        "{key}"
    );
    let record: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(batch_info(&record, &arn).2, 5);
    let payload: serde_json::Value =
        serde_json::from_str(record["payload"].as_str().unwrap()).unwrap();
    let data: Vec<Vec<u8>> = payload["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            base64::engine::general_purpose::STANDARD
                .decode(r["kinesis"]["data"].as_str().unwrap())
                .unwrap()
        })
        .collect();
    assert_eq!(
        data,
        records.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>()
    );
}
