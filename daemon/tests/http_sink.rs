//! The HTTP sink against an application in the test: partial batch
//! failures, retries, bisection, the failure file and the age limit, with
//! nothing lost.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use base64::Engine;
use kcld_testkit::{unique_name, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

/// One request as the application saw it: (sequence number, data) per record.
type Request = Vec<(String, Vec<u8>)>;

/// What the application answers, given the request and how many came before.
type Behaviour = Arc<dyn Fn(&Request, usize) -> (StatusCode, serde_json::Value) + Send + Sync>;

#[derive(Clone)]
struct App {
    seen: Arc<Mutex<Vec<Request>>>,
    behaviour: Behaviour,
}

async fn handler(State(app): State<App>, body: String) -> (StatusCode, String) {
    let event: serde_json::Value = serde_json::from_str(&body).unwrap();
    let request: Request = event["Records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let k = &r["kinesis"];
            (
                k["sequenceNumber"].as_str().unwrap().to_owned(),
                base64::engine::general_purpose::STANDARD
                    .decode(k["data"].as_str().unwrap())
                    .unwrap(),
            )
        })
        .collect();
    let n = app.seen.lock().unwrap().len();
    let (status, body) = (app.behaviour)(&request, n);
    app.seen.lock().unwrap().push(request);
    (status, body.to_string())
}

async fn serve(behaviour: Behaviour) -> (String, Arc<Mutex<Vec<Request>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let app = Router::new()
        .route("/events", post(handler))
        .with_state(App {
            seen: seen.clone(),
            behaviour,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/events", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn env(stack: &Stack, arn: &str, url: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut env = stack.consumer_env();
    env.insert("KCLD_APPLICATION_NAME".into(), unique_name("http-app"));
    env.insert("KCLD_STREAM_ARN".into(), arn.into());
    env.insert("KCLD_INITIAL_POSITION".into(), "TRIM_HORIZON".into());
    env.insert(
        "KCLD_POLLING__IDLE_TIME_BETWEEN_READS_MS".into(),
        "200".into(),
    );
    env.insert("KCLD_SINK__TYPE".into(), "http".into());
    env.insert("KCLD_SINK__URL".into(), url.into());
    for (k, v) in extra {
        env.insert(k.to_string(), v.to_string());
    }
    env
}

/// An application that fails every request carrying the record `poison`
/// and takes every other one.
fn refuses_poison() -> Behaviour {
    Arc::new(|req: &Request, _| {
        if req.iter().any(|(_, d)| d == b"poison") {
            (StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({}))
        } else {
            (StatusCode::OK, serde_json::json!({}))
        }
    })
}

/// Waits until every datum in `want` reached the application in a request
/// it accepted (2xx), or the failure file.
async fn wait_all(
    seen: &Mutex<Vec<Request>>,
    accepted: impl Fn(usize, &Request) -> Vec<Vec<u8>>,
    want: &HashSet<Vec<u8>>,
    kcld: &Kcld,
) {
    let start = Instant::now();
    loop {
        let got: HashSet<Vec<u8>> = seen
            .lock()
            .unwrap()
            .iter()
            .enumerate()
            .flat_map(|(i, r)| accepted(i, r))
            .collect();
        if want.is_subset(&got) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{} of {} records taken\n{}",
            want.intersection(&got).count(),
            want.len(),
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_partial_batch_failures_lose_nothing() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("http"), 1)
        .await
        .unwrap();
    let records: Vec<(String, Vec<u8>)> = (0..30)
        .map(|i| (format!("k{i}"), format!("r{i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &records).await.unwrap();

    // Request 0: a server error. Request 1: the 4th record fails. Later: fine.
    let behaviour: Behaviour = Arc::new(|req: &Request, n: usize| match n {
        0 => (StatusCode::INTERNAL_SERVER_ERROR, serde_json::json!({})),
        1 => (
            StatusCode::OK,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": req[3].0}]}),
        ),
        _ => (StatusCode::OK, serde_json::json!({})),
    });
    let (url, seen) = serve(behaviour).await;
    let kcld = Kcld::spawn(
        KCLD,
        &["run"],
        &env(&stack, &arn, &url, &[("KCLD_SINK__BATCH_SIZE", "10")]),
    )
    .unwrap();
    let want: HashSet<Vec<u8>> = records.iter().map(|(_, d)| d.clone()).collect();
    wait_all(
        &seen,
        |i, r| match i {
            0 => vec![],
            1 => r[..3].iter().map(|(_, d)| d.clone()).collect(),
            _ => r.iter().map(|(_, d)| d.clone()).collect(),
        },
        &want,
        &kcld,
    )
    .await;
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests.iter().all(|r| r.len() <= 10),
        "batch size respected"
    );
    assert_eq!(
        requests[1], requests[0],
        "after an error the same batch is sent again"
    );
    assert_eq!(
        requests[2][0], requests[1][3],
        "after a partial failure, resent from the failed record"
    );
    assert_eq!(requests[2].len(), requests[1].len() - 3);
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bisection_isolates_a_poison_record_into_the_failure_file() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("poison"), 1)
        .await
        .unwrap();
    let mut records: Vec<(String, Vec<u8>)> = (0..16)
        .map(|i| (format!("k{i}"), format!("r{i}").into_bytes()))
        .collect();
    records[9].1 = b"poison".to_vec();
    stack.put_records(&arn, &records).await.unwrap();

    let (url, seen) = serve(refuses_poison()).await;
    let dir = std::env::temp_dir().join(unique_name("kcld-failures"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("failed.jsonl");
    let vars = env(
        &stack,
        &arn,
        &url,
        &[
            ("KCLD_SINK__BATCH_SIZE", "16"),
            ("KCLD_SINK__BISECT_ON_ERROR", "true"),
            ("KCLD_SINK__MAX_RETRY_ATTEMPTS", "1"),
            ("KCLD_SINK__ON_FAILURE_FILE", file.to_str().unwrap()),
        ],
    );
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let good: HashSet<Vec<u8>> = records
        .iter()
        .map(|(_, d)| d.clone())
        .filter(|d| d != b"poison")
        .collect();
    wait_all(
        &seen,
        |_, r| {
            if r.iter().any(|(_, d)| d == b"poison") {
                vec![]
            } else {
                r.iter().map(|(_, d)| d.clone()).collect()
            }
        },
        &good,
        &kcld,
    )
    .await;
    let start = Instant::now();
    let lines = loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if !text.is_empty() {
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no failure file\n{}",
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let failed: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(failed.len(), 1, "only the poison record: {lines}");
    assert_eq!(
        failed[0]["kinesis"]["data"],
        base64::engine::general_purpose::STANDARD.encode(b"poison")
    );
    assert!(failed[0]["kcldFailure"]["reason"]
        .as_str()
        .unwrap()
        .contains("retries exhausted"));
    // Bisection: no accepted request was larger than needed to route around it.
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .filter(|r| r.len() == 1)
            .any(|r| r[0].1 == b"poison"),
        "the poison record was tried alone"
    );
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_past_the_age_limit_go_to_the_failure_file() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("age"), 1)
        .await
        .unwrap();
    stack
        .put_records(&arn, &[("k".to_owned(), b"never taken".to_vec())])
        .await
        .unwrap();
    let behaviour: Behaviour =
        Arc::new(|_: &Request, _| (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({})));
    let (url, _seen) = serve(behaviour).await;
    let dir = std::env::temp_dir().join(unique_name("kcld-age"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("failed.jsonl");
    let vars = env(
        &stack,
        &arn,
        &url,
        &[
            ("KCLD_SINK__MAX_RECORD_AGE_SECONDS", "2"),
            ("KCLD_SINK__ON_FAILURE_FILE", file.to_str().unwrap()),
        ],
    );
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        if text.contains("record too old") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallelization_keeps_order_per_partition_key() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("pf"), 1)
        .await
        .unwrap();
    let records: Vec<(String, Vec<u8>)> = (0..60)
        .map(|i| {
            (
                format!("key-{}", i % 12),
                format!("key-{}:{}", i % 12, i / 12).into_bytes(),
            )
        })
        .collect();
    stack.put_records(&arn, &records).await.unwrap();
    let behaviour: Behaviour = Arc::new(|_: &Request, _| (StatusCode::OK, serde_json::json!({})));
    let (url, seen) = serve(behaviour).await;
    let vars = env(
        &stack,
        &arn,
        &url,
        &[("KCLD_SINK__PARALLELIZATION_FACTOR", "4")],
    );
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let want: HashSet<Vec<u8>> = records.iter().map(|(_, d)| d.clone()).collect();
    wait_all(
        &seen,
        |_, r| r.iter().map(|(_, d)| d.clone()).collect(),
        &want,
        &kcld,
    )
    .await;
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests.len() >= 2,
        "one read of 60 records went out as several parallel requests: {}",
        requests.len()
    );
    // Within each key, records arrive in the order they were put.
    let mut last: HashMap<String, i64> = HashMap::new();
    for (_, data) in requests.iter().flatten() {
        let text = String::from_utf8(data.clone()).unwrap();
        let (key, n) = text.split_once(':').unwrap();
        let n: i64 = n.parse().unwrap();
        let prev = last.insert(key.to_owned(), n).unwrap_or(-1);
        assert!(n > prev, "{key}: {n} after {prev}");
    }
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_window_gathers_reads_into_one_request() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("window"), 1)
        .await
        .unwrap();
    let behaviour: Behaviour = Arc::new(|_: &Request, _| (StatusCode::OK, serde_json::json!({})));
    let (url, seen) = serve(behaviour).await;
    let vars = env(
        &stack,
        &arn,
        &url,
        &[
            ("KCLD_SINK__BATCH_SIZE", "10"),
            ("KCLD_SINK__BATCHING_WINDOW_MS", "5000"),
            ("KCLD_INITIAL_POSITION", "LATEST"),
        ],
    );
    let kcld = Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    let start = Instant::now();
    while kcld.stderr_text().matches("positioned").count() < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            kcld.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let first: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("a{i}"), format!("a{i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    let second: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("b{i}"), format!("b{i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &second).await.unwrap();
    let want: HashSet<Vec<u8>> = first
        .iter()
        .chain(&second)
        .map(|(_, d)| d.clone())
        .collect();
    wait_all(
        &seen,
        |_, r| r.iter().map(|(_, d)| d.clone()).collect(),
        &want,
        &kcld,
    )
    .await;
    let requests = seen.lock().unwrap().clone();
    assert_eq!(
        requests.len(),
        1,
        "two reads gathered into one request of 10: {:?}",
        requests.iter().map(Vec::len).collect::<Vec<_>>()
    );
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
}

/// A poison record stalls its shard while retries are unlimited; setting a
/// retry limit in the file and sending SIGHUP lets it go to the failure
/// file and the shard move on, without a restart or a lost lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_retry_limit_releases_a_stuck_batch() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("reload-sink"), 1)
        .await
        .unwrap();
    let records: Vec<(String, Vec<u8>)> = vec![
        ("k1".into(), b"first".to_vec()),
        ("k2".into(), b"poison".to_vec()),
        ("k3".into(), b"after".to_vec()),
    ];
    stack.put_records(&arn, &records).await.unwrap();
    let (url, seen) = serve(refuses_poison()).await;
    let dir = std::env::temp_dir().join(unique_name("kcld-reload-sink"));
    std::fs::create_dir_all(&dir).unwrap();
    let failures = dir.join("failed.jsonl");
    let config = dir.join("kcld.toml");
    let file = |retries: &str| {
        format!(
            "[sink]\ntype = \"http\"\nurl = \"{url}\"\nbatch_size = 1\non_failure_file = \"{}\"\n{retries}",
            failures.display()
        )
    };
    std::fs::write(&config, file("")).unwrap();
    let mut vars = env(&stack, &arn, &url, &[]);
    vars.remove("KCLD_SINK__TYPE");
    vars.remove("KCLD_SINK__URL");
    let path = config.display().to_string();
    let kcld = Kcld::spawn(KCLD, &["run", "--config", &path], &vars).unwrap();

    // Stuck on the poison record: retried, never past it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.iter().any(|(_, d)| d == b"poison"))
        .count()
        < 3
    {
        assert!(Instant::now() < deadline, "{}", kcld.stderr_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!seen
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .any(|(_, d)| d == b"after"));

    std::fs::write(&config, file("max_retry_attempts = 1\n")).unwrap();
    let pid = kcld.pid().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !seen
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .any(|(_, d)| d == b"after")
    {
        assert!(Instant::now() < deadline, "{}", kcld.stderr_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failed = std::fs::read_to_string(&failures).unwrap();
    assert_eq!(failed.lines().count(), 1, "{failed}");
    assert!(failed.contains(&base64::engine::general_purpose::STANDARD.encode(b"poison")));
    assert!(kcld
        .stderr_text()
        .contains("applied: sink.max_retry_attempts"));
    kcld.terminate(Duration::from_secs(25)).await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
