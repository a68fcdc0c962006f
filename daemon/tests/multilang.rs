//! `kcld multilang` against the local stack, with record processors written
//! for the KCL's MultiLangDaemon: amazon-kclpy's own sample processor and a
//! recording processor written against the same published package
//! (`tests/fixtures/recording_processor.py`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kcld_checkpoint::SequenceNumber;
use kcld_testkit::{sample_records, unique_name, Kcld, Stack};
use tokio::sync::Mutex;

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");
static SERIAL: Mutex<()> = Mutex::const_new(());

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The properties file as a MultiLangDaemon user writes it.
fn properties(dir: &Path, executable: &str, arn: &str, app: &str, extra: &str) -> PathBuf {
    let path = dir.join("app.properties");
    std::fs::write(
        &path,
        format!(
            "# The MultiLangDaemon's properties, unchanged but for streamArn.\n\
             executableName = {executable}\n\
             streamArn = {arn}\n\
             applicationName = {app}\n\
             AWSCredentialsProvider = DefaultCredentialsProvider\n\
             processingLanguage = python/3\n\
             initialPositionInStream = TRIM_HORIZON\n\
             regionName = us-east-1\n\
             maxRecords = 1000\n\
             idleTimeBetweenReadsInMillis = 200\n\
             failoverTimeMillis = 3000\n\
             {extra}"
        ),
    )
    .unwrap();
    path
}

fn env(stack: &Stack, dir: &Path) -> HashMap<String, String> {
    let mut env = stack.consumer_env();
    env.insert("PYTHONPATH".into(), stack.kclpy_dir.display().to_string());
    env.insert("RECORDING_PROCESSOR_DIR".into(), dir.display().to_string());
    env
}

/// shard id -> the checkpoint string in the lease table.
async fn checkpoints(stack: &Stack, table: &str) -> HashMap<String, String> {
    stack
        .scan_table(table)
        .await
        .unwrap()
        .into_iter()
        .map(|i| {
            (
                i["leaseKey"].as_s().unwrap().clone(),
                i["checkpoint"].as_s().unwrap().clone(),
            )
        })
        .collect()
}

async fn wait_until(what: &str, kcld: &Kcld, within: Duration, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < within,
            "{what} did not happen within {within:?}; kcld's stderr:\n{}",
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a lease of `table` is checkpointed at `sequence`.
async fn wait_checkpoint(stack: &Stack, table: &str, sequence: &str, kcld: &Kcld) {
    let start = Instant::now();
    while !checkpoints(stack, table)
        .await
        .values()
        .any(|c| c == sequence)
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no checkpoint at {sequence}: {:?}\n{}",
            checkpoints(stack, table).await,
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kclpy_sample_processor_runs_unchanged_and_its_checkpoints_land() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("multilang"), 2)
        .await
        .unwrap();
    let records = sample_records(100, 17);
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let dir = temp_dir("kclpy-sample");
    let sample = stack.kclpy_dir.join("samples/sample_kclpy_app.py");
    let app = unique_name("kclpy");
    let props = properties(
        &dir,
        &format!("python3 {}", sample.display()),
        &arn,
        &app,
        "",
    );

    let kcld = Kcld::spawn(
        KCLD,
        &["multilang", "--properties-file", props.to_str().unwrap()],
        &env(&stack, &dir),
    )
    .unwrap();
    // kcld counts what the sample confirmed (its status after each batch).
    let ops = kcld.ops_addr(Duration::from_secs(30)).await.unwrap();
    let start = Instant::now();
    loop {
        let (_, page) = kcld_testkit::http_get(ops, "/metrics").await.unwrap();
        if kcld_testkit::metric_sum(&page, "kcld_records_delivered_total").0 >= 100.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // On SIGTERM the sample gets shutdownRequested and checkpoints the last
    // record it was given; kcld writes that to the lease table.
    let stderr = kcld.stderr.clone();
    kcld.stop_cleanly(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The sample writes a line per record to its stderr (without newlines),
    // which kcld copies into its log.
    let log = stderr.lock().unwrap().clone();
    let seen: HashSet<&str> = log
        .split("Sequence Number: ")
        .skip(1)
        .filter_map(|s| s.split(',').next())
        .collect();
    let want: HashSet<&str> = placed.iter().map(|(_, seq)| seq.as_str()).collect();
    assert_eq!(seen, want, "the sample saw every record");
    let mut last: HashMap<&str, &str> = HashMap::new();
    for (shard, seq) in &placed {
        let e = last.entry(shard.as_str()).or_insert(seq.as_str());
        let (new, old): (SequenceNumber, SequenceNumber) =
            (seq.parse().unwrap(), e.parse().unwrap());
        if new > old {
            *e = seq;
        }
    }
    let table = checkpoints(&stack, &app).await;
    for (shard, seq) in last {
        assert_eq!(table.get(shard).map(String::as_str), Some(seq), "{table:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A one-shard stream read by `kcld multilang` with the recording
/// processor (`tests/fixtures/recording_processor.py`).
struct Recording {
    arn: String,
    dir: PathBuf,
    app: String,
    kcld: Kcld,
}

async fn recording(stack: &Stack, extra_properties: &str) -> Recording {
    recording_with(stack, extra_properties, "TRIM_HORIZON", &[]).await
}

/// [`recording`] at another initial position, with variables for the
/// processor (see the fixture).
async fn recording_with(
    stack: &Stack,
    extra_properties: &str,
    initial: &str,
    vars: &[(&str, &str)],
) -> Recording {
    let arn = stack
        .create_shared_stream(&unique_name("multilang"), 1)
        .await
        .unwrap();
    let dir = temp_dir("kclpy-recording");
    let processor =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recording_processor.py");
    let app = unique_name("kclpy");
    let props = properties(
        &dir,
        &format!("python3 {}", processor.display()),
        &arn,
        &app,
        extra_properties,
    );
    let text = std::fs::read_to_string(&props).unwrap();
    std::fs::write(
        &props,
        text.replace(
            "initialPositionInStream = TRIM_HORIZON",
            &format!("initialPositionInStream = {initial}"),
        ),
    )
    .unwrap();
    let mut vars_all = env(stack, &dir);
    for (k, v) in vars {
        vars_all.insert(k.to_string(), v.to_string());
    }
    let kcld = Kcld::spawn(
        KCLD,
        &["multilang", "-p", props.to_str().unwrap()],
        &vars_all,
    )
    .unwrap();
    Recording {
        arn,
        dir,
        app,
        kcld,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_killed_mid_batch_is_restarted_and_the_batch_delivered_again() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let Recording {
        arn,
        dir,
        app,
        mut kcld,
    } = recording(&stack, "").await;
    let out = dir.join("records");
    let lines = |path: &Path| -> Vec<String> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    };

    // A first wave, processed and checkpointed batch by batch.
    let first: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("k{i}"), format!("first-{i}").into_bytes()))
        .collect();
    let first_placed = stack.put_records(&arn, &first).await.unwrap();
    wait_until("the first wave", &kcld, Duration::from_secs(60), || {
        lines(&out).len() >= 10
    })
    .await;
    let last_first = &first_placed[9].1;
    wait_checkpoint(&stack, &app, last_first, &kcld).await;

    // A second wave in one put: the processor stops in the middle of its
    // batch, at "hold", and is killed there.
    let mut second: Vec<(String, Vec<u8>)> = (0..10)
        .map(|i| (format!("k{i}"), format!("second-{i}").into_bytes()))
        .collect();
    second[5].1 = b"hold".to_vec();
    let second_placed = stack.put_records(&arn, &second).await.unwrap();
    wait_until("the hold", &kcld, Duration::from_secs(60), || {
        dir.join("held").exists()
    })
    .await;
    let pid = std::fs::read_to_string(dir.join("pid-shardId-000000000000")).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());

    // A new processor starts at the last checkpoint (the first wave's end)
    // and gets the whole second wave, the records before the hold again.
    let all_second: HashSet<String> = second
        .iter()
        .map(|(_, d)| String::from_utf8(d.clone()).unwrap())
        .collect();
    wait_until(
        "the second wave, again",
        &kcld,
        Duration::from_secs(60),
        || {
            let got: HashSet<String> = lines(&out)
                .iter()
                .filter_map(|l| l.splitn(3, ' ').nth(2).map(str::to_owned))
                .collect();
            all_second.is_subset(&got)
        },
    )
    .await;
    let got = lines(&out);
    let count = |data: &str| {
        got.iter()
            .filter(|l| l.ends_with(&format!(" {data}")))
            .count()
    };
    for i in 0..10 {
        assert_eq!(count(&format!("first-{i}")), 1, "first wave once: {got:?}");
    }
    for i in 0..5 {
        assert_eq!(
            count(&format!("second-{i}")),
            2,
            "delivered before the kill and again: {got:?}"
        );
    }
    for i in 6..10 {
        assert_eq!(count(&format!("second-{i}")), 1, "{got:?}");
    }
    let initialized = std::fs::read_to_string(dir.join("initialized")).unwrap();
    assert_eq!(
        initialized.lines().collect::<Vec<_>>(),
        [
            "shardId-000000000000 TRIM_HORIZON".to_owned(),
            format!("shardId-000000000000 {last_first}")
        ],
        "the new processor was initialized at the last checkpoint"
    );
    let log = kcld.stderr_text();
    assert!(
        log.contains("starting a new one at the last checkpoint"),
        "{log}"
    );
    assert!(
        log.contains("holding in the middle of a batch"),
        "the processor's stderr is in kcld's log"
    );

    // Its checkpoint lands past the whole second wave.
    let last_second = &second_placed[9].1;
    wait_checkpoint(&stack, &app, last_second, &kcld).await;
    let extra = kcld.drain_for(Duration::from_millis(100)).await;
    assert!(
        extra.is_empty(),
        "multilang writes no records to stdout: {extra:?}"
    );
    kcld.stop_cleanly(Duration::from_secs(30)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_properties_file_without_stream_arn_is_one_clear_error() {
    let stack = Stack::from_env().unwrap();
    let dir = temp_dir("kclpy-bad");
    let path = dir.join("app.properties");
    std::fs::write(
        &path,
        "executableName = python3 app.py\nstreamName = orders\napplicationName = orders-app\n",
    )
    .unwrap();
    let kcld = Kcld::spawn(
        KCLD,
        &["multilang", "-p", path.to_str().unwrap()],
        &env(&stack, &dir),
    )
    .unwrap();
    let (status, text) = kcld
        .wait_with_stderr(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("kcld: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{text}");
    assert!(
        errors[0].contains("streamArn") && errors[0].contains("stream/orders"),
        "{}",
        errors[0]
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_processor_is_replaced_after_timeout_in_seconds() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let Recording {
        arn,
        dir,
        app,
        kcld,
    } = recording(&stack, "timeoutInSeconds = 2\n").await;
    let records: Vec<(String, Vec<u8>)> = ["a", "b", "hold", "c", "d"]
        .iter()
        .map(|d| ("k".to_owned(), d.as_bytes().to_vec()))
        .collect();
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let out = dir.join("records");
    wait_until(
        "every record, past the hang",
        &kcld,
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            ["a", "b", "hold", "c", "d"]
                .iter()
                .all(|d| text.lines().any(|l| l.ends_with(&format!(" {d}"))))
        },
    )
    .await;
    let log = kcld.stderr_text();
    assert!(log.contains("gave no answer within 2s"), "{log}");
    wait_checkpoint(&stack, &app, &placed[4].1, &kcld).await;
    kcld.stop_cleanly(Duration::from_secs(30)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_by_default_on_another_accounts_stream_says_what_to_set() {
    // amazon-kclpy's sample properties set no polling property, so the
    // KCL's DEFAULT retrieval mode is fan-out through a consumer named
    // after the application, which kcld may not register on the owner's
    // stream.
    let stack = Stack::from_env().unwrap();
    let sts = kcld_testkit::sts::Identity::start().await.unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("multilang"), 1)
        .await
        .unwrap();
    let dir = temp_dir("kclpy-default");
    let path = dir.join("app.properties");
    std::fs::write(
        &path,
        format!(
            "executableName = python3 app.py\nstreamArn = {arn}\napplicationName = {}\n",
            unique_name("kclpy")
        ),
    )
    .unwrap();
    let mut e = env(&stack, &dir);
    e.insert("AWS_ENDPOINT_URL_STS".into(), sts.url());
    let kcld = Kcld::spawn(KCLD, &["multilang", "-p", path.to_str().unwrap()], &e).unwrap();
    let (status, text) = kcld
        .wait_with_stderr(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(2), "{text}");
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("kcld: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{text}");
    for needed in [
        "consumerName",
        "consumerArn",
        "retrievalMode = POLLING",
        "register-stream-consumer",
    ] {
        assert!(
            errors[0].contains(needed),
            "{needed:?} missing: {}",
            errors[0]
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// How often each record's data was recorded by the processors.
fn counts(path: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for l in lines(path) {
        if let Some(data) = l.splitn(3, ' ').nth(2) {
            *counts.entry(data.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

fn wave(name: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("k{i}"), format!("{name}-{i}").into_bytes()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_replaced_on_a_latest_shard_skips_nothing() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let Recording {
        arn,
        dir,
        app: _,
        kcld,
    } = recording_with(&stack, "", "LATEST", &[]).await;
    let out = dir.join("records");
    wait_until("initialize", &kcld, Duration::from_secs(60), || {
        dir.join("initialized").exists()
    })
    .await;
    // The reader takes its LATEST position right after initialize.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Nothing was checkpointed yet (the lease is at LATEST) when the
    // processor dies in the middle of its first batch.
    let mut first = wave("first", 10);
    first[4].1 = b"hold".to_vec();
    stack.put_records(&arn, &first).await.unwrap();
    wait_until("the hold", &kcld, Duration::from_secs(60), || {
        dir.join("held").exists()
    })
    .await;
    let pid = std::fs::read_to_string(dir.join("pid-shardId-000000000000")).unwrap();
    assert!(std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap()
        .success());
    // Written while the processor is being replaced.
    let during = wave("during", 10);
    stack.put_records(&arn, &during).await.unwrap();

    let want: Vec<String> = first
        .iter()
        .chain(&during)
        .map(|(_, d)| String::from_utf8(d.clone()).unwrap())
        .collect();
    wait_until("every record", &kcld, Duration::from_secs(60), || {
        let got = counts(&out);
        want.iter().all(|w| got.contains_key(w))
    })
    .await;
    let got = counts(&out);
    for i in 0..4 {
        assert_eq!(
            got[&format!("first-{i}")],
            2,
            "given before the kill and again: {got:?}"
        );
    }
    for w in want
        .iter()
        .filter(|w| !w.starts_with("first-") || w.as_str() > "first-4")
    {
        assert_eq!(got[w], 1, "{w}: {got:?}");
    }
    let initialized = std::fs::read_to_string(dir.join("initialized")).unwrap();
    assert_eq!(
        initialized.lines().collect::<Vec<_>>(),
        ["shardId-000000000000 LATEST", "shardId-000000000000 LATEST"],
        "the new processor starts where the lease is (nothing checkpointed) and gets the batch again"
    );
    kcld.stop_cleanly(Duration::from_secs(30)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_that_dies_after_its_shard_end_checkpoint_leaves_the_shard_finished() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let Recording {
        arn,
        dir,
        app,
        mut kcld,
    } = recording_with(
        &stack,
        "",
        "TRIM_HORIZON",
        &[("RECORDING_PROCESSOR_DIE_AFTER_END", "1")],
    )
    .await;
    let out = dir.join("records");
    let before = wave("before", 20);
    stack.put_records(&arn, &before).await.unwrap();
    wait_until("the first wave", &kcld, Duration::from_secs(60), || {
        counts(&out).len() >= 20
    })
    .await;

    // Split the shard: the parent ends, its processor checkpoints SHARD_END
    // and dies before answering.
    stack.split_open_shards(&arn).await.unwrap();
    wait_until(
        "the death after SHARD_END",
        &kcld,
        Duration::from_secs(60),
        || dir.join("died").exists(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = wave("after", 20);
    stack.put_records(&arn, &after).await.unwrap();
    wait_until(
        "the children's records",
        &kcld,
        Duration::from_secs(60),
        || counts(&out).len() >= 40,
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = counts(&out);
    let twice: Vec<(&String, &usize)> = got.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "the finished parent was read again: {twice:?}"
    );
    assert_eq!(
        checkpoints(&stack, &app).await["shardId-000000000000"],
        "SHARD_END"
    );
    assert!(kcld.is_running());
    kcld.stop_cleanly(Duration::from_secs(30)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_repeated_at_the_last_position_succeeds() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let Recording {
        arn,
        dir,
        app,
        kcld,
    } = recording_with(
        &stack,
        "",
        "TRIM_HORIZON",
        &[("RECORDING_PROCESSOR_TWICE", "1")],
    )
    .await;
    let out = dir.join("records");
    let records = wave("r", 15);
    let placed = stack.put_records(&arn, &records).await.unwrap();
    wait_until("every record", &kcld, Duration::from_secs(60), || {
        counts(&out).len() >= 15
    })
    .await;
    wait_checkpoint(&stack, &app, &placed[14].1, &kcld).await;
    assert!(
        !lines(&dir.join("twice")).is_empty(),
        "the processor checkpointed twice"
    );
    // An error answer raises in amazon-kclpy and the processor would be
    // replaced, delivering again: neither happened.
    assert!(counts(&out).values().all(|n| *n == 1), "{:?}", counts(&out));
    let log = kcld.stderr_text();
    assert!(!log.contains("starting a new one"), "{log}");
    kcld.stop_cleanly(Duration::from_secs(30)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processors_of_several_streams_are_each_told_their_stream() {
    let stack = Stack::from_env().unwrap();
    // Two owners, two regions, one shard each: the same shard id twice.
    let mut arns = Vec::new();
    for (account, region) in [("111111111111", "us-east-1"), ("444444444444", "eu-west-1")] {
        arns.push(
            stack
                .create_stream_in(account, region, &unique_name("ml-multi"), 1)
                .await
                .unwrap(),
        );
    }
    let dir = temp_dir("kclpy-multi");
    let processor =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/recording_processor.py");
    let app = unique_name("kclpy-multi");
    // The properties file names no stream: the kcld configuration lists them.
    let props = dir.join("app.properties");
    std::fs::write(
        &props,
        format!(
            "executableName = python3 {}\napplicationName = {app}\n\
             initialPositionInStream = TRIM_HORIZON\nmaxRecords = 1000\n\
             idleTimeBetweenReadsInMillis = 200\n",
            processor.display()
        ),
    )
    .unwrap();
    let config = dir.join("kcld.toml");
    let mut text = String::new();
    for arn in &arns {
        text.push_str(&format!("[[streams]]\narn = \"{arn}\"\n"));
    }
    std::fs::write(&config, text).unwrap();
    let mut sent = Vec::new();
    for arn in &arns {
        let records: Vec<(String, Vec<u8>)> = (0..20)
            .map(|i| (format!("k{i}"), format!("{arn}#{i}").into_bytes()))
            .collect();
        stack.put_records(arn, &records).await.unwrap();
        sent.extend(
            records
                .into_iter()
                .map(|(_, d)| String::from_utf8(d).unwrap()),
        );
    }
    let kcld = Kcld::spawn(
        KCLD,
        &[
            "--config",
            config.to_str().unwrap(),
            "multilang",
            "-p",
            props.to_str().unwrap(),
        ],
        &env(&stack, &dir),
    )
    .unwrap();
    let by_stream = dir.join("records-by-stream");
    wait_until("every record", &kcld, Duration::from_secs(60), || {
        lines(&by_stream).len() >= sent.len()
    })
    .await;
    // Each record reached the processor of its own stream, once.
    let got = lines(&by_stream);
    let mut seen = std::collections::HashSet::new();
    for line in &got {
        let mut parts = line.splitn(3, ' ');
        let (stream, shard, data) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert_eq!(shard, "shardId-000000000000");
        assert_eq!(data.split('#').next(), Some(stream), "{line}");
        assert!(seen.insert(data.to_owned()), "twice: {line}");
    }
    assert_eq!(seen.len(), sent.len());
    // Their checkpoints land on each stream's own lease.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let table = checkpoints(&stack, &app).await;
        let done = arns.iter().all(|arn| {
            let (account, name) = {
                let parts: Vec<&str> = arn.split(':').collect();
                (
                    parts[4].to_owned(),
                    parts[5].trim_start_matches("stream/").to_owned(),
                )
            };
            table.iter().any(|(key, checkpoint)| {
                key.starts_with(&format!("{account}:{name}:"))
                    && checkpoint.chars().all(|c| c.is_ascii_digit())
            })
        });
        if done {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{table:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    kcld.stop_cleanly(Duration::from_secs(30)).await;
    std::fs::remove_dir_all(&dir).unwrap();
}
