//! The embedding example (`daemon/examples/embedded.rs`) against the local
//! stack: kcld as a library through `Consumer::builder`, with a processor
//! that checkpoints when it chooses. Run twice: the second run resumes
//! after the first one's checkpoints and reads nothing twice.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use kcld_testkit::{sample_records, unique_name, Kcld, Stack};

/// The example's binary, built beside the daemon's by `cargo test`.
fn example() -> PathBuf {
    let kcld = PathBuf::from(env!("CARGO_BIN_EXE_kcld"));
    let dir = kcld.parent().expect("target directory");
    dir.join("examples").join("embedded")
}

/// Data of the records printed until `n` distinct ones arrived.
async fn printed(k: &mut Kcld, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut all = Vec::new();
    while all.iter().collect::<HashSet<_>>().len() < n
        && Instant::now() < deadline
        && k.is_running()
    {
        for line in k.take_lines(usize::MAX, Duration::from_millis(100)).await {
            let data = line.splitn(3, ' ').nth(2).unwrap_or_default().to_owned();
            all.push(data);
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_embeds_kcld_with_its_own_processor() {
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("embedded"), 2)
        .await
        .unwrap();
    let app = unique_name("embedded-app");
    let records: Vec<(String, Vec<u8>)> = sample_records(25, 5)
        .into_iter()
        .enumerate()
        .map(|(i, (pk, _))| (pk, format!("first-{i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &records).await.unwrap();

    let bin = example();
    assert!(
        bin.is_file(),
        "{} was not built (`cargo test --workspace` builds the examples; with a test filter, \
         `cargo build --examples` first)",
        bin.display()
    );
    let bin = bin.to_str().unwrap();
    let env = stack.consumer_env();
    let mut k = Kcld::spawn(bin, &[&arn, &app], &env).unwrap();
    let got = printed(&mut k, 25, Duration::from_secs(60)).await;
    assert_eq!(
        got.len(),
        25,
        "every record once: {got:?}\n{}",
        k.stderr_text()
    );
    let status = k.terminate(Duration::from_secs(25)).await.unwrap();
    assert!(status.success(), "{status:?}");

    // The processor's checkpoints are in the KCL's table: at shutdown it
    // checkpointed what it had printed.
    let items = stack.scan_table(&app).await.unwrap();
    assert_eq!(items.len(), 2);
    assert!(items.iter().all(|i| i["checkpoint"]
        .as_s()
        .unwrap()
        .bytes()
        .all(|b| b.is_ascii_digit())));

    let more: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| (format!("k{i}"), format!("second-{i}").into_bytes()))
        .collect();
    stack.put_records(&arn, &more).await.unwrap();
    let mut k = Kcld::spawn(bin, &[&arn, &app], &env).unwrap();
    let got = printed(&mut k, 5, Duration::from_secs(60)).await;
    let extra = k.drain_for(Duration::from_secs(2)).await;
    assert!(extra.is_empty(), "{extra:?}");
    let mut got: Vec<String> = got;
    got.sort();
    assert_eq!(
        got,
        (0..5).map(|i| format!("second-{i}")).collect::<Vec<_>>(),
        "only the new records"
    );
    k.stop_cleanly(Duration::from_secs(25)).await;
}
