//! Reading one shard through an enhanced fan-out consumer with
//! SubscribeToShard.
//!
//! One subscription per shard at a time. Each event carries records and a
//! continuation sequence number; a new subscription (after the service
//! ended one at five minutes, after `subscription_max_age_ms`, after an
//! error, or after `stall_timeout_ms` without an event) resumes
//! AFTER_SEQUENCE_NUMBER of the last continuation, so nothing is skipped and
//! nothing repeated. An event of many megabytes is handed on in runs as it
//! arrives (see [`crate::stream::Subscription`]); a subscription that ends
//! inside one resumes after the last record handed on. SubscribeToShard runs at most once a second per shard
//! (the service's limit); ResourceInUse (the previous subscription is still
//! open) is waited out. Errors that arrive inside the event stream are
//! handled like errors of the call.
//!
//! The shard ends when an event carries ChildShards or no continuation
//! sequence number (the service's end-of-shard event). In case that event
//! never comes, a caught-up reader also asks GetRecords every
//! `end_check_interval_ms` whether the shard was closed and read to its end.

use std::sync::Arc;
use std::time::Duration;

use kcld_config::FanOutSettings;
use kcld_lease::ShardSpec;
use kcld_records::kpl::HashRange;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Backoff, Fetched, Unpacker};
use crate::record::Batch;
use crate::record::Record;
use crate::stream::{EventPiece, KinesisError, StartAt, Stream, Subscription};
use kcld_records::getrecords::SubscribeEvent;

/// The service allows one SubscribeToShard call per second per shard and
/// consumer.
const MIN_SUBSCRIBE_SPACING: Duration = Duration::from_secs(1);

/// Reads one shard, event by event.
pub struct FanOutReader {
    stream: Stream,
    consumer_arn: Arc<str>,
    unpacker: Unpacker,
    /// Where the first subscription starts.
    start: StartAt,
    /// The continuation sequence number of the last event: where the next
    /// subscription resumes.
    continuation: Option<String>,
    /// The last record handed on of a large event still arriving (handed
    /// on in runs): while set, the next subscription resumes after it.
    partial_after: Option<String>,
    /// The lag the last event reported, for the runs of the next.
    last_millis: Option<i64>,
    /// The open subscription and when it was opened.
    subscription: Option<(Subscription, Instant)>,
    subscriptions: u64,
    last_subscribe: Option<Instant>,
    stall_timeout: Duration,
    max_age: Duration,
    end_check: Option<Duration>,
    last_end_check: Instant,
    /// The last event closed the shard but carried records: report the end
    /// (with these children) on the next call.
    pub(super) pending_end: super::PendingEnd,
    backoff: Backoff,
}

impl FanOutReader {
    /// `consumer_arn` is an ACTIVE consumer (see [`super::registration`]);
    /// the rest as for [`super::polling::PollingReader::new`].
    pub fn new(
        stream: Stream,
        consumer_arn: Arc<str>,
        shard_id: &str,
        start: &super::Resume,
        at_timestamp_millis: Option<i64>,
        range: Option<HashRange>,
        settings: &FanOutSettings,
    ) -> Self {
        let unpacker = Unpacker::new(shard_id, stream.metric_label(), start, range);
        FanOutReader {
            stream,
            consumer_arn,
            unpacker,
            start: super::start_at(shard_id, start, at_timestamp_millis),
            continuation: None,
            partial_after: None,
            last_millis: None,
            subscription: None,
            subscriptions: 0,
            last_subscribe: None,
            stall_timeout: settings.stall_timeout,
            max_age: settings.subscription_max_age,
            end_check: Some(settings.end_check_interval).filter(|d| !d.is_zero()),
            last_end_check: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(250)),
            pending_end: Default::default(),
        }
    }

    /// The next event's records (subscribing first when no subscription is
    /// open), or the shard's end. `Ok(None)` when `cancel` fired first.
    /// Stalls, the service's own end of a subscription and transient errors
    /// subscribe again here; the errors returned need a person (access
    /// denied, consumer or stream gone).
    /// A shard end met with records is held in `pending_end` and handed
    /// on by [`super::Reader::next`].
    pub async fn read(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<Fetched>, KinesisError> {
        loop {
            let Some((subscription, opened)) = self.subscription.as_mut() else {
                match self.subscribe(cancel).await {
                    Ok(true) => continue,
                    Ok(false) => return Ok(None),
                    Err(e @ KinesisError::NotFound(_)) => return self.gone(e, cancel).await,
                    Err(e) if e.is_transient() => {
                        back_off_then_continue!(self, &e, "subscribing again", cancel);
                    }
                    Err(e) => return Err(e),
                }
            };
            let opened = *opened;
            let received = tokio::select! {
                _ = cancel.cancelled() => return Ok(None),
                r = tokio::time::timeout(
                    self.stall_timeout,
                    self.stream.next_event(subscription, &self.consumer_arn),
                ) => r,
            };
            let event = match received {
                Err(_) => {
                    tracing::warn!(shard = %self.unpacker.shard_id, "no event for {:?}; subscribing again", self.stall_timeout);
                    metrics::counter!("kcld_subscription_stalls_total", self.unpacker.labels.get())
                        .increment(1);
                    self.subscription = None;
                    continue;
                }
                Ok(Ok(None)) => {
                    tracing::debug!(shard = %self.unpacker.shard_id, "the service ended the subscription; subscribing again");
                    self.subscription = None;
                    continue;
                }
                Ok(Err(e)) => {
                    self.subscription = None;
                    metrics::counter!("kcld_kinesis_errors_total", "operation" => "SubscribeToShard", "kind" => e.kind())
                        .increment(1);
                    if e.is_transient() {
                        back_off_then_continue!(self, &e, "subscribing again", cancel);
                    }
                    if matches!(e, KinesisError::NotFound(_)) {
                        return self.gone(e, cancel).await;
                    }
                    return Err(e);
                }
                Ok(Ok(Some(EventPiece::Records(run)))) => {
                    // A run of a large event: handed on as it arrives; the
                    // renewal and the end check wait for the event's end.
                    self.backoff.reset();
                    if let Some(fetched) = self.on_run(run) {
                        return Ok(Some(fetched));
                    }
                    continue;
                }
                Ok(Ok(Some(EventPiece::Event(event)))) => event,
            };
            self.backoff.reset();
            let caught_up = event.millis_behind_latest.unwrap_or(0) == 0;
            if opened.elapsed() >= self.max_age {
                // Renew before the service's five-minute end, busy or
                // not; the next subscription resumes after this event.
                self.subscription = None;
            }
            if let Some(fetched) = self.on_event(event)? {
                return Ok(Some(fetched));
            }
            if caught_up {
                if let Some(children) = self.check_end().await {
                    self.subscription = None;
                    return Ok(Some(Fetched::ShardEnd { children }));
                }
            }
        }
    }

    /// A ResourceNotFound: the shard's end if the shard expired (see
    /// [`super::end_if_gone`]); the consumer or stream gone stays an error.
    async fn gone(
        &mut self,
        err: KinesisError,
        cancel: &CancellationToken,
    ) -> Result<Option<Fetched>, KinesisError> {
        self.subscription = None;
        let position = self.last_position().map(str::to_owned);
        let last = (position.as_deref(), &self.start);
        let (stream, unpacker) = (&self.stream, &self.unpacker);
        super::end_if_gone(stream, unpacker, &mut self.backoff, last, err, cancel).await
    }

    /// Takes a run of a large event's records (deaggregated, filtered);
    /// the next subscription resumes after its last record until the event
    /// is complete. No I/O.
    fn on_run(&mut self, run: Vec<Record>) -> Option<Fetched> {
        if let Some(last) = run.last() {
            self.partial_after = Some(last.sequence_number.as_str().to_owned());
        }
        let records = self.unpacker.unpack(run.into_iter());
        if records.is_empty() {
            return None;
        }
        Some(Fetched::Records(Batch {
            shard_id: self.unpacker.shard_id.clone(),
            records,
            millis_behind_latest: self.last_millis,
            filtered_to: None,
        }))
    }

    /// Takes one event: its records (deaggregated, filtered), its
    /// continuation, and whether it ends the shard. No I/O. Returns what
    /// to hand on, if anything; a shard end that comes with records is
    /// handed on by the next call of [`super::Reader::next`].
    fn on_event(&mut self, event: SubscribeEvent) -> Result<Option<Fetched>, KinesisError> {
        let shard = self.unpacker.labels.get();
        metrics::counter!("kcld_subscribetoshard_events_total", shard.clone()).increment(1);
        let millis_behind_latest = event.millis_behind_latest.unwrap_or(0);
        self.last_millis = Some(millis_behind_latest);
        // The event is complete: its continuation covers its runs.
        self.partial_after = None;
        metrics::gauge!("kcld_lag_seconds", shard.clone())
            .set(millis_behind_latest as f64 / 1000.0);
        let records = self.unpacker.unpack(event.records.into_iter());
        let children = event.child_shards.unwrap_or_default();
        // The end-of-shard event has no continuation; ChildShards come only
        // with the end, so they mark it too.
        let ended = event.continuation_sequence_number.is_none() || !children.is_empty();
        if let Some(continuation) = event.continuation_sequence_number {
            self.continuation = Some(continuation);
        }
        if ended {
            self.subscription = None;
        }
        let end = ended.then(|| {
            children
                .into_iter()
                .map(crate::stream::child_spec)
                .collect()
        });
        let batch = Batch {
            shard_id: self.unpacker.shard_id.clone(),
            records,
            millis_behind_latest: Some(millis_behind_latest),
            filtered_to: None,
        };
        Ok(self.pending_end.hand_on(batch, end))
    }

    /// The last position read: the last record handed on of an event
    /// still arriving, else the last event's continuation.
    fn last_position(&self) -> Option<&str> {
        self.partial_after
            .as_deref()
            .or(self.continuation.as_deref())
    }

    /// Where the next subscription starts: after the last position read,
    /// else the grant's start.
    fn resume_at(&self) -> StartAt {
        match self.last_position() {
            Some(seq) => StartAt::AfterSequence(seq.to_owned()),
            None => self.start.clone(),
        }
    }

    /// Opens a subscription at the last continuation (or the start), at
    /// most once a second. Returns false when cancelled while waiting.
    async fn subscribe(&mut self, cancel: &CancellationToken) -> Result<bool, KinesisError> {
        if let Some(last) = self.last_subscribe {
            tokio::select! {
                _ = tokio::time::sleep_until(last + MIN_SUBSCRIBE_SPACING) => {}
                _ = cancel.cancelled() => return Ok(false),
            }
        }
        let at = self.resume_at();
        // A second subscription before the first event starts from when
        // LATEST was taken, never at a new LATEST.
        self.start = super::pin_latest(&self.start, std::time::SystemTime::now());
        let shard = self.unpacker.labels.get();
        let started = Instant::now();
        self.last_subscribe = Some(started);
        metrics::counter!("kcld_subscribetoshard_calls_total", shard.clone()).increment(1);
        let result = tokio::select! {
            r = self.stream.subscribe(&self.consumer_arn, &self.unpacker.shard_id, &at) => r,
            _ = cancel.cancelled() => return Ok(false),
        };
        metrics::histogram!("kcld_subscribetoshard_duration_seconds", shard.clone())
            .record(started.elapsed().as_secs_f64());
        let subscription = result.inspect_err(|e| {
            metrics::counter!("kcld_kinesis_errors_total", "operation" => "SubscribeToShard", "kind" => e.kind())
                .increment(1);
        })?;
        self.subscriptions += 1;
        if self.subscriptions == 1 {
            tracing::info!(shard = %self.unpacker.shard_id, at = ?at, consumer = %self.consumer_arn, "subscribed");
        } else {
            tracing::debug!(shard = %self.unpacker.shard_id, at = ?at, "subscribed again");
        }
        self.subscription = Some((subscription, Instant::now()));
        Ok(true)
    }

    /// When due, asks GetRecords whether the shard is closed with nothing
    /// after the last continuation: then it ended and these are its
    /// children. Any doubt (an error, records after the continuation) says
    /// no; the subscription goes on either way.
    async fn check_end(&mut self) -> Option<Vec<ShardSpec>> {
        let interval = self.end_check?;
        if self.last_end_check.elapsed() < interval {
            return None;
        }
        self.last_end_check = Instant::now();
        let continuation = self.continuation.clone()?;
        let shard = &self.unpacker.shard_id;
        metrics::counter!("kcld_fanout_end_checks_total", self.unpacker.labels.get()).increment(1);
        let iterator = self
            .stream
            .shard_iterator(shard, &StartAt::AfterSequence(continuation))
            .await;
        let response = match iterator {
            Ok(it) => self.stream.get_records(&it, 1).await,
            Err(e) => Err(e),
        };
        match response {
            Ok(r) if r.next_shard_iterator.is_none() && r.records.is_empty() => {
                tracing::info!(shard = %shard, "shard closed and read to its end (found by GetRecords; no end-of-shard event came)");
                Some(
                    r.child_shards
                        .unwrap_or_default()
                        .into_iter()
                        .map(crate::stream::child_spec)
                        .collect(),
                )
            }
            Ok(_) => None,
            Err(e) => {
                tracing::debug!(shard = %shard, "end-of-shard check failed: {e}");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The end-of-shard event, as the service sends it: the local Kinesis
    //! emulator never sends ChildShards over SubscribeToShard (it keeps a
    //! closed parent's subscription open), so these tests build the events
    //! the service sends and hand them to the reader. The emulator path,
    //! where the end is found by GetRecords, is tested against the stack in
    //! `daemon/tests/fanout.rs`.

    use super::*;
    use crate::record::{ByteStr, Record};
    use bytes::Bytes;
    use kcld_records::getrecords::ChildShard;

    fn reader() -> FanOutReader {
        let client = aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::Config::builder()
                .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
                .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
                .build(),
        );
        let arn: kcld_config::StreamArn = "arn:aws:kinesis:us-east-1:111111111111:stream/orders"
            .parse()
            .unwrap();
        let settings = FanOutSettings {
            consumer: kcld_config::FanOutConsumer::Name("c".into()),
            stall_timeout: Duration::from_millis(60_000),
            subscription_max_age: Duration::from_millis(290_000),
            registration_timeout: Duration::from_millis(1_000),
            end_check_interval: Duration::from_millis(0),
        };
        FanOutReader::new(
            Stream::new(client, arn),
            Arc::from("arn:aws:kinesis:us-east-1:111111111111:stream/orders/consumer/c:1"),
            "shardId-000000000000",
            &crate::retrieval::Resume::After(kcld_checkpoint::Checkpoint::TrimHorizon),
            None,
            None,
            &settings,
        )
    }

    fn record(seq: &str, data: &str) -> Record {
        Record {
            sequence_number: seq.parse().unwrap(),
            sub_sequence_number: 0,
            aggregated: false,
            partition_key: ByteStr::from("k".to_owned()),
            explicit_hash_key: None,
            data: Bytes::copy_from_slice(data.as_bytes()),
            approximate_arrival_ms: 0,
            encryption: None,
        }
    }

    fn children() -> Vec<ChildShard> {
        ["shardId-000000000001", "shardId-000000000002"]
            .into_iter()
            .map(|id| ChildShard {
                shard_id: id.into(),
                parent_shards: vec!["shardId-000000000000".into()],
                starting_hash_key: "0".into(),
                ending_hash_key: "1".into(),
            })
            .collect()
    }

    fn event(
        records: Vec<Record>,
        continuation: Option<&str>,
        children: Option<Vec<ChildShard>>,
    ) -> SubscribeEvent {
        SubscribeEvent {
            records,
            continuation_sequence_number: continuation.map(str::to_owned),
            millis_behind_latest: Some(0),
            child_shards: children,
        }
    }

    fn ids(f: &Fetched) -> Vec<String> {
        match f {
            Fetched::ShardEnd { children } => children.iter().map(|c| c.shard_id.clone()).collect(),
            Fetched::Records(b) => b
                .records
                .iter()
                .map(|r| r.sequence_number.to_string())
                .collect(),
        }
    }

    #[tokio::test]
    async fn the_end_event_ends_the_shard_after_its_records() {
        let mut r = reader();
        let first = r
            .on_event(event(vec![record("100", "a")], Some("100"), None))
            .unwrap()
            .unwrap();
        assert_eq!(ids(&first), ["100"]);
        assert_eq!(r.resume_at(), StartAt::AfterSequence("100".into()));

        // The last event: records, no continuation, the children.
        let last = r
            .on_event(event(vec![record("200", "b")], None, Some(children())))
            .unwrap()
            .unwrap();
        assert!(matches!(last, Fetched::Records(_)), "records first");
        assert_eq!(ids(&last), ["200"]);
        // The end comes next, before any new subscription (no I/O).
        let mut r = super::super::Reader::FanOut(Box::new(r));
        let end = r.next(&CancellationToken::new()).await.unwrap().unwrap();
        assert!(matches!(end, Fetched::ShardEnd { .. }));
        assert_eq!(ids(&end), ["shardId-000000000001", "shardId-000000000002"]);
        match end {
            Fetched::ShardEnd { children } => {
                assert_eq!(children[0].parents, ["shardId-000000000000"])
            }
            _ => unreachable!(),
        }
    }

    #[test]
    fn a_subscription_lost_inside_a_large_event_resumes_after_its_last_run() {
        let mut r = reader();
        r.on_event(event(vec![record("100", "a")], Some("100"), None))
            .unwrap();
        // Two runs of a large event handed on, then the subscription ends
        // before the event did: resume after the last record handed on,
        // not after the continuation before it (which would repeat them).
        let run = r
            .on_run(vec![record("101", "b"), record("102", "c")])
            .unwrap();
        assert_eq!(ids(&run), ["101", "102"]);
        assert_eq!(r.resume_at(), StartAt::AfterSequence("102".into()));
        assert_eq!(ids(&r.on_run(vec![record("103", "d")]).unwrap()), ["103"]);
        assert_eq!(r.resume_at(), StartAt::AfterSequence("103".into()));
        // The same again on the next subscription; this time the event
        // completes and its continuation takes over.
        r.on_run(vec![record("104", "e")]).unwrap();
        r.on_event(event(vec![record("105", "f")], Some("110"), None))
            .unwrap();
        assert_eq!(r.resume_at(), StartAt::AfterSequence("110".into()));
    }

    #[tokio::test]
    async fn an_empty_end_event_ends_the_shard_at_once() {
        let mut r = reader();
        let end = r
            .on_event(event(vec![], None, Some(children())))
            .unwrap()
            .unwrap();
        assert_eq!(ids(&end), ["shardId-000000000001", "shardId-000000000002"]);
        // A null continuation alone (a shard with no children left) ends it
        // too.
        let mut r = reader();
        let end = r.on_event(event(vec![], None, None)).unwrap().unwrap();
        assert!(matches!(end, Fetched::ShardEnd { ref children } if children.is_empty()));
    }

    #[tokio::test]
    async fn child_shards_end_the_shard_even_with_a_continuation() {
        // Some servers send the last continuation beside ChildShards.
        let mut r = reader();
        let end = r
            .on_event(event(vec![], Some("300"), Some(children())))
            .unwrap()
            .unwrap();
        assert!(matches!(end, Fetched::ShardEnd { .. }));
    }

    #[tokio::test]
    async fn events_without_records_hand_on_nothing_but_move_the_position() {
        let mut r = reader();
        assert_eq!(r.resume_at(), StartAt::TrimHorizon);
        assert!(r
            .on_event(event(vec![], Some("400"), None))
            .unwrap()
            .is_none());
        assert_eq!(r.resume_at(), StartAt::AfterSequence("400".into()));
    }
}
