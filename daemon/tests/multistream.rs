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
use kcld_testkit::{doctor_checks, http_get, unique_name, Delivered, Kcld, Stack};

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

    // Shard series name their stream: shard ids repeat across streams.
    let mut delivered_series = Vec::new();
    for instance in [&a, &b] {
        let addr = instance.ops_addr(Duration::from_secs(5)).await.unwrap();
        let (_, page) = http_get(addr, "/metrics").await.unwrap();
        delivered_series.extend(
            page.lines()
                .filter(|l| l.starts_with("kcld_records_delivered_total{"))
                .map(str::to_owned),
        );
    }
    for arn in &arns {
        let of_stream: Vec<&String> = delivered_series
            .iter()
            .filter(|l| l.contains(&format!("stream=\"{arn}\"")))
            .collect();
        assert_eq!(of_stream.len(), 4, "{arn}: {delivered_series:#?}");
    }
    assert_eq!(delivered_series.len(), 12, "{delivered_series:#?}");

    // `kcld status` shows every stream's leases, renewed by both instances:
    // as JSON each lease names its stream; as text they come grouped under
    // a heading naming the stream's account and region.
    let status = kcld_status(&stack, config.path()).await;
    let leases = status.as_array().unwrap();
    assert_eq!(leases.len(), 12, "{status:#}");
    for arn in &arns {
        let (account, name) = account_and_name(arn);
        let of_stream: Vec<&serde_json::Value> = leases
            .iter()
            .filter(|l| l["stream_arn"] == arn.as_str())
            .collect();
        assert_eq!(of_stream.len(), 4, "{arn}: {status:#}");
        for lease in of_stream {
            assert!(lease["renewing"] == true, "{lease}");
            let key = lease["lease_key"].as_str().unwrap();
            assert!(key.starts_with(&format!("{account}:{name}:")), "{lease}");
        }
    }
    let owners: HashSet<&str> = leases.iter().filter_map(|l| l["owner"].as_str()).collect();
    assert_eq!(owners, HashSet::from(["worker-a", "worker-b"]));
    let text = kcld_status_text(&stack, config.path()).await;
    for (arn, (account, region)) in arns.iter().zip(OWNERS) {
        let heading = format!("{arn} (account {account}, {region}): 4 leases");
        assert!(
            text.lines().any(|l| l == heading),
            "{heading} not in\n{text}"
        );
    }

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
    // `kcld doctor` checks every stream: the revoked one fails on the
    // refused action and names its owner's account as the one to fix it;
    // the other streams and the lease table pass.
    let sts = kcld_testkit::sts::Identity::start().await.unwrap();
    let mut doctor_env = env.clone();
    doctor_env.insert("KCLD_CONFIG".into(), config.path().to_str().unwrap().into());
    doctor_env.insert("AWS_ENDPOINT_URL_STS".into(), sts.url());
    let checks = doctor_checks(KCLD, &doctor_env).await.unwrap();
    let failed: Vec<&serde_json::Value> = checks.iter().filter(|c| c["ok"] == false).collect();
    assert!(!failed.is_empty(), "{checks:#?}");
    let (owner, _) = account_and_name(revoked);
    for check in &failed {
        assert_eq!(check["stream"], revoked.as_str(), "{check:#}");
        assert!(
            check["fix"]["fixed_by"].as_str().unwrap().contains(&owner),
            "{check:#}"
        );
        assert!(
            check["fix"]["missing_action"]
                .as_str()
                .unwrap()
                .starts_with("kinesis:"),
            "{check:#}"
        );
    }
    for arn in [&arns[0], &arns[2]] {
        let of_stream: Vec<&serde_json::Value> = checks
            .iter()
            .filter(|c| c["stream"] == arn.as_str())
            .collect();
        assert!(
            of_stream.iter().any(|c| c["check"] == "GetRecords"),
            "{checks:#?}"
        );
        assert!(of_stream.iter().all(|c| c["ok"] == true), "{checks:#?}");
    }
    assert!(
        checks.iter().any(|c| c.get("stream").is_none()
            && c["check"] == "lease table read (Scan)"
            && c["ok"] == true),
        "{checks:#?}"
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

    // The second time round: kcld restarts while access is revoked again,
    // this time to the stream itself. The other streams start and deliver;
    // the revoked one is opened again until it can be, then resumes from
    // its checkpoints.
    for call in [
        "DescribeStreamSummary",
        "ListShards",
        "GetRecords",
        "GetShardIterator",
    ] {
        proxy.fail_matching(
            &format!("Kinesis_20131202.{call}"),
            revoked,
            Fault::access_denied(&format!("kinesis:{call}")),
        );
    }
    let mut again: HashMap<&String, Vec<(String, Vec<u8>)>> = HashMap::new();
    for arn in &arns {
        let records = records_for(arn, "again", 30);
        stack.put_records(arn, &records).await.unwrap();
        again.insert(arn, records);
    }
    let mut kcld = Kcld::spawn(
        KCLD,
        &["--config", config.path().to_str().unwrap(), "run"],
        &env,
    )
    .unwrap();
    let others: HashSet<Vec<u8>> = [&arns[0], &arns[2]]
        .iter()
        .flat_map(|arn| data(&again[arn]))
        .collect();
    let mut second = collect(&mut [&mut kcld], &others, Duration::from_secs(60)).await;
    let addr = kcld.ops_addr(Duration::from_secs(5)).await.unwrap();
    let (code, body) = http_get(addr, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(revoked.as_str()), "{body}");
    let errors: Vec<String> = kcld
        .stderr_text()
        .lines()
        .filter(|l| l.contains("stream cannot be read"))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(revoked.as_str()), "{errors:?}");
    proxy.clear();
    second.extend(
        collect(
            &mut [&mut kcld],
            &data(&again[revoked]),
            Duration::from_secs(90),
        )
        .await,
    );
    // Nothing read before the restart came again.
    let before: HashSet<&Vec<u8>> = delivered.iter().map(|d| &d.data).collect();
    assert!(
        second.iter().all(|d| !before.contains(&d.data)),
        "records read again after the restart"
    );
    kcld.stop_cleanly(Duration::from_secs(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_mid_run_stops_alone_and_keeps_its_checkpoints() {
    let stack = Stack::from_env().unwrap();
    let mut arns = Vec::new();
    for (account, region) in OWNERS {
        arns.push(
            stack
                .create_stream_in(account, region, &unique_name("deleted"), 2)
                .await
                .unwrap(),
        );
    }
    let app = unique_name("deleted-app");
    let config = config_file(&app, &arns);
    let mut kcld = spawn(&stack, config.path(), "worker-a");
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
    // Every record of the stream to be deleted was confirmed: its leases'
    // checkpoints reach the last record of each shard.
    let deleted = &arns[1];
    let (account, name) = account_and_name(deleted);
    let prefix = format!("{account}:{name}:");
    let mut last: HashMap<String, String> = HashMap::new();
    for d in delivered.iter().filter(|d| &d.event_source_arn == deleted) {
        let seq = last.entry(d.shard_id.clone()).or_default();
        if (d.sequence_number.len(), &d.sequence_number) > (seq.len(), &*seq) {
            *seq = d.sequence_number.clone();
        }
    }
    let of_deleted = || async {
        stack
            .checkpoints(&app)
            .await
            .into_iter()
            .filter(|(key, _)| key.starts_with(&prefix))
            .map(|(key, (checkpoint, _))| {
                let shard = key.rsplit(':').next().unwrap_or_default().to_owned();
                (shard, checkpoint)
            })
            .collect::<HashMap<String, String>>()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = of_deleted().await;
        if now == last {
            break;
        }
        assert!(Instant::now() < deadline, "{now:?} never reached {last:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // The owner deletes the second stream; the other two go on.
    stack.delete_stream(deleted).await.unwrap();
    for round in ["during", "after"] {
        let mut others = Vec::new();
        for arn in [&arns[0], &arns[2]] {
            let records = records_for(arn, round, 50);
            stack.put_records(arn, &records).await.unwrap();
            others.extend(records);
        }
        delivered.extend(collect(&mut [&mut kcld], &data(&others), Duration::from_secs(60)).await);
    }
    // One error line naming the stream, a metric, /readyz naming it.
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
    assert!(body.contains(deleted.as_str()), "{body}");
    let errors: Vec<String> = kcld
        .stderr_text()
        .lines()
        .filter(|l| l.contains("stream cannot be read"))
        .map(str::to_owned)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains(deleted.as_str()), "{errors:?}");
    let (_, page) = http_get(addr, "/metrics").await.unwrap();
    assert!(
        page.lines()
            .any(|l| l.starts_with("kcld_stream_errors_total")
                && l.contains(deleted.as_str())
                && l.contains("not_found")),
        "{page}"
    );
    let distinct: HashSet<&Vec<u8>> = delivered.iter().map(|d| &d.data).collect();
    assert_eq!(distinct.len(), delivered.len(), "records delivered twice");

    // A clean stop still stops, and the deleted stream's leases keep their
    // checkpoints: a deleted stream is not a finished shard.
    kcld.stop_cleanly(Duration::from_secs(25)).await;
    assert_eq!(of_deleted().await, last);
}

/// Sends SIGHUP and waits for the reload's line `wanted` in the log.
async fn reload(kcld: &Kcld, wanted: &str) {
    let before = kcld.stderr_text().matches(wanted).count();
    std::process::Command::new("kill")
        .args(["-HUP", &kcld.pid().unwrap().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while kcld.stderr_text().matches(wanted).count() == before {
        assert!(
            Instant::now() < deadline,
            "no {wanted:?} after SIGHUP:\n{}",
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_added_to_the_file_are_read_after_sighup() {
    let stack = Stack::from_env().unwrap();
    let (account, region) = OWNERS[0];
    let mut arns = Vec::new();
    for _ in 0..2 {
        arns.push(
            stack
                .create_stream_in(account, region, &unique_name("added"), 2)
                .await
                .unwrap(),
        );
    }
    let app = unique_name("added-app");
    let config = config_file(&app, &arns);
    let mut kcld = spawn(&stack, config.path(), "worker-a");
    let data = |records: &[(String, Vec<u8>)]| -> HashSet<Vec<u8>> {
        records.iter().map(|(_, d)| d.clone()).collect()
    };
    let mut delivered: Vec<Delivered> = Vec::new();
    let put = |arns: &[String], tag: &'static str| {
        let stack = &stack;
        let arns = arns.to_vec();
        async move {
            let mut all = Vec::new();
            for arn in &arns {
                let records = records_for(arn, tag, 30);
                stack.put_records(arn, &records).await.unwrap();
                all.extend(records);
            }
            all
        }
    };
    let first = put(&arns, "first").await;
    delivered.extend(collect(&mut [&mut kcld], &data(&first), Duration::from_secs(60)).await);

    // A third stream of another owner and region, with records already in
    // it, is added to the file: SIGHUP reads it from TRIM_HORIZON.
    let (account, region) = OWNERS[2];
    let third = stack
        .create_stream_in(account, region, &unique_name("added"), 2)
        .await
        .unwrap();
    let early = put(std::slice::from_ref(&third), "early").await;
    arns.push(third.clone());
    std::fs::write(
        config.path(),
        std::fs::read_to_string(config_file(&app, &arns).path()).unwrap(),
    )
    .unwrap();
    reload(&kcld, "SIGHUP: streams added").await;
    let later = put(&arns, "later").await;
    let want: HashSet<Vec<u8>> = data(&early).union(&data(&later)).cloned().collect();
    delivered.extend(collect(&mut [&mut kcld], &want, Duration::from_secs(60)).await);
    for d in delivered.iter().filter(|d| want.contains(&d.data)) {
        let text = String::from_utf8_lossy(&d.data);
        assert!(
            text.starts_with(&d.event_source_arn),
            "{text} from {}",
            d.event_source_arn
        );
    }
    let owners = stack.lease_owners(&app).await.unwrap();
    let (third_account, third_name) = account_and_name(&third);
    let of_third: Vec<&Option<String>> = owners
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{third_account}:{third_name}:")))
        .map(|(_, owner)| owner)
        .collect();
    assert_eq!(of_third.len(), 2, "{owners:?}");
    assert!(
        of_third.iter().all(|o| o.as_deref() == Some("worker-a")),
        "{owners:?}"
    );

    // The second time round: a stream that is not there yet is named and
    // not added; the others go on; once it exists, the next SIGHUP adds it.
    let fourth_name = unique_name("added");
    let fourth = format!("arn:aws:kinesis:{region}:{account}:stream/{fourth_name}");
    arns.push(fourth.clone());
    std::fs::write(
        config.path(),
        std::fs::read_to_string(config_file(&app, &arns).path()).unwrap(),
    )
    .unwrap();
    reload(&kcld, "fix it and send SIGHUP again").await;
    let refusal: Vec<String> = kcld
        .stderr_text()
        .lines()
        .filter(|l| l.contains("SIGHUP: stream") && l.contains("not added"))
        .map(str::to_owned)
        .collect();
    assert_eq!(refusal.len(), 1, "{refusal:?}");
    assert!(refusal[0].contains(&fourth), "{refusal:?}");
    let meanwhile = put(&arns[..3], "meanwhile").await;
    delivered.extend(collect(&mut [&mut kcld], &data(&meanwhile), Duration::from_secs(60)).await);
    stack
        .create_stream_in(account, region, &fourth_name, 1)
        .await
        .unwrap();
    let last = put(&arns, "last").await;
    reload(&kcld, "SIGHUP: streams added").await;
    delivered.extend(collect(&mut [&mut kcld], &data(&last), Duration::from_secs(60)).await);

    let distinct: HashSet<&Vec<u8>> = delivered.iter().map(|d| &d.data).collect();
    assert_eq!(distinct.len(), delivered.len(), "records delivered twice");
    // Nothing else was changed: no restart asked for.
    assert!(
        !kcld.stderr_text().contains("needs a restart"),
        "{}",
        kcld.stderr_text()
    );
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

#[test]
fn policy_prints_each_owner_its_stream_policy_and_one_role_policy_for_all() {
    let arns: Vec<String> = OWNERS
        .iter()
        .map(|(account, region)| format!("arn:aws:kinesis:{region}:{account}:stream/orders"))
        .collect();
    let consumer = format!("{}/consumer/central:1700000000", arns[0]);
    let reader_role = "arn:aws:iam::444444444444:role/orders-reader";
    let text = format!(
        "application_name = \"central\"\n\
         [[streams]]\narn = \"{}\"\nconsumer_arn = \"{consumer}\"\n\
         [[streams]]\narn = \"{}\"\n\
         [[streams]]\narn = \"{}\"\nassume_role_arn = \"{reader_role}\"\n\
         assume_role_external_id = \"central-42\"\n",
        arns[0], arns[1], arns[2]
    );
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), text).unwrap();
    let role = "arn:aws:iam::222222222222:role/central-consumer";
    let policy = |extra: &[&str]| {
        std::process::Command::new(KCLD)
            .args(["--config", config.path().to_str().unwrap(), "policy"])
            .args(["--consumer-role-arn", role])
            .args(extra)
            .env_clear()
            .env("AWS_REGION", "us-east-1")
            .output()
            .unwrap()
    };
    let out = policy(&[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    // One entry per stream: its owner attaches a policy naming the role that
    // reads it, with the command run in the owner's account and region.
    let streams = doc["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 3, "{doc:#}");
    for ((entry, arn), (account, region)) in streams.iter().zip(&arns).zip(OWNERS) {
        assert_eq!(entry["stream_arn"], arn.as_str());
        assert_eq!(entry["account"], account);
        let principal = if account == "444444444444" {
            reader_role
        } else {
            role
        };
        let statement = &entry["stream_resource_policy"]["Statement"][0];
        assert_eq!(statement["Principal"]["AWS"], principal, "{entry:#}");
        assert_eq!(statement["Resource"], arn.as_str());
        let commands = entry["commands"].as_array().unwrap();
        assert!(!commands.is_empty());
        for command in commands {
            assert_eq!(command["account"], account, "{command}");
            let line = command["command"].as_str().unwrap();
            assert!(line.contains(&format!("--region {region}")), "{line}");
        }
    }
    assert_eq!(
        streams[0]["consumer_resource_policy"]["Statement"][0]["Resource"],
        consumer.as_str()
    );
    assert!(streams[1].get("consumer_resource_policy").is_none());

    // One role policy: every stream the role reads itself (the fan-out
    // consumer included), the lease table, and assuming the third stream's
    // role, whose own policy reads that stream and whose trust policy
    // names the consumer role with the external id.
    let statements = doc["consumer_role_policy"]["Statement"].as_array().unwrap();
    let resources: Vec<String> = statements
        .iter()
        .flat_map(|s| match &s["Resource"] {
            serde_json::Value::Array(a) => {
                a.iter().map(|v| v.as_str().unwrap().to_owned()).collect()
            }
            v => vec![v.as_str().unwrap().to_owned()],
        })
        .collect();
    for want in [
        arns[0].as_str(),
        consumer.as_str(),
        arns[1].as_str(),
        "arn:aws:dynamodb:us-east-1:222222222222:table/central",
        reader_role,
    ] {
        assert!(
            resources.iter().any(|r| r == want),
            "{want} not in {resources:?}"
        );
    }
    assert!(!resources.contains(&arns[2]), "{resources:?}");
    let sids: HashSet<&str> = statements
        .iter()
        .map(|s| s["Sid"].as_str().unwrap())
        .collect();
    assert_eq!(sids.len(), statements.len(), "Sids repeat: {sids:?}");
    let assumed = &doc["assumed_roles"][0];
    assert_eq!(assumed["role_arn"], reader_role);
    assert_eq!(
        assumed["role_policy"]["Statement"][0]["Resource"],
        serde_json::json!([arns[2]])
    );
    let trust = &assumed["trust_policy"]["Statement"][0];
    assert_eq!(trust["Principal"]["AWS"], role);
    assert_eq!(
        trust["Condition"]["StringEquals"]["sts:ExternalId"],
        "central-42"
    );

    // A consumer or key on the command line is one stream's: refused.
    let out = policy(&["--consumer-name", "x"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--consumer-name") && err.contains("[[streams]]"),
        "{err}"
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

/// `kcld status --json` over the configuration, as an operator runs it.
async fn kcld_status(stack: &Stack, config: &std::path::Path) -> serde_json::Value {
    let out = run_kcld(
        stack,
        &["--config", config.to_str().unwrap(), "status", "--json"],
    )
    .await;
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

/// `kcld status` for people.
async fn kcld_status_text(stack: &Stack, config: &std::path::Path) -> String {
    run_kcld(stack, &["--config", config.to_str().unwrap(), "status"]).await
}

async fn run_kcld(stack: &Stack, args: &[&str]) -> String {
    let out = tokio::process::Command::new(KCLD)
        .args(args)
        .env_clear()
        .envs(stack.consumer_env())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "kcld {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn account_and_name(arn: &str) -> (String, String) {
    let parts: Vec<&str> = arn.split(':').collect();
    let name = parts[5].trim_start_matches("stream/");
    (parts[4].to_owned(), name.to_owned())
}
