//! Reading one shard through an enhanced fan-out consumer with
//! SubscribeToShard.
//!
//! One subscription per shard at a time. Each event carries records and a
//! continuation sequence number; a new subscription (after the service
//! ended one at five minutes, after `subscription_max_age_ms`, after an
//! error, or after `stall_timeout_ms` without an event) resumes
//! AFTER_SEQUENCE_NUMBER of the last continuation, so nothing is skipped and
//! nothing repeated. SubscribeToShard runs at most once a second per shard
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

use bytes::Bytes;
use kcld_checkpoint::Checkpoint;
use kcld_config::FanOutSettings;
use kcld_lease::ShardSpec;
use kcld_records::kpl::HashRange;
use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Fetched, Unpacker};
use crate::record::{Batch, ByteStr, Encryption, Record};
use crate::stream::{KinesisError, StartAt, Stream, Subscription};

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
    pending_end: Option<Vec<ShardSpec>>,
    failures: u32,
}

impl FanOutReader {
    /// `consumer_arn` is an ACTIVE consumer (see [`super::registration`]);
    /// the rest as for [`super::polling::PollingReader::new`].
    pub fn new(
        stream: Stream,
        consumer_arn: Arc<str>,
        shard_id: &str,
        start: &Checkpoint,
        at_timestamp_millis: Option<i64>,
        range: Option<HashRange>,
        settings: &FanOutSettings,
    ) -> Self {
        FanOutReader {
            stream,
            consumer_arn,
            unpacker: Unpacker::new(shard_id, start, range),
            start: super::start_at(shard_id, start, at_timestamp_millis),
            continuation: None,
            subscription: None,
            subscriptions: 0,
            last_subscribe: None,
            stall_timeout: Duration::from_millis(settings.stall_timeout_ms),
            max_age: Duration::from_millis(settings.subscription_max_age_ms),
            end_check: Some(Duration::from_millis(settings.end_check_interval_ms))
                .filter(|d| !d.is_zero()),
            last_end_check: Instant::now(),
            pending_end: None,
            failures: 0,
        }
    }

    /// The next non-empty batch, or the shard's end. `Ok(None)` when `cancel`
    /// fired first. Transient errors are retried here; the ones returned
    /// need a person (access denied, consumer or stream gone).
    pub async fn next(
        &mut self,
        cancel: &CancellationToken,
    ) -> Result<Option<Fetched>, KinesisError> {
        if let Some(children) = self.pending_end.take() {
            return Ok(Some(Fetched::ShardEnd { children }));
        }
        loop {
            let Some((subscription, opened)) = self.subscription.as_mut() else {
                match self.subscribe(cancel).await {
                    Ok(true) => continue,
                    Ok(false) => return Ok(None),
                    Err(e) if e.is_transient() => {
                        if !self.back_off(&e, cancel).await {
                            return Ok(None);
                        }
                        continue;
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
                    metrics::counter!("kcld_subscription_stalls_total", "shard" => self.unpacker.shard_label.clone()).increment(1);
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
                        if !self.back_off(&e, cancel).await {
                            return Ok(None);
                        }
                        continue;
                    }
                    return Err(e);
                }
                Ok(Ok(Some(event))) => event,
            };
            self.failures = 0;
            let caught_up = event.millis_behind_latest == 0;
            if let Some(fetched) = self.on_event(event)? {
                return Ok(Some(fetched));
            }
            if opened.elapsed() >= self.max_age {
                // Renew before the service's five-minute end; the next
                // subscription resumes after this event.
                self.subscription = None;
            }
            if caught_up {
                if let Some(children) = self.check_end().await {
                    self.subscription = None;
                    return Ok(Some(Fetched::ShardEnd { children }));
                }
            }
        }
    }

    /// Takes one event: its records (deaggregated, filtered), its
    /// continuation, and whether it ends the shard. No I/O. Returns what
    /// to hand on, if anything; a shard end that comes with records is
    /// handed on by the next call of [`FanOutReader::next`].
    fn on_event(
        &mut self,
        event: aws_sdk_kinesis::types::SubscribeToShardEvent,
    ) -> Result<Option<Fetched>, KinesisError> {
        let shard = &self.unpacker.shard_label;
        metrics::counter!("kcld_subscribetoshard_events_total", "shard" => shard.clone())
            .increment(1);
        metrics::gauge!("kcld_lag_seconds", "shard" => shard.clone())
            .set(event.millis_behind_latest as f64 / 1000.0);
        let raw = event
            .records
            .into_iter()
            .map(convert)
            .collect::<Result<Vec<_>, _>>()?;
        let records = self.unpacker.unpack(raw.into_iter());
        let children = event.child_shards.unwrap_or_default();
        // The end-of-shard event has no continuation; ChildShards come only
        // with the end, so they mark it too.
        let ended = event.continuation_sequence_number.is_empty() || !children.is_empty();
        if !event.continuation_sequence_number.is_empty() {
            self.continuation = Some(event.continuation_sequence_number);
        }
        if ended {
            self.subscription = None;
            let children = children.iter().map(child_spec).collect();
            if records.is_empty() {
                return Ok(Some(Fetched::ShardEnd { children }));
            }
            self.pending_end = Some(children);
        }
        if records.is_empty() {
            return Ok(None);
        }
        Ok(Some(Fetched::Records(Batch {
            shard_id: self.unpacker.shard_id.clone(),
            records,
            millis_behind_latest: Some(event.millis_behind_latest),
        })))
    }

    /// Where the next subscription starts: after the last continuation,
    /// else the grant's start.
    fn resume_at(&self) -> StartAt {
        match &self.continuation {
            Some(seq) => StartAt::AfterSequence(seq.clone()),
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
        let shard = &self.unpacker.shard_label;
        let started = Instant::now();
        self.last_subscribe = Some(started);
        metrics::counter!("kcld_subscribetoshard_calls_total", "shard" => shard.clone())
            .increment(1);
        let result = tokio::select! {
            r = self.stream.subscribe(&self.consumer_arn, &self.unpacker.shard_id, &at) => r,
            _ = cancel.cancelled() => return Ok(false),
        };
        metrics::histogram!("kcld_subscribetoshard_duration_seconds", "shard" => shard.clone())
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
        metrics::counter!("kcld_fanout_end_checks_total", "shard" => self.unpacker.shard_label.clone())
            .increment(1);
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

    /// Waits after a transient error: exponential with jitter, capped at
    /// 10 s. Returns false when cancelled while waiting.
    async fn back_off(&mut self, error: &KinesisError, cancel: &CancellationToken) -> bool {
        self.failures = self.failures.saturating_add(1);
        let cap_ms = (250u64 << self.failures.min(6)).min(10_000);
        let wait = Duration::from_millis(rand::rng().random_range(cap_ms / 2..=cap_ms));
        let shard = &self.unpacker.shard_id;
        let first = self.failures == 1;
        if matches!(error, KinesisError::InUse(_)) {
            if first {
                tracing::info!(shard = %shard, "another subscription to this shard is still open; waiting for it to end");
            }
        } else if first || self.failures.is_power_of_two() {
            tracing::warn!(shard = %shard, failures = self.failures, "{error}; subscribing again in {wait:?}");
        }
        if matches!(error, KinesisError::Throttled(_)) {
            metrics::counter!("kcld_throttles_total", "shard" => self.unpacker.shard_label.clone())
                .increment(1);
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = cancel.cancelled() => false,
        }
    }
}

/// A record of an event as kcld's record type (the data is moved, not
/// copied).
fn convert(r: aws_sdk_kinesis::types::Record) -> Result<Record, KinesisError> {
    let sequence_number = r.sequence_number.parse().map_err(|e| {
        KinesisError::Other(format!(
            "SubscribeToShard: record sequence number {:?}: {e}",
            r.sequence_number
        ))
    })?;
    Ok(Record {
        sequence_number,
        sub_sequence_number: 0,
        aggregated: false,
        partition_key: ByteStr::from(r.partition_key.unwrap_or_default()),
        explicit_hash_key: None,
        data: Bytes::from(r.data.into_inner()),
        approximate_arrival_ms: r
            .approximate_arrival_timestamp
            .and_then(|t| t.to_millis().ok())
            .unwrap_or(0),
        encryption: r.encryption_type.map(|e| match e {
            aws_sdk_kinesis::types::EncryptionType::Kms => Encryption::Kms,
            _ => Encryption::None,
        }),
    })
}

/// A child shard as the end-of-shard event announces it.
fn child_spec(child: &aws_sdk_kinesis::types::ChildShard) -> ShardSpec {
    let range = child.hash_key_range();
    ShardSpec {
        shard_id: child.shard_id().to_owned(),
        parents: child.parent_shards().to_vec(),
        starting_hash_key: range
            .map(|r| r.starting_hash_key().to_owned())
            .unwrap_or_default(),
        ending_hash_key: range
            .map(|r| r.ending_hash_key().to_owned())
            .unwrap_or_default(),
        closed: false,
    }
}
