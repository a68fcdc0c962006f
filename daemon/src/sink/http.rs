//! The HTTP sink: POSTs batches in the Lambda Kinesis event shape
//! (`{"Records": [...]}`) to the application beside kcld, with the semantics
//! of a Lambda event source mapping:
//!
//! - at most `batch_size` records per request, in shard order;
//! - a 2xx response confirms the request, except that a body
//!   `{"batchItemFailures":[{"itemIdentifier":"<sequenceNumber>"}]}`
//!   (ReportBatchItemFailures) confirms only the records before the first
//!   failed one, and the rest is sent again;
//! - any other answer, or none, is retried with exponential back-off; with
//!   `bisect_on_error` a failing request is split in two and each half
//!   tried, in order, down to single records (a split is not a retry), to
//!   isolate a record the application cannot take;
//! - past `max_retry_attempts` or `max_record_age_seconds`, the failing
//!   batch's details go to `on_failure_destination` (SQS, SNS or S3, in
//!   Lambda's invocation record shape: [`super::destination`]) and/or its
//!   records to `on_failure_file` (flushed to disk), and only then count as
//!   confirmed. Without limits, records are retried until the application
//!   takes them: nothing is ever skipped silently.

use crate::backoff::Backoff;
use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use kcld_config::HttpSinkSettings;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::destination::{Condition, Destination, FailedBatch};
use super::event::{encoded_len, write_record, EventContext};
use super::{Sink, SinkError};
use crate::error::Error;
use crate::ops::ShardLabels;
use crate::record::{Batch, Record};

/// POSTs each shard's batches to `sink.url` as Lambda Kinesis events, retrying
/// as a Lambda event source mapping does.
pub struct HttpSink {
    context: EventContext,
    /// The settings as they stand now: a configuration reload may change
    /// the tunables (batch size, retries, record age, bisection, timeout)
    /// while batches are delivered; each decision reads them afresh.
    settings: tokio::sync::watch::Receiver<HttpSinkSettings>,
    uri: hyper::Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    failures: Option<Mutex<tokio::fs::File>>,
    /// Where a given-up batch's details go (SQS, SNS, S3).
    destination: Option<Arc<Destination>>,
    /// The `stream` label of its series when several streams are read
    /// ([`crate::ops::ShardLabels`]).
    stream_label: Option<Arc<str>>,
}

/// What one request achieved, for the records it carried.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every record taken.
    Taken,
    /// Records before this index (within the request) taken, the rest not.
    FailedFrom(usize),
    /// Nothing taken.
    Error(String),
}

impl HttpSink {
    /// A sink for `settings`; fails when `sink.url` is not a URL or
    /// `on_failure_file` cannot be opened for appending.
    pub fn new(context: EventContext, settings: HttpSinkSettings) -> Result<Self, Error> {
        HttpSink::following(context, tokio::sync::watch::channel(settings).1)
    }

    /// [`HttpSink::new`] whose tunables follow `settings` as a reload
    /// changes them (the URL and the failure file stay those at start).
    pub fn following(
        context: EventContext,
        settings: tokio::sync::watch::Receiver<HttpSinkSettings>,
    ) -> Result<Self, Error> {
        let url = settings.borrow().url.clone();
        HttpSink::following_to(context, settings, url)
    }

    /// [`HttpSink::following`], posting to `url` (a stream's own) rather
    /// than `sink.url`.
    pub fn following_to(
        context: EventContext,
        settings: tokio::sync::watch::Receiver<HttpSinkSettings>,
        url: String,
    ) -> Result<Self, Error> {
        let start = settings.borrow().clone();
        let settings_now = settings;
        let settings = start;
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| Error::setup(format!("sink url {url:?}"), e))?;
        let failures = match &settings.on_failure_file {
            None => None,
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        Error::setup(
                            format!(
                                "sink.on_failure_file {}: cannot open it for appending",
                                path.display()
                            ),
                            e,
                        )
                    })?;
                Some(Mutex::new(tokio::fs::File::from_std(file)))
            }
        };
        Ok(HttpSink {
            context,
            settings: settings_now,
            uri,
            client: Client::builder(TokioExecutor::new()).build_http(),
            failures,
            destination: None,
            stream_label: None,
        })
    }

    /// The same sink, sending the details of batches it gives up to
    /// `destination` (beside the failure file, when both are set).
    pub fn with_destination(mut self, destination: Option<Arc<Destination>>) -> Self {
        self.destination = destination;
        self
    }

    /// The same sink, its series labelled with the stream it delivers: for
    /// a process reading several streams.
    pub fn labelled_in_metrics(mut self, stream: Option<Arc<str>>) -> Self {
        self.stream_label = stream;
        self
    }

    fn labels(&self, shard_id: &str) -> ShardLabels {
        ShardLabels::new(self.stream_label.as_deref(), shard_id)
    }

    /// The Lambda Kinesis event of `records`: `{"Records":[...]}`.
    fn event(&self, shard_id: &str, records: &[Record]) -> Vec<u8> {
        let size: usize = records
            .iter()
            .map(|r| encoded_len(&self.context, shard_id, r) + 1)
            .sum();
        let mut body = Vec::with_capacity(size + 16);
        body.extend_from_slice(b"{\"Records\":[");
        for (i, r) in records.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            write_record(&mut body, &self.context, shard_id, r);
        }
        body.extend_from_slice(b"]}");
        body
    }

    /// One request; its outcome and the HTTP status, when an answer came.
    async fn post(&self, shard_id: &str, records: &[Record]) -> (Outcome, Option<u16>) {
        let body = self.event(shard_id, records);
        let request = match hyper::Request::post(self.uri.clone())
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return (Outcome::Error(format!("building the request: {e}")), None),
        };
        let timeout = self.settings.borrow().timeout;
        let response = match tokio::time::timeout(timeout, self.client.request(request)).await {
            Err(_) => {
                return (
                    Outcome::Error(format!("no answer within {timeout:?}")),
                    None,
                )
            }
            Ok(Err(e)) => return (Outcome::Error(format!("request failed: {e}")), None),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        let code = Some(status.as_u16());
        let answer = match tokio::time::timeout(timeout, response.into_body().collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => {
                return (
                    Outcome::Error(format!("HTTP {status}: the body did not arrive")),
                    code,
                )
            }
        };
        if !status.is_success() {
            return (Outcome::Error(format!("HTTP {status}")), code);
        }
        (failed_from(&answer, records), code)
    }

    /// Gives up `records`: their batch's details to the on-failure
    /// destination and/or the records to the failure file, before they
    /// count as confirmed. `Err(Stopped)` when `stop` fired while the
    /// destination was being retried (nothing of `records` confirmed).
    async fn give_up(
        &self,
        failed: FailedBatch<'_>,
        reason: &str,
        stop: &CancellationToken,
    ) -> Result<(), SinkError> {
        if self.destination.is_none() && self.failures.is_none() {
            return Err(SinkError::Fatal(
                "records exhausted their retries but neither sink.on_failure_destination nor sink.on_failure_file is set".into(),
            ));
        }
        if let Some(destination) = &self.destination {
            destination.send(&failed, stop).await?;
            metrics::counter!(
                "kcld_sink_failed_batches_total",
                self.labels(failed.shard_id).get()
            )
            .increment(1);
            tracing::warn!(
                shard = failed.shard_id,
                records = failed.records.len(),
                attempts = failed.attempts,
                destination = destination.arn(),
                "a batch's details went to the on-failure destination and its records are skipped: {reason}"
            );
        }
        if self.failures.is_some() {
            self.dead_letter(failed.shard_id, failed.records, reason, failed.attempts)
                .await?;
        } else {
            metrics::counter!(
                "kcld_sink_failures_total",
                self.labels(failed.shard_id).get()
            )
            .increment(failed.records.len() as u64);
        }
        Ok(())
    }

    /// Appends records to the failure file, flushed to disk, before they
    /// count as confirmed.
    async fn dead_letter(
        &self,
        shard_id: &str,
        records: &[Record],
        reason: &str,
        attempts: u32,
    ) -> Result<(), SinkError> {
        let Some(file) = &self.failures else {
            return Ok(());
        };
        let mut lines = Vec::with_capacity(records.len() * 700);
        for r in records {
            let mut event = Vec::new();
            write_record(&mut event, &self.context, shard_id, r);
            let mut value: serde_json::Value = serde_json::from_slice(&event).unwrap_or_default();
            value["kcldFailure"] =
                serde_json::json!({ "reason": reason, "attempts": attempts, "shardId": shard_id });
            lines.extend_from_slice(value.to_string().as_bytes());
            lines.push(b'\n');
        }
        let mut f = file.lock().await;
        let written = async {
            f.write_all(&lines).await?;
            f.flush().await?;
            f.sync_data().await
        };
        written
            .await
            .map_err(|e| SinkError::Fatal(format!("cannot write the failure file: {e}")))?;
        metrics::counter!("kcld_sink_failures_total", self.labels(shard_id).get())
            .increment(records.len() as u64);
        tracing::warn!(
            shard = shard_id,
            records = records.len(),
            attempts,
            "records written to the failure file: {reason}"
        );
        Ok(())
    }

    fn too_old(&self, record: &Record) -> bool {
        let Some(max) = self.settings.borrow().max_record_age else {
            return false;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        now_ms - record.approximate_arrival_ms > i64::try_from(max.as_millis()).unwrap_or(i64::MAX)
    }
}

/// Reads a ReportBatchItemFailures answer: the index of the first record
/// reported failed. A failure naming a record not in the request fails the
/// whole request, as Lambda treats it.
fn failed_from(answer: &[u8], records: &[Record]) -> Outcome {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(answer) else {
        return Outcome::Taken;
    };
    let Some(failures) = value.get("batchItemFailures").and_then(|f| f.as_array()) else {
        return Outcome::Taken;
    };
    let mut first: Option<usize> = None;
    for failure in failures {
        let id = failure
            .get("itemIdentifier")
            .and_then(|i| i.as_str())
            .unwrap_or_default();
        match records
            .iter()
            .position(|r| r.sequence_number.as_str() == id)
        {
            Some(i) => first = Some(first.map_or(i, |f: usize| f.min(i))),
            None => {
                return Outcome::Error(format!(
                    "batchItemFailures names {id:?}, which is not in the batch"
                ))
            }
        }
    }
    match first {
        None => Outcome::Taken,
        Some(i) => Outcome::FailedFrom(i),
    }
}

#[async_trait::async_trait]
impl Sink for HttpSink {
    /// With a parallelization factor above 1, the batch is split by
    /// partition key into that many streams sent side by side, each in
    /// order; when stopped, the confirmed prefix in shard order is what
    /// every stream confirmed.
    /// `batch_size` records or `batching_window_ms`, whichever comes first
    /// (Lambda's MaximumBatchingWindowInSeconds); off at 0.
    fn batching_window(&self) -> Option<(usize, Duration)> {
        let settings = self.settings.borrow();
        (!settings.batching_window.is_zero())
            .then_some((settings.batch_size, settings.batching_window))
    }

    async fn deliver(&self, batch: &Batch, stop: &CancellationToken) -> Result<(), SinkError> {
        let shard = &*batch.shard_id;
        let factor = self.settings.borrow().parallelization_factor.max(1);
        if factor == 1 {
            return self.deliver_in_order(shard, &batch.records, stop).await;
        }
        let mut groups: Vec<Vec<usize>> = vec![Vec::new(); factor];
        for (i, r) in batch.records.iter().enumerate() {
            groups[key_slot(r.partition_key.as_str(), factor)].push(i);
        }
        let runs = groups
            .iter()
            .filter(|g| !g.is_empty())
            .map(|indices| async move {
                let records: Vec<Record> =
                    indices.iter().map(|&i| batch.records[i].clone()).collect();
                (indices, self.deliver_in_order(shard, &records, stop).await)
            });
        let mut first_unconfirmed = batch.records.len();
        for (indices, result) in futures::future::join_all(runs).await {
            match result {
                Ok(()) => {}
                Err(SinkError::Stopped { confirmed }) => {
                    if let Some(&i) = indices.get(confirmed) {
                        first_unconfirmed = first_unconfirmed.min(i);
                    }
                }
                Err(e) => return Err(e),
            }
        }
        if first_unconfirmed < batch.records.len() {
            return Err(SinkError::Stopped {
                confirmed: first_unconfirmed,
            });
        }
        Ok(())
    }
}

/// Which of `factor` parallel streams a partition key travels in.
fn key_slot(partition_key: &str, factor: usize) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    (BuildHasherDefault::<DefaultHasher>::default().hash_one(partition_key) % factor as u64)
        as usize
}

impl HttpSink {
    /// Sends `records` in order, retrying as configured.
    async fn deliver_in_order(
        &self,
        shard: &str,
        records: &[Record],
        stop: &CancellationToken,
    ) -> Result<(), SinkError> {
        let size = self.settings.borrow().batch_size.max(1);
        let mut queue: VecDeque<Range<usize>> = (0..records.len())
            .step_by(size)
            .map(|s| s..(s + size).min(records.len()))
            .collect();
        let mut attempts = 0u32;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
        while let Some(mut range) = queue.pop_front() {
            loop {
                let (outcome, status) = self.post(shard, &records[range.clone()]).await;
                let reason = match outcome {
                    Outcome::Taken => {
                        attempts = 0;
                        backoff.reset();
                        break;
                    }
                    Outcome::FailedFrom(i) => {
                        if i > 0 {
                            attempts = 0;
                            backoff.reset();
                        }
                        range.start += i;
                        "the application reported a batch item failure".to_owned()
                    }
                    Outcome::Error(_)
                        if self.settings.borrow().bisect_on_error && range.len() > 1 =>
                    {
                        // Split and try each half, in order; a split is not
                        // a retry, so a single bad record is isolated
                        // whatever the retry limit.
                        let mid = range.start + range.len() / 2;
                        queue.push_front(mid..range.end);
                        range.end = mid;
                        continue;
                    }
                    Outcome::Error(e) => e,
                };
                attempts += 1;
                metrics::counter!("kcld_sink_retries_total", self.labels(shard).get()).increment(1);
                let exhausted = self
                    .settings
                    .borrow()
                    .max_retry_attempts
                    .is_some_and(|max| attempts > max);
                if exhausted || self.too_old(&records[range.start]) {
                    let (why, condition) = if exhausted {
                        ("retries exhausted", Condition::RetryAttemptsExhausted)
                    } else {
                        ("record too old", Condition::RecordAgeExceeded)
                    };
                    let given_up = &records[range.clone()];
                    let payload = match &self.destination {
                        Some(d) if d.wants_payload() => self.event(shard, given_up),
                        _ => Vec::new(),
                    };
                    let failed = FailedBatch {
                        shard_id: shard,
                        records: given_up,
                        condition,
                        attempts,
                        status,
                        payload: &payload,
                    };
                    match self
                        .give_up(failed, &format!("{why}: {reason}"), stop)
                        .await
                    {
                        Ok(()) => {}
                        Err(SinkError::Stopped { .. }) => {
                            return Err(SinkError::Stopped {
                                confirmed: range.start,
                            })
                        }
                        Err(e) => return Err(e),
                    }
                    attempts = 0;
                    backoff.reset();
                    break;
                }
                let wait = backoff.next_wait();
                if backoff.worth_logging() {
                    tracing::warn!(
                        shard,
                        attempts,
                        "application did not take {} record(s): {reason}; retrying in {wait:?}",
                        range.len()
                    );
                }
                if !Backoff::sleep(wait, stop).await {
                    return Err(SinkError::Stopped {
                        confirmed: range.start,
                    });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::ByteStr;

    fn records(n: usize) -> Vec<Record> {
        (0..n)
            .map(|i| Record {
                sequence_number: format!("{}", 100 + i).parse().unwrap(),
                sub_sequence_number: 0,
                aggregated: false,
                partition_key: ByteStr::from("k"),
                explicit_hash_key: None,
                data: Bytes::from_static(b"x"),
                approximate_arrival_ms: 0,
                encryption: None,
            })
            .collect()
    }

    #[test]
    fn batch_item_failures_confirm_the_records_before_the_first_failure() {
        let r = records(5);
        assert_eq!(failed_from(b"", &r), Outcome::Taken);
        assert_eq!(failed_from(b"{}", &r), Outcome::Taken);
        assert_eq!(
            failed_from(br#"{"batchItemFailures":[]}"#, &r),
            Outcome::Taken
        );
        assert_eq!(
            failed_from(
                br#"{"batchItemFailures":[{"itemIdentifier":"104"},{"itemIdentifier":"102"}]}"#,
                &r
            ),
            Outcome::FailedFrom(2)
        );
        assert!(matches!(
            failed_from(br#"{"batchItemFailures":[{"itemIdentifier":"999"}]}"#, &r),
            Outcome::Error(_)
        ));
    }
}
