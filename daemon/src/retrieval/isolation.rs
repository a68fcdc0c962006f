//! One stream of several that cannot be read stops only its own shards.
//!
//! With `stream_arn`, an error only a person can fix (access denied, the
//! stream deleted, its KMS key unusable) stops kcld: there is nothing else
//! to do. A daemon reading the streams of many accounts must go on with the
//! others when one owner deletes a stream or revokes access, and pick the
//! stream up again when access comes back. So with `[[streams]]` (one
//! entry or many: more can be added while it runs) each shard's source is
//! [`Patient`]: such an error is reported once for the
//! stream (one error line naming the stream and what is missing, a metric,
//! `/readyz`), and the shard waits and tries again, from where it was,
//! while its lease is held and renewed. Nothing is checkpointed meanwhile:
//! nothing was read.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::Fetched;
use crate::lifecycle::RecordSource;
use crate::stream::KinesisError;

/// The first wait after a failure; it doubles up to [`MAX_WAIT`].
pub(crate) const FIRST_WAIT: Duration = Duration::from_secs(1);
/// The longest wait between two tries of a failing shard.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(30);
/// A stream counts as failing this long after its last failure: failing
/// shards try again at least every `MAX_WAIT`.
const FAILING_FOR: Duration = Duration::from_secs(2 * MAX_WAIT.as_secs());

/// Whether one stream can be read, shared by its shards' sources.
#[derive(Debug)]
pub struct StreamAccess {
    arn: String,
    /// The last failure and its reason.
    last_failure: Mutex<Option<(Instant, String)>>,
}

impl StreamAccess {
    /// The access of the stream `arn`, not failing.
    pub fn new(arn: impl Into<String>) -> Arc<Self> {
        Arc::new(StreamAccess {
            arn: arn.into(),
            last_failure: Mutex::new(None),
        })
    }

    /// Why the stream cannot be read, while it fails.
    pub fn failing(&self) -> Option<String> {
        let last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        match &*last {
            Some((at, why)) if at.elapsed() < FAILING_FOR => Some(why.clone()),
            _ => None,
        }
    }

    /// The stream's ARN.
    pub fn arn(&self) -> &str {
        &self.arn
    }

    /// Notes a failure of `shard`'s reads, or of opening the stream
    /// (`None`); logged when the stream was not failing already (one line
    /// for the stream, not one per shard and try).
    pub(crate) fn failed(&self, shard: Option<&str>, err: &KinesisError) {
        metrics::counter!(
            "kcld_stream_errors_total",
            "stream" => self.arn.clone(),
            "kind" => err.kind()
        )
        .increment(1);
        let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        let was_failing = last
            .as_ref()
            .is_some_and(|(at, _)| at.elapsed() < FAILING_FOR);
        *last = Some((Instant::now(), err.kind().to_owned()));
        match shard {
            _ if was_failing => {}
            Some(shard) => tracing::error!(
                stream = %self.arn,
                shard,
                "stream cannot be read: {err}. Its shards wait and try again every {} s at most, \
                 holding their leases and checkpoints; the other streams go on",
                MAX_WAIT.as_secs()
            ),
            None => tracing::error!(
                stream = %self.arn,
                "stream cannot be read: {err}. It is opened again every {} s at most, and its \
                 shards read from their checkpoints once it can be; the other streams go on",
                MAX_WAIT.as_secs()
            ),
        }
    }

    /// Notes a successful read (or opening) after failures.
    pub(crate) fn recovered(&self) {
        let mut last = self.last_failure.lock().unwrap_or_else(|p| p.into_inner());
        if last.take().is_some() {
            tracing::info!(stream = %self.arn, "stream readable again");
        }
    }
}

/// Errors that concern the stream rather than one call: retrying soon does
/// not help, a person must act.
pub(crate) fn stream_level(err: &KinesisError) -> bool {
    matches!(
        err,
        KinesisError::AccessDenied { .. } | KinesisError::NotFound(_) | KinesisError::Kms(_)
    )
}

/// A shard's source that waits out stream-level errors (see the module).
pub struct Patient {
    inner: Box<dyn RecordSource>,
    access: Arc<StreamAccess>,
    shard: String,
    wait: Duration,
}

impl Patient {
    /// `inner`, a source of `shard` of the stream `access` follows.
    pub fn new(inner: Box<dyn RecordSource>, access: Arc<StreamAccess>, shard: &str) -> Self {
        Patient {
            inner,
            access,
            shard: shard.to_owned(),
            wait: FIRST_WAIT,
        }
    }
}

#[async_trait::async_trait]
impl RecordSource for Patient {
    async fn next(&mut self, cancel: &CancellationToken) -> Result<Option<Fetched>, KinesisError> {
        loop {
            match self.inner.next(cancel).await {
                Err(e) if stream_level(&e) => {
                    self.access.failed(Some(&self.shard), &e);
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(self.wait) => {}
                    }
                    self.wait = (self.wait * 2).min(MAX_WAIT);
                }
                other => {
                    if matches!(other, Ok(Some(_))) && self.wait > FIRST_WAIT {
                        self.wait = FIRST_WAIT;
                        self.access.recovered();
                    }
                    return other;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Batch;
    use std::collections::VecDeque;

    /// Answers from a script, then waits for cancellation.
    struct Script(VecDeque<Result<Option<Fetched>, KinesisError>>);

    #[async_trait::async_trait]
    impl RecordSource for Script {
        async fn next(
            &mut self,
            cancel: &CancellationToken,
        ) -> Result<Option<Fetched>, KinesisError> {
            match self.0.pop_front() {
                Some(answer) => answer,
                None => {
                    cancel.cancelled().await;
                    Ok(None)
                }
            }
        }
    }

    fn records() -> Result<Option<Fetched>, KinesisError> {
        Ok(Some(Fetched::Records(Batch {
            shard_id: "shardId-000000000000".into(),
            records: Vec::new(),
            millis_behind_latest: None,
            filtered_to: None,
        })))
    }

    fn denied() -> Result<Option<Fetched>, KinesisError> {
        Err(KinesisError::AccessDenied {
            action: "kinesis:GetRecords",
            message: "denied".into(),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn a_denied_stream_waits_and_resumes_where_it_was() {
        let access = StreamAccess::new("arn:aws:kinesis:us-east-1:111111111111:stream/a");
        let script = Script(VecDeque::from([records(), denied(), denied(), records()]));
        let mut source = Patient::new(Box::new(script), access.clone(), "shardId-000000000000");
        let cancel = CancellationToken::new();
        assert!(matches!(source.next(&cancel).await, Ok(Some(_))));
        assert!(access.failing().is_none());
        // Two refusals are waited out (1 s, then 2 s), not returned.
        let started = tokio::time::Instant::now();
        assert!(matches!(source.next(&cancel).await, Ok(Some(_))));
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // Read again: no longer failing.
        assert!(access.failing().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_stream_is_reported_until_it_reads_again_and_other_errors_pass() {
        let access = StreamAccess::new("arn:aws:kinesis:us-east-1:111111111111:stream/a");
        let script = Script(VecDeque::from([denied()]));
        let mut source = Patient::new(Box::new(script), access.clone(), "shardId-000000000000");
        let cancel = CancellationToken::new();
        let waiting = {
            let cancel = cancel.clone();
            tokio::spawn(async move { source.next(&cancel).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(access.failing().as_deref(), Some("access_denied"));
        // Cancelled while waiting: the source ends without an error.
        cancel.cancel();
        assert!(matches!(waiting.await.unwrap(), Ok(None)));
        // A transient error is the inner source's business: passed on.
        let script = Script(VecDeque::from([Err(KinesisError::Other("x".into()))]));
        let mut source = Patient::new(Box::new(script), access, "shardId-000000000000");
        assert!(matches!(
            source.next(&CancellationToken::new()).await,
            Err(KinesisError::Other(_))
        ));
    }
}
