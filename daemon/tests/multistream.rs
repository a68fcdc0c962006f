//! Several streams of several accounts in one daemon (`[[streams]]`): one
//! lease table with the KCL's multi-stream keys, the shards of all streams
//! balanced over the instances together, every record naming its own
//! stream, and a crashed instance's shards of every stream taken over.
//! Run against the local stack (`deploy/local/stack up`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kcld_testkit::fault::{Fault, FaultProxy};
use kcld_testkit::fleet::{self, wait_for_loads as wait_for};
use kcld_testkit::{http_get, unique_name, Delivered, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

/// Three producer accounts, one of them in another region.
const OWNERS: [(&str, &str); 3] = [
    ("111111111111", "us-east-1"),
    ("333333333333", "us-east-1"),
    ("444444444444", "eu-west-1"),
];

/// A configuration file listing `arns` as `[[streams]]`, from TRIM_HORIZON.
fn config_file(app: &str, arns: &[String]) -> tempfile::NamedTempFile {
    let mut text = format!(
        "application_name = \"{app}\"\ninitial_position = \"TRIM_HORIZON\"\n\n[polling]\n\
         idle_time_between_reads_ms = 200\nmax_records = 1000\n\n[lease]\nfailover_time_ms = 5000\n"
    );
    for arn in arns {
        text.push_str(&format!("\n[[streams]]\narn = \"{arn}\"\n"));
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    file
}

fn spawn(stack: &Stack, config: &std::path::Path, worker: &str) -> Kcld {
    let mut env = stack.consumer_env();
    env.insert("KCLD_WORKER_ID".into(), worker.into());
    Kcld::spawn(KCLD, &["--config", config.to_str().unwrap(), "run"], &env).unwrap()
}

/// Reads lines from every instance until every record of `want` arrived.
async fn collect(
    instances: &mut [&mut Kcld],
    want: &HashSet<Vec<u8>>,
    within: Duration,
) -> Vec<Delivered> {
    fleet::collect(instances, want, within)
        .await
        .into_iter()
        .map(|(_, d)| d)
        .collect()
}

/// `count` records for the stream `arn`, each naming it in its data.
fn records_for(arn: &str, tag: &str, count: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| (format!("k{i}"), format!("{arn} {tag} {i}").into_bytes()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_accounts_streams_share_one_table_and_survive_a_kill_9() {
    let stack = Stack::from_env().unwrap();
    let mut arns = Vec::new();
    for (account, region) in OWNERS {
        arns.push(
            stack
                .create_stream_in(account, region, &unique_name("multi"), 4)
                .await
                .unwrap(),
        );
    }
    let app = unique_name("multi-app");
    let config = config_file(&app, &arns);

    let mut before = Vec::new();
    for arn in &arns {
        let records = records_for(arn, "before", 120);
        stack.put_records(arn, &records).await.unwrap();
        before.extend(records);
    }
    let mut a = spawn(&stack, config.path(), "worker-a");
    let mut b = spawn(&stack, config.path(), "worker-b");
    // Twelve shards of three streams, balanced over the two together.
    wait_for(&stack, &app, Duration::from_secs(60), |l| {
        l.get("worker-a") == Some(&6) && l.get("worker-b") == Some(&6)
    })
    .await;

    // The KCL's multi-stream keys, for every shard of every stream.
    let items = stack.scan_table(&app).await.unwrap();
    let mut keyed: HashMap<String, usize> = HashMap::new();
    for item in &items {
        let key = item["leaseKey"].as_s().unwrap();
        let parts: Vec<&str> = key.split(':').collect();
        assert_eq!(parts.len(), 4, "not account:stream:epoch:shard: {key}");
        assert!(parts[2].parse::<u64>().is_ok(), "{key}");
        assert_eq!(
            item["streamName"].as_s().unwrap(),
            &parts[..3].join(":"),
            "streamName of {key}"
        );
        assert_eq!(item["shardId"].as_s().unwrap(), parts[3]);
        *keyed
            .entry(format!("{}:{}", parts[0], parts[1]))
            .or_default() += 1;
    }
    for arn in &arns {
        let (account, name) = account_and_name(arn);
        assert_eq!(
            keyed.get(&format!("{account}:{name}")),
            Some(&4),
            "{keyed:?}"
        );
    }

    // Every record once, each naming its own stream and region.
    let delivered = collect(
        &mut [&mut a, &mut b],
        &before.iter().map(|(_, d)| d.clone()).collect(),
        Duration::from_secs(90),
    )
    .await;
    for d in &delivered {
        let text = String::from_utf8_lossy(&d.data);
        let arn = text.split(' ').next().unwrap();
        assert_eq!(d.event_source_arn, arn, "record {text}");
        assert_eq!(
            d.aws_region,
            arn.split(':').nth(3).unwrap(),
            "record {text}"
        );
    }
    let distinct: HashSet<&Vec<u8>> = delivered.iter().map(|d| &d.data).collect();
    assert_eq!(distinct.len(), delivered.len(), "records delivered twice");

    // A kill -9: the survivor takes the dead one's shards of every stream,
    // and what was put around the kill arrives.
    let mut during = Vec::new();
    for arn in &arns {
        let records = records_for(arn, "during", 60);
        stack.put_records(arn, &records).await.unwrap();
        during.extend(records);
    }
    a.kill9().await;
    let printed_by_a: HashSet<Vec<u8>> = a
        .drain_for(Duration::from_millis(500))
        .await
        .iter()
        .map(|l| Delivered::parse(l).unwrap().data)
        .collect();
    wait_for(&stack, &app, Duration::from_secs(40), |l| {
        l.get("worker-b") == Some(&12)
    })
    .await;
    let want: HashSet<Vec<u8>> = during
        .iter()
        .map(|(_, d)| d.clone())
        .filter(|d| !printed_by_a.contains(d))
        .collect();
    collect(&mut [&mut b], &want, Duration::from_secs(90)).await;

    // The second time round: records put after the takeover arrive too.
    let mut after = Vec::new();
    for arn in &arns {
        let records = records_for(arn, "after", 40);
        stack.put_records(arn, &records).await.unwrap();
        after.extend(records);
    }
    collect(
        &mut [&mut b],
        &after.iter().map(|(_, d)| d.clone()).collect(),
        Duration::from_secs(60),
    )
    .await;
    b.stop_cleanly(Duration::from_secs(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_resharded_twice_leaves_the_other_alone() {
    let stack = Stack::from_env().unwrap();
    // Both streams have shards shardId-000000000000 and -01: their leases
    // must never be taken for one another's.
    let a = stack
        .create_stream_in("111111111111", "us-east-1", &unique_name("split"), 2)
        .await
        .unwrap();
    let b = stack
        .create_stream_in("333333333333", "us-east-1", &unique_name("still"), 2)
        .await
        .unwrap();
    let app = unique_name("split-app");
    let config = config_file(&app, &[a.clone(), b.clone()]);
    let mut kcld = spawn(&stack, config.path(), "worker-a");
    let mut want: HashSet<Vec<u8>> = HashSet::new();
    for round in 0..3 {
        if round > 0 {
            stack.split_open_shards(&a).await.unwrap();
        }
        for arn in [&a, &b] {
            let records = records_for(arn, &format!("round {round}"), 80);
            stack.put_records(arn, &records).await.unwrap();
            want.extend(records.into_iter().map(|(_, d)| d));
        }
        let delivered = collect(&mut [&mut kcld], &want, Duration::from_secs(90)).await;
        for d in &delivered {
            let text = String::from_utf8_lossy(&d.data);
            assert_eq!(d.event_source_arn, text.split(' ').next().unwrap());
        }
        want.clear();
    }
    // Stream a: its children's leases under its own keys (2 + 4 + 8 shards,
    // less the parents cleaned up); stream b: its two shards, still open.
    let (a_account, a_name) = account_and_name(&a);
    let (b_account, b_name) = account_and_name(&b);
    let items = stack.scan_table(&app).await.unwrap();
    let of = |account: &str, name: &str| -> Vec<&kcld_testkit::Item> {
        items
            .iter()
            .filter(|i| {
                i["leaseKey"]
                    .as_s()
                    .unwrap()
                    .starts_with(&format!("{account}:{name}:"))
            })
            .collect()
    };
    let a_leases = of(&a_account, &a_name);
    assert!(
        a_leases
            .iter()
            .filter(|i| i.contains_key("parentShardId"))
            .count()
            >= 4,
        "stream a's children: {a_leases:?}"
    );
    let b_leases = of(&b_account, &b_name);
    assert_eq!(b_leases.len(), 2, "{b_leases:?}");
    for lease in &b_leases {
        assert_ne!(lease["checkpoint"].as_s().unwrap(), "SHARD_END");
        assert!(!lease.contains_key("parentShardId"));
    }
    assert_eq!(items.len(), a_leases.len() + b_leases.len());
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_whose_access_is_revoked_waits_alone_and_resumes_when_it_comes_back() {
    let stack = Stack::from_env().unwrap();
    let proxy = FaultProxy::start(&stack.kinesis_endpoint).await.unwrap();
    let mut arns = Vec::new();
    for (account, region) in OWNERS {
        arns.push(
            stack
                .create_stream_in(account, region, &unique_name("revoke"), 2)
                .await
                .unwrap(),
        );
    }
    let app = unique_name("revoke-app");
    let config = config_file(&app, &arns);
    let mut env = stack.consumer_env();
    env.insert("KCLD_WORKER_ID".into(), "worker-a".into());
    env.insert("AWS_ENDPOINT_URL_KINESIS".into(), proxy.url());
    let mut kcld = Kcld::spawn(
        KCLD,
        &["--config", config.path().to_str().unwrap(), "run"],
        &env,
    )
    .unwrap();
    let data = |records: &[(String, Vec<u8>)]| -> HashSet<Vec<u8>> {
        records.iter().map(|(_, d)| d.clone()).collect()
    };
    let mut delivered: Vec<Delivered> = Vec::new();
    let mut first = Vec::new();
    for arn in &arns {
        let records = records_for(arn, "before", 50);
        stack.put_records(arn, &records).await.unwrap();
        first.extend(records);
    }
    delivered.extend(collect(&mut [&mut kcld], &data(&first), Duration::from_secs(60)).await);

    // The owner of the second stream revokes access to its records.
    let revoked = &arns[1];
    for call in ["GetRecords", "GetShardIterator"] {
        proxy.fail_matching(
            &format!("Kinesis_20131202.{call}"),
            revoked,
            Fault::access_denied(&format!("kinesis:{call}")),
        );
    }
    let mut during: HashMap<&String, Vec<(String, Vec<u8>)>> = HashMap::new();
    for arn in &arns {
        let records = records_for(arn, "during", 50);
        stack.put_records(arn, &records).await.unwrap();
        during.insert(arn, records);
    }
    // The other two streams deliver everything meanwhile.
    let others: HashSet<Vec<u8>> = [&arns[0], &arns[2]]
        .iter()
        .flat_map(|arn| data(&during[arn]))
        .collect();
    delivered.extend(collect(&mut [&mut kcld], &others, Duration::from_secs(60)).await);
    // One error line for the stream, a metric, and /readyz naming it.
    let addr = kcld.ops_addr(Duration::from_secs(5)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let (code, body) = http_get(addr, "/readyz").await.unwrap();
        if code == 503 || Instant::now() > deadline {
            break (code, body);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(revoked.as_str()), "{body}");
    assert!(
        !body.contains(arns[0].as_str()) && !body.contains(arns[2].as_str()),
        "{body}"
    );
    let errors: Vec<String> = kcld
        .stderr_text()
        .lines()
        .filter(|l| l.contains("stream cannot be read"))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(revoked.as_str()) && errors[0].contains("kinesis:"),
        "{errors:?}"
    );
    let (_, page) = http_get(addr, "/metrics").await.unwrap();
    assert!(
        page.lines()
            .any(|l| l.starts_with("kcld_stream_errors_total")
                && l.contains(revoked.as_str())
                && l.contains("access_denied")),
        "{page}"
    );
    assert!(
        !delivered
            .iter()
            .any(|d| data(&during[revoked]).contains(&d.data)),
        "records of the revoked stream were read"
    );

    // Access comes back: the stream resumes where it was and delivers what
    // was put meanwhile; nothing is read twice.
    proxy.clear();
    delivered.extend(
        collect(
            &mut [&mut kcld],
            &data(&during[revoked]),
            Duration::from_secs(90),
        )
        .await,
    );
    let (code, body) = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let distinct: HashSet<&Vec<u8>> = delivered.iter().map(|d| &d.data).collect();
    assert_eq!(distinct.len(), delivered.len(), "records delivered twice");
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_stream_table_the_kcl_wrote_is_resumed_from_its_checkpoints() {
    use aws_sdk_dynamodb::types::AttributeValue;
    let s = |v: &str| AttributeValue::S(v.to_owned());
    let n = |v: i64| AttributeValue::N(v.to_string());
    let stack = Stack::from_env().unwrap();
    let app = unique_name("kclmulti-app");
    stack.create_table(&app, "leaseKey").await.unwrap();
    let ddb = stack.consumer_dynamodb().await;
    let mut arns = Vec::new();
    let mut want: HashSet<Vec<u8>> = HashSet::new();
    let mut skipped: HashSet<Vec<u8>> = HashSet::new();
    let mut former_keys = Vec::new();
    for (account, region) in [OWNERS[0], OWNERS[2]] {
        let name = unique_name("kclmulti");
        let arn = stack
            .create_stream_in(account, region, &name, 1)
            .await
            .unwrap();
        let records = records_for(&arn, "put", 20);
        let placed = stack.put_records(&arn, &records).await.unwrap();
        let created = stack.creation_epoch(&arn).await.unwrap();
        // Items as the KCL's multi-stream serializer writes them: the lease
        // checkpointed at the tenth record (by sequence number).
        let mut by_seq: Vec<(kcld_checkpoint::SequenceNumber, &str, Vec<u8>)> = placed
            .iter()
            .zip(&records)
            .map(|((shard, seq), (_, d))| (seq.parse().unwrap(), shard.as_str(), d.clone()))
            .collect();
        by_seq.sort();
        let shard = by_seq[0].1.to_owned();
        let stream_id = format!("{account}:{name}:{created}");
        ddb.put_item()
            .table_name(&app)
            .set_item(Some(HashMap::from([
                ("leaseKey".into(), s(&format!("{stream_id}:{shard}"))),
                ("leaseCounter".into(), n(12)),
                ("leaseOwner".into(), s("kcl-worker-gone")),
                ("checkpoint".into(), s(&by_seq[9].0.to_string())),
                ("checkpointSubSequenceNumber".into(), n(0)),
                ("ownerSwitchesSinceCheckpoint".into(), n(0)),
                ("streamName".into(), s(&stream_id)),
                ("shardId".into(), s(&shard)),
            ])))
            .send()
            .await
            .unwrap();
        // A former stream of the same name: left alone.
        let former_id = format!("{account}:{name}:{}", created - 86_400);
        let former_key = format!("{former_id}:{shard}");
        ddb.put_item()
            .table_name(&app)
            .set_item(Some(HashMap::from([
                ("leaseKey".into(), s(&former_key)),
                ("leaseCounter".into(), n(7)),
                ("checkpoint".into(), s("TRIM_HORIZON")),
                ("checkpointSubSequenceNumber".into(), n(0)),
                ("ownerSwitchesSinceCheckpoint".into(), n(0)),
                ("streamName".into(), s(&former_id)),
                ("shardId".into(), s(&shard)),
            ])))
            .send()
            .await
            .unwrap();
        former_keys.push(former_key);
        skipped.extend(by_seq[..10].iter().map(|(_, _, d)| d.clone()));
        want.extend(by_seq[10..].iter().map(|(_, _, d)| d.clone()));
        arns.push(arn);
    }
    let config = config_file(&app, &arns);
    let mut kcld = spawn(&stack, config.path(), "kcld-1");
    // The KCL worker that held the leases is gone: they expire, and kcld
    // reads on after their checkpoints.
    let got = collect(&mut [&mut kcld], &want, Duration::from_secs(90)).await;
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    assert!(
        !got.iter().any(|d| skipped.contains(&d.data)),
        "records at or before the KCL's checkpoints were read again"
    );
    assert_eq!(got.len(), want.len(), "records read twice");
    let items = stack.scan_table(&app).await.unwrap();
    assert_eq!(items.len(), 4, "no lease was added: {items:?}");
    for key in former_keys {
        let former = items
            .iter()
            .find(|i| i["leaseKey"].as_s().unwrap() == &key)
            .unwrap();
        assert_eq!(former["leaseCounter"].as_n().unwrap(), "7", "{former:?}");
        assert!(!former.contains_key("leaseOwner"));
    }
}

/// One request as an HTTP application saw it: (eventSourceARN, data) per
/// record.
type Request = Vec<(String, Vec<u8>)>;

/// An application answering every Lambda-shaped request with 200; returns
/// its URL and what it saw.
async fn application() -> (String, Arc<Mutex<Vec<Request>>>) {
    use axum::extract::State;
    use base64::Engine;
    let seen: Arc<Mutex<Vec<Request>>> = Arc::new(Mutex::new(Vec::new()));
    let app = axum::Router::new()
        .route(
            "/events",
            axum::routing::post(
                |State(seen): State<Arc<Mutex<Vec<Request>>>>, body: String| async move {
                    let event: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let request: Request = event["Records"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|r| {
                            (
                                r["eventSourceARN"].as_str().unwrap().to_owned(),
                                base64::engine::general_purpose::STANDARD
                                    .decode(r["kinesis"]["data"].as_str().unwrap())
                                    .unwrap(),
                            )
                        })
                        .collect();
                    seen.lock().unwrap().push(request);
                    "{}"
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_stream_can_post_to_its_own_url_and_no_batch_mixes_streams() {
    let stack = Stack::from_env().unwrap();
    let (own_url, own) = application().await;
    let (shared_url, shared) = application().await;
    let mut arns = Vec::new();
    for (account, region) in OWNERS {
        arns.push(
            stack
                .create_stream_in(account, region, &unique_name("route"), 2)
                .await
                .unwrap(),
        );
    }
    let app = unique_name("route-app");
    // The first stream to its own URL, the other two to sink.url.
    let mut text = format!(
        "application_name = \"{app}\"\ninitial_position = \"TRIM_HORIZON\"\n\n[polling]\n\
         idle_time_between_reads_ms = 200\n\n[sink]\ntype = \"http\"\nurl = \"{shared_url}\"\n"
    );
    text.push_str(&format!(
        "\n[[streams]]\narn = \"{}\"\nsink_url = \"{own_url}\"\n",
        arns[0]
    ));
    for arn in &arns[1..] {
        text.push_str(&format!("\n[[streams]]\narn = \"{arn}\"\n"));
    }
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), text).unwrap();
    let mut all = HashMap::new();
    for arn in &arns {
        let records = records_for(arn, "routed", 60);
        stack.put_records(arn, &records).await.unwrap();
        all.insert(arn.clone(), records);
    }
    let kcld = spawn(&stack, config.path(), "worker-a");
    let total: usize = all.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = |seen: &Arc<Mutex<Vec<Request>>>| -> usize {
        seen.lock().unwrap().iter().map(Vec::len).sum()
    };
    while count(&own) + count(&shared) < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    for (seen, streams) in [(&own, &arns[..1]), (&shared, &arns[1..])] {
        let requests = seen.lock().unwrap().clone();
        let mut got: HashSet<Vec<u8>> = HashSet::new();
        for request in &requests {
            let first = &request[0].0;
            assert!(
                request.iter().all(|(arn, _)| arn == first),
                "a batch mixed streams: {request:?}"
            );
            assert!(streams.contains(first), "{first} posted to the wrong URL");
            got.extend(request.iter().map(|(_, d)| d.clone()));
        }
        let want: HashSet<Vec<u8>> = streams
            .iter()
            .flat_map(|arn| all[arn].iter().map(|(_, d)| d.clone()))
            .collect();
        assert_eq!(got, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_lists_every_stream_with_its_account_and_region() {
    let arns: Vec<String> = OWNERS
        .iter()
        .map(|(account, region)| format!("arn:aws:kinesis:{region}:{account}:stream/orders"))
        .collect();
    let config = config_file("central", &arns);
    let out = std::process::Command::new(KCLD)
        .args(["--config", config.path().to_str().unwrap(), "check-config"])
        .env_clear()
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (account, region) in OWNERS {
        assert!(
            text.contains(&format!(
                "# stream orders in account {account}, region {region}"
            )),
            "{text}"
        );
    }
    assert_eq!(
        text.lines().filter(|l| *l == "[[streams]]").count(),
        3,
        "{text}"
    );
    // What check-config prints loads back to the same streams.
    let again = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(again.path(), text.as_bytes()).unwrap();
    let out = std::process::Command::new(KCLD)
        .args(["--config", again.path().to_str().unwrap(), "check-config"])
        .env_clear()
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let streams = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("# stream ") || l.starts_with("arn = "))
            .map(|l| l.split("  #").next().unwrap_or(l).to_owned())
            .collect()
    };
    assert_eq!(
        streams(&String::from_utf8_lossy(&out.stdout)),
        streams(&text)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_arn_beside_streams_and_a_stream_listed_twice_are_refused() {
    let arn = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";
    let cases = [
        (
            format!("application_name = \"app-x\"\nstream_arn = \"{arn}\"\n\n[[streams]]\narn = \"{arn}\"\n"),
            "stream_arn",
        ),
        (
            format!("application_name = \"app-x\"\n\n[[streams]]\narn = \"{arn}\"\n\n[[streams]]\narn = \"{arn}\"\n"),
            "streams[1].arn",
        ),
        (
            "application_name = \"app-x\"\n\n[[streams]]\nconsumer_name = \"c\"\n".to_owned(),
            "streams[0].arn",
        ),
    ];
    for (text, key) in cases {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &text).unwrap();
        let out = std::process::Command::new(KCLD)
            .args(["--config", file.path().to_str().unwrap(), "check-config"])
            .env_clear()
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(err.contains(key), "{key} not named: {err}");
    }
}

fn account_and_name(arn: &str) -> (String, String) {
    let parts: Vec<&str> = arn.split(':').collect();
    let name = parts[5].trim_start_matches("stream/");
    (parts[4].to_owned(), name.to_owned())
}
