//! The KCL's own MultiLangDaemon and `kcld multilang` side by side: the
//! same amazon-kclpy sample processor, the same properties file, the same
//! stream (a split shard, a KPL aggregate), each daemon with its own lease
//! table. Every protocol line between daemon and processor is recorded by
//! `tests/fixtures/trace_processor.py`; the tests compare the records each
//! processor was given, the checkpoints each daemon wrote and the message
//! traces. Differences that remain are listed in README ("kcld multilang
//! beside the Java MultiLangDaemon").
//!
//! The Java daemon is `interop/multilang` (KCL 3.1.3's MultiLangDaemon,
//! built by `deploy/local/stack up`, `LOCALAWS_MULTILANG_JAR`). It reads a
//! stream by name in its own account only (`streamArn` is cut down to the
//! name), so the stream here lives in the consumer's account.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use kcld_testkit::{unique_name, Kcld, Stack};
use serde_json::Value;

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

/// One properties file, as a user of the Java daemon writes it for this
/// stack; both daemons read it unchanged. Properties only the Java daemon
/// uses shorten its waits (kcld ignores them, saying so in its log).
fn properties(stack: &Stack, dir: &Path, arn: &str, app: &str) -> PathBuf {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let sample = stack.kclpy_dir.join("samples/sample_kclpy_app.py");
    let path = dir.join("app.properties");
    std::fs::write(
        &path,
        format!(
            "executableName = python3 {tracer} python3 {sample}\n\
             streamArn = {arn}\n\
             applicationName = {app}\n\
             AWSCredentialsProvider = DefaultCredentialsProvider\n\
             processingLanguage = python/3\n\
             initialPositionInStream = TRIM_HORIZON\n\
             regionName = us-east-1\n\
             kinesisEndpoint = {kinesis}\n\
             dynamoDBEndpoint = {dynamodb}\n\
             maxRecords = 1000\n\
             idleTimeBetweenReadsInMillis = 250\n\
             failoverTimeMillis = 10000\n\
             shardSyncIntervalMillis = 2000\n\
             parentShardPollIntervalMillis = 1000\n\
             leaseAssignmentIntervalMillis = 2000\n\
             shutdownGraceMillis = 60000\n\
             metricsLevel = NONE\n",
            tracer = fixtures.join("trace_processor.py").display(),
            sample = sample.display(),
            kinesis = stack.kinesis_endpoint,
            dynamodb = stack.dynamodb_endpoint,
        ),
    )
    .unwrap();
    path
}

/// One recorded protocol line.
#[derive(Debug, Clone)]
struct Line {
    to_processor: bool,
    message: Value,
    /// When the tracer saw it (epoch seconds).
    time: f64,
}

impl Line {
    fn action(&self) -> &str {
        self.message["action"].as_str().unwrap_or("?")
    }
}

/// The traces of the processor processes, by the shard of their
/// initialize message, in the order they started.
fn read_traces(dir: &Path) -> BTreeMap<String, Vec<Vec<Line>>> {
    let mut by_shard: BTreeMap<String, Vec<Vec<Line>>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("trace-") {
            continue;
        }
        let lines: Vec<Line> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            // A line still being written while the daemon runs is left
            // for the next read.
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| Line {
                to_processor: v["to"] == "processor",
                message: v["message"].clone(),
                time: v["t"].as_f64().unwrap_or_default(),
            })
            .collect();
        let Some(shard) = lines
            .first()
            .and_then(|l| l.message["shardId"].as_str())
            .map(str::to_owned)
        else {
            continue;
        };
        by_shard.entry(shard).or_default().push(lines);
    }
    for runs in by_shard.values_mut() {
        runs.sort_by(|a, b| a[0].time.total_cmp(&b[0].time));
    }
    by_shard
}

/// A record's data as text.
fn data_of(record: &Value) -> String {
    let data = base64::engine::general_purpose::STANDARD
        .decode(record["data"].as_str().unwrap_or_default())
        .unwrap();
    String::from_utf8_lossy(&data).into_owned()
}

/// The user records given to processors (all shards), by their data.
fn delivered(dir: &Path) -> Vec<String> {
    read_traces(dir)
        .values()
        .flatten()
        .flatten()
        .filter(|l| l.to_processor && l.action() == "processRecords")
        .flat_map(|l| l.message["records"].as_array().cloned().unwrap_or_default())
        .map(|r| data_of(&r))
        .collect()
}

/// Runs one daemon on the stream until every expected record reached a
/// processor, then SIGTERM, which must end it with one of `exit_codes`;
/// returns its trace directory and lease table.
async fn run(
    stack: &Stack,
    arn: &str,
    label: &str,
    expected: usize,
    exit_codes: &[i32],
    spawn: impl FnOnce(&Path, &std::collections::HashMap<String, String>) -> Kcld,
) -> (PathBuf, String) {
    let dir = std::env::temp_dir().join(unique_name(&format!("mld-{label}")));
    std::fs::create_dir_all(&dir).unwrap();
    let app = unique_name(&format!("mld-{label}"));
    let props = properties(stack, &dir, arn, &app);
    let mut env = stack.consumer_env();
    env.insert("PYTHONPATH".into(), stack.kclpy_dir.display().to_string());
    env.insert("TRACE_DIR".into(), dir.display().to_string());
    if let Ok(home) = std::env::var("JAVA_HOME") {
        env.insert("JAVA_HOME".into(), home);
    }
    let mut daemon = spawn(&props, &env);
    let start = Instant::now();
    loop {
        let seen = delivered(&dir).len();
        if seen >= expected {
            break;
        }
        assert!(
            daemon.is_running(),
            "{label} exited before delivering every record ({seen} of {expected}): {}",
            daemon.stderr_text()
        );
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "{label} delivered {seen} of {expected} records in 150 s: {}",
            daemon.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // Let a checkpoint in flight land, then stop as an operator does.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let status = daemon.terminate(Duration::from_secs(90)).await;
    assert!(
        matches!(&status, Ok(s) if s.code().is_some_and(|c| exit_codes.contains(&c))),
        "{label} did not stop cleanly on SIGTERM: {status:?}"
    );
    (dir, app)
}

/// A trace with the record batches taken out: what is left is the
/// lifecycle (initialize, the end of the shard or the shutdown, the
/// checkpoints there and the answers), line by line.
fn lifecycle(trace: &[Line]) -> Vec<Value> {
    let mut out = Vec::new();
    let mut in_batch = false;
    for line in trace {
        if line.to_processor && line.action() == "processRecords" {
            in_batch = true;
            continue;
        }
        if in_batch {
            if !line.to_processor
                && line.action() == "status"
                && line.message["responseFor"] == "processRecords"
            {
                in_batch = false;
            }
            continue;
        }
        out.push(serde_json::json!({
            "to": if line.to_processor { "processor" } else { "daemon" },
            "message": line.message,
        }));
    }
    out
}

/// The fields of each kind of message, both directions.
fn shapes(traces: &BTreeMap<String, Vec<Vec<Line>>>) -> BTreeMap<String, BTreeSet<String>> {
    let mut shapes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in traces.values().flatten().flatten() {
        let kind = format!(
            "{} {}",
            if line.to_processor {
                "to processor"
            } else {
                "to daemon"
            },
            line.action()
        );
        let fields = line
            .message
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        shapes.entry(kind.clone()).or_default().insert(fields);
        if line.action() == "processRecords" {
            for r in line.message["records"].as_array().into_iter().flatten() {
                let fields = r
                    .as_object()
                    .map(|o| o.keys().cloned().collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                shapes
                    .entry("record in processRecords".into())
                    .or_default()
                    .insert(fields);
            }
        }
    }
    shapes
}

/// Records per shard, each as the processor got it (every field).
fn records_by_shard(traces: &BTreeMap<String, Vec<Vec<Line>>>) -> BTreeMap<String, Vec<Value>> {
    traces
        .iter()
        .map(|(shard, runs)| {
            let records = runs
                .iter()
                .flatten()
                .filter(|l| l.to_processor && l.action() == "processRecords")
                .flat_map(|l| l.message["records"].as_array().cloned().unwrap_or_default())
                .collect();
            (shard.clone(), records)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_java_multilang_daemon_and_kcld_give_the_kclpy_sample_the_same_records_checkpoints_and_messages(
) {
    let stack = Stack::from_env().unwrap();
    let jar = kcld_testkit::interop_jar("LOCALAWS_MULTILANG_JAR");
    let arn = stack
        .create_own_stream(&unique_name("mld"), 2)
        .await
        .unwrap();

    // 20 records and a KPL aggregate of 5 user records of the first shard
    // (as the KPL aggregates: keys that hash into the shard), then the
    // first shard is split and 20 more records go to its children and the
    // other shard. And one aggregate no KPL writes: its user records hash
    // into the other shard (see `stray` below).
    let lower_half = |key: &str| kcld_records::kpl::hash_key(key, None).unwrap() < 1u128 << 127;
    let keys = |inside: bool, n: usize| -> Vec<String> {
        (0..)
            .map(|i| format!("agg-key-{i}"))
            .filter(|k| lower_half(k) == inside)
            .take(n)
            .collect()
    };
    let aggregate = |prefix: &str, keys: Vec<String>, outer: &str| -> (String, Vec<u8>) {
        let users: Vec<(String, Option<String>, Vec<u8>)> = keys
            .into_iter()
            .enumerate()
            .map(|(i, k)| (k, None, format!("{prefix}-{i}").into_bytes()))
            .collect();
        (outer.to_owned(), kcld_records::kpl::aggregate(&users))
    };
    let inside = keys(true, 5);
    let mut first: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("key-{i}"), format!("before-{i}").into_bytes()))
        .collect();
    first.push(aggregate("agg", inside.clone(), &inside[0]));
    first.push(aggregate("stray", keys(false, 3), &inside[0]));
    stack.put_records(&arn, &first).await.unwrap();
    let shards = stack.shards(&arn).await.unwrap();
    stack.split_shard(&arn, &shards[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| (format!("key-{i}"), format!("after-{i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &second).await.unwrap();
    let expected = 45;
    // The KCL drops a whole aggregate when one of its user records hashes
    // outside the shard (AggregatorUtil.deaggregate; kinesis-aggregation's
    // potential_data_loss.md); kcld delivers it: nothing is lost.
    let stray = |data: &String| data.starts_with("stray-");

    // The JVM ends with 143 (128 + SIGTERM) after its shutdown hook.
    let (java_dir, java_app) = run(&stack, &arn, "java", expected, &[143, 0], |props, env| {
        Kcld::spawn(
            "java",
            &[
                "-jar",
                &jar.display().to_string(),
                "--properties-file",
                props.to_str().unwrap(),
            ],
            env,
        )
        .unwrap()
    })
    .await;
    let (kcld_dir, kcld_app) = run(&stack, &arn, "kcld", expected + 3, &[0], |props, env| {
        Kcld::spawn(
            KCLD,
            &["multilang", "--properties-file", props.to_str().unwrap()],
            env,
        )
        .unwrap()
    })
    .await;

    // Same records, each once, every field as the processor saw it; the
    // stray aggregate's records from kcld only.
    for (label, dir, strays) in [("java", &java_dir, 0), ("kcld", &kcld_dir, 3)] {
        let mut all = delivered(dir);
        all.sort();
        let unique: BTreeSet<&String> = all.iter().collect();
        assert_eq!(
            all.len(),
            expected + strays,
            "{label} delivered each record once: {all:?}"
        );
        assert_eq!(unique.len(), all.len(), "{label}: {all:?}");
        assert_eq!(
            all.iter().filter(|d| stray(d)).count(),
            strays,
            "{label}: {all:?}"
        );
    }
    let java = read_traces(&java_dir);
    let kcld = read_traces(&kcld_dir);
    assert_eq!(
        java.keys().collect::<Vec<_>>(),
        kcld.keys().collect::<Vec<_>>(),
        "a processor for the same shards"
    );
    let mut kcld_records = records_by_shard(&kcld);
    for records in kcld_records.values_mut() {
        records.retain(|r| !stray(&data_of(r)));
    }
    assert_eq!(
        records_by_shard(&java),
        kcld_records,
        "the same records per shard, in order, field for field"
    );

    // Same checkpoints: the parent at SHARD_END, the others where the
    // sample's shutdownRequested checkpoint put them.
    let java_checkpoints = stack.checkpoints(&java_app).await;
    let mut kcld_checkpoints = stack.checkpoints(&kcld_app).await;
    assert_eq!(java_checkpoints.len(), 4, "{java_checkpoints:?}");
    // A finished parent's lease is removed once every child checkpointed
    // past its start, as the KCL's lease cleanup does: if kcld's shard sync
    // came round before it stopped, the parent's SHARD_END is gone, and
    // that is only right when both children have checkpoints.
    let parent = shards[0].shard_id().to_owned();
    if !kcld_checkpoints.contains_key(&parent) {
        assert_eq!(kcld_checkpoints.len(), 3, "{kcld_checkpoints:?}");
        assert!(
            kcld_checkpoints
                .values()
                .all(|(c, _)| c.chars().all(|d| d.is_ascii_digit())),
            "the parent was removed before its children moved: {kcld_checkpoints:?}"
        );
        kcld_checkpoints.insert(parent, ("SHARD_END".to_owned(), 0));
    }
    assert_eq!(java_checkpoints, kcld_checkpoints, "the same checkpoints");
    assert_eq!(
        java_checkpoints
            .get(shards[0].shard_id())
            .map(|c| c.0.as_str()),
        Some("SHARD_END")
    );

    // Same message shapes, and the same lifecycle line for line.
    assert_eq!(shapes(&java), shapes(&kcld), "the same fields per message");
    for (shard, java_runs) in &java {
        let kcld_runs = &kcld[shard];
        assert_eq!(kcld_runs.len(), 1, "kcld: one processor for {shard}");
        assert_eq!(
            serde_json::to_string_pretty(&lifecycle(&java_runs[0])).unwrap(),
            serde_json::to_string_pretty(&lifecycle(&kcld_runs[0])).unwrap(),
            "shard {shard}: the same lifecycle messages"
        );
        // After its graceful shutdown the Java daemon (KCL 3.1.3) may start
        // one more processor for a shard it still holds, which gets
        // initialize at the checkpoint and then leaseLost, no records.
        // kcld does not (README lists it).
        for extra in &java_runs[1..] {
            let actions: Vec<(bool, &str)> =
                extra.iter().map(|l| (l.to_processor, l.action())).collect();
            assert_eq!(
                actions,
                [
                    (true, "initialize"),
                    (false, "status"),
                    (true, "leaseLost"),
                    (false, "status")
                ],
                "java, shard {shard}: {extra:?}"
            );
        }
    }
    std::fs::remove_dir_all(&java_dir).unwrap();
    std::fs::remove_dir_all(&kcld_dir).unwrap();
}
