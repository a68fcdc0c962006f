//! A DynamoDB table's stream of another account, read by its ARN, against
//! the local stack: the table lives in moto's server behind the stack's
//! account relay, which serves each call in the account of the ARN it
//! names and judges the stream's resource policy as AWS does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use kcld_testkit::{unique_name, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

/// The table's owner, in another region than the consumer.
const OWNER: (&str, &str) = ("111111111111", "eu-west-1");

fn kcld_env(stack: &Stack, arn: &str, app: &str) -> HashMap<String, String> {
    let mut env = stack.consumer_env();
    env.insert("KCLD_APPLICATION_NAME".into(), app.into());
    env.insert("KCLD_STREAM_ARN".into(), arn.into());
    env.insert("KCLD_WORKER_ID".into(), "worker-a".into());
    env.insert("KCLD_INITIAL_POSITION".into(), "TRIM_HORIZON".into());
    env.insert(
        "KCLD_POLLING__IDLE_TIME_BETWEEN_READS_MS".into(),
        "200".into(),
    );
    env.insert("KCLD_CHECKPOINT__INTERVAL_MS".into(), "500".into());
    env
}

/// The item changes a test makes: `n` items put, each updated once, every
/// fifth deleted. Returns the events expected per key, in order.
async fn change_items(
    stack: &Stack,
    table: &str,
    tag: &str,
    n: usize,
) -> BTreeMap<String, Vec<&'static str>> {
    let ddb = stack.source_dynamodb(OWNER.0, OWNER.1).await;
    let mut expected: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for i in 0..n {
        let id = format!("{tag}-{i:04}");
        ddb.put_item()
            .table_name(table)
            .item("id", AttributeValue::S(id.clone()))
            .item("v", AttributeValue::N("1".into()))
            .item("note", AttributeValue::S(format!("first \"{i}\" ü")))
            .send()
            .await
            .unwrap();
        expected.entry(id).or_default().push("INSERT");
    }
    for i in 0..n {
        let id = format!("{tag}-{i:04}");
        ddb.update_item()
            .table_name(table)
            .key("id", AttributeValue::S(id.clone()))
            .update_expression("SET v = :v")
            .expression_attribute_values(":v", AttributeValue::N("2".into()))
            .send()
            .await
            .unwrap();
        expected.get_mut(&id).unwrap().push("MODIFY");
        if i % 5 == 0 {
            ddb.delete_item()
                .table_name(table)
                .key("id", AttributeValue::S(id.clone()))
                .send()
                .await
                .unwrap();
            expected.get_mut(&id).unwrap().push("REMOVE");
        }
    }
    expected
}

/// The events printed, in the order printed: (key, eventName, sequence
/// number, the whole event).
fn events(lines: &[String]) -> Vec<(String, String, String, serde_json::Value)> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            (
                v["dynamodb"]["Keys"]["id"]["S"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
                v["eventName"].as_str().unwrap().to_owned(),
                v["dynamodb"]["SequenceNumber"].as_str().unwrap().to_owned(),
                v,
            )
        })
        .collect()
}

fn count(expected: &BTreeMap<String, Vec<&str>>) -> usize {
    expected.values().map(Vec::len).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_of_another_accounts_table_arrive_once_in_order_and_survive_restarts() {
    let stack = Stack::from_env().unwrap();
    let table = unique_name("orders");
    let arn = stack
        .create_table_stream_in(OWNER.0, OWNER.1, &table)
        .await
        .unwrap();
    let expected = change_items(&stack, &table, "a", 200).await;
    let app = unique_name("ddb-app");
    let env = kcld_env(&stack, &arn, &app);
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let lines = kcld
        .take_lines(count(&expected), Duration::from_secs(120))
        .await;
    assert_eq!(
        lines.len(),
        count(&expected),
        "stderr:\n{}",
        kcld.stderr_text()
    );

    // Lambda's DynamoDB event records: each change once, in order per key,
    // with the images as DynamoDB JSON.
    let got = events(&lines);
    let mut per_key: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let mut sequences = HashSet::new();
    for (key, name, seq, v) in &got {
        assert_eq!(v["eventSource"], "aws:dynamodb", "{v}");
        assert_eq!(v["eventSourceARN"], arn.as_str(), "{v}");
        assert!(
            v["eventID"].is_string() && v["dynamodb"]["SizeBytes"].is_number(),
            "{v}"
        );
        assert!(sequences.insert(seq.clone()), "delivered twice: {v}");
        let image = &v["dynamodb"]["NewImage"];
        match name.as_str() {
            "INSERT" => {
                assert_eq!(image["v"]["N"], "1", "{v}");
                assert!(image["note"]["S"].as_str().unwrap().contains('ü'), "{v}");
                assert!(v["dynamodb"].get("OldImage").is_none(), "{v}");
            }
            "MODIFY" => {
                assert_eq!(image["v"]["N"], "2", "{v}");
                assert_eq!(v["dynamodb"]["OldImage"]["v"]["N"], "1", "{v}");
            }
            "REMOVE" => assert_eq!(v["dynamodb"]["OldImage"]["v"]["N"], "2", "{v}"),
            other => panic!("eventName {other}: {v}"),
        }
        per_key
            .entry(key.clone())
            .or_default()
            .push(match name.as_str() {
                "INSERT" => "INSERT",
                "MODIFY" => "MODIFY",
                _ => "REMOVE",
            });
    }
    assert_eq!(per_key, expected);

    // The lease: the shard's own id as its key (the KCL's single-stream
    // keys, as its DynamoDB Streams adapter writes them), checkpointed at
    // the last change.
    let last = got.last().map(|e| e.2.clone()).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let checkpoints = stack.checkpoints(&app).await;
        if checkpoints.values().any(|(c, sub)| *c == last && *sub == 0) {
            assert!(
                checkpoints.keys().all(|k| k.starts_with("shardId-")),
                "{checkpoints:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{checkpoints:?} never at {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stopped cleanly and started again: only the new changes come.
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    let second = change_items(&stack, &table, "b", 40).await;
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let lines = kcld
        .take_lines(count(&second), Duration::from_secs(60))
        .await;
    let keys: HashSet<String> = events(&lines).into_iter().map(|e| e.0).collect();
    assert!(
        keys.iter().all(|k| k.starts_with("b-")),
        "read again: {keys:?}"
    );
    assert_eq!(lines.len(), count(&second));
    assert!(kcld.drain_for(Duration::from_secs(2)).await.is_empty());

    // Killed right after delivering: changes made while it is down all
    // arrive after the restart, and the only ones that come twice are the
    // latest before the kill (those past its last checkpoint).
    let third = change_items(&stack, &table, "c", 40).await;
    let mut before = kcld
        .take_lines(count(&third), Duration::from_secs(60))
        .await;
    kcld.kill9().await;
    before.extend(kcld.drain_for(Duration::from_millis(500)).await);
    assert_eq!(before.len(), count(&third));
    let fourth = change_items(&stack, &table, "d", 40).await;
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let mut after = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while events(&after)
        .iter()
        .filter(|e| e.0.starts_with("d-"))
        .count()
        < count(&fourth)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            kcld.stderr_text()
        );
        after.extend(kcld.take_lines(1, Duration::from_secs(1)).await);
    }
    after.extend(kcld.drain_for(Duration::from_secs(2)).await);
    let after = events(&after);
    let mut per_key: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for (key, name, _, _) in after.iter().filter(|e| e.0.starts_with("d-")) {
        per_key
            .entry(key.clone())
            .or_default()
            .push(match name.as_str() {
                "INSERT" => "INSERT",
                "MODIFY" => "MODIFY",
                _ => "REMOVE",
            });
    }
    assert_eq!(per_key, fourth, "the changes made while kcld was down");
    let repeated: HashSet<String> = after
        .iter()
        .filter(|e| e.0.starts_with("c-"))
        .map(|e| e.2.clone())
        .collect();
    let c_in_order: Vec<String> = events(&before).into_iter().map(|e| e.2).collect();
    let first_repeat = c_in_order.iter().position(|s| repeated.contains(s));
    if let Some(at) = first_repeat {
        assert!(
            c_in_order[at..].iter().all(|s| repeated.contains(s)),
            "repeated changes are not the latest ones: {repeated:?}"
        );
    }
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_not_shared_is_one_error_naming_the_action_and_the_statement() {
    let stack = Stack::from_env().unwrap();
    let table = unique_name("private");
    let arn = stack
        .create_table_stream_in(OWNER.0, OWNER.1, &table)
        .await
        .unwrap();
    // The owner shares it with another account only.
    stack
        .share_table_stream(
            OWNER.0,
            OWNER.1,
            &arn,
            "arn:aws:iam::999999999999:role/someone-else",
        )
        .await
        .unwrap();
    let kcld = Kcld::spawn(
        KCLD,
        &["run"],
        &kcld_env(&stack, &arn, &unique_name("denied")),
    )
    .unwrap();
    let stderr = kcld.stderr.clone();
    let status = kcld.wait(Duration::from_secs(30)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let text = stderr.lock().unwrap().clone();
    assert_ne!(status.code(), Some(0), "{text}");
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("kcld: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{text}");
    let line = errors[0];
    for needed in [
        "dynamodb:DescribeStream",
        arn.as_str(),
        OWNER.0,
        "dynamodb:GetRecords",
        "dynamodb:GetShardIterator",
    ] {
        assert!(line.contains(needed), "{needed} missing from: {line}");
    }
}

#[tokio::test]
async fn a_malformed_dynamodb_stream_arn_is_one_clear_config_error() {
    for (arn, says) in [
        (
            "arn:aws:dynamodb:us-east-1:111111111111:table/orders",
            "LatestStreamArn",
        ),
        (
            "arn:aws:dynamodb:us-east-1:1111:table/orders/stream/2026-01-01T00:00:00.000",
            "12-digit",
        ),
    ] {
        let out = tokio::process::Command::new(KCLD)
            .arg("check-config")
            .env_clear()
            .env("KCLD_APPLICATION_NAME", "app")
            .env("KCLD_STREAM_ARN", arn)
            .env("AWS_REGION", "us-east-1")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("stream_arn") && err.contains(says), "{err}");
    }
    // Fan-out and AT_TIMESTAMP are not DynamoDB Streams features.
    let arn = "arn:aws:dynamodb:us-east-1:111111111111:table/orders/stream/2026-01-01T00:00:00.000";
    for (key, value, says) in [
        ("KCLD_CONSUMER_NAME", "reader", "consumer_name"),
        ("KCLD_INITIAL_POSITION", "AT_TIMESTAMP", "initial_position"),
    ] {
        let out = tokio::process::Command::new(KCLD)
            .arg("check-config")
            .env_clear()
            .env("KCLD_APPLICATION_NAME", "app")
            .env("KCLD_STREAM_ARN", arn)
            .env("KCLD_INITIAL_TIMESTAMP", "2026-01-01T00:00:00Z")
            .env(key, value)
            .env("AWS_REGION", "us-east-1")
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains(says) && err.contains("DynamoDB"), "{err}");
    }
}
