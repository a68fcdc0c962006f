//! Operations against the local stack: Prometheus metrics after a run,
//! readiness that follows the lease table, and systemd's notify protocol.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use kcld_testkit::{
    doctor_checks, http_get, metric_sum, sample_records, unique_name, Delivered, Kcld, Stack,
};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

fn env(stack: &Stack, arn: &str) -> HashMap<String, String> {
    let mut env = stack.consumer_env();
    env.insert("KCLD_APPLICATION_NAME".into(), unique_name("ops-app"));
    env.insert("KCLD_STREAM_ARN".into(), arn.into());
    env.insert("KCLD_INITIAL_POSITION".into(), "TRIM_HORIZON".into());
    env.insert(
        "KCLD_POLLING__IDLE_TIME_BETWEEN_READS_MS".into(),
        "200".into(),
    );
    env.insert("KCLD_CHECKPOINT__INTERVAL_MS".into(), "500".into());
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_what_was_delivered() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("metrics"), 2)
        .await
        .unwrap();
    let records = sample_records(60, 9);
    stack.put_records(&arn, &records).await.unwrap();
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn)).unwrap();
    let addr = kcld.ops_addr(Duration::from_secs(30)).await.unwrap();
    let lines = kcld.take_lines(60, Duration::from_secs(60)).await;
    assert_eq!(lines.len(), 60, "{}", kcld.stderr_text());
    let bytes: usize = lines
        .iter()
        .map(|l| Delivered::parse(l).unwrap().data.len())
        .sum();
    // Let a checkpoint land.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let (status, page) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        metric_sum(&page, "kcld_records_delivered_total"),
        (60.0, 2),
        "one series per shard:\n{page}"
    );
    assert_eq!(
        metric_sum(&page, "kcld_bytes_delivered_total").0,
        bytes as f64
    );
    assert_eq!(metric_sum(&page, "kcld_leases_held").0, 2.0);
    assert!(metric_sum(&page, "kcld_leases_taken_total").0 >= 2.0);
    assert!(metric_sum(&page, "kcld_getrecords_calls_total").0 >= 2.0);
    assert!(metric_sum(&page, "kcld_getrecords_duration_seconds_count").0 >= 2.0);
    assert!(metric_sum(&page, "kcld_checkpoints_total").0 >= 2.0);
    assert_eq!(
        metric_sum(&page, "kcld_lag_seconds").1,
        2,
        "a lag series per shard"
    );
    assert!(
        page.contains(&format!("stream=\"{arn}\"")),
        "series carry the stream"
    );
    assert!(page.contains("shard=\"shardId-000000000000\""));

    assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);
    let (status, body) = http_get(addr, "/readyz").await.unwrap();
    assert_eq!((status, body.trim()), (200, "ready"));
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_lease_table() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("ready"), 1)
        .await
        .unwrap();
    // A DynamoDB emulator of this test's own, so stopping it disturbs
    // nothing else.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cli = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/local/node_modules/dynalite/cli.js"
    );
    let mut dynalite = tokio::process::Command::new("node")
        .args([
            cli,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--createTableMs",
            "10",
        ])
        .kill_on_drop(true)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "dynalite did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut vars = env(&stack, &arn);
    vars.insert(
        "AWS_ENDPOINT_URL_DYNAMODB".into(),
        format!("http://127.0.0.1:{port}"),
    );
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let addr = kcld.ops_addr(Duration::from_secs(30)).await.unwrap();

    let log = kcld.stderr.clone();
    let wait_status = |want: u16| {
        let log = log.clone();
        async move {
            let start = Instant::now();
            loop {
                let (status, body) = http_get(addr, "/readyz").await.unwrap();
                if status == want {
                    return (start.elapsed(), body);
                }
                assert!(
                    start.elapsed() < Duration::from_secs(20),
                    "/readyz stayed {status}: {body}\n{}",
                    log.lock().unwrap()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_status(200).await;
    dynalite.kill().await.unwrap();
    let (after, body) = wait_status(503).await;
    eprintln!("unready {after:?} after the lease table went away: {body}");
    assert!(body.contains("lease_table"), "{body}");
    assert_eq!(
        http_get(addr, "/healthz").await.unwrap().0,
        200,
        "still alive"
    );
    kcld.terminate(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_ready_watchdog_and_stopping() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("notify"), 1)
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique_name("kcld-notify"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
    let mut vars = env(&stack, &arn);
    vars.insert("NOTIFY_SOCKET".into(), path.display().to_string());
    vars.insert("WATCHDOG_USEC".into(), "1000000".into());
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();

    let mut seen: Vec<String> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(seen.iter().any(|m| m.contains("READY=1"))
        && seen.iter().any(|m| m.contains("WATCHDOG=1")))
    {
        assert!(
            Instant::now() < deadline,
            "got {seen:?}\n{}",
            kcld.stderr_text()
        );
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await
        {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let stderr = kcld.stderr.clone();
    let exit = tokio::spawn(kcld.terminate(Duration::from_secs(25)));
    let deadline = Instant::now() + Duration::from_secs(25);
    while !seen.iter().any(|m| m.contains("STOPPING=1")) {
        assert!(
            Instant::now() < deadline,
            "no STOPPING=1: {seen:?}\n{}",
            stderr.lock().unwrap()
        );
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await
        {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    assert!(exit.await.unwrap().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_every_lease() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("status"), 2)
        .await
        .unwrap();
    let mut vars = env(&stack, &arn);
    vars.insert("KCLD_WORKER_ID".into(), "status-worker".into());
    let records = sample_records(10, 3);
    stack.put_records(&arn, &records).await.unwrap();
    let mut kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    assert_eq!(kcld.take_lines(10, Duration::from_secs(60)).await.len(), 10);
    // Let the checkpoints land.
    tokio::time::sleep(Duration::from_millis(1000)).await;

    let mut status =
        Kcld::spawn(KCLD, &["status", "--json", "--sample-ms", "4000"], &vars).unwrap();
    let out = status.drain_for(Duration::from_secs(30)).await.join("\n");
    let leases: serde_json::Value = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{e}: {out}\n{}", status.stderr_text()));
    let leases = leases.as_array().unwrap();
    assert_eq!(leases.len(), 2, "{out}");
    for lease in leases {
        assert_eq!(lease["owner"], "status-worker");
        assert_eq!(
            lease["renewing"], true,
            "the owner renews while status watches: {lease}"
        );
        assert!(
            lease["checkpoint"]
                .as_str()
                .unwrap()
                .bytes()
                .all(|b| b.is_ascii_digit()),
            "{lease}"
        );
    }

    for lease in leases {
        assert_eq!(lease["lag_ms"], 0, "everything read: caught up: {lease}");
    }

    // --watch: one JSON line per refresh; once it has seen the counters
    // move, each lease says how long ago, within the failover time.
    let mut watch = Kcld::spawn(
        KCLD,
        &["status", "--json", "--sample-ms", "100", "--watch", "500"],
        &vars,
    )
    .unwrap();
    let refreshes = watch.take_lines(12, Duration::from_secs(60)).await;
    assert_eq!(refreshes.len(), 12, "{}", watch.stderr_text());
    assert!(watch.is_running(), "--watch goes on until stopped");
    let failover = 10_000;
    let last: serde_json::Value = serde_json::from_str(&refreshes[11]).unwrap();
    for lease in last.as_array().unwrap() {
        let ago = lease["last_renewal_ms"]
            .as_u64()
            .unwrap_or_else(|| panic!("renewals seen in 6 s: {lease}"));
        assert!(ago <= failover, "{lease}");
        assert_eq!(lease["renewing"], true, "{lease}");
    }
    watch.kill9().await;

    let mut table = Kcld::spawn(KCLD, &["status", "--sample-ms", "100"], &vars).unwrap();
    let text = table.drain_for(Duration::from_secs(30)).await.join("\n");
    assert!(text.starts_with("SHARD"), "{text}");
    let header = text.lines().next().unwrap();
    assert!(
        header.contains("LAG") && header.contains("RENEWED"),
        "{text}"
    );
    for id in ["shardId-000000000000", "shardId-000000000001"] {
        assert!(text.contains(id), "{text}");
    }
    kcld.terminate(Duration::from_secs(25)).await.unwrap();

    // With the reader stopped, a record two seconds older than the newest
    // one is waiting on a shard: its lag shows it.
    let placed = stack
        .put_records(&arn, &[("lag-key".into(), b"older".to_vec())])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stack
        .put_records(&arn, &[("lag-key".into(), b"newer".to_vec())])
        .await
        .unwrap();
    let behind = &placed[0].0;
    let mut status = Kcld::spawn(KCLD, &["status", "--json", "--sample-ms", "100"], &vars).unwrap();
    let out = status.drain_for(Duration::from_secs(30)).await.join("\n");
    let leases: serde_json::Value = serde_json::from_str(&out).unwrap();
    for lease in leases.as_array().unwrap() {
        let lag = lease["lag_ms"].as_i64().unwrap();
        if lease["shard_id"] == behind.as_str() {
            assert!(lag >= 1500, "the shard with unread records: {lease}");
        } else {
            assert_eq!(lag, 0, "{lease}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_then_names_the_missing_action() {
    use kcld_testkit::fault::{Fault, FaultProxy};
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("doctor"), 2)
        .await
        .unwrap();
    let mut vars = env(&stack, &arn);
    // The lease table exists (a run creates it), so its reads and writes are checked too.
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let addr = kcld.ops_addr(Duration::from_secs(30)).await.unwrap();
    let start = Instant::now();
    while http_get(addr, "/readyz").await.unwrap().0 != 200 {
        assert!(start.elapsed() < Duration::from_secs(30), "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kcld.terminate(Duration::from_secs(25)).await.unwrap();

    let sts = kcld_testkit::sts::Identity::start().await.unwrap();
    vars.insert("AWS_ENDPOINT_URL_STS".into(), sts.url());
    let mut ok = Kcld::spawn(KCLD, &["doctor"], &vars).unwrap();
    let out = ok.drain_for(Duration::from_secs(30)).await.join("\n");
    let err = ok.stderr.clone();
    assert_eq!(
        ok.wait(Duration::from_secs(30)).await.unwrap().code(),
        Some(0),
        "{out}\n{}",
        err.lock().unwrap()
    );
    for check in [
        "credentials",
        "caller identity",
        "DescribeStreamSummary",
        "DescribeStream",
        "ListShards",
        "GetShardIterator",
        "GetRecords",
        "Scan",
        "GetItem",
        "UpdateItem",
    ] {
        assert!(
            out.lines().any(|l| l.contains(check) && l.contains(" ok ")),
            "{check} not ok:\n{out}"
        );
    }

    // The stream owner's policy forgot GetRecords: the proxy answers it
    // with AccessDeniedException, the way Kinesis does.
    let proxy = FaultProxy::start(&stack.kinesis_endpoint).await.unwrap();
    proxy.fail(
        "Kinesis_20131202.GetRecords",
        Fault::access_denied("kinesis:GetRecords"),
    );
    vars.insert("AWS_ENDPOINT_URL_KINESIS".into(), proxy.url());
    let checks = doctor_checks(KCLD, &vars).await.unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| c["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "only GetRecords fails: {failed:?}");
    assert_eq!(failed[0]["check"], "GetRecords");
    let fix = &failed[0]["fix"];
    assert_eq!(fix["missing_action"], "kinesis:GetRecords");
    assert!(
        fix["fixed_by"]
            .as_str()
            .unwrap()
            .contains(&stack.producer_account),
        "{fix}"
    );
    let actions = fix["statement"]["Action"].to_string();
    assert!(
        actions.contains("kinesis:GetRecords") && actions.contains("kinesis:DescribeStream"),
        "{fix}"
    );

    // The consumer's own policy forgot dynamodb:GetItem (the lease probes
    // and the check after a refused renewal read single leases).
    proxy.clear();
    let probes = FaultProxy::start(&stack.dynamodb_endpoint).await.unwrap();
    probes.fail(
        "DynamoDB_20120810.GetItem",
        Fault::access_denied("dynamodb:GetItem"),
    );
    let mut probe_vars = vars.clone();
    probe_vars.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), probes.url());
    let checks = doctor_checks(KCLD, &probe_vars).await.unwrap();
    let failed: Vec<_> = checks.iter().filter(|c| c["ok"] == false).collect();
    assert_eq!(failed.len(), 1, "only GetItem fails: {failed:?}");
    assert_eq!(failed[0]["check"], "lease read (GetItem)");
    assert_eq!(failed[0]["fix"]["missing_action"], "dynamodb:GetItem");

    // DescribeStream (the KCL's call) refused by the owner's policy; an
    // application whose lease table does not exist yet: CreateTable is
    // checked without creating anything, first allowed, then refused by
    // the consumer's own IAM policy. Each failure names who fixes it.
    proxy.clear();
    proxy.fail(
        "Kinesis_20131202.DescribeStream",
        Fault::access_denied("kinesis:DescribeStream"),
    );
    let dynamodb = FaultProxy::start(&stack.dynamodb_endpoint).await.unwrap();
    vars.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), dynamodb.url());
    let new_app = unique_name("doctor-new");
    vars.insert("KCLD_APPLICATION_NAME".into(), new_app.clone());
    let failures = |vars: HashMap<String, String>| async move {
        let checks = doctor_checks(KCLD, &vars).await.unwrap();
        let failed: Vec<(String, String)> = checks
            .iter()
            .filter(|c| c["ok"] == false)
            .map(|c| {
                (
                    c["check"].as_str().unwrap().to_owned(),
                    c["fix"]["missing_action"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                )
            })
            .collect();
        let create_ok = checks
            .iter()
            .any(|c| c["check"] == "CreateTable" && c["ok"] == true);
        (failed, create_ok)
    };
    let (failed, create_ok) = failures(vars.clone()).await;
    assert_eq!(
        failed,
        [(
            "DescribeStream".to_owned(),
            "kinesis:DescribeStream".to_owned()
        )]
    );
    assert!(create_ok);
    dynamodb.fail(
        "DynamoDB_20120810.CreateTable",
        Fault::access_denied("dynamodb:CreateTable"),
    );
    let (failed, _) = failures(vars.clone()).await;
    assert_eq!(
        failed,
        [
            (
                "DescribeStream".to_owned(),
                "kinesis:DescribeStream".to_owned()
            ),
            ("CreateTable".to_owned(), "dynamodb:CreateTable".to_owned())
        ]
    );
    // Checking created nothing: there is no table to scan.
    assert!(stack.scan_table(&new_app).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assumed_role_signs_kinesis_and_the_local_identity_the_lease_table() {
    use kcld_testkit::fault::FaultProxy;
    use kcld_testkit::sts::Identity;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("role"), 1)
        .await
        .unwrap();
    let records = sample_records(10, 3);
    stack.put_records(&arn, &records).await.unwrap();
    let sts = Identity::start().await.unwrap();
    let kinesis = FaultProxy::start(&stack.kinesis_endpoint).await.unwrap();
    let dynamodb = FaultProxy::start(&stack.dynamodb_endpoint).await.unwrap();
    // A central account's process (333333333333) reads as a role of the
    // consumer account (222222222222).
    let role = "arn:aws:iam::222222222222:role/kcld-reader";
    let mut vars = env(&stack, &arn);
    vars.insert("AWS_ACCESS_KEY_ID".into(), "333333333333".into());
    vars.insert("AWS_ENDPOINT_URL_STS".into(), sts.url());
    vars.insert("AWS_ENDPOINT_URL_KINESIS".into(), kinesis.url());
    vars.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), dynamodb.url());
    vars.insert("KCLD_AWS__ASSUME_ROLE_ARN".into(), role.into());
    vars.insert("KCLD_AWS__ASSUME_ROLE_EXTERNAL_ID".into(), "ext-42".into());
    // Counts GetRecords calls (held for no time).
    kinesis.hold_matching(
        "Kinesis_20131202.GetRecords",
        "ShardIterator",
        Duration::ZERO,
    );
    let mut kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let got = kcld.take_lines(10, Duration::from_secs(60)).await;
    assert_eq!(got.len(), 10, "{}", kcld.stderr_text());
    // Later GetRecords calls skip the SDK's orchestration but must sign
    // with the same role: wait for a few of them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while kinesis.counts("Kinesis_20131202.GetRecords").1 < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}",
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
    let calls = sts.assumed();
    assert!(!calls.is_empty());
    assert!(calls.iter().all(|c| c.role_arn == role
        && c.caller == "333333333333"
        && c.external_id.as_deref() == Some("ext-42")));
    assert_eq!(
        kinesis.access_keys(),
        ["222222222222"],
        "Kinesis calls carry the role's keys"
    );
    assert_eq!(
        dynamodb.access_keys(),
        ["333333333333"],
        "the lease table is the local identity's"
    );

    // Refused: one line naming the role, the trust statement with the
    // external id, and the permission the caller needs.
    sts.deny(role);
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let log = kcld.stderr.clone();
    let status = kcld.wait(Duration::from_secs(30)).await.unwrap();
    assert_eq!(status.code(), Some(1));
    let text = log.lock().unwrap().clone();
    let errors: Vec<&str> = text.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "{text}");
    for part in [
        role,
        "trust policy",
        "sts:ExternalId",
        "ext-42",
        "sts:AssumeRole",
        "arn:aws:iam::333333333333",
    ] {
        assert!(errors[0].contains(part), "{part} missing: {}", errors[0]);
    }
}

/// The lease table is in the consumer's region, not the stream owner's:
/// named by the AWS profile when nothing else names it (as on an instance
/// whose profile or metadata says where it runs), by `AWS_REGION` when set,
/// and the stream's region is only the last resort. Every DynamoDB call is
/// signed for that region; every Kinesis call for the stream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_table_follows_the_consumers_region() {
    use kcld_testkit::fault::FaultProxy;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("region"), 1)
        .await
        .unwrap();
    stack
        .put_records(&arn, &sample_records(5, 4))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(unique_name("aws-profile"));
    std::fs::create_dir_all(&dir).unwrap();
    let profile = dir.join("config");
    std::fs::write(&profile, "[default]\nregion = eu-west-1\n").unwrap();

    for (case, region_vars, expected) in [
        ("profile", vec![], "eu-west-1"),
        (
            "AWS_REGION",
            vec![("AWS_REGION", "ap-south-1")],
            "ap-south-1",
        ),
    ] {
        let kinesis = FaultProxy::start(&stack.kinesis_endpoint).await.unwrap();
        let dynamodb = FaultProxy::start(&stack.dynamodb_endpoint).await.unwrap();
        let mut vars = env(&stack, &arn);
        vars.remove("AWS_REGION");
        vars.remove("AWS_DEFAULT_REGION");
        vars.insert("AWS_CONFIG_FILE".into(), profile.display().to_string());
        vars.insert("AWS_EC2_METADATA_DISABLED".into(), "true".into());
        vars.insert("AWS_ENDPOINT_URL_KINESIS".into(), kinesis.url());
        vars.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), dynamodb.url());
        for (k, v) in &region_vars {
            vars.insert((*k).into(), (*v).into());
        }
        let mut kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
        let got = kcld.take_lines(5, Duration::from_secs(60)).await;
        assert_eq!(got.len(), 5, "{case}: {}", kcld.stderr_text());
        kcld.terminate(Duration::from_secs(25)).await.unwrap();
        assert_eq!(
            dynamodb.signing_scopes(),
            [format!("{expected}/dynamodb")],
            "{case}"
        );
        assert_eq!(kinesis.signing_scopes(), ["us-east-1/kinesis"], "{case}");

        // `kcld policy` names the table in the same region.
        let out = std::process::Command::new(KCLD)
            .args([
                "policy",
                "--consumer-role-arn",
                "arn:aws:iam::222222222222:role/reader",
            ])
            .env_clear()
            .envs(&vars)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("arn:aws:dynamodb:{expected}:")),
            "{case}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// SIGHUP reloads the configuration file: the checkpoint policy and the
/// log level change for the shards already held, a change that needs a
/// restart is named and left alone, a file that no longer loads is refused
/// as a whole; kcld keeps its leases and delivers on throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_what_can_change_and_names_what_cannot() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("reload"), 1)
        .await
        .unwrap();
    let app = unique_name("reload-app");
    let dir = std::env::temp_dir().join(unique_name("reload-conf"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("kcld.toml");
    let config = |interval_ms: u64, level: &str, max_records: u32| {
        format!(
            "application_name = \"{app}\"\nstream_arn = \"{arn}\"\ninitial_position = \"TRIM_HORIZON\"\n\
             [checkpoint]\ninterval_ms = {interval_ms}\nmax_records = 1000000\n\
             [polling]\nmax_records = {max_records}\nidle_time_between_reads_ms = 200\n\
             [log]\nlevel = \"{level}\"\n"
        )
    };
    std::fs::write(&file, config(600_000, "info", 1000)).unwrap();
    let vars = stack.consumer_env();
    let path = file.display().to_string();
    let mut kcld = Kcld::spawn(KCLD, &["run", "--config", &path], &vars).unwrap();
    let hup = |kcld: &Kcld| {
        let pid = kcld.pid().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap();
    };
    let wait_log = |kcld: &Kcld, what: &str| {
        let log = kcld.stderr.clone();
        let what = what.to_owned();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let text = log.lock().unwrap().clone();
                if text.contains(&what) {
                    return text;
                }
                assert!(Instant::now() < deadline, "no {what:?} in:\n{text}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let first = sample_records(10, 21);
    stack.put_records(&arn, &first).await.unwrap();
    assert_eq!(kcld.take_lines(10, Duration::from_secs(60)).await.len(), 10);
    // A 10-minute interval: nothing checkpointed yet.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = stack.checkpoints(&app).await;
    assert!(
        before.values().all(|(c, _)| c == "TRIM_HORIZON"),
        "{before:?}"
    );

    // Checkpoints every 200 ms and debug logs apply at once; the polling
    // change needs a restart and is named.
    std::fs::write(&file, config(200, "debug", 500)).unwrap();
    hup(&kcld);
    let log = wait_log(&kcld, "applied: log.level, checkpoint.interval_ms").await;
    assert!(
        log.contains("needs a restart (the running values stay): polling"),
        "{log}"
    );
    let second = sample_records(5, 22);
    stack.put_records(&arn, &second).await.unwrap();
    let lines = kcld.take_lines(5, Duration::from_secs(60)).await;
    assert_eq!(lines.len(), 5, "{}", kcld.stderr_text());
    let last = Delivered::parse(lines.last().unwrap())
        .unwrap()
        .sequence_number;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = stack.checkpoints(&app).await;
        if now.values().any(|(c, _)| *c == last) {
            break;
        }
        assert!(Instant::now() < deadline, "not checkpointed: {now:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        kcld.stderr_text().contains("DEBUG"),
        "debug logs after the reload"
    );

    // A file that does not load: refused, the running configuration stays.
    std::fs::write(&file, "application_name = [unclosed\n").unwrap();
    hup(&kcld);
    wait_log(&kcld, "configuration not reloaded, the running one stays").await;
    let third = sample_records(3, 23);
    stack.put_records(&arn, &third).await.unwrap();
    assert_eq!(kcld.take_lines(3, Duration::from_secs(60)).await.len(), 3);
    assert!(kcld.is_running());
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

/// A stream its owner encrypts with KMS (the emulator keeps the setting
/// and marks the records) is read end to end, and `kcld doctor` checks
/// that a record can be decrypted by reading the oldest one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_stream_is_read_and_doctor_checks_decryption() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("encrypted"), 1)
        .await
        .unwrap();
    stack
        .producer_kinesis()
        .await
        .start_stream_encryption()
        .stream_arn(&arn)
        .encryption_type(aws_sdk_kinesis::types::EncryptionType::Kms)
        .key_id("arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab")
        .send()
        .await
        .unwrap();
    let records = sample_records(8, 3);
    stack.put_records(&arn, &records).await.unwrap();
    let vars = env(&stack, &arn);
    let mut kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let lines = kcld.take_lines(8, Duration::from_secs(60)).await;
    assert_eq!(lines.len(), 8, "{}", kcld.stderr_text());
    let data: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| Delivered::parse(l).unwrap().data)
        .collect();
    let sent: Vec<Vec<u8>> = records.iter().map(|(_, d)| d.clone()).collect();
    assert_eq!(data, sent);
    kcld.terminate(Duration::from_secs(25)).await.unwrap();

    let sts = kcld_testkit::sts::Identity::start().await.unwrap();
    let mut vars = vars;
    vars.insert("AWS_ENDPOINT_URL_STS".into(), sts.url());
    let mut doctor = Kcld::spawn(KCLD, &["doctor", "--json"], &vars).unwrap();
    let out = doctor.drain_for(Duration::from_secs(30)).await.join("\n");
    assert_eq!(
        doctor.wait(Duration::from_secs(30)).await.unwrap().code(),
        Some(0),
        "{out}"
    );
    let checks: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let kms = checks
        .iter()
        .find(|c| c["check"] == "GetRecords of an encrypted record (kms:Decrypt)")
        .unwrap_or_else(|| panic!("no decryption check: {out}"));
    assert_eq!(kms["ok"], true);
    assert!(
        kms["detail"].as_str().unwrap().contains("decrypted"),
        "{kms}"
    );
}
