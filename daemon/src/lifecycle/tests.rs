//! The lifecycle without an emulator: a scripted source, a lease handle
//! that records every write (or the in-memory lease store), and scripted
//! processors, so that every step (records, shard end, errors, a lease
//! lost, a processor failing) is tried, and the core invariant ("no
//! checkpoint past a record the processor was not given, and none before
//! the last one") is checked on random scripts.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kcld_checkpoint::{Checkpoint, CheckpointError, Checkpointer as LeaseCheckpointer};
use kcld_lease::memory::MemoryLeases;
use kcld_lease::{Grant, LeaseHandle, LeaseSource, ShardSpec};
use proptest::prelude::*;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::sink::{CheckpointPolicy, SinkProcessors};
use super::*;
use crate::record::{Batch, ByteStr, Record};
use crate::retrieval::prefetch::ByteBudget;
use crate::sink::{Sink, SinkError};

mod memory;

fn shard(id: &str) -> ShardSpec {
    ShardSpec {
        shard_id: id.into(),
        parents: vec![],
        starting_hash_key: "0".into(),
        ending_hash_key: "1".into(),
        closed: false,
    }
}

fn record(seq: u64) -> Record {
    Record {
        sequence_number: seq.to_string().parse().unwrap(),
        sub_sequence_number: 0,
        aggregated: false,
        partition_key: ByteStr::from("pk"),
        explicit_hash_key: None,
        data: bytes::Bytes::from(format!("r{seq}")),
        approximate_arrival_ms: 0,
        encryption: None,
    }
}

fn batch(seqs: &[u64]) -> Fetched {
    Fetched::Records(Batch {
        shard_id: Arc::from("s"),
        records: seqs.iter().map(|&s| record(s)).collect(),
        millis_behind_latest: None,
        filtered_to: None,
    })
}

fn at(seq: u64) -> Checkpoint {
    Checkpoint::parse(&seq.to_string(), None).unwrap()
}

/// A shard's metric labels, of one stream.
fn labels() -> crate::ops::ShardLabels {
    crate::ops::ShardLabels::new(None, "shardId-000000000000")
}

fn budget() -> ByteBudget {
    ByteBudget::new(Arc::new(Semaphore::new(1 << 20)), 1 << 20, 1 << 20)
}

/// Hands out what it is given, then waits (as a caught-up shard does).
struct Script(VecDeque<Fetched>);

#[async_trait::async_trait]
impl RecordSource for Script {
    async fn next(&mut self, cancel: &CancellationToken) -> Result<Option<Fetched>, KinesisError> {
        match self.0.pop_front() {
            Some(f) => Ok(Some(f)),
            None => {
                cancel.cancelled().await;
                Ok(None)
            }
        }
    }
}

/// Reads of a shard whose records are 1..=n then its end (when `ends`):
/// opened at a position, it starts there, as the readers do.
#[derive(Clone)]
struct Shard {
    n: u64,
    ends: bool,
    per_batch: usize,
    opened: Arc<Mutex<Vec<Resume>>>,
}

impl Shard {
    fn new(n: u64, ends: bool, per_batch: usize) -> Self {
        Shard {
            n,
            ends,
            per_batch,
            opened: Arc::default(),
        }
    }

    fn open(&self, at: &Resume) -> Box<dyn RecordSource> {
        self.opened.lock().unwrap().push(at.clone());
        let first = match at {
            Resume::After(Checkpoint::At(esn)) => {
                esn.sequence.to_string().parse::<u64>().unwrap() + 1
            }
            Resume::From(esn) => esn.sequence.to_string().parse::<u64>().unwrap(),
            _ => 1,
        };
        let seqs: Vec<u64> = (first..=self.n).collect();
        let mut script: VecDeque<Fetched> = seqs.chunks(self.per_batch).map(batch).collect();
        if self.ends {
            script.push_back(Fetched::ShardEnd {
                children: vec![shard("child")],
            });
        }
        Box::new(Script(script))
    }

    fn opened(&self) -> Vec<Resume> {
        self.opened.lock().unwrap().clone()
    }
}

/// A lease handle that records every write, and can be lost.
#[derive(Default)]
struct Recorded {
    writes: Mutex<Vec<Checkpoint>>,
    children: Mutex<Vec<String>>,
    lost: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl LeaseCheckpointer for Recorded {
    async fn checkpoint(&self, position: &Checkpoint) -> Result<(), CheckpointError> {
        if self.is_lost() {
            return Err(CheckpointError::LeaseLost {
                shard_id: "s".into(),
            });
        }
        self.writes.lock().unwrap().push(position.clone());
        Ok(())
    }
}

#[async_trait::async_trait]
impl LeaseHandle for Recorded {
    async fn shard_ended(&self, children: &[ShardSpec]) -> Result<(), CheckpointError> {
        self.writes.lock().unwrap().push(Checkpoint::ShardEnd);
        self.children
            .lock()
            .unwrap()
            .extend(children.iter().map(|c| c.shard_id.clone()));
        Ok(())
    }

    fn is_lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn grant(start: Checkpoint) -> (Grant, Arc<Recorded>) {
    let lease = Arc::new(Recorded::default());
    (
        Grant {
            stream: 0,
            shard: shard("s"),
            start,
            lease: lease.clone(),
            stop: CancellationToken::new(),
        },
        lease,
    )
}

/// What a scripted processor does at each callback, and what it saw.
#[derive(Clone, Debug, PartialEq)]
enum Call {
    Initialize(Checkpoint),
    Records(Vec<u64>),
    ShardEnded,
    ShutdownRequested,
    LeaseLost,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Step {
    /// Checkpoint the last record given.
    CheckpointLast,
    /// Checkpoint nothing.
    Nothing,
    /// Fail (the process died).
    Fail,
}

#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<Call>>>);

impl Log {
    fn push(&self, c: Call) {
        self.0.lock().unwrap().push(c);
    }
    fn calls(&self) -> Vec<Call> {
        self.0.lock().unwrap().clone()
    }
}

struct Scripted {
    log: Log,
    /// Per processRecords call, across processors.
    steps: Arc<Mutex<VecDeque<Step>>>,
    at_end: Step,
    fail_after_end: bool,
}

#[async_trait::async_trait]
impl ShardProcessor for Scripted {
    async fn initialize(&mut self, shard: &ShardInfo<'_>) -> Result<(), ProcessorError> {
        self.log.push(Call::Initialize(shard.checkpoint.clone()));
        Ok(())
    }

    async fn process_records(
        &mut self,
        batch: &Batch,
        cp: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        self.log.push(Call::Records(
            batch
                .records
                .iter()
                .map(|r| r.sequence_number.to_string().parse().unwrap())
                .collect(),
        ));
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Step::Nothing);
        match step {
            Step::CheckpointLast => cp
                .checkpoint(None)
                .await
                .map_err(|e| ProcessorError::Failed(e.to_string())),
            Step::Nothing => Ok(()),
            Step::Fail => Err(ProcessorError::Failed("died".into())),
        }
    }

    async fn shard_ended(&mut self, cp: &mut Checkpointer<'_>) -> Result<(), ProcessorError> {
        self.log.push(Call::ShardEnded);
        if self.at_end == Step::CheckpointLast {
            cp.checkpoint(None)
                .await
                .map_err(|e| ProcessorError::Failed(e.to_string()))?;
        }
        if self.fail_after_end {
            return Err(ProcessorError::Failed("died after SHARD_END".into()));
        }
        Ok(())
    }

    async fn shutdown_requested(
        &mut self,
        _cp: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        self.log.push(Call::ShutdownRequested);
        Ok(())
    }

    async fn lease_lost(&mut self) -> Result<(), ProcessorError> {
        self.log.push(Call::LeaseLost);
        Ok(())
    }
}

struct ScriptedFactory {
    log: Log,
    steps: Arc<Mutex<VecDeque<Step>>>,
    at_end: Step,
    fail_after_end: bool,
    created: Arc<Mutex<usize>>,
}

impl ScriptedFactory {
    fn new(steps: &[Step], at_end: Step) -> Self {
        ScriptedFactory {
            log: Log::default(),
            steps: Arc::new(Mutex::new(steps.iter().copied().collect())),
            at_end,
            fail_after_end: false,
            created: Arc::default(),
        }
    }
}

impl ProcessorFactory for ScriptedFactory {
    fn create(&self, _shard: &ShardSpec) -> Result<Box<dyn ShardProcessor>, Error> {
        *self.created.lock().unwrap() += 1;
        Ok(Box::new(Scripted {
            log: self.log.clone(),
            steps: self.steps.clone(),
            at_end: self.at_end,
            fail_after_end: self.fail_after_end,
        }))
    }
}

async fn run_to_end(
    g: Grant,
    shard: &Shard,
    factory: Arc<dyn ProcessorFactory>,
) -> Result<Outcome, Error> {
    let s = shard.clone();
    // Virtual time (paused clocks): restart back-offs pass at once.
    tokio::time::timeout(
        Duration::from_secs(24 * 3600),
        run(
            g,
            labels(),
            move |at: &Resume| s.open(at),
            factory,
            budget(),
        ),
    )
    .await
    .expect("the shard consumer finished")
}

#[tokio::test(start_paused = true)]
async fn records_then_shard_end_checkpoint_shard_end_and_announce_the_children() {
    let (g, lease) = grant(Checkpoint::TrimHorizon);
    let shard = Shard::new(6, true, 2);
    let f = Arc::new(ScriptedFactory::new(
        &[Step::CheckpointLast; 3],
        Step::CheckpointLast,
    ));
    let outcome = run_to_end(g, &shard, f.clone()).await.unwrap();
    assert_eq!(outcome, Outcome::ShardEnded);
    assert_eq!(
        f.log.calls(),
        [
            Call::Initialize(Checkpoint::TrimHorizon),
            Call::Records(vec![1, 2]),
            Call::Records(vec![3, 4]),
            Call::Records(vec![5, 6]),
            Call::ShardEnded
        ]
    );
    assert_eq!(
        *lease.writes.lock().unwrap(),
        [at(2), at(4), at(6), Checkpoint::ShardEnd]
    );
    assert_eq!(*lease.children.lock().unwrap(), ["child"]);
}

#[tokio::test(start_paused = true)]
async fn a_replaced_processor_on_a_latest_shard_gets_the_failed_batch_again() {
    // Nothing checkpointed yet (LATEST): the new processor starts at the
    // first record the failed one was given, not at a new LATEST.
    let (g, lease) = grant(Checkpoint::Latest);
    let shard = Shard::new(4, true, 2);
    let f = Arc::new(ScriptedFactory::new(
        &[
            Step::Nothing,
            Step::Fail,
            Step::CheckpointLast,
            Step::CheckpointLast,
        ],
        Step::CheckpointLast,
    ));
    run_to_end(g, &shard, f.clone()).await.unwrap();
    let opened = shard.opened();
    assert_eq!(opened.len(), 2);
    assert_eq!(opened[1], Resume::From(at_esn(1)));
    let records: Vec<Vec<u64>> = f
        .log
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Records(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(records, [vec![1, 2], vec![3, 4], vec![1, 2], vec![3, 4]]);
    assert_eq!(
        *lease.writes.lock().unwrap(),
        [at(2), at(4), Checkpoint::ShardEnd]
    );
}

fn at_esn(seq: u64) -> kcld_checkpoint::ExtendedSequenceNumber {
    match at(seq) {
        Checkpoint::At(esn) => esn,
        _ => unreachable!(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_replaced_processor_resumes_after_the_last_checkpoint() {
    let (g, _lease) = grant(Checkpoint::TrimHorizon);
    let shard = Shard::new(6, true, 2);
    let f = Arc::new(ScriptedFactory::new(
        &[Step::CheckpointLast, Step::Fail],
        Step::CheckpointLast,
    ));
    run_to_end(g, &shard, f.clone()).await.unwrap();
    assert_eq!(shard.opened()[1], Resume::After(at(2)));
    let inits: Vec<Call> = f
        .log
        .calls()
        .into_iter()
        .filter(|c| matches!(c, Call::Initialize(_)))
        .collect();
    assert_eq!(
        inits,
        [
            Call::Initialize(Checkpoint::TrimHorizon),
            Call::Initialize(at(2))
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failure_after_shard_end_was_written_finishes_the_shard() {
    let (g, lease) = grant(Checkpoint::TrimHorizon);
    let shard = Shard::new(2, true, 2);
    let mut f = ScriptedFactory::new(&[Step::Nothing], Step::CheckpointLast);
    f.fail_after_end = true;
    let f = Arc::new(f);
    let outcome = run_to_end(g, &shard, f.clone()).await.unwrap();
    assert_eq!(outcome, Outcome::ShardEnded);
    assert_eq!(shard.opened().len(), 1, "not read again");
    assert_eq!(*f.created.lock().unwrap(), 1);
    assert_eq!(*lease.writes.lock().unwrap(), [Checkpoint::ShardEnd]);
}

#[tokio::test(start_paused = true)]
async fn a_shard_end_not_checkpointed_is_read_again_from_the_last_checkpoint() {
    let (g, lease) = grant(Checkpoint::TrimHorizon);
    let shard = Shard::new(2, true, 2);
    let f = Arc::new(ScriptedFactory::new(&[Step::CheckpointLast], Step::Nothing));
    let source = shard.clone();
    let stop = g.stop.clone();
    let task = tokio::spawn(run(
        g,
        labels(),
        move |at: &Resume| source.open(&at.clone()),
        f.clone(),
        budget(),
    ));
    tokio::time::sleep(Duration::from_secs(5)).await;
    stop.cancel();
    assert_eq!(task.await.unwrap().unwrap(), Outcome::Stopped);
    let opened = shard.opened();
    assert!(opened.len() >= 2, "{opened:?}");
    assert!(opened[1..].iter().all(|o| *o == Resume::After(at(2))));
    assert!(!lease.writes.lock().unwrap().contains(&Checkpoint::ShardEnd));
}

#[tokio::test(start_paused = true)]
async fn a_lost_lease_sends_only_lease_lost_and_a_shutdown_both() {
    for lost in [true, false] {
        let (g, lease) = grant(Checkpoint::TrimHorizon);
        let shard = Shard::new(2, false, 2);
        let f = Arc::new(ScriptedFactory::new(&[Step::Nothing], Step::Nothing));
        let stop = g.stop.clone();
        let source = shard.clone();
        let task = tokio::spawn(run(
            g,
            labels(),
            move |at: &Resume| source.open(at),
            f.clone(),
            budget(),
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        lease.lost.store(lost, std::sync::atomic::Ordering::SeqCst);
        stop.cancel();
        assert_eq!(task.await.unwrap().unwrap(), Outcome::Stopped);
        let goodbye: Vec<Call> = f
            .log
            .calls()
            .into_iter()
            .filter(|c| matches!(c, Call::LeaseLost | Call::ShutdownRequested))
            .collect();
        if lost {
            assert_eq!(goodbye, [Call::LeaseLost]);
        } else {
            assert_eq!(goodbye, [Call::ShutdownRequested, Call::LeaseLost]);
        }
    }
}

/// A processor that checkpoints what the test tells it to.
struct Asks {
    asks: Vec<Option<Checkpoint>>,
    results: Arc<Mutex<Vec<Result<(), CheckpointFailure>>>>,
}

#[async_trait::async_trait]
impl ShardProcessor for Asks {
    async fn process_records(
        &mut self,
        _batch: &Batch,
        cp: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        for ask in self.asks.drain(..) {
            let r = cp.checkpoint(ask).await;
            self.results.lock().unwrap().push(r);
        }
        Ok(())
    }

    async fn shard_ended(&mut self, _cp: &mut Checkpointer<'_>) -> Result<(), ProcessorError> {
        Ok(())
    }
}

struct AsksFactory(Mutex<Option<Asks>>);

impl ProcessorFactory for AsksFactory {
    fn create(&self, _shard: &ShardSpec) -> Result<Box<dyn ShardProcessor>, Error> {
        Ok(Box::new(
            self.0.lock().unwrap().take().expect("one processor"),
        ))
    }
}

#[tokio::test(start_paused = true)]
async fn the_checkpointer_takes_only_positions_between_the_last_checkpoint_and_the_last_record() {
    let (g, lease) = grant(at(10));
    let shard = Shard::new(14, false, 4);
    let results = Arc::new(Mutex::new(Vec::new()));
    let asks = Asks {
        asks: vec![
            Some(at(12)),
            Some(at(12)),
            Some(at(11)),
            Some(at(15)),
            Some(Checkpoint::ShardEnd),
            None,
        ],
        results: results.clone(),
    };
    let stop = g.stop.clone();
    let source = shard.clone();
    let task = tokio::spawn(run(
        g,
        labels(),
        move |at: &Resume| source.open(at),
        Arc::new(AsksFactory(Mutex::new(Some(asks)))),
        budget(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let results = results.lock().unwrap().clone();
    assert_eq!(results[0], Ok(()));
    assert_eq!(results[1], Ok(()), "the last checkpoint again succeeds");
    for r in &results[2..5] {
        assert!(
            matches!(r, Err(CheckpointFailure::OutOfRange { .. })),
            "{r:?}"
        );
    }
    assert_eq!(results[5], Ok(()), "None = the last record given (14)");
    assert_eq!(*lease.writes.lock().unwrap(), [at(12), at(14)]);
}

/// A sink that confirms a prefix of each batch, then stops.
struct Prefix {
    take: usize,
}

#[async_trait::async_trait]
impl Sink for Prefix {
    async fn deliver(&self, batch: &Batch, stop: &CancellationToken) -> Result<(), SinkError> {
        if batch.records.len() <= self.take {
            return Ok(());
        }
        stop.cancel();
        Err(SinkError::Stopped {
            confirmed: self.take,
        })
    }
}

#[tokio::test(start_paused = true)]
async fn the_sink_processor_checkpoints_only_the_confirmed_prefix() {
    let (g, lease) = grant(Checkpoint::TrimHorizon);
    let shard = Shard::new(8, false, 4);
    let processors = Arc::new(SinkProcessors {
        sink: Arc::new(Prefix { take: 3 }),
        policy: CheckpointPolicy {
            interval: Duration::from_secs(3600),
            max_records: 1000,
        }
        .into(),
        stream_label: None,
    });
    let outcome = run_to_end(g, &shard, processors).await.unwrap();
    assert_eq!(outcome, Outcome::Stopped);
    assert_eq!(
        *lease.writes.lock().unwrap(),
        [at(3)],
        "record 4 was not confirmed"
    );
}

#[tokio::test(start_paused = true)]
async fn children_announced_at_a_shard_end_start_at_trim_horizon_with_memory_leases() {
    let mut leases = MemoryLeases::new(
        vec![shard("s")],
        Checkpoint::Latest,
        CancellationToken::new(),
    );
    let g = leases.next_grant().await.unwrap();
    let shard_source = Shard::new(2, true, 2);
    let f = Arc::new(ScriptedFactory::new(
        &[Step::CheckpointLast],
        Step::CheckpointLast,
    ));
    run_to_end(g, &shard_source, f).await.unwrap();
    let child = leases.next_grant().await.unwrap();
    assert_eq!(child.shard.shard_id, "child");
    assert_eq!(child.start, Checkpoint::TrimHorizon);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    /// Whatever the processors ask and however often they fail: every
    /// checkpoint written lies between the previous one and the last
    /// record given, SHARD_END comes last and only at the shard's end, and
    /// every record is given at least once.
    #[test]
    fn no_checkpoint_past_a_record_not_given(
        n in 1u64..30,
        per_batch in 1usize..5,
        steps in proptest::collection::vec(0u8..3, 0..40),
    ) {
        let steps: Vec<Step> = steps
            .into_iter()
            .map(|s| match s { 0 => Step::CheckpointLast, 1 => Step::Nothing, _ => Step::Fail })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap();
        let (g, lease) = grant(Checkpoint::TrimHorizon);
        let shard = Shard::new(n, true, per_batch);
        let f = Arc::new(ScriptedFactory::new(&steps, Step::CheckpointLast));
        let outcome = rt.block_on(run_to_end(g, &shard, f.clone())).unwrap();
        prop_assert_eq!(outcome, Outcome::ShardEnded);
        let writes = lease.writes.lock().unwrap().clone();
        prop_assert_eq!(writes.last(), Some(&Checkpoint::ShardEnd));
        prop_assert_eq!(writes.iter().filter(|w| **w == Checkpoint::ShardEnd).count(), 1);
        // Checkpoints only move forward, and each names a record given
        // before it was written.
        let mut given: u64 = 0;
        let mut calls = f.log.calls().into_iter();
        let mut previous = Checkpoint::TrimHorizon;
        for w in &writes {
            if *w == Checkpoint::ShardEnd { break; }
            // Advance through the calls until the write is covered.
            while at(given) < *w {
                match calls.next() {
                    Some(Call::Records(r)) => given = given.max(*r.last().unwrap()),
                    Some(_) => {}
                    None => prop_assert!(false, "checkpoint {} past every record given", w),
                }
            }
            prop_assert!(*w > previous, "{} after {}", w, previous);
            previous = w.clone();
        }
        let mut seen: Vec<u64> = f.log.calls().into_iter().flat_map(|c| match c { Call::Records(r) => r, _ => vec![] }).collect();
        seen.sort();
        seen.dedup();
        prop_assert_eq!(seen, (1..=n).collect::<Vec<_>>());
    }
}

/// Confirms a prefix and stops, with a batching window so that a read's
/// records and the shard's end are gathered together.
struct PrefixGathering {
    take: usize,
}

#[async_trait::async_trait]
impl Sink for PrefixGathering {
    async fn deliver(&self, batch: &Batch, stop: &CancellationToken) -> Result<(), SinkError> {
        Prefix { take: self.take }.deliver(batch, stop).await
    }

    fn batching_window(&self) -> Option<(usize, Duration)> {
        Some((100, Duration::from_millis(10)))
    }
}

#[tokio::test(start_paused = true)]
async fn a_shard_end_gathered_with_an_unconfirmed_batch_is_not_checkpointed() {
    // The last records and the end arrive together; the application takes
    // only three of four before the lease goes: SHARD_END would skip the
    // fourth.
    let (g, lease) = grant(Checkpoint::TrimHorizon);
    let shard = Shard::new(4, true, 4);
    let processors = Arc::new(SinkProcessors {
        sink: Arc::new(PrefixGathering { take: 3 }),
        policy: CheckpointPolicy {
            interval: Duration::from_secs(3600),
            max_records: 1000,
        }
        .into(),
        stream_label: None,
    });
    let outcome = run_to_end(g, &shard, processors).await.unwrap();
    assert_eq!(outcome, Outcome::Stopped);
    assert_eq!(
        *lease.writes.lock().unwrap(),
        [at(3)],
        "record 4 was not confirmed"
    );
    assert!(lease.children.lock().unwrap().is_empty());
}
