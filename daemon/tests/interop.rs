//! The Java KCL beside kcld on one lease table, against the local stack:
//! an application moves from the KCL (3.x, then 2.x) to kcld and back, and
//! every record is processed exactly once across the moves.
//!
//! The KCL side is `interop/`, a real KCL application built by
//! `deploy/local/stack up` for KCL 3.x and 2.x (`LOCALAWS_KCL3_JAR`,
//! `LOCALAWS_KCL2_JAR`). It writes each user record it processes as a JSON
//! line and checkpoints at the record, every `CHECKPOINT_EVERY` records and
//! at the last one it wrote before stopping, so whatever it wrote is
//! covered by its checkpoints and nothing past them was written.
//!
//! These tests run one at a time: each starts JVMs and kcld processes.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use kcld_testkit::{unique_name, Delivered, Kcld, Stack};
use tokio::sync::Mutex;

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A KCL version under test: the variable naming its application's jar.
#[derive(Clone, Copy)]
struct Kcl {
    name: &'static str,
    jar_variable: &'static str,
}

const KCL3: Kcl = Kcl {
    name: "kcl3",
    jar_variable: "LOCALAWS_KCL3_JAR",
};
const KCL2: Kcl = Kcl {
    name: "kcl2",
    jar_variable: "LOCALAWS_KCL2_JAR",
};

impl Kcl {
    fn jar(&self) -> PathBuf {
        kcld_testkit::interop_jar(self.jar_variable)
    }

    /// Starts the KCL application on `arn` with the lease table `app`,
    /// writing the records it processes to `output`.
    fn spawn(
        &self,
        stack: &Stack,
        arn: &str,
        app: &str,
        worker: &str,
        output: &Path,
        extra: &[(&str, &str)],
    ) -> Kcld {
        let mut env = stack.consumer_env();
        for (k, v) in [
            ("STREAM_ARN", arn),
            ("APPLICATION_NAME", app),
            ("WORKER_ID", worker),
            ("INITIAL_POSITION", "TRIM_HORIZON"),
        ] {
            env.insert(k.into(), v.into());
        }
        env.insert("OUTPUT".into(), output.display().to_string());
        env.insert(
            "EVENTS".into(),
            output.with_extension("events").display().to_string(),
        );
        if let Ok(home) = std::env::var("JAVA_HOME") {
            env.insert("JAVA_HOME".into(), home);
        }
        for (k, v) in extra {
            env.insert(k.to_string(), v.to_string());
        }
        let jar = self.jar();
        Kcld::spawn("java", &["-jar", &jar.display().to_string()], &env)
            .unwrap_or_else(|e| panic!("cannot start the {} application: {e}", self.name))
    }
}

/// kcld's environment for the same application.
fn kcld_env(stack: &Stack, arn: &str, app: &str, worker: &str) -> HashMap<String, String> {
    let mut env = stack.kcld_env(arn, app, worker);
    env.insert("KCLD_LEASE__SHARD_SYNC_INTERVAL_MS".into(), "2000".into());
    env
}

/// One user record as the KCL application wrote it.
#[derive(Debug, Clone)]
struct Processed {
    shard_id: String,
    sequence_number: String,
    sub_sequence_number: u64,
    data: String,
}

fn read_output(path: &Path) -> Vec<Processed> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let data = base64::engine::general_purpose::STANDARD
                .decode(v["data"].as_str().expect("data"))
                .expect("base64 data");
            Processed {
                shard_id: v["shardId"].as_str().expect("shardId").to_owned(),
                sequence_number: v["sequenceNumber"]
                    .as_str()
                    .expect("sequenceNumber")
                    .to_owned(),
                sub_sequence_number: v["subSequenceNumber"].as_u64().unwrap_or(0),
                data: String::from_utf8(data).expect("utf-8 data"),
            }
        })
        .collect()
}

/// Waits until the application wrote `n` records to `output`, or exited.
async fn wait_for_output(app: &mut Kcld, output: &Path, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while read_output(output).len() < n && Instant::now() < deadline && app.is_running() {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn text_records(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}-key-{i}"),
                format!("{prefix}-{i}").into_bytes(),
            )
        })
        .collect()
}

/// A KPL aggregate of `n` user records `agg-0` .. `agg-{n-1}`.
fn aggregate(n: usize) -> (String, Vec<u8>) {
    let users: Vec<(String, Option<String>, Vec<u8>)> = (0..n)
        .map(|i| {
            (
                format!("agg-key-{i}"),
                None,
                format!("agg-{i}").into_bytes(),
            )
        })
        .collect();
    ("agg-key-0".to_owned(), kcld_records::kpl::aggregate(&users))
}

/// How many times each record was processed, by its data.
fn tally<'a>(all: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for d in all {
        *counts.entry(d.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// KCL reads part of a stream (stopping inside a KPL aggregate of a shard
/// that was split), kcld takes the lease table and reads the rest, then
/// the KCL takes the table back and reads what came after: every record
/// processed exactly once.
async fn migration_there_and_back(kcl: Kcl) {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name(&format!("{}-move", kcl.name)), 1)
        .await
        .unwrap();
    // One shard: 10 records, an aggregate of 10 user records, 10 records;
    // then the shard is split and 20 records go to its children.
    let mut first = text_records("a", 10);
    first.push(aggregate(10));
    first.extend(text_records("b", 10));
    let mut expected: Vec<String> = (0..10)
        .map(|i| format!("a-{i}"))
        .chain((0..10).map(|i| format!("agg-{i}")))
        .chain((0..10).map(|i| format!("b-{i}")))
        .collect();
    stack.put_records(&arn, &first).await.unwrap();
    let parent = stack.shards(&arn).await.unwrap();
    stack.split_shard(&arn, &parent[0]).await.unwrap();
    // The split takes a moment on the emulator; puts retry meanwhile.
    let second = text_records("c", 20);
    stack.put_records(&arn, &second).await.unwrap();
    expected.extend((0..20).map(|i| format!("c-{i}")));

    let app = unique_name(&format!("{}-move-app", kcl.name));
    let dir = std::env::temp_dir().join(&app);
    std::fs::create_dir_all(&dir).unwrap();

    // 1. The KCL processes 15 user records: the parent's first 10 records
    // and 5 of the aggregate's, checkpointing every 4 and at the 15th.
    let kcl_first = dir.join("kcl-first.jsonl");
    let mut java = kcl.spawn(
        &stack,
        &arn,
        &app,
        "kcl-worker-1",
        &kcl_first,
        &[("STOP_AFTER", "15"), ("CHECKPOINT_EVERY", "4")],
    );
    let deadline = Instant::now() + Duration::from_secs(180);
    while java.is_running() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = java.stderr_text();
    let status = java.wait(Duration::from_secs(1)).await;
    let first_run = read_output(&kcl_first);
    assert!(
        matches!(status, Ok(s) if s.success()),
        "the {} application did not stop by itself after 15 records: {status:?}; it wrote {} \
         records; its log:\n{log}",
        kcl.name,
        first_run.len()
    );
    assert_eq!(first_run.len(), 15, "{first_run:?}");
    let last = &first_run[14];
    assert_eq!(last.data, "agg-4", "the KCL stopped inside the aggregate");
    let table = stack.checkpoints(&app).await;
    assert!(
        table
            .values()
            .any(|(seq, sub)| seq == &last.sequence_number && *sub == last.sub_sequence_number),
        "the KCL checkpointed at the aggregate's 5th user record: {table:?}"
    );

    // 2. kcld takes the table: the rest of the parent from inside the
    // aggregate, then both children.
    let remaining = 10 + 10 + 10 + 20 - 15;
    let mut kcld = Kcld::spawn(KCLD, &["run"], &kcld_env(&stack, &arn, &app, "kcld-1")).unwrap();
    let lines = kcld.take_lines(remaining, Duration::from_secs(120)).await;
    let extra = kcld.drain_for(Duration::from_secs(3)).await;
    let by_kcld: Vec<Delivered> = lines
        .iter()
        .chain(&extra)
        .map(|l| Delivered::parse(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        remaining,
        "kcld delivered {} of {remaining}; stderr:\n{}",
        lines.len(),
        kcld.stderr_text()
    );
    kcld.stop_cleanly(Duration::from_secs(30)).await;
    let first_of_kcld = String::from_utf8(by_kcld[0].data.clone()).unwrap();
    assert_eq!(
        first_of_kcld, "agg-5",
        "kcld starts right after the KCL's checkpoint inside the aggregate"
    );

    // 3. More records; the KCL takes the table back and reads only those.
    let third = text_records("d", 12);
    stack.put_records(&arn, &third).await.unwrap();
    expected.extend((0..12).map(|i| format!("d-{i}")));
    let kcl_back = dir.join("kcl-back.jsonl");
    let mut java = kcl.spawn(&stack, &arn, &app, "kcl-worker-2", &kcl_back, &[]);
    wait_for_output(&mut java, &kcl_back, third.len(), Duration::from_secs(180)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let back = read_output(&kcl_back);
    // The JVM's exit status after SIGTERM is 143 whatever its hooks did.
    let _ = java.terminate(Duration::from_secs(60)).await;

    // Every record once: none lost, none processed twice by the moves.
    let processed = tally(
        first_run
            .iter()
            .map(|p| p.data.as_str())
            .chain(
                by_kcld
                    .iter()
                    .map(|d| std::str::from_utf8(&d.data).expect("utf-8")),
            )
            .chain(back.iter().map(|p| p.data.as_str())),
    );
    let twice: Vec<_> = processed.iter().filter(|(_, n)| **n > 1).collect();
    let missing: Vec<_> = expected
        .iter()
        .filter(|d| !processed.contains_key(*d))
        .collect();
    assert!(
        twice.is_empty() && missing.is_empty() && processed.len() == expected.len(),
        "processed twice: {twice:?}; never processed: {missing:?}; {} processed of {} \
         (KCL first {}, kcld {}, KCL back {})",
        processed.len(),
        expected.len(),
        first_run.len(),
        by_kcld.len(),
        back.len()
    );
    let back_data: Vec<&str> = back.iter().map(|p| p.data.as_str()).collect();
    assert!(
        back_data.len() == third.len() && back_data.iter().all(|d| d.starts_with("d-")),
        "the KCL read back only what came after kcld's checkpoints: {back_data:?}"
    );
    let shards_back: Vec<&str> = back.iter().map(|p| p.shard_id.as_str()).collect();
    assert!(
        !shards_back.contains(&parent[0].shard_id()),
        "the finished parent is not read again: {shards_back:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_moves_from_kcl3_to_kcld_and_back_with_nothing_read_twice() {
    migration_there_and_back(KCL3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_moves_from_kcl2_to_kcld_and_back_with_nothing_read_twice() {
    migration_there_and_back(KCL2).await;
}

/// Every shard's owner, sampled until `ok` holds or `within` passes.
async fn owners_until(
    stack: &Stack,
    table: &str,
    within: Duration,
    ok: impl Fn(&HashMap<String, Option<String>>) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let owners = stack.lease_owners(table).await.unwrap_or_default();
        if ok(&owners) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    None
}

fn load(owners: &HashMap<String, Option<String>>) -> BTreeMap<String, usize> {
    let mut load = BTreeMap::new();
    for owner in owners.values() {
        *load
            .entry(owner.clone().unwrap_or_else(|| "<nobody>".into()))
            .or_insert(0) += 1;
    }
    load
}

/// One record as a worker of the mixed fleet processed it.
#[derive(Debug, Clone)]
struct Seen {
    worker: String,
    shard_id: String,
    data: String,
}

fn seen_by_kcl(worker: &str, output: &Path) -> Vec<Seen> {
    read_output(output)
        .into_iter()
        .map(|p| Seen {
            worker: worker.to_owned(),
            shard_id: p.shard_id,
            data: p.data,
        })
        .collect()
}

fn seen_by_kcld(worker: &str, lines: &[String]) -> Vec<Seen> {
    lines
        .iter()
        .map(|l| {
            let d = Delivered::parse(l).unwrap();
            Seen {
                worker: worker.to_owned(),
                shard_id: d.shard_id,
                data: String::from_utf8(d.data).expect("utf-8"),
            }
        })
        .collect()
}

/// Two KCL 2.x workers and two kcld instances on one lease table: the
/// leases balance over all four; after one worker of each kind is killed
/// the other two take every lease, each shard is then read by one worker
/// only, and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcl2_workers_and_kcld_share_one_lease_table_and_fail_over_to_each_other() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("fleet"), 8)
        .await
        .unwrap();
    let app = unique_name("fleet-app");
    let dir = std::env::temp_dir().join(&app);
    std::fs::create_dir_all(&dir).unwrap();
    let wave_a = text_records("a", 160);
    stack.put_records(&arn, &wave_a).await.unwrap();

    let (kcl_a_out, kcl_b_out) = (dir.join("kcl-a.jsonl"), dir.join("kcl-b.jsonl"));
    let mut kcl_a = KCL2.spawn(&stack, &arn, &app, "kcl-a", &kcl_a_out, &[]);
    let kcl_b = KCL2.spawn(&stack, &arn, &app, "kcl-b", &kcl_b_out, &[]);
    let mut with_checkpoints = kcld_env(&stack, &arn, &app, "kcld-a");
    // Checkpoint every batch, as the KCL applications do.
    with_checkpoints.insert("KCLD_CHECKPOINT__INTERVAL_MS".into(), "0".into());
    // Probes paid for in full: with two leases per worker the default budget
    // (1% of the renewals) leaves only the scans every 20 s, and kcld then
    // takes over as late as the KCL does (up to two take intervals after
    // the kill). Here the other workers are read once a renewal period.
    with_checkpoints.insert("KCLD_LEASE__PROBE_BUDGET_PERCENT".into(), "100".into());
    let mut kcld_a = Kcld::spawn(KCLD, &["run"], &with_checkpoints).unwrap();
    with_checkpoints.insert("KCLD_WORKER_ID".into(), "kcld-b".into());
    let mut kcld_b = Kcld::spawn(KCLD, &["run"], &with_checkpoints).unwrap();

    let balanced = owners_until(&stack, &app, Duration::from_secs(180), |owners| {
        let load = load(owners);
        owners.len() == 8 && load.len() == 4 && load.values().all(|n| *n == 2)
    })
    .await;
    let owners = stack.lease_owners(&app).await.unwrap_or_default();
    assert!(
        balanced.is_some(),
        "the leases did not balance 2/2/2/2 over the four workers: {:?}",
        load(&owners)
    );

    // Wave A processed, then one worker of each kind killed.
    let mut kcld_a_lines = kcld_a.take_lines(usize::MAX, Duration::from_secs(2)).await;
    let mut kcld_b_lines = kcld_b.take_lines(usize::MAX, Duration::from_secs(2)).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        kcld_a_lines.extend(kcld_a.drain_for(Duration::from_millis(500)).await);
        kcld_b_lines.extend(kcld_b.drain_for(Duration::from_millis(500)).await);
        let done = tally(
            seen_by_kcl("kcl-a", &kcl_a_out)
                .iter()
                .chain(&seen_by_kcl("kcl-b", &kcl_b_out))
                .chain(&seen_by_kcld("kcld-a", &kcld_a_lines))
                .chain(&seen_by_kcld("kcld-b", &kcld_b_lines))
                .map(|s| s.data.as_str()),
        );
        if done.len() == wave_a.len() || Instant::now() > deadline {
            break;
        }
    }
    // Let the last checkpoints land before the kill.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kcl_a.kill9().await;
    kcld_a.kill9().await;
    kcld_a_lines.extend(kcld_a.drain_for(Duration::from_millis(100)).await);
    let killed_at = Instant::now();
    // kcld takes its share as soon as the killed workers' leases expire;
    // the KCL's taker runs every twice the failover time.
    let kcld_share = owners_until(&stack, &app, Duration::from_secs(60), |owners| {
        load(owners).get("kcld-b").copied().unwrap_or(0) >= 4
    })
    .await;
    assert!(
        kcld_share.is_some_and(|t| t <= Duration::from_secs(20)),
        "kcld did not take its share of the killed workers' leases within the failover time \
         (10 s) and a few take intervals: {kcld_share:?}, {:?}",
        load(&stack.lease_owners(&app).await.unwrap_or_default())
    );
    let taken_over = owners_until(&stack, &app, Duration::from_secs(90), |owners| {
        let load = load(owners);
        owners.len() == 8
            && load.keys().all(|w| w == "kcl-b" || w == "kcld-b")
            && load.values().all(|n| *n == 4)
    })
    .await;
    let owners = stack.lease_owners(&app).await.unwrap_or_default();
    assert!(
        taken_over.is_some(),
        "the survivors did not take the killed workers' leases within 90 s: {:?}",
        load(&owners)
    );
    let takeover = killed_at.elapsed();

    // Wave B after the takeover: each shard's records go to its one owner.
    let wave_b = text_records("b", 160);
    stack.put_records(&arn, &wave_b).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut all;
    loop {
        kcld_b_lines.extend(kcld_b.drain_for(Duration::from_millis(500)).await);
        all = seen_by_kcl("kcl-a", &kcl_a_out);
        all.extend(seen_by_kcl("kcl-b", &kcl_b_out));
        all.extend(seen_by_kcld("kcld-a", &kcld_a_lines));
        all.extend(seen_by_kcld("kcld-b", &kcld_b_lines));
        let done = tally(all.iter().map(|s| s.data.as_str()));
        if done.len() == wave_a.len() + wave_b.len() || Instant::now() > deadline {
            break;
        }
    }
    kcld_b_lines.extend(kcld_b.drain_for(Duration::from_secs(3)).await);
    kcld_b.stop_cleanly(Duration::from_secs(30)).await;
    let _ = kcl_b.terminate(Duration::from_secs(60)).await;

    let counts = tally(all.iter().map(|s| s.data.as_str()));
    let missing: Vec<String> = wave_a
        .iter()
        .chain(&wave_b)
        .map(|(_, d)| String::from_utf8(d.clone()).unwrap())
        .filter(|d| !counts.contains_key(d))
        .collect();
    assert!(missing.is_empty(), "never processed: {missing:?}");
    // Wave B came after the takeover: one reader per shard, each record
    // once.
    let mut readers: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for s in all.iter().filter(|s| s.data.starts_with("b-")) {
        readers
            .entry(s.shard_id.as_str())
            .or_default()
            .insert(s.worker.as_str());
    }
    assert!(
        readers.values().all(|w| w.len() == 1),
        "a shard was read by two workers after the takeover: {readers:?}"
    );
    let twice: Vec<_> = counts
        .iter()
        .filter(|(d, n)| d.starts_with("b-") && **n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "processed twice after the takeover: {twice:?}"
    );
    // Before the kill, every record was checkpointed (every batch): the
    // survivors re-read nothing of wave A.
    let again: Vec<_> = counts
        .iter()
        .filter(|(d, n)| d.starts_with("a-") && **n > 1)
        .collect();
    assert!(again.is_empty(), "re-read after the takeover: {again:?}");
    eprintln!("kcld took its share after {kcld_share:?}; every lease was taken after {takeover:?}");
}

/// A running KCL 3.x fleet (its leader assigns the leases) and kcld never
/// share a lease table: kcld refuses to start beside it, takes nothing, and
/// says how to move; once the fleet stopped, kcld takes the table and reads
/// on from the fleet's checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcld_refuses_a_running_kcl3_fleet_and_takes_over_once_it_stopped() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("kcl3-live"), 2)
        .await
        .unwrap();
    let before = text_records("live", 10);
    stack.put_records(&arn, &before).await.unwrap();
    let app = unique_name("kcl3-live-app");
    let dir = std::env::temp_dir().join(&app);
    std::fs::create_dir_all(&dir).unwrap();
    let output = dir.join("kcl3.jsonl");
    let mut java = KCL3.spawn(&stack, &arn, &app, "kcl3-worker", &output, &[]);
    wait_for_output(&mut java, &output, before.len(), Duration::from_secs(180)).await;
    assert_eq!(
        read_output(&output).len(),
        before.len(),
        "the KCL 3.x application did not process the records:\n{}",
        java.stderr_text()
    );
    let owners_before = stack.lease_owners(&app).await.unwrap();

    // `kcld doctor` says so before anything starts.
    let mut doctor =
        Kcld::spawn(KCLD, &["doctor"], &kcld_env(&stack, &arn, &app, "kcld-1")).unwrap();
    let report = doctor
        .take_lines(usize::MAX, Duration::from_secs(60))
        .await
        .join("\n");
    let status = doctor.wait(Duration::from_secs(10)).await;
    assert!(
        matches!(status, Ok(s) if !s.success())
            && report.contains("no running KCL 3.x leader")
            && report.contains("leader kcl3-worker"),
        "kcld doctor names the running KCL 3.x fleet: {status:?}\n{report}"
    );

    let kcld = Kcld::spawn(KCLD, &["run"], &kcld_env(&stack, &arn, &app, "kcld-1")).unwrap();
    let stderr = kcld.stderr.clone();
    let status = kcld.wait(Duration::from_secs(60)).await;
    let log = stderr.lock().map(|s| s.clone()).unwrap_or_default();
    assert!(
        matches!(status, Ok(s) if s.code() == Some(1)),
        "kcld did not refuse the running KCL 3.x fleet: {status:?}\n{log}"
    );
    assert!(
        log.contains("running KCL 3.x fleet")
            && log.contains("leader kcl3-worker")
            && log.contains("CLIENT_VERSION_CONFIG_COMPATIBLE_WITH_2X"),
        "the refusal names the fleet, its leader and the way out:\n{log}"
    );
    assert_eq!(
        stack.lease_owners(&app).await.unwrap(),
        owners_before,
        "kcld took no lease from the KCL 3.x fleet"
    );

    // The fleet stops; kcld takes over from its checkpoints, and a second
    // start (after kcld stopped) reads on from kcld's.
    let _ = java.terminate(Duration::from_secs(60)).await;
    for round in 0..2 {
        let after = text_records(&format!("after{round}"), 6);
        stack.put_records(&arn, &after).await.unwrap();
        let mut kcld =
            Kcld::spawn(KCLD, &["run"], &kcld_env(&stack, &arn, &app, "kcld-1")).unwrap();
        let lines = kcld.take_lines(after.len(), Duration::from_secs(90)).await;
        let extra = kcld.drain_for(Duration::from_secs(3)).await;
        let got: Vec<String> = lines
            .iter()
            .chain(&extra)
            .map(|l| String::from_utf8(Delivered::parse(l).unwrap().data).unwrap())
            .collect();
        let mut want: Vec<String> = after
            .iter()
            .map(|(_, d)| String::from_utf8(d.clone()).unwrap())
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        want.sort();
        assert_eq!(
            sorted,
            want,
            "round {round}: kcld reads exactly what came after the last checkpoints:\n{}",
            kcld.stderr_text()
        );
        kcld.stop_cleanly(Duration::from_secs(30)).await;
    }
}

/// The leases kcld wrote, read by the KCL's own lease serializer (3.x and
/// 2.x), say what the raw items say: owner, counter, checkpoints with
/// sub-sequence numbers, SHARD_END, parents, children and hash ranges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kcl_reads_the_leases_kcld_wrote_as_kcld_wrote_them() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("schema"), 1)
        .await
        .unwrap();
    stack
        .put_records(&arn, &text_records("p", 5))
        .await
        .unwrap();
    let parent = stack.shards(&arn).await.unwrap();
    stack.split_shard(&arn, &parent[0]).await.unwrap();
    // Ten records and then an aggregate, all into the lower child, so
    // that its checkpoint ends inside the aggregate while the upper child
    // stays at TRIM_HORIZON (which keeps the finished parent's lease, with
    // SHARD_END and its children, in the table).
    let split_at: u128 = {
        let range = parent[0].hash_key_range().expect("hash key range");
        let (start, end): (u128, u128) = (
            range.starting_hash_key().parse().unwrap(),
            range.ending_hash_key().parse().unwrap(),
        );
        start + (end - start) / 2 + 1
    };
    let lower = |key: &str| {
        use md5::Digest;
        u128::from_be_bytes(md5::Md5::digest(key.as_bytes()).into()) < split_at
    };
    let mut keys = (0..).map(|i| format!("low-{i}")).filter(|k| lower(k));
    let mut later: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (keys.next().unwrap(), format!("q-{i}").into_bytes()))
        .collect();
    let (_, agg) = aggregate(10);
    later.push((keys.next().unwrap(), agg));
    stack.put_records(&arn, &later).await.unwrap();

    let app = unique_name("schema-app");
    let mut env = kcld_env(&stack, &arn, &app, "kcld-writer");
    env.insert("KCLD_CHECKPOINT__INTERVAL_MS".into(), "0".into());
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let lines = kcld.take_lines(25, Duration::from_secs(90)).await;
    assert_eq!(lines.len(), 25, "{}", kcld.stderr_text());
    // The last checkpoints land, then the owner dies holding its leases.
    tokio::time::sleep(Duration::from_secs(3)).await;
    kcld.kill9().await;

    let raw: BTreeMap<String, kcld_testkit::Item> = stack
        .scan_table(&app)
        .await
        .unwrap()
        .into_iter()
        .map(|item| (item["leaseKey"].as_s().unwrap().clone(), item))
        .collect();
    let parent_id = parent[0].shard_id().to_owned();
    let children: Vec<String> = raw.keys().filter(|k| **k != parent_id).cloned().collect();
    assert_eq!(
        (children.len(), raw.contains_key(&parent_id)),
        (2, true),
        "the parent and both children have leases: {raw:?}"
    );

    for kcl in [KCL3, KCL2] {
        let mut env = stack.consumer_env();
        env.insert("MODE".into(), "dump-leases".into());
        env.insert("APPLICATION_NAME".into(), app.clone());
        let jar = kcl.jar();
        let mut java = Kcld::spawn("java", &["-jar", &jar.display().to_string()], &env).unwrap();
        let dumped = java.take_lines(usize::MAX, Duration::from_secs(60)).await;
        let log = java.stderr_text();
        let _ = java.wait(Duration::from_secs(10)).await;
        let read: BTreeMap<String, serde_json::Value> = dumped
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| (v["leaseKey"].as_str().unwrap_or_default().to_owned(), v))
            .collect();
        assert_eq!(
            read.keys().collect::<Vec<_>>(),
            raw.keys().collect::<Vec<_>>(),
            "{}: the KCL reads every lease kcld wrote: {dumped:?}\n{log}",
            kcl.name
        );
        for (key, lease) in &read {
            assert!(
                lease.get("error").is_none(),
                "{}: the KCL's serializer refused {key}: {lease}",
                kcl.name
            );
            let item = &raw[key];
            let s = |name: &str| item.get(name).and_then(|v| v.as_s().ok()).cloned();
            let n = |name: &str| {
                item.get(name)
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse::<i64>().ok())
            };
            let set = |name: &str| {
                let mut v = item
                    .get(name)
                    .and_then(|v| v.as_ss().ok())
                    .cloned()
                    .unwrap_or_default();
                v.sort();
                v.join(",")
            };
            let what = format!("{}: lease {key}: {lease} against {item:?}", kcl.name);
            assert_eq!(
                lease["leaseOwner"].as_str().map(str::to_owned),
                s("leaseOwner"),
                "{what}"
            );
            // The finished parent was let go at its end; the children were held
            // when the owner died.
            let owner = if *key == parent_id {
                None
            } else {
                Some("kcld-writer")
            };
            assert_eq!(lease["leaseOwner"].as_str(), owner, "{what}");
            assert_eq!(lease["leaseCounter"].as_i64(), n("leaseCounter"), "{what}");
            assert_eq!(
                lease["checkpoint"].as_str().map(str::to_owned),
                s("checkpoint"),
                "{what}"
            );
            assert_eq!(
                lease["checkpointSubSequenceNumber"].as_i64(),
                Some(n("checkpointSubSequenceNumber").unwrap_or(0)),
                "{what}"
            );
            assert_eq!(
                lease["ownerSwitchesSinceCheckpoint"].as_i64(),
                n("ownerSwitchesSinceCheckpoint"),
                "{what}"
            );
            assert_eq!(
                lease["parentShardIds"].as_str(),
                Some(set("parentShardId").as_str()),
                "{what}"
            );
            assert_eq!(
                lease["childShardIds"].as_str(),
                Some(set("childShardIds").as_str()),
                "{what}"
            );
            assert_eq!(
                lease["startingHashKey"].as_str().map(str::to_owned),
                s("startingHashKey"),
                "{what}"
            );
            assert_eq!(
                lease["endingHashKey"].as_str().map(str::to_owned),
                s("endingHashKey"),
                "{what}"
            );
        }
        // What it read is the lineage and the positions kcld reached.
        let p = &read[&parent_id];
        assert_eq!(p["checkpoint"], "SHARD_END", "{p}");
        let mut want_children = children.clone();
        want_children.sort();
        assert_eq!(
            p["childShardIds"].as_str(),
            Some(want_children.join(",").as_str()),
            "{p}"
        );
        for child in &children {
            assert_eq!(
                read[child]["parentShardIds"].as_str(),
                Some(parent_id.as_str())
            );
        }
        assert!(
            children
                .iter()
                .any(|c| read[c]["checkpointSubSequenceNumber"].as_i64() == Some(9)),
            "{}: one child's checkpoint is the aggregate's last user record: {read:?}",
            kcl.name
        );
    }
}
