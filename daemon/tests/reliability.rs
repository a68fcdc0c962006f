//! The reliability suite: kcld's at-least-once contract under crashes,
//! failover, lease-table and Kinesis outages, throttling, 5xx answers, cut
//! connections, bad input and a stalled application.
//!
//! `RELIABILITY_SCALE=ci` (the default, part of `scripts/test`) runs every
//! scenario small enough for CI; `scripts/reliability` runs them at full
//! scale (100,000 records, 20 kills, ...). Each scenario prints one line
//! `RELIABILITY {json}` with its figures; RELIABILITY.md holds the last
//! full run. Scenarios run one at a time: each measures timing.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use kcld_testkit::{unique_name, Delivered, Kcld, Stack};
use tokio::sync::Mutex;

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");
static SERIAL: Mutex<()> = Mutex::const_new(());

/// How big each scenario runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Scale {
    Ci,
    Full,
}

fn scale() -> Scale {
    match std::env::var("RELIABILITY_SCALE").as_deref() {
        Ok("full") => Scale::Full,
        _ => Scale::Ci,
    }
}

fn report(scenario: &str, figures: serde_json::Value) {
    let mut line = serde_json::json!({ "scenario": scenario, "scale": format!("{:?}", scale()).to_lowercase() });
    if let (Some(l), Some(f)) = (line.as_object_mut(), figures.as_object()) {
        l.extend(f.clone());
    }
    println!("RELIABILITY {line}");
}

/// kcld settings every scenario shares: short failover, small batches and
/// checkpoints every 100 records, so that the duplicate bound is small.
fn env(stack: &Stack, arn: &str, app: &str, worker: &str) -> HashMap<String, String> {
    let mut env = stack.consumer_env();
    for (k, v) in [
        ("KCLD_APPLICATION_NAME", app),
        ("KCLD_STREAM_ARN", arn),
        ("KCLD_WORKER_ID", worker),
        ("KCLD_INITIAL_POSITION", "TRIM_HORIZON"),
        ("KCLD_LEASE__FAILOVER_TIME_MS", "3000"),
        ("KCLD_LEASE__TAKE_INTERVAL_MS", "500"),
        ("KCLD_CHECKPOINT__MAX_RECORDS", "100"),
        ("KCLD_CHECKPOINT__INTERVAL_MS", "1000"),
        ("KCLD_POLLING__MAX_RECORDS", "100"),
        ("KCLD_POLLING__IDLE_TIME_BETWEEN_READS_MS", "200"),
        ("KCLD_POLLING__MAX_IDLE_TIME_MS", "500"),
    ] {
        env.insert(k.into(), v.into());
    }
    env
}

/// Checkpoints every 100 records and batches of at most 100: after a crash
/// at most this many records of one shard are delivered again.
const REDELIVERY_PER_SHARD: usize = 100 + 100;

/// The renewal interval the KCL derives from a 3 s failover time.
const FAILOVER: Duration = Duration::from_millis(3000);
const RENEWAL: Duration = Duration::from_millis(3000 / 3 - 25);

/// One delivery as the suite saw it.
#[derive(Clone, Debug)]
struct Seen {
    instance: String,
    shard: String,
    data: String,
    at: Instant,
}

/// Every kcld process of a scenario (dead ones too) and what each printed.
struct Fleet {
    processes: Vec<(String, Kcld)>,
    seen: Vec<Seen>,
}

impl Fleet {
    fn new() -> Self {
        Fleet {
            processes: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn start(&mut self, name: &str, env: &HashMap<String, String>) {
        self.processes
            .push((name.to_owned(), Kcld::spawn(KCLD, &["run"], env).unwrap()));
    }

    fn get(&mut self, name: &str) -> &mut Kcld {
        &mut self
            .processes
            .iter_mut()
            .rev()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no instance {name}"))
            .1
    }

    /// Takes what every process printed so far.
    async fn collect(&mut self) {
        for (name, kcld) in &mut self.processes {
            for line in kcld.drain_for(Duration::from_millis(5)).await {
                let d = Delivered::parse(&line).unwrap();
                self.seen.push(Seen {
                    instance: name.clone(),
                    shard: d.shard_id,
                    data: String::from_utf8(d.data).unwrap(),
                    at: Instant::now(),
                });
            }
        }
    }

    /// Collects for `time`.
    async fn watch(&mut self, time: Duration) {
        let start = Instant::now();
        while start.elapsed() < time {
            self.collect().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Collects until `producer` put everything.
    async fn watch_producer(&mut self, producer: &Producer) {
        while !producer.done() {
            self.collect().await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn distinct(&self) -> HashSet<&str> {
        self.seen.iter().map(|s| s.data.as_str()).collect()
    }

    /// Collects until every record of `want` arrived, or panics after
    /// `within` with what is missing.
    async fn until_all(&mut self, want: &HashSet<String>, within: Duration) {
        let start = Instant::now();
        loop {
            self.collect().await;
            let got = self.distinct();
            if want.iter().all(|w| got.contains(w.as_str())) {
                return;
            }
            if start.elapsed() > within {
                let missing: Vec<&String> = want
                    .iter()
                    .filter(|w| !got.contains(w.as_str()))
                    .take(10)
                    .collect();
                let logs: String = self
                    .processes
                    .iter()
                    .map(|(n, k)| format!("--- {n}:\n{}", tail(&k.stderr_text(), 40)))
                    .collect();
                panic!(
                    "{} of {} records missing after {within:?}, e.g. {missing:?}\n{logs}",
                    want.iter().filter(|w| !got.contains(w.as_str())).count(),
                    want.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to every process still running; each must exit 0.
    async fn stop_running(&mut self) {
        for (_, mut kcld) in self.processes.drain(..) {
            if kcld.is_running() {
                kcld.stop_cleanly(Duration::from_secs(30)).await;
            }
        }
    }

    fn stderr(&self) -> String {
        self.processes
            .iter()
            .map(|(n, k)| format!("--- {n}:\n{}", k.stderr_text()))
            .collect()
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Records "pk-K:n", n counting up per key, produced in batches with a
/// pause between them, in a task of its own. A later producer on the same
/// stream goes on counting with [`Producer::then`].
struct Producer {
    task: tokio::task::JoinHandle<Vec<(String, String)>>,
    pub sent: HashSet<String>,
}

impl Producer {
    fn start(stack: &Stack, arn: &str, total: usize, batch: usize, pause: Duration) -> Self {
        Self::from(0, stack, arn, total, batch, pause)
    }

    /// The records after the first `after` of an earlier producer.
    fn then(
        after: usize,
        stack: &Stack,
        arn: &str,
        total: usize,
        batch: usize,
        pause: Duration,
    ) -> Self {
        Self::from(after, stack, arn, total, batch, pause)
    }

    fn from(
        first: usize,
        stack: &Stack,
        arn: &str,
        total: usize,
        batch: usize,
        pause: Duration,
    ) -> Self {
        let keys = 64;
        let records: Vec<(String, Vec<u8>)> = (first..first + total)
            .map(|i| {
                let key = i % keys;
                (
                    format!("pk-{key}"),
                    format!("pk-{key}:{}", i / keys + 1).into_bytes(),
                )
            })
            .collect();
        let sent = records
            .iter()
            .map(|(_, d)| String::from_utf8(d.clone()).unwrap())
            .collect();
        let (stack, arn) = (stack.clone(), arn.to_owned());
        let task = tokio::spawn(async move {
            let mut placed = Vec::with_capacity(records.len());
            for chunk in records.chunks(batch) {
                placed.extend(stack.put_records(&arn, chunk).await.unwrap());
                tokio::time::sleep(pause).await;
            }
            placed
        });
        Producer { task, sent }
    }

    fn done(&self) -> bool {
        self.task.is_finished()
    }
}

fn kill_9(kcld: &Kcld) {
    if let Some(pid) = kcld.pid() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
}

/// Leases per owner, from the table.
async fn owners(stack: &Stack, table: &str) -> HashMap<String, Vec<String>> {
    let mut by_owner: HashMap<String, Vec<String>> = HashMap::new();
    for (shard, owner) in stack.lease_owners(table).await.unwrap_or_default() {
        by_owner
            .entry(owner.unwrap_or_default())
            .or_default()
            .push(shard);
    }
    by_owner
}

async fn until_leases(
    stack: &Stack,
    table: &str,
    within: Duration,
    ok: impl Fn(&HashMap<String, Vec<String>>) -> bool,
) -> HashMap<String, Vec<String>> {
    let start = Instant::now();
    loop {
        let o = owners(stack, table).await;
        if ok(&o) {
            return o;
        }
        assert!(
            start.elapsed() < within,
            "lease table never reached the state: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_restarts_lose_nothing_and_duplicate_within_the_checkpoint_interval() {
    let _serial = SERIAL.lock().await;
    let (total, batch, kills, every) = match scale() {
        Scale::Ci => (2_000, 100, 4, Duration::from_secs(4)),
        Scale::Full => (100_000, 500, 20, Duration::from_secs(30)),
    };
    let shards = 4;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("kill9"), shards)
        .await
        .unwrap();
    let app = unique_name("kill9-app");
    let started = Instant::now();
    let mut fleet = Fleet::new();
    fleet.start("a", &env(&stack, &arn, &app, "worker-a"));
    fleet.start("b", &env(&stack, &arn, &app, "worker-b-0"));
    let producer = Producer::start(&stack, &arn, total, batch, Duration::from_millis(100));

    // Kill -9 instance b and start it again, `kills` times, while records
    // flow (and after, when they flow faster than the kills).
    let mut killed = 0;
    let mut next_kill = Instant::now() + every;
    while killed < kills {
        fleet.collect().await;
        if Instant::now() >= next_kill {
            kill_9(fleet.get("b"));
            killed += 1;
            fleet.start("b", &env(&stack, &arn, &app, &format!("worker-b-{killed}")));
            next_kill = Instant::now() + every;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    fleet.watch_producer(&producer).await;
    let within = Duration::from_secs(120 + total as u64 / 500);
    fleet.until_all(&producer.sent, within).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.collect().await;

    let deliveries = fleet.seen.len();
    let distinct = fleet.distinct().len();
    let duplicates = deliveries - distinct;
    let bound = kills * shards as usize * REDELIVERY_PER_SHARD;
    report(
        "kill -9 restarts, two instances",
        serde_json::json!({
            "shards": shards, "kills": kills, "sent": total, "delivered": distinct,
            "lost": total - distinct, "deliveries": deliveries, "duplicated": duplicates,
            "duplicate_bound": bound, "seconds": started.elapsed().as_secs(),
        }),
    );
    assert_eq!(distinct, total, "nothing lost");
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, more than {kills} kills x {shards} shards x {REDELIVERY_PER_SHARD}"
    );
    fleet.stop_running().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_after_kill_9_resumes_within_failover_plus_renewal() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("failover"), 6)
        .await
        .unwrap();
    let app = unique_name("failover-app");
    let mut fleet = Fleet::new();
    for w in ["a", "b", "c"] {
        fleet.start(w, &env(&stack, &arn, &app, &format!("worker-{w}")));
    }
    let balanced = until_leases(&stack, &app, Duration::from_secs(60), |o| {
        ["worker-a", "worker-b", "worker-c"]
            .iter()
            .all(|w| o.get(*w).map(Vec::len) == Some(2))
    })
    .await;
    let b_shards: HashSet<String> = balanced["worker-b"].iter().cloned().collect();
    // Records keep flowing into every shard, 10 batches a second.
    let total = match scale() {
        Scale::Ci => 1_500,
        Scale::Full => 6_000,
    };
    let producer = Producer::start(&stack, &arn, total, 25, Duration::from_millis(100));
    fleet.watch(Duration::from_secs(3)).await;

    let killed_at = Instant::now();
    kill_9(fleet.get("b"));
    fleet.watch_producer(&producer).await;
    fleet
        .until_all(&producer.sent, Duration::from_secs(120))
        .await;

    // For each of b's shards: when a, or c, delivered from it first after
    // the kill.
    let mut takeovers = Vec::new();
    for shard in &b_shards {
        let first = fleet
            .seen
            .iter()
            .filter(|s| &s.shard == shard && s.instance != "b" && s.at > killed_at)
            .map(|s| s.at)
            .min()
            .unwrap_or_else(|| panic!("nobody read {shard} after the kill:\n{}", fleet.stderr()));
        takeovers.push((first - killed_at).as_secs_f64());
    }
    let worst = takeovers.iter().cloned().fold(0.0, f64::max);
    let bound = (FAILOVER + RENEWAL + Duration::from_millis(1500)).as_secs_f64();
    report(
        "failover after kill -9, three instances",
        serde_json::json!({
            "shards": 6, "sent": total, "delivered": fleet.distinct().len(),
            "lost": total - fleet.distinct().len(), "deliveries": fleet.seen.len(),
            "takeover_seconds": takeovers, "bound_seconds": bound,
        }),
    );
    assert!(
        worst <= bound,
        "takeover took {worst:.2} s, more than {bound:.2} s: {takeovers:?}"
    );
    fleet.stop_running().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_cannot_renew_stops_before_its_shards_are_taken() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("partition"), 4)
        .await
        .unwrap();
    let app = unique_name("partition-app");
    // Instance b reaches the lease table through a relay the test can cut.
    let relay = kcld_testkit::cut::CutProxy::start(
        stack
            .dynamodb_endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    )
    .await
    .unwrap();
    let mut fleet = Fleet::new();
    fleet.start("a", &env(&stack, &arn, &app, "worker-a"));
    let mut b_env = env(&stack, &arn, &app, "worker-b");
    b_env.insert("AWS_ENDPOINT_URL_DYNAMODB".into(), relay.url());
    fleet.start("b", &b_env);
    let balanced = until_leases(&stack, &app, Duration::from_secs(60), |o| {
        o.get("worker-a").map(Vec::len) == Some(2) && o.get("worker-b").map(Vec::len) == Some(2)
    })
    .await;
    let b_shards: HashSet<String> = balanced["worker-b"].iter().cloned().collect();
    let total = match scale() {
        Scale::Ci => 1_200,
        Scale::Full => 6_000,
    };
    let producer = Producer::start(&stack, &arn, total, 20, Duration::from_millis(100));
    fleet.watch(Duration::from_secs(3)).await;

    // b loses the lease table (Kinesis still works for it).
    let cut_at = Instant::now();
    relay.block();
    fleet.watch_producer(&producer).await;
    fleet
        .until_all(&producer.sent, Duration::from_secs(120))
        .await;

    // Per shard of b: b's last delivery came before a's first one after
    // the cut. Never two readers at once.
    let mut gaps = Vec::new();
    for shard in &b_shards {
        let last_b = fleet
            .seen
            .iter()
            .filter(|s| &s.shard == shard && s.instance == "b")
            .map(|s| s.at)
            .max();
        let first_a = fleet
            .seen
            .iter()
            .filter(|s| &s.shard == shard && s.instance == "a" && s.at > cut_at)
            .map(|s| s.at)
            .min()
            .unwrap_or_else(|| panic!("a never took {shard}:\n{}", fleet.stderr()));
        if let Some(last_b) = last_b {
            assert!(
                last_b < first_a,
                "{shard}: b delivered until {:?} after the cut, a from {:?}",
                last_b - cut_at,
                first_a - cut_at
            );
            gaps.push((first_a - last_b.max(cut_at)).as_secs_f64());
        }
    }
    assert!(
        fleet.get("b").is_running(),
        "b stays up without its lease table"
    );
    let log = fleet.get("b").stderr_text();
    report(
        "lease table unreachable for one instance",
        serde_json::json!({
            "sent": total, "delivered": fleet.distinct().len(),
            "lost": total - fleet.distinct().len(), "deliveries": fleet.seen.len(),
            "gap_seconds_between_owners": gaps,
            "b_warnings": log.matches(" WARN ").count(),
        }),
    );
    relay.unblock();
    fleet.stop_running().await;
}

/// Per key, records arrive in the order they were put ("pk-K:n", n up),
/// first deliveries counted (a redelivery after a crash may repeat).
fn assert_key_order(seen: &[Seen]) {
    let mut last: HashMap<&str, usize> = HashMap::new();
    let mut first_time = HashSet::new();
    for s in seen {
        if !first_time.insert(s.data.as_str()) {
            continue;
        }
        let (key, n) = s.data.split_once(':').unwrap();
        let n: usize = n.parse().unwrap();
        let prev = last.insert(key, n).unwrap_or(0);
        assert!(n > prev, "{key}: {n} after {prev}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_table_gone_for_30_seconds_stops_reading_and_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let private = kcld_testkit::private::PrivateStack::start().unwrap();
    let stack = &private.stack;
    let arn = stack
        .create_shared_stream(&unique_name("ddb-outage"), 2)
        .await
        .unwrap();
    let app = unique_name("ddb-outage-app");
    let mut fleet = Fleet::new();
    fleet.start("a", &env(stack, &arn, &app, "worker-a"));
    until_leases(stack, &app, Duration::from_secs(60), |o| {
        o.get("worker-a").map(Vec::len) == Some(2)
    })
    .await;
    let total = 1_000;
    let producer = Producer::start(stack, &arn, total, 10, Duration::from_millis(100));
    fleet.watch(Duration::from_secs(2)).await;

    let outage = Duration::from_secs(30);
    let stopped_at = Instant::now();
    private.stop("dynamodb").unwrap();
    fleet.watch(outage).await;
    assert!(
        fleet.get("a").is_running(),
        "kcld stays up while the lease table is gone"
    );
    let during: Vec<f64> = fleet
        .seen
        .iter()
        .filter(|s| s.at > stopped_at)
        .map(|s| (s.at - stopped_at).as_secs_f64())
        .collect();
    private.start_again("dynamodb").unwrap();
    let restarted_at = Instant::now();
    fleet
        .until_all(&producer.sent, Duration::from_secs(120))
        .await;
    let resumed = fleet
        .seen
        .iter()
        .filter(|s| s.at > restarted_at)
        .map(|s| s.at)
        .min()
        .map(|t| (t - restarted_at).as_secs_f64());
    // Reading stops once the leases could not be renewed for the failover
    // time; nothing is delivered after that until the table is back.
    let last_during = during.iter().cloned().fold(0.0, f64::max);
    let log = fleet.get("a").stderr_text();
    let warnings = log.matches(" WARN ").count();
    report(
        "lease table (DynamoDB emulator) stopped for 30 s",
        serde_json::json!({
            "sent": total, "delivered": fleet.distinct().len(),
            "lost": total - fleet.distinct().len(), "deliveries": fleet.seen.len(),
            "delivered_during_outage": during.len(),
            "last_delivery_after_stop_seconds": last_during,
            "resumed_after_restart_seconds": resumed,
            "warnings_logged": warnings,
        }),
    );
    assert!(
        last_during <= FAILOVER.as_secs_f64(),
        "delivered {last_during:.2} s into the outage, after the leases expired"
    );
    assert!(
        warnings <= 40,
        "the outage is logged once per burst, not per call: {warnings} warnings\n{log}"
    );
    assert_key_order(&fleet.seen);
    fleet.stop_running().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kinesis_emulator_killed_and_restarted_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let private = kcld_testkit::private::PrivateStack::start().unwrap();
    let stack = &private.stack;
    let arn = stack
        .create_shared_stream(&unique_name("kinesis-restart"), 2)
        .await
        .unwrap();
    let app = unique_name("kinesis-restart-app");
    let mut fleet = Fleet::new();
    fleet.start("a", &env(stack, &arn, &app, "worker-a"));
    let first = Producer::start(stack, &arn, 500, 50, Duration::from_millis(50));
    fleet.watch_producer(&first).await;
    fleet.until_all(&first.sent, Duration::from_secs(60)).await;
    // The emulator keeps its data on disk every second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stopped_at = Instant::now();
    private.stop("kinesis").unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(fleet.get("a").is_running(), "kcld stays up without Kinesis");
    private.start_again("kinesis").unwrap();
    let back = stopped_at.elapsed();
    let second = Producer::then(500, stack, &arn, 500, 50, Duration::from_millis(50));
    fleet.watch_producer(&second).await;
    let all: HashSet<String> = first.sent.union(&second.sent).cloned().collect();
    fleet.until_all(&all, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.collect().await;
    let log = fleet.get("a").stderr_text();
    report(
        "Kinesis emulator killed and restarted (persistence on)",
        serde_json::json!({
            "sent": all.len(), "delivered": fleet.distinct().len(),
            "lost": all.len() - fleet.distinct().len(), "deliveries": fleet.seen.len(),
            "duplicated": fleet.seen.len() - fleet.distinct().len(),
            "outage_seconds": back.as_secs_f64(),
            "warnings_logged": log.matches(" WARN ").count(),
        }),
    );
    assert_eq!(fleet.distinct().len(), all.len());
    assert!(
        log.contains("cannot reach Kinesis") || log.contains("GetRecords"),
        "{log}"
    );
    fleet.stop_running().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_5xx_answers_are_retried_without_loss_or_duplicates() {
    use kcld_testkit::fault::{Fault, FaultProxy};
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("throttle"), 2)
        .await
        .unwrap();
    let proxy = FaultProxy::start(&stack.kinesis_endpoint).await.unwrap();
    // Half of all GetRecords calls throttled, every third GetShardIterator
    // over the account's limit, every other ListShards a 500.
    proxy.fail_one_in(
        "Kinesis_20131202.GetRecords",
        Fault::throughput_exceeded(),
        2,
    );
    proxy.fail_one_in(
        "Kinesis_20131202.GetShardIterator",
        Fault::limit_exceeded(),
        3,
    );
    proxy.fail_one_in("Kinesis_20131202.ListShards", Fault::internal_failure(), 2);
    let app = unique_name("throttle-app");
    let mut e = env(&stack, &arn, &app, "worker-a");
    e.insert("AWS_ENDPOINT_URL_KINESIS".into(), proxy.url());
    let mut fleet = Fleet::new();
    fleet.start("a", &e);
    let producer = Producer::start(&stack, &arn, 1_000, 50, Duration::from_millis(50));
    fleet
        .until_all(&producer.sent, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.collect().await;
    let (throttled, calls) = proxy.counts("Kinesis_20131202.GetRecords");
    let ops = fleet
        .get("a")
        .ops_addr(Duration::from_secs(5))
        .await
        .unwrap();
    let (_, page) = kcld_testkit::http_get(ops, "/metrics").await.unwrap();
    // Every throttled attempt is counted, also those the SDK retried itself.
    let counted = page
        .lines()
        .filter(|l| {
            l.starts_with("kcld_kinesis_attempt_errors_total{")
                && l.contains("operation=\"GetRecords\"")
                && l.contains("kind=\"throttled\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    let log = fleet.get("a").stderr_text();
    report(
        "throttling, limit and 5xx answers injected",
        serde_json::json!({
            "sent": 1000, "delivered": fleet.distinct().len(),
            "lost": 1000 - fleet.distinct().len(),
            "duplicated": fleet.seen.len() - fleet.distinct().len(),
            "getrecords_calls": calls, "getrecords_throttled": throttled,
            "throttles_counted": counted,
            "warnings_logged": log.matches(" WARN ").count(),
        }),
    );
    assert_eq!(fleet.distinct().len(), 1000);
    assert_eq!(
        fleet.seen.len(),
        1000,
        "a refused call delivers nothing twice"
    );
    assert!(throttled > 0 && counted == f64::from(throttled), "{page}");
    assert_key_order(&fleet.seen);
    fleet.stop_running().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_mid_response_lose_and_duplicate_nothing() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("cut"), 2)
        .await
        .unwrap();
    let relay = kcld_testkit::cut::CutProxy::start(stack.kinesis_addr())
        .await
        .unwrap();
    let app = unique_name("cut-app");
    let mut e = env(&stack, &arn, &app, "worker-a");
    e.insert("AWS_ENDPOINT_URL_KINESIS".into(), relay.url());
    let mut fleet = Fleet::new();
    fleet.start("a", &e);
    let producer = Producer::start(&stack, &arn, 1_500, 50, Duration::from_millis(30));
    let mut cuts = 0;
    while !producer.done() {
        relay.cut_all();
        cuts += 1;
        fleet.watch(Duration::from_millis(300)).await;
    }
    fleet
        .until_all(&producer.sent, Duration::from_secs(120))
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    fleet.collect().await;
    report(
        "connections cut every 0.3 s",
        serde_json::json!({
            "sent": 1500, "delivered": fleet.distinct().len(),
            "lost": 1500 - fleet.distinct().len(),
            "duplicated": fleet.seen.len() - fleet.distinct().len(),
            "cuts": cuts, "connections": relay.connections(),
        }),
    );
    assert_eq!(fleet.distinct().len(), 1500);
    assert_eq!(
        fleet.seen.len(),
        1500,
        "a cut read is read again, not delivered twice"
    );
    assert_key_order(&fleet.seen);
    fleet.stop_running().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_partition_keys_arrive_intact_and_a_deleted_stream_is_one_clear_error() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let name = unique_name("deleted");
    let arn = stack.create_shared_stream(&name, 1).await.unwrap();
    // The longest keys Kinesis takes: 256 characters, multi-byte ones too.
    let records: Vec<(String, Vec<u8>)> = (0..20)
        .map(|i| {
            let key: String =
                std::iter::repeat_n(if i % 2 == 0 { 'k' } else { 'ł' }, 256).collect();
            (key, format!("long key {i}").into_bytes())
        })
        .collect();
    stack.put_records(&arn, &records).await.unwrap();
    let app = unique_name("deleted-app");
    let mut kcld = Kcld::spawn(KCLD, &["run"], &env(&stack, &arn, &app, "worker-a")).unwrap();
    let lines = kcld.take_lines(20, Duration::from_secs(60)).await;
    let got: Vec<(String, Vec<u8>)> = lines
        .iter()
        .map(|l| {
            let d = Delivered::parse(l).unwrap();
            (d.partition_key, d.data)
        })
        .collect();
    assert_eq!(got, records, "keys and data intact, in order");

    // The owner deletes the stream while kcld reads it.
    stack
        .producer_kinesis()
        .await
        .delete_stream()
        .stream_arn(&arn)
        .enforce_consumer_deletion(true)
        .send()
        .await
        .unwrap();
    let (status, text) = kcld
        .wait_with_stderr(Duration::from_secs(60))
        .await
        .unwrap();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("kcld: error:"))
        .collect();
    report(
        "stream deleted while being read",
        serde_json::json!({ "exit_code": status.code(), "error": errors.first() }),
    );
    assert_eq!(status.code(), Some(1), "{text}");
    assert_eq!(errors.len(), 1, "{text}");
    assert!(
        errors[0].contains(&name) && errors[0].contains("not found"),
        "{}",
        errors[0]
    );
    assert!(!text.contains("panicked"), "{text}");
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_application_does_not_grow_memory_past_the_read_ahead_bounds() {
    let _serial = SERIAL.lock().await;
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("stall"), 4)
        .await
        .unwrap();
    // An application that takes connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            open.push(conn);
        }
    });
    let app = unique_name("stall-app");
    let mut e = env(&stack, &arn, &app, "worker-a");
    let (per_shard, total): (u64, u64) = (2 << 20, 6 << 20);
    for (k, v) in [
        ("KCLD_SINK__TYPE", "http".to_owned()),
        ("KCLD_SINK__URL", format!("http://{app_addr}/")),
        ("KCLD_SINK__TIMEOUT_MS", "900000".to_owned()),
        ("KCLD_POLLING__PREFETCH_BYTES", per_shard.to_string()),
        ("KCLD_POLLING__PREFETCH_TOTAL_BYTES", total.to_string()),
    ] {
        e.insert(k.into(), v);
    }
    let mut kcld = Kcld::spawn(KCLD, &["run"], &e).unwrap();
    let pid = kcld.pid().unwrap();
    until_leases(&stack, &app, Duration::from_secs(60), |o| {
        o.get("worker-a").map(Vec::len) == Some(4)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = rss(pid);

    // 40 MiB of records, far more than the read-ahead may hold.
    let record = vec![b'x'; 64 * 1024];
    let records: Vec<(String, Vec<u8>)> = (0..640)
        .map(|i| (format!("k{i}"), record.clone()))
        .collect();
    for chunk in records.chunks(40) {
        stack.put_records(&arn, chunk).await.unwrap();
    }
    let stall = match scale() {
        Scale::Ci => Duration::from_secs(20),
        Scale::Full => Duration::from_secs(60),
    };
    let start = Instant::now();
    let mut peak = 0;
    while start.elapsed() < stall {
        peak = peak.max(rss(pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let growth = peak.saturating_sub(baseline);
    // The read-ahead holds at most `total` bytes of record data; each
    // shard may also hold one response being decoded (a GetRecords body of
    // up to 100 records here) and the batch in the stalled request.
    let bound = total + 4 * (2 * 100 * record.len() as u64) + (16 << 20);
    report(
        "stalled application (HTTP sink never answers)",
        serde_json::json!({
            "stall_seconds": stall.as_secs(), "data_put_mib": 40,
            "read_ahead_total_mib": total >> 20, "baseline_rss_mib": baseline >> 20,
            "peak_rss_mib": peak >> 20, "growth_mib": growth >> 20, "bound_mib": bound >> 20,
        }),
    );
    assert!(kcld.is_running());
    assert!(
        growth <= bound,
        "RSS grew {} MiB, past {} MiB",
        growth >> 20,
        bound >> 20
    );
    kill_9(&kcld);
    held.abort();
    let _ = kcld.drain_for(Duration::from_millis(10)).await;
}
