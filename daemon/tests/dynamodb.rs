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
    change_items_of(stack, OWNER, table, tag, n).await
}

/// Runs `calls` 16 at a time.
async fn all<F: std::future::Future<Output = ()>>(calls: Vec<F>) {
    use futures::StreamExt;
    let _: Vec<()> = futures::stream::iter(calls)
        .buffer_unordered(16)
        .collect()
        .await;
}

/// [`change_items`] on a table of `owner` (account, region). The puts,
/// then the updates, then the deletes go 16 at a time: each key's changes
/// keep their order.
async fn change_items_of(
    stack: &Stack,
    owner: (&str, &str),
    table: &str,
    tag: &str,
    n: usize,
) -> BTreeMap<String, Vec<&'static str>> {
    let ddb = stack.source_dynamodb(owner.0, owner.1).await;
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i:04}")).collect();
    all(ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let put = ddb
                .put_item()
                .table_name(table)
                .item("id", AttributeValue::S(id.clone()))
                .item("v", AttributeValue::N("1".into()))
                .item("note", AttributeValue::S(format!("first \"{i}\" ü")));
            async move {
                put.send().await.unwrap();
            }
        })
        .collect())
    .await;
    all(ids
        .iter()
        .map(|id| {
            let update = ddb
                .update_item()
                .table_name(table)
                .key("id", AttributeValue::S(id.clone()))
                .update_expression("SET v = :v")
                .expression_attribute_values(":v", AttributeValue::N("2".into()));
            async move {
                update.send().await.unwrap();
            }
        })
        .collect())
    .await;
    all(ids
        .iter()
        .step_by(5)
        .map(|id| {
            let delete = ddb
                .delete_item()
                .table_name(table)
                .key("id", AttributeValue::S(id.clone()));
            async move {
                delete.send().await.unwrap();
            }
        })
        .collect())
    .await;
    ids.iter()
        .enumerate()
        .map(|(i, id)| {
            let mut events = vec!["INSERT", "MODIFY"];
            if i % 5 == 0 {
                events.push("REMOVE");
            }
            (id.clone(), events)
        })
        .collect()
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

/// The event names of each item key, in the order printed (an unknown name
/// as "?", which no expectation holds).
fn changes_per_key<'a>(
    events: impl IntoIterator<Item = &'a (String, String, String, serde_json::Value)>,
) -> BTreeMap<String, Vec<&'static str>> {
    let mut per_key: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    for (key, name, _, _) in events {
        let name = ["INSERT", "MODIFY", "REMOVE"]
            .into_iter()
            .find(|n| n == name)
            .unwrap_or("?");
        per_key.entry(key.clone()).or_default().push(name);
    }
    per_key
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
    let mut sequences = HashSet::new();
    for (_, name, seq, v) in &got {
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
    }
    assert_eq!(changes_per_key(&got), expected);

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
    assert_eq!(
        changes_per_key(after.iter().filter(|e| e.0.starts_with("d-"))),
        fourth,
        "the changes made while kcld was down"
    );
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
    let exited = kcld.exited(Duration::from_secs(30)).await.unwrap();
    let line = exited.one_error();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_kcld_prints_is_what_the_owner_attaches_and_doctor_checks_it() {
    let stack = Stack::from_env().unwrap();
    let table = unique_name("policy");
    let arn = stack
        .create_table_stream_in(OWNER.0, OWNER.1, &table)
        .await
        .unwrap();
    // Not shared with this consumer yet.
    stack
        .share_table_stream(
            OWNER.0,
            OWNER.1,
            &arn,
            "arn:aws:iam::999999999999:role/other",
        )
        .await
        .unwrap();
    let sts = kcld_testkit::sts::Identity::start().await.unwrap();
    let mut env = kcld_env(&stack, &arn, &unique_name("doctor"));
    env.insert("AWS_ENDPOINT_URL_STS".into(), sts.url());
    let checks = kcld_testkit::doctor_checks(KCLD, &env).await.unwrap();
    let describe = checks
        .iter()
        .find(|c| c["check"] == "DescribeStream")
        .unwrap_or_else(|| panic!("{checks:#?}"));
    assert_eq!(describe["ok"], false, "{describe:#}");
    assert_eq!(describe["fix"]["missing_action"], "dynamodb:DescribeStream");
    assert!(
        describe["fix"]["fixed_by"]
            .as_str()
            .unwrap()
            .contains(OWNER.0),
        "{describe:#}"
    );

    // The owner attaches what `kcld policy` prints, with the command it
    // names; doctor then passes every stream check.
    let out = tokio::process::Command::new(KCLD)
        .args(["policy", "--stream-arn", &arn, "--consumer-role-arn"])
        .arg(&stack.consumer_role_arn)
        .args(["--lease-table", "app"])
        .env_clear()
        .env("AWS_REGION", "us-east-1")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let command = doc["commands"][0]["command"].as_str().unwrap();
    assert!(
        command.starts_with(&format!(
            "aws dynamodb put-resource-policy --region {}",
            OWNER.1
        )),
        "{command}"
    );
    stack
        .source_dynamodb(OWNER.0, OWNER.1)
        .await
        .put_resource_policy()
        .resource_arn(&arn)
        .policy(doc["stream_resource_policy"].to_string())
        .send()
        .await
        .unwrap();
    let out = tokio::process::Command::new(KCLD)
        .args(["doctor", "--json"])
        .env_clear()
        .envs(&env)
        .output()
        .await
        .unwrap();
    let checks: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    for name in [
        "DescribeStream",
        "DescribeStream (shards)",
        "GetShardIterator",
        "GetRecords",
    ] {
        let check = checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("no {name}: {checks:#?}"));
        assert_eq!(check["ok"], true, "{check:#}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beside_a_kinesis_stream_with_the_adapters_multi_stream_leases() {
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: i64| AttributeValue::N(v.to_string());
    let stack = Stack::from_env().unwrap();
    let app = unique_name("ddbmulti-app");
    stack.create_table(&app, "leaseKey").await.unwrap();
    // Two tables' streams and a Kinesis stream, one application.
    let resumed_table = unique_name("resumed");
    let resumed = stack
        .create_table_stream_in(OWNER.0, OWNER.1, &resumed_table)
        .await
        .unwrap();
    let fresh_table = unique_name("fresh");
    let fresh = stack
        .create_table_stream_in("333333333333", "us-east-1", &fresh_table)
        .await
        .unwrap();
    let kinesis = stack
        .create_stream_in("444444444444", "us-east-1", &unique_name("beside"), 1)
        .await
        .unwrap();

    // The first table's changes; the KCL's DynamoDB Streams adapter (2.x,
    // multi-stream mode) checkpointed half of them before it stopped.
    let first = change_items(&stack, &resumed_table, "r", 20).await;
    let probe = {
        let mut env = stack.consumer_env();
        env.insert("KCLD_APPLICATION_NAME".into(), unique_name("probe"));
        env.insert("KCLD_STREAM_ARN".into(), resumed.clone());
        env.insert("KCLD_INITIAL_POSITION".into(), "TRIM_HORIZON".into());
        env.insert("KCLD_LEASE__STORE".into(), "memory".into());
        let mut k = Kcld::spawn(KCLD, &["run"], &env).unwrap();
        let lines = k.take_lines(count(&first), Duration::from_secs(60)).await;
        k.stop_cleanly(Duration::from_secs(25)).await;
        events(&lines)
    };
    assert_eq!(probe.len(), count(&first));
    let half = probe.len() / 2;
    let checkpoint = probe[half - 1].2.clone();
    let shards = stack.table_stream_shards(&resumed).await.unwrap();
    let [shard] = shards.as_slice() else {
        panic!("one shard expected: {shards:?}");
    };
    let shard = shard.clone();
    let label = resumed.rsplit("/stream/").next().unwrap().replace(':', "_");
    let stream_id = format!(
        "{}:{}${}${}${}:1",
        OWNER.0, OWNER.1, OWNER.0, resumed_table, label
    );
    stack
        .consumer_dynamodb()
        .await
        .put_item()
        .table_name(&app)
        .set_item(Some(HashMap::from([
            ("leaseKey".into(), s(&format!("{stream_id}:{shard}"))),
            ("leaseCounter".into(), n(31)),
            ("leaseOwner".into(), s("adapter-worker-gone")),
            ("checkpoint".into(), s(&checkpoint)),
            ("checkpointSubSequenceNumber".into(), n(0)),
            ("ownerSwitchesSinceCheckpoint".into(), n(0)),
            ("startingHashKey".into(), s("0")),
            ("endingHashKey".into(), s("1")),
            ("streamName".into(), s(&stream_id)),
            ("shardId".into(), s(&shard)),
        ])))
        .send()
        .await
        .unwrap();
    let second =
        change_items_of(&stack, ("333333333333", "us-east-1"), &fresh_table, "f", 10).await;
    stack
        .put_records(&kinesis, &[("k".to_owned(), b"kinesis record".to_vec())])
        .await
        .unwrap();

    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "application_name = \"{app}\"\ninitial_position = \"TRIM_HORIZON\"\n\
             [polling]\nidle_time_between_reads_ms = 200\n[lease]\nfailover_time_ms = 3000\n\
             [[streams]]\narn = \"{resumed}\"\n[[streams]]\narn = \"{fresh}\"\n\
             [[streams]]\narn = \"{kinesis}\"\n"
        ),
    )
    .unwrap();
    let mut env = stack.consumer_env();
    env.insert("KCLD_WORKER_ID".into(), "kcld-1".into());
    let mut kcld = Kcld::spawn(
        KCLD,
        &["--config", config.path().to_str().unwrap(), "run"],
        &env,
    )
    .unwrap();
    let expected = probe.len() - half + count(&second) + 1;
    let lines = kcld.take_lines(expected, Duration::from_secs(90)).await;
    assert_eq!(lines.len(), expected, "{}", kcld.stderr_text());
    assert!(kcld.drain_for(Duration::from_secs(2)).await.is_empty());
    kcld.stop_cleanly(Duration::from_secs(25)).await;

    // The first table resumed after the adapter's checkpoint; the second
    // from its start; each record names its own stream.
    let mut from_resumed = Vec::new();
    let mut from_fresh = 0;
    let mut from_kinesis = 0;
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        match v["eventSourceARN"].as_str().unwrap() {
            a if a == resumed => {
                from_resumed.push(v["dynamodb"]["SequenceNumber"].as_str().unwrap().to_owned())
            }
            a if a == fresh => from_fresh += 1,
            a if a == kinesis => from_kinesis += 1,
            other => panic!("from {other}: {line}"),
        }
    }
    let after: Vec<String> = probe[half..].iter().map(|e| e.2.clone()).collect();
    assert_eq!(
        from_resumed, after,
        "not resumed right after the adapter's checkpoint"
    );
    assert_eq!(from_fresh, count(&second));
    assert_eq!(from_kinesis, 1);

    // kcld's own lease of the second table has the adapter's key and
    // attributes; the Kinesis stream's the KCL's multi-stream key.
    let items = stack.scan_table(&app).await.unwrap();
    let fresh_label = fresh.rsplit("/stream/").next().unwrap().replace(':', "_");
    let fresh_id = format!("333333333333:us-east-1$333333333333${fresh_table}${fresh_label}:1");
    let item = items
        .iter()
        .find(|i| i["leaseKey"].as_s().unwrap().starts_with(&fresh_id))
        .unwrap_or_else(|| panic!("no {fresh_id} lease: {items:#?}"));
    assert_eq!(item["streamName"].as_s().unwrap(), &fresh_id);
    assert_eq!(item["shardId"].as_s().unwrap(), &shard);
    assert_eq!(item["startingHashKey"].as_s().unwrap(), "0");
    assert_eq!(item["endingHashKey"].as_s().unwrap(), "1");
    assert_eq!(items.len(), 3, "{items:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_roll_overs_keep_each_items_changes_in_order_parent_before_child() {
    let stack = Stack::from_env().unwrap();
    let table = unique_name("rolling");
    let arn = stack
        .create_table_stream_in(OWNER.0, OWNER.1, &table)
        .await
        .unwrap();
    let app = unique_name("rolling-app");
    let mut env = kcld_env(&stack, &arn, &app);
    env.insert("KCLD_LEASE__SHARD_SYNC_INTERVAL_MS".into(), "1000".into());
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let ddb = stack.source_dynamodb(OWNER.0, OWNER.1).await;
    // A thousand items, whose changes end up spread over three shards.
    let mut expected = change_items(&stack, &table, "k", 1_000).await;
    let mut lines = kcld
        .take_lines(count(&expected), Duration::from_secs(120))
        .await;
    assert_eq!(lines.len(), count(&expected), "{}", kcld.stderr_text());

    // Twice: the open shard rolls over, then every item left changes again
    // (the new version lands in the child shard).
    let mut closed = Vec::new();
    let mut open = String::new();
    for version in 3..=4 {
        let (parent, _, child) = stack.rollover_table_stream(&arn).await.unwrap();
        closed.push(parent);
        open = child;
        let alive: Vec<String> = expected
            .iter()
            .filter(|(_, changes)| changes.last() != Some(&"REMOVE"))
            .map(|(id, _)| id.clone())
            .collect();
        let updates = alive.iter().map(|id| {
            let update = ddb
                .update_item()
                .table_name(&table)
                .key("id", AttributeValue::S(id.clone()))
                .update_expression("SET v = :v")
                .expression_attribute_values(":v", AttributeValue::N(version.to_string()));
            async move {
                update.send().await.unwrap();
            }
        });
        all(updates.collect()).await;
        for id in &alive {
            expected.get_mut(id).unwrap().push("MODIFY");
        }
        let more = kcld.take_lines(alive.len(), Duration::from_secs(120)).await;
        assert_eq!(more.len(), alive.len(), "{}", kcld.stderr_text());
        lines.extend(more);
    }
    assert!(kcld.drain_for(Duration::from_secs(2)).await.is_empty());

    // Each item's changes once and in order: its versions only go up.
    let got = events(&lines);
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    let mut sequences = HashSet::new();
    for (key, _, seq, v) in &got {
        assert!(sequences.insert(seq.clone()), "twice: {v}");
        if let Some(n) = v["dynamodb"]["NewImage"]["v"]["N"].as_str() {
            versions
                .entry(key.clone())
                .or_default()
                .push(n.parse().unwrap());
        }
    }
    assert_eq!(changes_per_key(&got), expected);
    for (key, seen) in &versions {
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{key}: {seen:?}");
    }
    // Both closed shards were read to their end (SHARD_END, or their lease
    // removed once the child went on); the last open shard is being read.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let checkpoints = stack.checkpoints(&app).await;
        let finished = closed
            .iter()
            .all(|shard| checkpoints.get(shard).is_none_or(|(c, _)| c == "SHARD_END"));
        let reading = checkpoints
            .get(&open)
            .is_some_and(|(c, _)| c.chars().all(|d| d.is_ascii_digit()));
        if finished && reading {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{checkpoints:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}
