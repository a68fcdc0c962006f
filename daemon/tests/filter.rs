//! Filter criteria (`[filter] patterns`, Lambda's syntax): only matching
//! records are delivered; the others are counted and checkpointed past, so
//! a restart delivers nothing again. Against the local stack.

use std::time::Duration;

use kcld_testkit::{metric_sum, unique_name, Delivered, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_matching_records_are_delivered_and_the_rest_is_checkpointed_past() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("filtered"), 2)
        .await
        .unwrap();
    // Orders in four states, some not JSON at all; the last one put is
    // filtered out, so the checkpoint can only reach it by passing over.
    let mut records = Vec::new();
    for i in 0..200 {
        let data = match i % 5 {
            0 => format!(r#"{{"order":{i},"status":"shipped","total":{}}}"#, 50 + i),
            1 => format!(r#"{{"order":{i},"status":"placed","total":{}}}"#, 50 + i),
            2 => format!(r#"{{"order":{i},"status":"shipped","total":5}}"#),
            3 => format!("not json {i}"),
            _ => format!(r#"{{"order":{i},"status":"cancelled"}}"#),
        };
        records.push((format!("k{}", i % 7), data.into_bytes()));
    }
    records.push(("k0".into(), br#"{"status":"placed"}"#.to_vec()));
    let placed = stack.put_records(&arn, &records).await.unwrap();
    let wanted: Vec<&Vec<u8>> = records
        .iter()
        .filter(|(_, d)| {
            let v: serde_json::Value = match serde_json::from_slice(d) {
                Ok(v) => v,
                Err(_) => return false,
            };
            v["status"] == "shipped" && v["total"].as_f64().is_some_and(|t| t > 100.0)
                || v["status"] == "cancelled"
        })
        .map(|(_, d)| d)
        .collect();

    let app = unique_name("filter-app");
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "application_name = \"{app}\"\nstream_arn = \"{arn}\"\ninitial_position = \"TRIM_HORIZON\"\n\
             [checkpoint]\ninterval_ms = 300\n[polling]\nidle_time_between_reads_ms = 200\n\
             [filter]\npatterns = [\n  '{{\"data\": {{\"status\": [\"shipped\"], \"total\": [{{\"numeric\": [\">\", 100]}}]}}}}',\n  \
             '{{\"data\": {{\"status\": [{{\"prefix\": \"cancel\"}}]}}}}',\n]\n"
        ),
    )
    .unwrap();
    let mut env = stack.consumer_env();
    env.insert("KCLD_CONFIG".into(), config.path().to_str().unwrap().into());
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let lines = kcld.take_lines(wanted.len(), Duration::from_secs(60)).await;
    assert_eq!(lines.len(), wanted.len(), "{}", kcld.stderr_text());
    assert!(kcld.drain_for(Duration::from_secs(2)).await.is_empty());
    let mut got: Vec<Vec<u8>> = lines
        .iter()
        .map(|l| Delivered::parse(l).unwrap().data)
        .collect();
    let mut want: Vec<Vec<u8>> = wanted.into_iter().cloned().collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // Every shard's checkpoint reaches its last record, delivered or not,
    // and the metric counts what was passed over.
    stack
        .wait_checkpointed(&app, &placed, Duration::from_secs(30))
        .await
        .unwrap();
    let addr = kcld.ops_addr(Duration::from_secs(5)).await.unwrap();
    let (_, page) = kcld_testkit::http_get(addr, "/metrics").await.unwrap();
    let (filtered, _) = metric_sum(&page, "kcld_records_filtered_total");
    assert_eq!(filtered as usize, records.len() - want.len(), "{page}");
    kcld.stop_cleanly(Duration::from_secs(25)).await;

    // The second time round: nothing is delivered again.
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env).unwrap();
    let again = kcld.drain_for(Duration::from_secs(4)).await;
    assert!(again.is_empty(), "delivered again: {again:?}");
    kcld.stop_cleanly(Duration::from_secs(25)).await;

    // A pattern Lambda would refuse is one configuration error.
    std::fs::write(
        config.path(),
        format!("application_name = \"{app}\"\nstream_arn = \"{arn}\"\n[filter]\npatterns = ['{{\"data\": {{\"status\": \"shipped\"}}}}']\n"),
    )
    .unwrap();
    let out = tokio::process::Command::new(KCLD)
        .arg("check-config")
        .env_clear()
        .env("KCLD_CONFIG", config.path())
        .env("AWS_REGION", "us-east-1")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("filter.patterns") && err.contains("list of rules"),
        "{err}"
    );
}
