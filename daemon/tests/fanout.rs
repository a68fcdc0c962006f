//! Enhanced fan-out against the local stack: the producer account registers
//! a consumer on its stream and shares it; kcld in the consumer account
//! reads every shard through it with SubscribeToShard.
//!
//! The tests run one at a time: each holds one subscription per shard, and
//! the emulator sends about one event per second per subscription.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kcld_checkpoint::SequenceNumber;
use kcld_testkit::{
    doctor_checks, metric_sum, sample_records, unique_name, Delivered, Kcld, Stack,
};
use tokio::sync::Mutex;

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");
static SERIAL: Mutex<()> = Mutex::const_new(());

fn env(stack: &Stack, arn: &str, app: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env = stack.consumer_env();
    env.insert("KCLD_APPLICATION_NAME".into(), app.into());
    env.insert("KCLD_STREAM_ARN".into(), arn.into());
    env.insert("KCLD_INITIAL_POSITION".into(), "TRIM_HORIZON".into());
    env.insert("KCLD_LEASE__FAILOVER_TIME_MS".into(), "3000".into());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// A shared stream with `shards` shards and a consumer registered and
/// shared by its owner: (stream ARN, consumer ARN).
async fn shared_stream_and_consumer(stack: &Stack, shards: i32) -> (String, String) {
    let arn = stack
        .create_shared_stream(&unique_name("efo"), shards)
        .await
        .unwrap();
    let consumer = stack
        .register_shared_consumer(&arn, &unique_name("shared-efo"))
        .await
        .unwrap();
    (arn, consumer)
}

/// Checks that `lines` hold every record of `placed` once, with its bytes
/// and key, in sequence order per shard. Returns the records per shard.
fn check_once_in_order(
    lines: &[String],
    placed: &[(String, String)],
    records: &[(String, Vec<u8>)],
) -> HashMap<String, usize> {
    let expected: HashMap<(String, String), &(String, Vec<u8>)> =
        placed.iter().cloned().zip(records.iter()).collect();
    let mut seen = HashSet::new();
    let mut last: HashMap<String, SequenceNumber> = HashMap::new();
    let mut per_shard = HashMap::new();
    for line in lines {
        let d = Delivered::parse(line).unwrap();
        let key = (d.shard_id.clone(), d.sequence_number.clone());
        let (pk, data) = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected record {key:?}"));
        assert_eq!(&d.partition_key, pk);
        assert_eq!(&d.data, data);
        assert!(seen.insert(key), "delivered twice: {line}");
        let seq: SequenceNumber = d.sequence_number.parse().unwrap();
        let prev = last.insert(d.shard_id.clone(), seq.clone());
        assert!(
            prev.is_none_or(|p| p < seq),
            "out of order on {}",
            d.shard_id
        );
        *per_shard.entry(d.shard_id).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), placed.len(), "every record delivered");
    per_shard
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_every_record_once_in_order_through_a_shared_consumer() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let (arn, consumer) = shared_stream_and_consumer(&stack, 4).await;
    let records = sample_records(1000, 41);
    let placed = stack.put_records(&arn, &records).await.unwrap();

    let mut kcld = Kcld::spawn(
        KCLD,
        &["run"],
        &env(
            &stack,
            &arn,
            &unique_name("app"),
            &[("KCLD_CONSUMER_ARN", &consumer)],
        ),
    )
    .unwrap();
    let lines = kcld.take_lines(1000, Duration::from_secs(90)).await;
    assert_eq!(lines.len(), 1000, "stderr:\n{}", kcld.stderr_text());
    let extra = kcld.drain_for(Duration::from_secs(3)).await;
    assert!(extra.is_empty(), "records after the 1000th: {extra:?}");
    let per_shard = check_once_in_order(&lines, &placed, &records);
    assert_eq!(per_shard.len(), 4, "records came from every shard");
    // No event of an open shard was taken for its end.
    assert!(
        !kcld.stderr_text().contains("shard ended"),
        "{}",
        kcld.stderr_text()
    );

    // Read through fan-out, not polling: SubscribeToShard on every shard,
    // no GetRecords for reading.
    let ops = kcld.ops_addr(Duration::from_secs(5)).await.unwrap();
    let (_, page) = kcld_testkit::http_get(ops, "/metrics").await.unwrap();
    let (calls, series) = metric_sum(&page, "kcld_subscribetoshard_calls_total");
    assert!(calls >= 4.0 && series == 4, "{page}");
    assert_eq!(metric_sum(&page, "kcld_getrecords_calls_total").0, 0.0);
    let (delivered, _) = metric_sum(&page, "kcld_records_delivered_total");
    assert_eq!(delivered, 1000.0);

    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

/// Runs kcld until it exits by itself: (exit code, every `kcld: error:`
/// line, the whole stderr).
async fn run_to_error(env: &HashMap<String, String>) -> (Option<i32>, Vec<String>, String) {
    let kcld = Kcld::spawn(KCLD, &["run"], env).unwrap();
    let exited = kcld.exited(Duration::from_secs(60)).await.unwrap();
    (exited.code, exited.errors, exited.stderr)
}

/// kcld reading through `consumer` with every Kinesis connection through a
/// relay the test can cut or stall, and one more setting.
async fn through_relay(
    stack: &Stack,
    arn: &str,
    consumer: &str,
    setting: (&str, &str),
) -> (kcld_testkit::cut::CutProxy, Kcld) {
    let proxy = kcld_testkit::cut::CutProxy::start(stack.kinesis_addr())
        .await
        .unwrap();
    let mut e = env(
        stack,
        arn,
        &unique_name("app"),
        &[("KCLD_CONSUMER_ARN", consumer), setting],
    );
    e.insert("AWS_ENDPOINT_URL_KINESIS".into(), proxy.url());
    let kcld = Kcld::spawn(KCLD, &["run"], &e).unwrap();
    (proxy, kcld)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_and_cut_subscriptions_lose_and_duplicate_nothing() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let (arn, consumer) = shared_stream_and_consumer(&stack, 2).await;
    // Every subscription is renewed after a second, the shortest allowed,
    // so renewals happen between most events.
    let (proxy, mut kcld) = through_relay(
        &stack,
        &arn,
        &consumer,
        ("KCLD_FAN_OUT__SUBSCRIPTION_MAX_AGE_MS", "1000"),
    )
    .await;

    // Records arrive in waves while subscriptions are renewed, and every
    // connection is cut (mid-stream) between the waves.
    let mut records = Vec::new();
    let mut placed = Vec::new();
    let mut lines = Vec::new();
    for wave in 0..6 {
        let batch: Vec<(String, Vec<u8>)> = sample_records(100, 13)
            .into_iter()
            .map(|(k, mut d)| {
                d.extend_from_slice(format!(" wave {wave}").as_bytes());
                (k, d)
            })
            .collect();
        placed.extend(stack.put_records(&arn, &batch).await.unwrap());
        records.extend(batch);
        lines.extend(kcld.take_lines(100, Duration::from_secs(60)).await);
        proxy.cut_all();
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    lines.extend(kcld.drain_for(Duration::from_secs(4)).await);
    assert_eq!(lines.len(), 600, "stderr:\n{}", kcld.stderr_text());
    check_once_in_order(&lines, &placed, &records);

    let ops = kcld.ops_addr(Duration::from_secs(5)).await.unwrap();
    let (_, page) = kcld_testkit::http_get(ops, "/metrics").await.unwrap();
    let (calls, _) = metric_sum(&page, "kcld_subscribetoshard_calls_total");
    assert!(
        calls >= 2.0 * 6.0,
        "subscriptions were renewed and cut: {calls} SubscribeToShard calls"
    );
    assert!(proxy.connections() > 1);
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_with_one_consumer_arn_split_the_shards() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let (arn, consumer) = shared_stream_and_consumer(&stack, 4).await;
    let app = unique_name("app");
    let mut instances = Vec::new();
    for worker in ["worker-a", "worker-b"] {
        instances.push(
            Kcld::spawn(
                KCLD,
                &["run"],
                &env(
                    &stack,
                    &arn,
                    &app,
                    &[("KCLD_CONSUMER_ARN", &consumer), ("KCLD_WORKER_ID", worker)],
                ),
            )
            .unwrap(),
        );
    }
    // Both hold two leases each once balanced.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let owners = stack.lease_owners(&app).await.unwrap_or_default();
        let count = |w: &str| owners.values().filter(|o| o.as_deref() == Some(w)).count();
        if owners.len() == 4 && count("worker-a") == 2 && count("worker-b") == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leases not split 2/2: {owners:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Records arrive once the shards are split, so both instances read.
    let records = sample_records(800, 29);
    let placed = stack.put_records(&arn, &records).await.unwrap();

    let mut lines = Vec::new();
    let mut shards_of = Vec::new();
    for kcld in &mut instances {
        let got = kcld.drain_for(Duration::from_secs(8)).await;
        shards_of.push(
            got.iter()
                .map(|l| Delivered::parse(l).unwrap().shard_id)
                .collect::<HashSet<_>>(),
        );
        lines.extend(got);
    }
    let tail_a = instances[0].drain_for(Duration::from_secs(2)).await;
    let tail_b = instances[1].drain_for(Duration::from_secs(1)).await;
    lines.extend(tail_a);
    lines.extend(tail_b);
    assert_eq!(
        lines.len(),
        800,
        "stderr a:\n{}\nstderr b:\n{}",
        instances[0].stderr_text(),
        instances[1].stderr_text()
    );
    let per_shard = check_once_in_order(&lines, &placed, &records);
    assert_eq!(per_shard.len(), 4);
    assert!(
        !shards_of[0].is_empty() && !shards_of[1].is_empty(),
        "both instances read: {shards_of:?}"
    );
    for kcld in instances {
        kcld.stop_cleanly(Duration::from_secs(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_consumer_arn_is_one_clear_error() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("efo"), 1)
        .await
        .unwrap();

    // Well formed, on this stream, but never registered.
    let missing = format!("{arn}/consumer/never-registered:1795329156");
    let (code, errors, text) = run_to_error(&env(
        &stack,
        &arn,
        &unique_name("app"),
        &[("KCLD_CONSUMER_ARN", &missing)],
    ))
    .await;
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(errors.len(), 1, "{text}");
    assert!(
        errors[0].contains(&missing)
            && errors[0].contains("not found")
            && errors[0].contains("consumer_arn"),
        "{}",
        errors[0]
    );
    assert!(!text.contains("panicked"), "{text}");

    // A consumer of another stream: a configuration error before any call.
    let other = format!(
        "arn:aws:kinesis:us-east-1:{}:stream/other/consumer/c:1",
        stack.producer_account
    );
    let (code, errors, text) = run_to_error(&env(
        &stack,
        &arn,
        &unique_name("app"),
        &[("KCLD_CONSUMER_ARN", &other)],
    ))
    .await;
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(errors.len(), 1, "{text}");
    assert!(
        errors[0].contains("consumer_arn") && errors[0].contains("belongs to stream"),
        "{}",
        errors[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_name_is_registered_only_on_a_stream_of_this_account() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let sts = kcld_testkit::sts::Identity::start().await.unwrap();

    // The producer's stream: kcld (the consumer account) refuses to
    // register, explains what the owner does, and registers nothing.
    let shared = stack
        .create_shared_stream(&unique_name("efo"), 1)
        .await
        .unwrap();
    let mut e = env(
        &stack,
        &shared,
        &unique_name("app"),
        &[("KCLD_CONSUMER_NAME", "kcld-efo")],
    );
    e.insert("AWS_ENDPOINT_URL_STS".into(), sts.url());
    let (code, errors, text) = run_to_error(&e).await;
    assert_eq!(code, Some(2), "{text}");
    assert_eq!(errors.len(), 1, "{text}");
    let error = &errors[0];
    for needed in [
        "consumer_name",
        "only the stream's own account",
        "register-stream-consumer",
        "kinesis:SubscribeToShard",
        "kinesis:DescribeStreamConsumer",
        &stack.consumer_account,
        "consumer_arn",
    ] {
        assert!(error.contains(needed), "{needed:?} missing from: {error}");
    }
    let consumers = stack
        .producer_kinesis()
        .await
        .list_stream_consumers()
        .stream_arn(&shared)
        .send()
        .await
        .unwrap();
    assert!(consumers.consumers().is_empty(), "nothing was registered");

    // A stream of the consumer's own account: registered, waited for, read.
    let name = unique_name("own");
    let kinesis = stack.consumer_kinesis().await;
    kinesis
        .create_stream()
        .stream_name(&name)
        .shard_count(2)
        .send()
        .await
        .unwrap();
    let own = format!(
        "arn:aws:kinesis:{}:{}:stream/{name}",
        kcld_testkit::REGION,
        stack.consumer_account
    );
    for _ in 0..100 {
        let d = kinesis
            .describe_stream_summary()
            .stream_arn(&own)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut e = env(
        &stack,
        &own,
        &unique_name("app"),
        &[("KCLD_CONSUMER_NAME", "kcld-efo")],
    );
    e.insert("AWS_ENDPOINT_URL_STS".into(), sts.url());
    let mut kcld = Kcld::spawn(KCLD, &["run"], &e).unwrap();
    let records: Vec<(String, Vec<u8>)> = sample_records(50, 7);
    let mut entries = Vec::new();
    for (k, d) in &records {
        entries.push(
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key(k)
                .data(aws_sdk_kinesis::primitives::Blob::new(d.clone()))
                .build()
                .unwrap(),
        );
    }
    kinesis
        .put_records()
        .stream_arn(&own)
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    let lines = kcld.take_lines(50, Duration::from_secs(60)).await;
    assert_eq!(lines.len(), 50, "stderr:\n{}", kcld.stderr_text());
    let got: HashSet<Vec<u8>> = lines
        .iter()
        .map(|l| Delivered::parse(l).unwrap().data)
        .collect();
    assert_eq!(got, records.iter().map(|(_, d)| d.clone()).collect());
    let log = kcld.stderr_text();
    assert!(
        log.contains("registered the enhanced fan-out consumer"),
        "{log}"
    );
    let consumers = kinesis
        .list_stream_consumers()
        .stream_arn(&own)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = consumers
        .consumers()
        .iter()
        .map(|c| c.consumer_name())
        .collect();
    assert_eq!(names, ["kcld-efo"]);
    kcld.stop_cleanly(Duration::from_secs(25)).await;

    // A second start finds the consumer and registers nothing new.
    let mut kcld = Kcld::spawn(KCLD, &["run"], &e).unwrap();
    let _ = kcld.take_lines(50, Duration::from_secs(30)).await;
    assert!(!kcld
        .stderr_text()
        .contains("registered the enhanced fan-out consumer"));
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

/// Shard end over fan-out against the emulator. The emulator never sends
/// the service's end-of-shard event (ChildShards, no continuation) over
/// SubscribeToShard: it keeps a closed parent's subscription open. So this
/// test shows the path that does not depend on that event: a caught-up
/// reader asks GetRecords whether the shard is closed and read to its end
/// (`fan_out.end_check_interval_ms`), then the shard ends exactly as in
/// polling: SHARD_END, children leased after their parents. The event
/// itself is covered by unit tests in `retrieval::fanout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_under_fan_out_lose_nothing_and_keep_key_order() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let (arn, consumer) = shared_stream_and_consumer(&stack, 3).await;
    let app = unique_name("app");
    let mut kcld = Kcld::spawn(
        KCLD,
        &["run"],
        &env(
            &stack,
            &arn,
            &app,
            &[
                ("KCLD_CONSUMER_ARN", &consumer),
                ("KCLD_FAN_OUT__END_CHECK_INTERVAL_MS", "1000"),
                ("KCLD_LEASE__SHARD_SYNC_INTERVAL_MS", "2000"),
            ],
        ),
    )
    .unwrap();

    // Records "key:n", n counting up per key, in waves around the reshards.
    let keys = 24;
    let mut next = vec![0usize; keys];
    let mut wave = |size: usize| -> Vec<(String, Vec<u8>)> {
        (0..size)
            .map(|i| {
                let key = i % keys;
                next[key] += 1;
                (
                    format!("pk-{key}"),
                    format!("pk-{key}:{}", next[key]).into_bytes(),
                )
            })
            .collect()
    };
    let producer = stack.producer_kinesis().await;
    let mut all = Vec::new();
    let w = wave(150);
    stack.put_records(&arn, &w).await.unwrap();
    all.extend(w);
    let mut lines = kcld.take_lines(150, Duration::from_secs(60)).await;

    let shards = producer
        .list_shards()
        .stream_arn(&arn)
        .send()
        .await
        .unwrap()
        .shards
        .unwrap();
    let range = shards[0].hash_key_range().unwrap();
    let start: u128 = range.starting_hash_key().parse().unwrap();
    let end: u128 = range.ending_hash_key().parse().unwrap();
    producer
        .split_shard()
        .stream_arn(&arn)
        .shard_to_split(shards[0].shard_id())
        .new_starting_hash_key((start + (end - start) / 2).to_string())
        .send()
        .await
        .unwrap();
    let w = wave(150);
    stack.put_records(&arn, &w).await.unwrap();
    all.extend(w);
    tokio::time::sleep(Duration::from_millis(200)).await;
    producer
        .merge_shards()
        .stream_arn(&arn)
        .shard_to_merge(shards[1].shard_id())
        .adjacent_shard_to_merge(shards[2].shard_id())
        .send()
        .await
        .unwrap();
    let w = wave(150);
    stack.put_records(&arn, &w).await.unwrap();
    all.extend(w);

    lines.extend(kcld.take_lines(300, Duration::from_secs(90)).await);
    lines.extend(kcld.drain_for(Duration::from_secs(3)).await);
    let got: Vec<String> = lines
        .iter()
        .map(|l| String::from_utf8(Delivered::parse(l).unwrap().data).unwrap())
        .collect();
    assert_eq!(got.len(), all.len(), "stderr:\n{}", kcld.stderr_text());
    let want: HashSet<String> = all
        .iter()
        .map(|(_, d)| String::from_utf8(d.clone()).unwrap())
        .collect();
    assert_eq!(got.iter().cloned().collect::<HashSet<_>>(), want);
    // Per key, in the order put, across parent and child shards.
    let mut last: HashMap<String, usize> = HashMap::new();
    for r in &got {
        let (key, n) = r.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        let prev = last.insert(key.to_owned(), n).unwrap_or(0);
        assert!(n > prev, "{key}: {n} after {prev}");
    }

    // The parents ended with SHARD_END and name their children.
    let items = stack.scan_table(&app).await.unwrap();
    let ended = items
        .iter()
        .filter(|i| i["checkpoint"].as_s().unwrap() == "SHARD_END")
        .count();
    assert_eq!(ended, 3, "split parent and both merged parents ended");
    let children = items
        .iter()
        .filter(|i| i.contains_key("parentShardId"))
        .count();
    assert_eq!(children, 3, "two split children and one merged child");
    assert!(kcld.stderr_text().contains("read to its end"));
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

/// TLS with HTTP/2, the production path: every Kinesis call goes through a
/// TLS endpoint that speaks only HTTP/2 (ALPN `h2`, the connection preface
/// checked), with a certificate from the local stack's generated CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_over_tls_with_http2_trusting_the_generated_ca() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let (arn, consumer) = shared_stream_and_consumer(&stack, 2).await;
    let tls_dir = stack.ca_file.parent().unwrap();
    let upstream = stack.kinesis_addr();
    let relay = kcld_testkit::h2relay::H2Relay::start(
        &tls_dir.join("server.pem"),
        &tls_dir.join("server.key"),
        upstream,
    )
    .await
    .unwrap();
    let records = sample_records(200, 11);
    let placed = stack.put_records(&arn, &records).await.unwrap();

    let mut e = env(
        &stack,
        &arn,
        &unique_name("app"),
        &[("KCLD_CONSUMER_ARN", &consumer)],
    );
    e.insert("AWS_ENDPOINT_URL_KINESIS".into(), relay.url());
    e.insert(
        "KCLD_AWS__CA_FILE".into(),
        stack.ca_file.display().to_string(),
    );
    let mut kcld = Kcld::spawn(KCLD, &["run"], &e).unwrap();
    let lines = kcld.take_lines(200, Duration::from_secs(60)).await;
    assert_eq!(lines.len(), 200, "stderr:\n{}", kcld.stderr_text());
    check_once_in_order(&lines, &placed, &records);
    assert!(relay.http2_connections() >= 1);
    assert_eq!(
        relay.refused_connections(),
        0,
        "every connection spoke HTTP/2"
    );
    // The subscriptions' connection bounds each stream's window (what a
    // subscription waiting for its sink can hold) and its connection
    // window never binds (one slow shard stalls no other).
    let windows = relay.windows();
    assert!(
        windows.contains(&kcld_testkit::h2relay::Windows {
            stream: Some(kcld::aws::STREAM_WINDOW),
            connection: Some((1 << 31) - 1 - 65_535),
        }),
        "{windows:?}"
    );
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_the_consumer_and_names_a_missing_fan_out_action() {
    use kcld_testkit::fault::{Fault, FaultProxy};
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let sts = kcld_testkit::sts::Identity::start().await.unwrap();
    let (arn, consumer) = shared_stream_and_consumer(&stack, 1).await;
    let mut vars = env(
        &stack,
        &arn,
        &unique_name("app"),
        &[("KCLD_CONSUMER_ARN", &consumer)],
    );
    vars.insert("AWS_ENDPOINT_URL_STS".into(), sts.url());

    let mut ok = Kcld::spawn(KCLD, &["doctor", "--json"], &vars).unwrap();
    let out = ok.drain_for(Duration::from_secs(30)).await.join("\n");
    assert_eq!(
        ok.wait(Duration::from_secs(30)).await.unwrap().code(),
        Some(0),
        "{out}"
    );
    let checks: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    for name in [
        "caller identity",
        "DescribeStreamConsumer",
        "SubscribeToShard",
    ] {
        let check = checks
            .iter()
            .find(|c| c["check"] == name)
            .unwrap_or_else(|| panic!("{name}: {out}"));
        assert_eq!(check["ok"], true, "{check}");
    }

    // The owner's consumer policy forgot SubscribeToShard.
    let proxy = FaultProxy::start(&stack.kinesis_endpoint).await.unwrap();
    proxy.fail(
        "Kinesis_20131202.SubscribeToShard",
        Fault::access_denied("kinesis:SubscribeToShard"),
    );
    vars.insert("AWS_ENDPOINT_URL_KINESIS".into(), proxy.url());
    let checks = doctor_checks(KCLD, &vars).await.unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| c["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "only SubscribeToShard fails: {failed:?}");
    assert_eq!(failed[0]["check"], "SubscribeToShard");
    let fix = &failed[0]["fix"];
    assert_eq!(fix["missing_action"], "kinesis:SubscribeToShard");
    assert!(
        fix["fixed_by"]
            .as_str()
            .unwrap()
            .contains(&stack.producer_account),
        "{fix}"
    );
    assert!(
        fix["fixed_by"]
            .as_str()
            .unwrap()
            .contains("consumer's resource policy"),
        "{fix}"
    );
    assert_eq!(fix["statement"]["Resource"], consumer.as_str());
    assert!(fix["statement"]["Action"]
        .to_string()
        .contains("kinesis:SubscribeToShard"));

    // `kcld run` with the same gap stops with one line that says the same.
    let (code, errors, text) = run_to_error(&vars).await;
    assert_eq!(code, Some(1), "{text}");
    assert_eq!(errors.len(), 1, "{text}");
    assert!(
        errors[0].contains("kinesis:SubscribeToShard")
            && errors[0].contains("consumer's resource policy"),
        "{}",
        errors[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscription_is_restarted_without_loss() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let (arn, consumer) = shared_stream_and_consumer(&stack, 1).await;
    let (proxy, mut kcld) = through_relay(
        &stack,
        &arn,
        &consumer,
        ("KCLD_FAN_OUT__STALL_TIMEOUT_MS", "2000"),
    )
    .await;
    let first = sample_records(100, 5);
    let mut placed = stack.put_records(&arn, &first).await.unwrap();
    let mut lines = kcld.take_lines(100, Duration::from_secs(60)).await;
    assert_eq!(lines.len(), 100, "stderr:\n{}", kcld.stderr_text());

    // The path goes silent: the subscription's connection stays open but
    // carries nothing. kcld notices after the stall timeout, subscribes
    // again on a new connection, and resumes after the last event.
    proxy.stall_all();
    let second: Vec<(String, Vec<u8>)> = sample_records(100, 5)
        .into_iter()
        .map(|(k, mut d)| {
            d.extend_from_slice(b" after the stall");
            (k, d)
        })
        .collect();
    placed.extend(stack.put_records(&arn, &second).await.unwrap());
    // The emulator still counts the silent connection's subscription as
    // active, so kcld's new one is refused with ResourceInUse, which it
    // waits out; the silent connection then dies (as a dead path's does).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !kcld.stderr_text().contains("no event for") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.cut_all();
    lines.extend(kcld.take_lines(100, Duration::from_secs(60)).await);
    lines.extend(kcld.drain_for(Duration::from_secs(2)).await);
    assert_eq!(lines.len(), 200, "stderr:\n{}", kcld.stderr_text());
    let records: Vec<_> = first.into_iter().chain(second).collect();
    check_once_in_order(&lines, &placed, &records);
    assert!(
        kcld.stderr_text().contains("no event for"),
        "{}",
        kcld.stderr_text()
    );
    let ops = kcld.ops_addr(Duration::from_secs(5)).await.unwrap();
    let (_, page) = kcld_testkit::http_get(ops, "/metrics").await.unwrap();
    assert!(
        metric_sum(&page, "kcld_subscription_stalls_total").0 >= 1.0,
        "{page}"
    );
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_subscribed_elsewhere_is_waited_for() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let (arn, consumer) = shared_stream_and_consumer(&stack, 1).await;
    let shard = "shardId-000000000000";
    // Another reader holds the shard's subscription for this consumer,
    // through a connection the test can end.
    let upstream = stack.kinesis_addr();
    let proxy = kcld_testkit::cut::CutProxy::start(upstream).await.unwrap();
    let mut through_proxy = stack.clone();
    through_proxy.kinesis_endpoint = proxy.url();
    let other = through_proxy.consumer_kinesis().await;
    let out = other
        .subscribe_to_shard()
        .consumer_arn(&consumer)
        .shard_id(shard)
        .starting_position(
            aws_sdk_kinesis::types::StartingPosition::builder()
                .r#type(aws_sdk_kinesis::types::ShardIteratorType::Latest)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let mut held = out.event_stream;
    held.recv().await.unwrap();

    let mut kcld = Kcld::spawn(
        KCLD,
        &["run"],
        &env(
            &stack,
            &arn,
            &unique_name("app"),
            &[("KCLD_CONSUMER_ARN", &consumer)],
        ),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !kcld
        .stderr_text()
        .contains("another subscription to this shard is still open")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "kcld did not wait for the other subscription:\n{}",
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kcld.is_running(), "kcld keeps running while it waits");
    // The other reader goes away; its subscription ends with its connection.
    drop(held);
    proxy.cut_all();

    let records = sample_records(50, 3);
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let lines = kcld.take_lines(50, Duration::from_secs(60)).await;
    check_once_in_order(&lines, &placed, &records);
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

/// A sink that keeps every record's data and, each time the records
/// delivered reach the next of `holds`, stops taking records until the
/// test releases it.
struct HoldingSink {
    seen: std::sync::Mutex<Vec<Vec<u8>>>,
    holds: std::sync::Mutex<Vec<usize>>,
    holding: tokio::sync::watch::Sender<usize>,
    release: tokio::sync::Semaphore,
}

#[async_trait::async_trait]
impl kcld::sink::Sink for HoldingSink {
    async fn deliver(
        &self,
        batch: &kcld::record::Batch,
        _stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(), kcld::sink::SinkError> {
        let total = {
            let mut seen = self.seen.lock().unwrap();
            seen.extend(batch.records.iter().map(|r| r.data.to_vec()));
            seen.len()
        };
        let hold = {
            let mut holds = self.holds.lock().unwrap();
            let due = holds.first().is_some_and(|h| total >= *h);
            if due {
                holds.remove(0);
            }
            due
        };
        if hold {
            self.holding.send_modify(|n| *n += 1);
            self.release.acquire().await.unwrap().forget();
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_cut_inside_a_large_event_resume_after_the_last_record_handed_on() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let (arn, consumer_arn) = shared_stream_and_consumer(&stack, 1).await;
    // A backlog the emulator sends as one event of about 4 MB of JSON,
    // which kcld hands on in runs of about 64 KiB as it arrives.
    let records: Vec<(String, Vec<u8>)> = (0..3_000)
        .map(|i| {
            let mut data = format!("record {i:05} ").into_bytes();
            data.resize(1024, b'a' + (i % 26) as u8);
            (format!("key-{}", i % 13), data)
        })
        .collect();
    stack.put_records(&arn, &records).await.unwrap();

    // Responses at 2 MB/s: the event is still arriving when it is cut.
    let proxy = kcld_testkit::cut::CutProxy::throttled(stack.kinesis_addr(), 2_000_000)
        .await
        .unwrap();
    let (holding, mut held) = tokio::sync::watch::channel(0);
    let sink = std::sync::Arc::new(HoldingSink {
        seen: Default::default(),
        holds: std::sync::Mutex::new(vec![300, 1_500]),
        holding,
        release: tokio::sync::Semaphore::new(0),
    });
    let env = stack.consumer_env();
    let credentials = aws_credential_types::Credentials::new(
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
        None,
        None,
        "test",
    );
    let consumer = kcld::Consumer::builder(&arn)
        .application_name(unique_name("app"))
        .initial_position("TRIM_HORIZON")
        .option("consumer_arn", &consumer_arn)
        .option("aws.kinesis_endpoint", proxy.url())
        .option("aws.dynamodb_endpoint", &env["AWS_ENDPOINT_URL_DYNAMODB"])
        .credentials(aws_credential_types::provider::SharedCredentialsProvider::new(credentials))
        .sink(sink.clone())
        .build()
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));

    // Twice: the sink holds a batch after 300 (then 1,500) records, so kcld
    // stops reading the event after a run or two of read-ahead; its
    // connection is cut there, inside the event, and the sink released.
    for hold in 1..=2 {
        tokio::time::timeout(Duration::from_secs(60), held.wait_for(|n| *n >= hold))
            .await
            .expect("the sink reached its hold")
            .unwrap();
        proxy.cut_all();
        tokio::time::sleep(Duration::from_millis(300)).await;
        sink.release.add_permits(1);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while sink.seen.lock().unwrap().len() < records.len() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a repeated record to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("kcld stopped")
        .unwrap()
        .unwrap();

    let seen = sink.seen.lock().unwrap().clone();
    let at = seen
        .iter()
        .zip(&records)
        .position(|(got, (_, want))| got != want);
    assert!(
        at.is_none() && seen.len() == records.len(),
        "every record once, in order: {} delivered, first difference at {at:?}",
        seen.len()
    );
    assert!(
        proxy.connections() >= 3,
        "the subscription's connection was cut twice"
    );
}
