//! Leases and checkpoints in the KCL's DynamoDB table, against the local
//! stack: balancing, failover after kill -9, graceful release on SIGTERM,
//! how often a settled fleet reads the table,
//! taking over a table the KCL wrote, and resharding while records flow.
//! The lease table is checked with raw DynamoDB reads, not kcld's code.
//!
//! These tests run one at a time: each starts several kcld processes, and
//! lease timing is what they check.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

use aws_sdk_dynamodb::types::{AttributeValue, BillingMode};
use kcld_checkpoint::SequenceNumber;
use kcld_testkit::fault::{Fault, FaultProxy};
use kcld_testkit::fleet::{collect, lease_loads as loads, wait_for_loads as wait_for};
use kcld_testkit::{http_get, sample_records, unique_name, Delivered, Item, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");
static SERIAL: Mutex<()> = Mutex::const_new(());

fn env(
    stack: &Stack,
    arn: &str,
    app: &str,
    worker: &str,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = stack.kcld_env(arn, app, worker);
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// The value of the one series of `name` whose labels include all of
/// `labels` (0 when there is none).
fn series(page: &str, name: &str, labels: &[&str]) -> f64 {
    page.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn data_set(records: &[(String, Vec<u8>)]) -> HashSet<Vec<u8>> {
    records.iter().map(|(_, d)| d.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_settle_at_3_3_2_and_deliver_everything() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("bal"), 8)
        .await
        .unwrap();
    let app = unique_name("bal-app");
    let records = sample_records(400, 50);
    stack.put_records(&arn, &records).await.unwrap();

    let started = Instant::now();
    let mut a = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "worker-a", &[])).unwrap();
    let mut b = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "worker-b", &[])).unwrap();
    let mut c = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "worker-c", &[])).unwrap();
    let settled = |l: &HashMap<String, usize>| {
        let mut counts: Vec<usize> = ["worker-a", "worker-b", "worker-c"]
            .iter()
            .map(|w| l.get(*w).copied().unwrap_or(0))
            .collect();
        counts.sort();
        counts == [2, 3, 3]
    };
    wait_for(&stack, &app, Duration::from_secs(30), settled).await;
    eprintln!("settled at 3/3/2 {:?} after start", started.elapsed());

    let all = collect(
        &mut [&mut a, &mut b, &mut c],
        &data_set(&records),
        Duration::from_secs(60),
    )
    .await;
    eprintln!("{} deliveries for {} records", all.len(), records.len());
    // Settled means settled: no lease moves afterwards.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        settled(&loads(&stack, &app).await),
        "leases moved after settling"
    );
    for k in [a, b, c] {
        assert!(k
            .terminate(Duration::from_secs(25))
            .await
            .unwrap()
            .success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_shards_are_taken_over_after_the_failover_time() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("kill"), 4)
        .await
        .unwrap();
    let app = unique_name("kill-app");
    let failover = Duration::from_millis(5000);
    // Probes paid for in full: with two leases per worker the default
    // budget (1% of the renewals) reads the other worker every 8 s, and a
    // takeover then waits for that (README, "What the lease table costs").
    // Here each is read once a renewal period, which bounds the takeover.
    let extra = [
        ("KCLD_LEASE__FAILOVER_TIME_MS", "5000"),
        ("KCLD_LEASE__PROBE_BUDGET_PERCENT", "100"),
    ];
    let mut a = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "worker-a", &extra)).unwrap();
    let mut b = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "worker-b", &extra)).unwrap();
    wait_for(&stack, &app, Duration::from_secs(30), |l| {
        l.get("worker-a") == Some(&2) && l.get("worker-b") == Some(&2)
    })
    .await;

    let before = sample_records(200, 40);
    stack.put_records(&arn, &before).await.unwrap();
    collect(
        &mut [&mut a, &mut b],
        &data_set(&before),
        Duration::from_secs(60),
    )
    .await;

    // Records in flight at the kill: put, then kill worker-a at once.
    let during: Vec<(String, Vec<u8>)> = (0..150)
        .map(|i| (format!("d{i}"), format!("during the kill {i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &during).await.unwrap();
    a.kill9().await;
    // Timed from the kill (what worker-a printed is read afterwards: its
    // pipe keeps it).
    let taken = wait_for(&stack, &app, Duration::from_secs(30), |l| {
        l.get("worker-b") == Some(&4)
    })
    .await;
    let printed_by_a: Vec<Delivered> = a
        .drain_for(Duration::from_millis(500))
        .await
        .iter()
        .map(|l| Delivered::parse(l).unwrap())
        .collect();
    // The KCL's renewal period for this failover time.
    let renewal = failover / 3 - Duration::from_millis(25);
    eprintln!("taken over {taken:?} after kill -9 (failover {failover:?}, renewal {renewal:?})");
    // Never early: the dead worker's last renewal was at most one renewal
    // interval before the kill, and its lease expires a failover time after
    // that renewal was seen.
    assert!(
        taken + renewal + Duration::from_millis(200) >= failover,
        "taken before the lease could have expired: {taken:?}"
    );
    // Bound: failover + one renewal interval (the dead worker's last renewal
    // may come up to one interval before the kill is noticed), plus this
    // test's own polling of the table.
    assert!(
        taken <= failover + renewal + Duration::from_millis(1500),
        "takeover took {taken:?}"
    );

    // Nothing in flight was lost: what worker-a printed before it died and
    // what worker-b delivers after taking over cover every record.
    let mut delivered: HashSet<Vec<u8>> = printed_by_a.into_iter().map(|d| d.data).collect();
    let missing: HashSet<Vec<u8>> = data_set(&during).difference(&delivered).cloned().collect();
    delivered.extend(
        collect(&mut [&mut b], &missing, Duration::from_secs(60))
            .await
            .into_iter()
            .map(|(_, d)| d.data),
    );
    assert!(data_set(&during).is_subset(&delivered));

    let after: Vec<(String, Vec<u8>)> = (0..100)
        .map(|i| (format!("k{i}"), format!("after kill {i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &after).await.unwrap();
    collect(&mut [&mut b], &data_set(&after), Duration::from_secs(60)).await;
    b.terminate(Duration::from_secs(25)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_fleet_rarely_scans_the_table_yet_takes_released_leases_at_once() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("cost"), 8)
        .await
        .unwrap();
    let app = unique_name("cost-app");
    let proxy = FaultProxy::start(&stack.dynamodb_endpoint).await.unwrap();
    // The KCL's cadence for failover 3 s: scans every 6 s once settled.
    // Probes within the default budget (1% of the renewals): 4 leases a
    // worker renewed every 975 ms cost 20.5 read units a second, so a
    // probe (half a unit) every 2.44 s, two between scans.
    // Shard sync (a scan of its own) out of the window.
    let extra = [
        ("KCLD_LEASE__FAILOVER_TIME_MS", "3000"),
        ("KCLD_LEASE__TAKE_INTERVAL_MS", "6000"),
        ("KCLD_LEASE__SHARD_SYNC_INTERVAL_MS", "600000"),
    ];
    let spawn = |worker: &str| {
        let mut vars = env(&stack, &arn, &app, worker, &extra);
        vars.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url());
        Kcld::spawn(KCLD, &["run"], &vars).unwrap()
    };
    let halves = |a: &str, b: &str| {
        let (a, b) = (a.to_owned(), b.to_owned());
        move |l: &HashMap<String, usize>| l.get(&a) == Some(&4) && l.get(&b) == Some(&4)
    };
    let a = spawn("worker-a");
    let b = spawn("worker-b");
    wait_for(
        &stack,
        &app,
        Duration::from_secs(30),
        halves("worker-a", "worker-b"),
    )
    .await;

    // Settled: count the lease table calls of both workers for 18 s, at the
    // relay and in what the workers report.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let reported = || async {
        let mut sum = 0.0;
        for w in [&a, &b] {
            let addr = w.ops_addr(Duration::from_secs(5)).await.unwrap();
            let (_, page) = http_get(addr, "/metrics").await.unwrap();
            sum += series(
                &page,
                "kcld_lease_table_reads_total",
                &["call=\"GetItem\"", "consistency=\"eventual\""],
            );
        }
        sum
    };
    let reported_before = reported().await;
    proxy.reset_calls();
    let window = Duration::from_secs(18);
    tokio::time::sleep(window).await;
    let reported_probes = reported().await - reported_before;
    let scans = proxy.calls("DynamoDB_20120810.Scan");
    let consistent = proxy.calls("DynamoDB_20120810.Scan consistent");
    let probes = proxy.calls("DynamoDB_20120810.GetItem")
        - proxy.calls("DynamoDB_20120810.GetItem consistent");
    let renewals = proxy.calls("DynamoDB_20120810.UpdateItem");
    eprintln!(
        "in {window:?}: {scans} scans ({consistent} strongly consistent), {probes} probes, {renewals} renewals"
    );
    // Nothing changed hands (every take rests on a strongly consistent
    // scan): live leases were never judged expired between sparse probes.
    assert_eq!(consistent, 0, "leases changed hands in a settled fleet");
    // Scanning every second would be 36 scans; every 6 s is 6 to 8.
    assert!(
        scans <= 12,
        "a settled fleet scanned the table {scans} times in {window:?}"
    );
    // Two workers, two probes per 6 s each: 12 in 18 s (one scan more or
    // less either side of the window).
    assert!(
        (8..=18).contains(&probes),
        "each worker should look at the other every 2.44 s: {probes} probes"
    );
    // Every lease is still renewed (8 leases, every 975 ms).
    assert!(renewals >= 8 * 15, "only {renewals} renewals");
    // The workers' own count of their probes (what an operator sees) is what
    // the relay counted, give or take the calls in flight at either end.
    assert!(
        (reported_probes - f64::from(probes)).abs() <= 2.0,
        "the workers report {reported_probes} probes, the relay saw {probes}"
    );

    // A role without dynamodb:GetItem: the probes are refused, each worker
    // says so once and scans the table instead.
    proxy.fail(
        "DynamoDB_20120810.GetItem",
        Fault::access_denied("dynamodb:GetItem"),
    );
    proxy.reset_calls();
    // A scan in place of each probe: about five in 6 s from the two.
    tokio::time::sleep(Duration::from_secs(6)).await;
    proxy.clear();
    let scans = proxy.calls("DynamoDB_20120810.Scan");
    assert!(
        scans >= 4,
        "only {scans} scans while the probes were refused"
    );
    for w in [&a, &b] {
        let warned = w
            .stderr_text()
            .matches("cannot read another worker's lease")
            .count();
        assert_eq!(warned, 1, "{}", w.stderr_text());
    }

    // A worker that stops cleanly releases its leases: the other takes them
    // within about a probe interval, not at its next scan. Then the second
    // time round: the stopped worker comes back, takes half again, and the
    // other one leaves.
    let mut workers = HashMap::from([("worker-a", a), ("worker-b", b)]);
    for (round, (leaving, staying)) in [("worker-a", "worker-b"), ("worker-b", "worker-a")]
        .into_iter()
        .enumerate()
    {
        if round > 0 {
            // The one that left last round comes back.
            workers.insert(staying, spawn(staying));
            wait_for(
                &stack,
                &app,
                Duration::from_secs(30),
                halves(leaving, staying),
            )
            .await;
        }
        let worker = workers.remove(leaving).unwrap();
        assert!(worker
            .terminate(Duration::from_secs(25))
            .await
            .unwrap()
            .success());
        let taken = wait_for(&stack, &app, Duration::from_secs(30), |l| {
            l.get(staying) == Some(&8)
        })
        .await;
        eprintln!("round {round}: {leaving}'s released leases taken {taken:?} after it exited");
        assert!(taken <= Duration::from_secs(3), "took {taken:?}");
    }
    for (_, worker) in workers {
        assert!(worker
            .terminate(Duration::from_secs(25))
            .await
            .unwrap()
            .success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_with_a_final_checkpoint_and_no_duplicate() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("term"), 4)
        .await
        .unwrap();
    let app = unique_name("term-app");
    // Checkpoints only at the end (or every 100,000 records): the final
    // checkpoint on SIGTERM is what prevents duplicates here.
    // Probes paid for in full: with two leases per worker the default
    // budget leaves the release to be found by the next scan (up to 20 s);
    // here the other worker is read once a renewal period.
    let extra = [
        ("KCLD_CHECKPOINT__INTERVAL_MS", "3600000"),
        ("KCLD_CHECKPOINT__MAX_RECORDS", "100000"),
        ("KCLD_LEASE__PROBE_BUDGET_PERCENT", "100"),
    ];
    let mut a = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "worker-a", &extra)).unwrap();
    let mut b = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "worker-b", &extra)).unwrap();
    wait_for(&stack, &app, Duration::from_secs(30), |l| {
        l.get("worker-a") == Some(&2) && l.get("worker-b") == Some(&2)
    })
    .await;

    let first = sample_records(300, 60);
    stack.put_records(&arn, &first).await.unwrap();
    let mut delivered = collect(
        &mut [&mut a, &mut b],
        &data_set(&first),
        Duration::from_secs(60),
    )
    .await;

    let a_log = a.stderr.clone();
    let a_status = a.terminate(Duration::from_secs(25)).await.unwrap();
    assert!(a_status.success(), "{a_status:?}");
    let taken = wait_for(&stack, &app, Duration::from_secs(10), |l| {
        l.get("worker-b") == Some(&4)
    })
    .await;
    eprintln!("released leases taken {taken:?} after worker-a exited");
    assert!(
        taken < Duration::from_secs(2),
        "takeover after SIGTERM took {taken:?}"
    );

    let second: Vec<(String, Vec<u8>)> = (0..150)
        .map(|i| (format!("s{i}"), format!("second wave {i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &second).await.unwrap();
    delivered.extend(collect(&mut [&mut b], &data_set(&second), Duration::from_secs(60)).await);
    // Let any duplicate show up before counting.
    delivered.extend(
        b.drain_for(Duration::from_secs(2))
            .await
            .iter()
            .map(|l| (1, Delivered::parse(l).unwrap())),
    );

    let mut count: HashMap<Vec<u8>, usize> = HashMap::new();
    for (_, d) in &delivered {
        *count.entry(d.data.clone()).or_default() += 1;
    }
    let dups: Vec<_> = count.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        dups.is_empty(),
        "{} records delivered twice\nworker-a:\n{}\nworker-b:\n{}",
        dups.len(),
        a_log.lock().unwrap(),
        b.stderr_text()
    );
    assert_eq!(count.len(), first.len() + second.len());
    b.terminate(Duration::from_secs(25)).await.unwrap();
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}
fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takes_over_a_table_the_kcl_wrote_and_keeps_its_schema() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let name = unique_name("kcl");
    let arn = stack.create_shared_stream(&name, 2).await.unwrap();
    let records = sample_records(60, 13);
    let placed = stack.put_records(&arn, &records).await.unwrap();
    // Per shard, the records in sequence order.
    let mut per_shard: HashMap<String, Vec<(SequenceNumber, Vec<u8>)>> = HashMap::new();
    for ((shard, seq), (_, data)) in placed.iter().zip(&records) {
        per_shard
            .entry(shard.clone())
            .or_default()
            .push((seq.parse().unwrap(), data.clone()));
    }
    let mut shards: Vec<String> = per_shard.keys().cloned().collect();
    shards.sort();
    assert_eq!(shards.len(), 2, "records landed on both shards");
    for v in per_shard.values_mut() {
        v.sort();
    }

    // The table, created and written item by item as the KCL does.
    let app = unique_name("kcl-app");
    stack.create_table(&app, "leaseKey").await.unwrap();
    let ddb = stack.consumer_dynamodb().await;
    // Shard 0: checkpoint at its 4th record. Shard 1: at its 3rd record with
    // a sub-sequence number (as after part of a KPL aggregate).
    let cp0 = per_shard[&shards[0]][3].0.to_string();
    let cp1 = per_shard[&shards[1]][2].0.to_string();
    let kcl_items: Vec<Item> = vec![
        HashMap::from([
            ("leaseKey".into(), s(&shards[0])),
            ("leaseOwner".into(), s("kcl-java-worker-gone")),
            ("leaseCounter".into(), n(41)),
            ("checkpoint".into(), s(&cp0)),
            ("checkpointSubSequenceNumber".into(), n(0)),
            ("ownerSwitchesSinceCheckpoint".into(), n(2)),
        ]),
        HashMap::from([
            ("leaseKey".into(), s(&shards[1])),
            ("leaseCounter".into(), n(7)),
            ("checkpoint".into(), s(&cp1)),
            ("checkpointSubSequenceNumber".into(), n(5)),
            ("ownerSwitchesSinceCheckpoint".into(), n(0)),
            ("pendingCheckpoint".into(), s("TRIM_HORIZON")),
            ("pendingCheckpointSubSequenceNumber".into(), n(0)),
        ]),
        // KCL 3 keeps other entities in the same table: not leases.
        HashMap::from([
            ("leaseKey".into(), s("worker-metrics-x")),
            ("entityType".into(), s("WORKER_METRIC_STATS")),
        ]),
        // A multi-stream lease of another stream: never taken.
        HashMap::from([
            (
                "leaseKey".into(),
                s("111111111111:another-stream:1700000000:shardId-000000000000"),
            ),
            ("leaseCounter".into(), n(3)),
            ("checkpoint".into(), s("TRIM_HORIZON")),
            ("checkpointSubSequenceNumber".into(), n(0)),
            ("ownerSwitchesSinceCheckpoint".into(), n(0)),
            (
                "streamName".into(),
                s("111111111111:another-stream:1700000000"),
            ),
            ("shardId".into(), s("shardId-000000000000")),
        ]),
    ];
    for item in kcl_items {
        ddb.put_item()
            .table_name(&app)
            .set_item(Some(item))
            .send()
            .await
            .unwrap();
    }

    let extra = [("KCLD_LEASE__FAILOVER_TIME_MS", "3000")];
    let mut k = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "kcld-1", &extra)).unwrap();
    let want: HashSet<Vec<u8>> = per_shard[&shards[0]][4..]
        .iter()
        .chain(&per_shard[&shards[1]][3..])
        .map(|(_, d)| d.clone())
        .collect();
    let got = collect(&mut [&mut k], &want, Duration::from_secs(60)).await;
    let extra_lines = k.drain_for(Duration::from_secs(2)).await;
    let got: Vec<Vec<u8>> = got.into_iter().map(|(_, d)| d.data).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "records at or before the KCL's checkpoints were delivered again"
    );
    assert!(extra_lines.is_empty(), "{extra_lines:?}");
    assert!(k
        .terminate(Duration::from_secs(25))
        .await
        .unwrap()
        .success());

    // What kcld left behind, read raw.
    let items: HashMap<String, Item> = stack
        .scan_table(&app)
        .await
        .unwrap()
        .into_iter()
        .map(|i| (i["leaseKey"].as_s().unwrap().clone(), i))
        .collect();
    for (shard, last) in [
        (&shards[0], &per_shard[&shards[0]]),
        (&shards[1], &per_shard[&shards[1]]),
    ] {
        let item = &items[shard];
        let last_seq = last.last().unwrap().0.to_string();
        assert_eq!(
            item["checkpoint"].as_s().unwrap(),
            &last_seq,
            "{shard}: final checkpoint"
        );
        assert_eq!(item["checkpointSubSequenceNumber"].as_n().unwrap(), "0");
        assert_eq!(item["ownerSwitchesSinceCheckpoint"].as_n().unwrap(), "0");
        assert!(item["leaseCounter"].as_n().unwrap().parse::<i64>().unwrap() > 7);
        assert!(
            !item.contains_key("leaseOwner"),
            "{shard} released at shutdown: {item:?}"
        );
        assert!(
            !item.contains_key("pendingCheckpoint"),
            "pending checkpoint cleared"
        );
    }
    let other = &items["111111111111:another-stream:1700000000:shardId-000000000000"];
    assert_eq!(
        other["leaseCounter"].as_n().unwrap(),
        "3",
        "another stream's lease was touched"
    );
    assert_eq!(
        items["worker-metrics-x"].len(),
        2,
        "a non-lease item was written: {:?}",
        items["worker-metrics-x"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_leases_use_the_kcl_names_and_types() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("schema"), 2)
        .await
        .unwrap();
    let app = unique_name("schema-app");
    let k = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "kcld-1", &[])).unwrap();
    wait_for(&stack, &app, Duration::from_secs(30), |l| {
        l.get("kcld-1") == Some(&2)
    })
    .await;
    let items = stack.scan_table(&app).await.unwrap();
    assert_eq!(items.len(), 2);
    for item in &items {
        assert!(item["leaseKey"].as_s().unwrap().starts_with("shardId-"));
        assert_eq!(item["leaseOwner"].as_s().unwrap(), "kcld-1");
        assert!(item["leaseCounter"].as_n().is_ok());
        assert_eq!(item["checkpoint"].as_s().unwrap(), "TRIM_HORIZON");
        assert_eq!(item["checkpointSubSequenceNumber"].as_n().unwrap(), "0");
        assert_eq!(item["ownerSwitchesSinceCheckpoint"].as_n().unwrap(), "0");
        assert!(item["startingHashKey"]
            .as_s()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit()));
        assert!(item["endingHashKey"]
            .as_s()
            .unwrap()
            .bytes()
            .all(|b| b.is_ascii_digit()));
        assert_eq!(item["entityType"].as_s().unwrap(), "LEASE");
    }
    // The table itself: leaseKey (S) as the only key, on demand.
    let table = stack
        .consumer_dynamodb()
        .await
        .describe_table()
        .table_name(&app)
        .send()
        .await
        .unwrap()
        .table
        .unwrap();
    assert_eq!(table.key_schema().len(), 1);
    assert_eq!(table.key_schema()[0].attribute_name(), "leaseKey");
    assert_eq!(
        table.billing_mode_summary().and_then(|b| b.billing_mode()),
        Some(&BillingMode::PayPerRequest)
    );
    k.terminate(Duration::from_secs(25)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_with_another_key_schema_is_refused() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("wrong"), 1)
        .await
        .unwrap();
    let app = unique_name("wrong-app");
    stack.create_table(&app, "id").await.unwrap();
    let k = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "kcld-1", &[])).unwrap();
    let (status, text) = k.wait_with_stderr(Duration::from_secs(30)).await.unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(
        text.contains("not a lease table") && text.contains("lease_table"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_while_records_flow_lose_nothing_and_keep_key_order() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let name = unique_name("reshard");
    let arn = stack.create_shared_stream(&name, 3).await.unwrap();
    let app = unique_name("reshard-app");
    let mut k = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "kcld-1", &[])).unwrap();

    // Records "key:n" with n counting up per key, put in waves while the
    // stream is resharded between them.
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
    let w = wave(200);
    stack.put_records(&arn, &w).await.unwrap();
    all.extend(w);

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
    let w = wave(200);
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
    let w = wave(200);
    stack.put_records(&arn, &w).await.unwrap();
    all.extend(w);

    let got = collect(&mut [&mut k], &data_set(&all), Duration::from_secs(90)).await;
    let got: Vec<String> = got
        .into_iter()
        .map(|(_, d)| String::from_utf8(d.data).unwrap())
        .collect();
    // Per key, records arrive in the order they were put, across parent and
    // child shards.
    let mut last: HashMap<String, usize> = HashMap::new();
    for r in &got {
        let (key, n) = r.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        let prev = last.insert(key.to_owned(), n).unwrap_or(0);
        assert!(n > prev, "{key}: {n} after {prev}");
    }
    assert_eq!(got.len(), all.len(), "duplicates without any failure");

    // The parents ended with SHARD_END and name their children.
    let items = stack.scan_table(&app).await.unwrap();
    let ended: Vec<&Item> = items
        .iter()
        .filter(|i| i["checkpoint"].as_s().unwrap() == "SHARD_END")
        .collect();
    assert_eq!(ended.len(), 3, "split parent and both merged parents ended");
    assert!(ended
        .iter()
        .all(|i| !i["childShardIds"].as_ss().unwrap().is_empty()));
    let children: Vec<&Item> = items
        .iter()
        .filter(|i| i.contains_key("parentShardId"))
        .collect();
    assert_eq!(children.len(), 3, "two split children and one merged child");
    k.terminate(Duration::from_secs(25)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_stream_lease_keys_of_this_stream_are_resumed() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let name = unique_name("multi");
    let arn = stack.create_shared_stream(&name, 1).await.unwrap();
    let records = sample_records(20, 3);
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let shard = placed[0].0.clone();
    let mut seqs: Vec<(SequenceNumber, Vec<u8>)> = placed
        .iter()
        .zip(&records)
        .map(|((_, seq), (_, d))| (seq.parse().unwrap(), d.clone()))
        .collect();
    seqs.sort();

    // A multi-stream KCL application's table: keys account:stream:epoch:shard,
    // the epoch being the stream's creation time.
    let app = unique_name("multi-app");
    stack.create_table(&app, "leaseKey").await.unwrap();
    let ddb = stack.consumer_dynamodb().await;
    let created = stack.creation_epoch(&arn).await.unwrap();
    let stream_id = format!("{}:{name}:{created}", stack.producer_account);
    let key = format!("{stream_id}:{shard}");
    // A lease of a former stream of the same name (deleted, created again):
    // not this stream's, never taken or read.
    let former_id = format!("{}:{name}:{}", stack.producer_account, created - 86_400);
    let former_key = format!("{former_id}:{shard}");
    let former: Item = HashMap::from([
        ("leaseKey".into(), s(&former_key)),
        ("leaseCounter".into(), n(7)),
        ("checkpoint".into(), s("TRIM_HORIZON")),
        ("checkpointSubSequenceNumber".into(), n(0)),
        ("ownerSwitchesSinceCheckpoint".into(), n(0)),
        ("streamName".into(), s(&former_id)),
        ("shardId".into(), s(&shard)),
    ]);
    ddb.put_item()
        .table_name(&app)
        .set_item(Some(former.clone()))
        .send()
        .await
        .unwrap();
    let item: Item = HashMap::from([
        ("leaseKey".into(), s(&key)),
        ("leaseCounter".into(), n(12)),
        ("checkpoint".into(), s(&seqs[9].0.to_string())),
        ("checkpointSubSequenceNumber".into(), n(0)),
        ("ownerSwitchesSinceCheckpoint".into(), n(0)),
        ("streamName".into(), s(&stream_id)),
        ("shardId".into(), s(&shard)),
    ]);
    ddb.put_item()
        .table_name(&app)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();

    let mut k = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "kcld-1", &[])).unwrap();
    let want: HashSet<Vec<u8>> = seqs[10..].iter().map(|(_, d)| d.clone()).collect();
    let got = collect(&mut [&mut k], &want, Duration::from_secs(60)).await;
    assert_eq!(
        got.len(),
        want.len(),
        "resumed after the multi-stream checkpoint"
    );
    assert!(k
        .terminate(Duration::from_secs(25))
        .await
        .unwrap()
        .success());

    let mut items = stack.scan_table(&app).await.unwrap();
    assert_eq!(
        items.len(),
        2,
        "no single-stream lease was added beside the multi-stream ones: {items:?}"
    );
    let former_at = items
        .iter()
        .position(|i| i["leaseKey"].as_s().unwrap() == &former_key)
        .unwrap();
    assert_eq!(
        items.remove(former_at),
        former,
        "the former stream's lease is left as it was"
    );
    let item = &items[0];
    assert_eq!(item["leaseKey"].as_s().unwrap(), &key);
    assert_eq!(item["streamName"].as_s().unwrap(), &stream_id);
    assert_eq!(item["shardId"].as_s().unwrap(), &shard);
    assert_eq!(item["checkpoint"].as_s().unwrap(), &seqs[19].0.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_inside_a_kpl_aggregate_from_a_sub_sequence_checkpoint() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("subseq"), 1)
        .await
        .unwrap();
    let aggregate = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../records/tests/fixtures/basic.agg"
    ))
    .unwrap();
    let records = vec![
        ("before".to_owned(), b"before the aggregate".to_vec()),
        ("agg".to_owned(), aggregate),
        ("after".to_owned(), b"after the aggregate".to_vec()),
    ];
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let shard = placed[0].0.clone();

    // The KCL confirmed user records 0, 1 and 2 of the aggregate.
    let app = unique_name("subseq-app");
    stack.create_table(&app, "leaseKey").await.unwrap();
    let ddb = stack.consumer_dynamodb().await;
    let item: Item = HashMap::from([
        ("leaseKey".into(), s(&shard)),
        ("leaseCounter".into(), n(5)),
        ("checkpoint".into(), s(&placed[1].1)),
        ("checkpointSubSequenceNumber".into(), n(2)),
        ("ownerSwitchesSinceCheckpoint".into(), n(0)),
    ]);
    ddb.put_item()
        .table_name(&app)
        .set_item(Some(item))
        .send()
        .await
        .unwrap();

    let mut k = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "kcld-1", &[])).unwrap();
    let lines = k.take_lines(4, Duration::from_secs(60)).await;
    let extra = k.drain_for(Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "{extra:?}");
    let got: Vec<(Option<u64>, String)> = lines
        .iter()
        .map(|l| {
            let d = Delivered::parse(l).unwrap();
            (d.sub_sequence_number, d.partition_key)
        })
        .collect();
    assert_eq!(
        got.iter().map(|(sub, _)| *sub).collect::<Vec<_>>(),
        [Some(3), Some(4), Some(5), None],
        "exactly the unconfirmed user records, then the next record: {got:?}"
    );
    assert_eq!(got[3].1, "after");
    assert!(k
        .terminate(Duration::from_secs(25))
        .await
        .unwrap()
        .success());
    let items = stack.scan_table(&app).await.unwrap();
    assert_eq!(items[0]["checkpoint"].as_s().unwrap(), &placed[2].1);
    assert_eq!(items[0]["checkpointSubSequenceNumber"].as_n().unwrap(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_table_stops_kcld_with_a_clear_error() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("gone"), 2)
        .await
        .unwrap();
    let app = unique_name("gone-app");
    let k = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "kcld-1", &[])).unwrap();
    wait_for(&stack, &app, Duration::from_secs(30), |l| {
        l.get("kcld-1") == Some(&2)
    })
    .await;
    stack
        .consumer_dynamodb()
        .await
        .delete_table()
        .table_name(&app)
        .send()
        .await
        .unwrap();
    let (status, text) = k.wait_with_stderr(Duration::from_secs(40)).await.unwrap();
    assert_eq!(status.code(), Some(1), "{text}");
    let last = text.lines().last().unwrap_or_default();
    assert!(
        last.contains("was deleted") && last.contains(&app),
        "{last}"
    );
    assert!(!text.contains("panicked"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stopping_signal_but_sigkill_releases_the_leases_and_sighup_reloads() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("signals"), 2)
        .await
        .unwrap();
    for signal in ["HUP", "INT", "QUIT", "TERM"] {
        let app = unique_name("signals-app");
        let k = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "worker-s", &[])).unwrap();
        wait_for(&stack, &app, Duration::from_secs(30), |l| {
            l.get("worker-s") == Some(&2)
        })
        .await;
        let log = k.stderr.clone();
        if signal == "HUP" {
            // SIGHUP reloads the configuration: kcld goes on with its
            // leases, and a later SIGTERM stops it as usual.
            let pid = k.pid().unwrap().to_string();
            std::process::Command::new("kill")
                .args(["-HUP", &pid])
                .status()
                .unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !log
                .lock()
                .unwrap()
                .contains("SIGHUP: configuration reloaded")
            {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{}",
                    log.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let owners = stack.lease_owners(&app).await.unwrap();
            assert!(
                owners.values().all(|o| o.as_deref() == Some("worker-s")),
                "SIGHUP dropped leases: {owners:?}"
            );
            let status = k.signal("TERM", Duration::from_secs(25)).await.unwrap();
            assert!(status.success(), "{status:?}");
            continue;
        }
        let status = k.signal(signal, Duration::from_secs(25)).await.unwrap();
        let log = log.lock().unwrap().clone();
        assert!(status.success(), "SIG{signal}: {status:?}\n{log}");
        assert!(log.contains(&format!("SIG{signal}")), "{log}");
        let owners = stack.lease_owners(&app).await.unwrap();
        assert!(
            owners.values().all(Option::is_none),
            "SIG{signal} left leases owned: {owners:?}"
        );
    }
}
