//! Shard lineage over generations, against the local stack: a stream
//! resharded twice is read once whatever the shard syncs and clean-ups do
//! after it; a new application at LATEST reads only what comes after its
//! start; a shard that no longer exists ends instead of stopping kcld; a
//! lease table call stuck on one lease does not cost the others.
//!
//! These tests run one at a time: lease timing is part of what they check.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kcld_testkit::fault::{Fault, FaultProxy};
use kcld_testkit::{metric_sum, unique_name, Delivered, Kcld, Stack};
use tokio::sync::Mutex;

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");
static SERIAL: Mutex<()> = Mutex::const_new(());

fn env(
    stack: &Stack,
    arn: &str,
    app: &str,
    initial: &str,
    extra: &[(&str, &str)],
) -> HashMap<String, String> {
    let mut env = stack.kcld_env(arn, app, &format!("{app}-1"));
    env.insert("KCLD_INITIAL_POSITION".into(), initial.into());
    env.insert("KCLD_LEASE__SHARD_SYNC_INTERVAL_MS".into(), "1000".into());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// Records "pk-K:gen:n", numbered per key across the whole test.
struct Producer {
    keys: usize,
    next: Vec<usize>,
}

impl Producer {
    fn new(keys: usize) -> Self {
        Producer {
            keys,
            next: vec![0; keys],
        }
    }

    fn wave(&mut self, size: usize) -> Vec<(String, Vec<u8>)> {
        (0..size)
            .map(|i| {
                let key = i % self.keys;
                self.next[key] += 1;
                (
                    format!("pk-{key}"),
                    format!("pk-{key}:{}", self.next[key]).into_bytes(),
                )
            })
            .collect()
    }
}

/// Reads until every record of `want` arrived, then `quiet` longer; every
/// delivery, duplicates included.
async fn collect(
    k: &mut Kcld,
    want: &HashSet<Vec<u8>>,
    within: Duration,
    quiet: Duration,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    let mut seen = HashSet::new();
    while !want.is_subset(&seen) && Instant::now() < deadline {
        for line in k.take_lines(usize::MAX, Duration::from_millis(100)).await {
            let d = Delivered::parse(&line).unwrap();
            seen.insert(d.data.clone());
            all.push(d.data);
        }
    }
    let missing = want.difference(&seen).count();
    assert_eq!(
        missing,
        0,
        "{missing} records never delivered; stderr:\n{}",
        k.stderr_text()
    );
    for line in k.drain_for(quiet).await {
        all.push(Delivered::parse(&line).unwrap().data);
    }
    all
}

fn data(records: &[(String, Vec<u8>)]) -> HashSet<Vec<u8>> {
    records.iter().map(|(_, d)| d.clone()).collect()
}

/// Per key, the numbers arrive in increasing order: parents before children.
fn assert_key_order(got: &[Vec<u8>]) {
    let mut last: HashMap<String, usize> = HashMap::new();
    for r in got {
        let r = String::from_utf8(r.clone()).unwrap();
        let (key, n) = r.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        let prev = last.insert(key.to_owned(), n).unwrap_or(0);
        assert!(n > prev, "{key}: {n} after {prev}");
    }
}

fn duplicates(got: &[Vec<u8>]) -> usize {
    got.len() - got.iter().collect::<HashSet<_>>().len()
}

/// Waits until the lease table holds exactly `n` items.
async fn wait_for_leases(stack: &Stack, table: &str, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let items = stack.scan_table(table).await.unwrap_or_default();
        if items.len() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "table {table} holds {} leases, not {n}: {:?}",
            items.len(),
            items
                .iter()
                .map(|i| i["leaseKey"].as_s().unwrap().clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resharded_twice_is_read_once_by_one_new_and_old_applications() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let name = unique_name("generations");
    let arn = stack.create_shared_stream(&name, 1).await.unwrap();
    let app = unique_name("gen-app");
    let mut k = Kcld::spawn(
        KCLD,
        &["run"],
        &env(&stack, &arn, &app, "TRIM_HORIZON", &[]),
    )
    .unwrap();

    // Records in every generation: 1 shard, then 2, then 4.
    let mut producer = Producer::new(16);
    let mut written = Vec::new();
    for generation in 0..3 {
        if generation > 0 {
            stack.split_open_shards(&arn).await.unwrap();
        }
        let w = producer.wave(120);
        stack.put_records(&arn, &w).await.unwrap();
        written.extend(w);
    }
    let got = collect(
        &mut k,
        &data(&written),
        Duration::from_secs(90),
        Duration::ZERO,
    )
    .await;
    assert_eq!(duplicates(&got), 0, "duplicates before any clean-up");

    // Clean-up removes both generations of parents (7 leases -> 4), and
    // several shard syncs (one a second) run after it while ListShards
    // still lists every closed shard.
    wait_for_leases(&stack, &app, 4, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let w = producer.wave(120);
    stack.put_records(&arn, &w).await.unwrap();
    written.extend(w);
    let mut got_all = got;
    got_all.extend(
        collect(
            &mut k,
            &data(&written[360..]),
            Duration::from_secs(60),
            Duration::from_secs(5),
        )
        .await,
    );
    assert_eq!(
        got_all.len(),
        written.len(),
        "{} records written, {} delivered ({} duplicates)",
        written.len(),
        got_all.len(),
        duplicates(&got_all)
    );
    assert_key_order(&got_all);
    eprintln!(
        "resharding over generations: 1 -> 2 -> 4 shards, {} records written, {} delivered, {} duplicates, \
         7 leases cleaned up to 4",
        written.len(),
        got_all.len(),
        duplicates(&got_all)
    );
    let items = stack.scan_table(&app).await.unwrap();
    assert_eq!(items.len(), 4, "no ancestor lease was created again");
    assert!(k.is_running());

    // A new application at LATEST on the twice-resharded stream: only what
    // is written after it started.
    let latest_app = unique_name("gen-latest");
    let mut latest = Kcld::spawn(
        KCLD,
        &["run"],
        &env(&stack, &arn, &latest_app, "LATEST", &[]),
    )
    .unwrap();
    wait_for_leases(&stack, &latest_app, 4, Duration::from_secs(30)).await;
    // Its readers take their LATEST iterators once they hold the leases.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = producer.wave(80);
    stack.put_records(&arn, &after).await.unwrap();
    written.extend(after.clone());
    let got_latest = collect(
        &mut latest,
        &data(&after),
        Duration::from_secs(60),
        Duration::from_secs(6),
    )
    .await;
    let before: HashSet<Vec<u8>> = data(&written[..written.len() - after.len()]);
    let old = got_latest.iter().filter(|d| before.contains(*d)).count();
    assert_eq!(
        old, 0,
        "a LATEST application delivered {old} records written before it started"
    );
    assert_eq!(got_latest.len(), after.len(), "each new record once");
    let items = stack.scan_table(&latest_app).await.unwrap();
    assert_eq!(items.len(), 4, "LATEST leases only the open shards");

    // A new application at TRIM_HORIZON: every record once, parents first.
    let th_app = unique_name("gen-trim");
    let mut th = Kcld::spawn(
        KCLD,
        &["run"],
        &env(&stack, &arn, &th_app, "TRIM_HORIZON", &[]),
    )
    .unwrap();
    let got_th = collect(
        &mut th,
        &data(&written),
        Duration::from_secs(90),
        Duration::from_secs(6),
    )
    .await;
    assert_eq!(
        got_th.len(),
        written.len(),
        "{} duplicates",
        duplicates(&got_th)
    );
    assert_key_order(&got_th);

    // The first application saw the last wave once too, and nothing else.
    let more = k.drain_for(Duration::from_secs(2)).await;
    let last: HashSet<Vec<u8>> = data(&after);
    let extra: Vec<Vec<u8>> = more
        .iter()
        .map(|l| Delivered::parse(l).unwrap().data)
        .collect();
    assert!(
        extra.iter().all(|d| last.contains(d)),
        "the first application re-read old records"
    );
    assert_eq!(extra.len(), after.len());
    for p in [k, latest, th] {
        p.stop_cleanly(Duration::from_secs(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_no_longer_exists_ends_and_its_children_are_read() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let name = unique_name("gone");
    let arn = stack.create_shared_stream(&name, 1).await.unwrap();
    let mut producer = Producer::new(8);
    let parent_records = producer.wave(40);
    stack.put_records(&arn, &parent_records).await.unwrap();
    let parent = stack.shards(&arn).await.unwrap()[0].shard_id().to_owned();
    stack.split_open_shards(&arn).await.unwrap();
    let child_records = producer.wave(60);
    stack.put_records(&arn, &child_records).await.unwrap();

    // The service answers ResourceNotFound for the parent only, as it does
    // for a shard that expired past the retention period.
    let proxy = FaultProxy::start(&stack.kinesis_endpoint).await.unwrap();
    let not_found = Fault::resource_not_found(&format!(
        "Shard {parent} in stream {name} under account {} does not exist",
        stack.producer_account
    ));
    proxy.fail_matching(
        "Kinesis_20131202.GetShardIterator",
        &parent,
        not_found.clone(),
    );
    proxy.fail_matching("Kinesis_20131202.GetRecords", &parent, not_found);
    let app = unique_name("gone-app");
    let mut vars = env(&stack, &arn, &app, "TRIM_HORIZON", &[]);
    vars.insert("AWS_ENDPOINT_URL_KINESIS".into(), proxy.url());
    let mut k = Kcld::spawn(KCLD, &["run"], &vars).unwrap();

    let got = collect(
        &mut k,
        &data(&child_records),
        Duration::from_secs(60),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        got.len(),
        child_records.len(),
        "the children, each record once"
    );
    assert!(k.is_running(), "kcld goes on: {}", k.stderr_text());
    let stderr = k.stderr_text();
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains(&parent))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one error line names the lost shard:\n{stderr}"
    );
    assert!(
        errors[0].contains("no longer exists") && errors[0].contains("TRIM_HORIZON"),
        "{}",
        errors[0]
    );
    let ops = k.ops_addr(Duration::from_secs(5)).await.unwrap();
    let (_, page) = kcld_testkit::http_get(ops, "/metrics").await.unwrap();
    assert_eq!(metric_sum(&page, "kcld_shards_lost_total").0, 1.0);
    let items = stack.scan_table(&app).await.unwrap();
    let parent_item = items
        .iter()
        .find(|i| i["leaseKey"].as_s().unwrap() == &parent);
    if let Some(item) = parent_item {
        assert_eq!(item["checkpoint"].as_s().unwrap(), "SHARD_END");
    }
    k.stop_cleanly(Duration::from_secs(25)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_table_call_stuck_on_one_lease_leaves_the_others_held_and_read() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let name = unique_name("stuck");
    let arn = stack.create_shared_stream(&name, 4).await.unwrap();
    let proxy = FaultProxy::start(&stack.dynamodb_endpoint).await.unwrap();
    let app = unique_name("stuck-app");
    let mut vars = env(
        &stack,
        &arn,
        &app,
        "TRIM_HORIZON",
        &[("KCLD_LEASE__FAILOVER_TIME_MS", "3000")],
    );
    vars.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), proxy.url());
    let worker = format!("{app}-1");
    let mut k = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let mut producer = Producer::new(32);
    let first = producer.wave(64);
    stack.put_records(&arn, &first).await.unwrap();
    collect(
        &mut k,
        &data(&first),
        Duration::from_secs(30),
        Duration::ZERO,
    )
    .await;

    // Every write of one lease is held for three failover times.
    let stuck = stack.shards(&arn).await.unwrap()[0].shard_id().to_owned();
    proxy.hold_matching(
        "DynamoDB_20120810.UpdateItem",
        &stuck,
        Duration::from_secs(9),
    );
    let counters = |items: &[kcld_testkit::Item]| -> HashMap<String, (Option<String>, i64)> {
        items
            .iter()
            .map(|i| {
                (
                    i["leaseKey"].as_s().unwrap().clone(),
                    (
                        i.get("leaseOwner").and_then(|o| o.as_s().ok()).cloned(),
                        i["leaseCounter"].as_n().unwrap().parse().unwrap(),
                    ),
                )
            })
            .collect()
    };
    let before = counters(&stack.scan_table(&app).await.unwrap());
    let started = Instant::now();
    let mut renewed: HashSet<String> = HashSet::new();
    while started.elapsed() < Duration::from_secs(8) {
        let now = counters(&stack.scan_table(&app).await.unwrap());
        for (key, (owner, counter)) in &now {
            if key == &stuck {
                continue;
            }
            assert_eq!(
                owner.as_deref(),
                Some(worker.as_str()),
                "{key} left this worker"
            );
            if *counter > before[key].1 {
                renewed.insert(key.clone());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        renewed.len(),
        3,
        "the other leases went on renewing: {renewed:?}"
    );
    // Not lost and taken again meanwhile: held all along.
    let stderr = k.stderr_text();
    let lost: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("lease lost") && !l.contains(&stuck))
        .collect();
    assert!(lost.is_empty(), "other leases were lost: {lost:#?}");
    // The other shards are read meanwhile.
    let during: Vec<(String, Vec<u8>)> = producer.wave(64);
    let placed = stack.put_records(&arn, &during).await.unwrap();
    let others: Vec<(String, Vec<u8>)> = during
        .into_iter()
        .zip(placed)
        .filter(|(_, (shard, _))| shard != &stuck)
        .map(|(r, _)| r)
        .collect();
    collect(
        &mut k,
        &data(&others),
        Duration::from_secs(20),
        Duration::ZERO,
    )
    .await;
    assert!(k.is_running(), "{}", k.stderr_text());
    proxy.clear();
    k.stop_cleanly(Duration::from_secs(25)).await;
}
