//! On-failure destinations, as a Lambda event source mapping has them: when
//! a batch exhausted its retries or its records their age, the details of
//! the batch (Lambda's invocation record: the shard, the first and last
//! sequence numbers, the arrival times of the first and last record, the
//! batch size, the last answer) go to an SQS queue, an SNS topic or an S3
//! bucket, of this or another account. The records stay in the stream; the
//! HTTP sink counts them as confirmed only once the destination took the
//! message, so a destination that is down holds the shard (retried with
//! back-off) rather than losing the record of the failure.
//!
//! An S3 destination also gets the request the application refused (the
//! whole event, as `payload`), as Lambda sends it, under a key made of the
//! shard and the batch's sequence numbers (a retried write replaces it).

use kcld_config::{FailureDestination, Settings};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::utc::{iso_millis, now_millis};
use super::SinkError;
use crate::backoff::Backoff;
use crate::record::Record;

/// Why a batch went to the destination (Lambda's `condition`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    /// `MaximumRetryAttempts` reached.
    RetryAttemptsExhausted,
    /// A record passed `MaximumRecordAgeInSeconds`.
    RecordAgeExceeded,
}

impl Condition {
    fn as_str(self) -> &'static str {
        match self {
            Condition::RetryAttemptsExhausted => "RetryAttemptsExhausted",
            Condition::RecordAgeExceeded => "RecordAgeExceeded",
        }
    }
}

/// A batch the application did not take, with what is known of the last
/// attempt.
pub struct FailedBatch<'a> {
    /// The shard it came from.
    pub shard_id: &'a str,
    /// Its records, in shard order (never empty).
    pub records: &'a [Record],
    /// Why it is given up.
    pub condition: Condition,
    /// Attempts made.
    pub attempts: u32,
    /// The last HTTP status, when an answer came.
    pub status: Option<u16>,
    /// The last request's body (the event), for an S3 destination.
    pub payload: &'a [u8],
}

/// The configured destination and its client, made at the first failure.
pub struct Destination {
    target: FailureDestination,
    config: Settings,
    /// `functionArn` in the record: the application's URL.
    application_url: String,
    client: OnceCell<Client>,
}

enum Client {
    Sqs(aws_sdk_sqs::Client, String),
    Sns(aws_sdk_sns::Client),
    /// The client and the bucket's name.
    S3(aws_sdk_s3::Client, String),
}

/// One failed call: its error code and message.
struct CallError {
    code: String,
    detail: String,
}

impl CallError {
    fn from_sdk<E, R>(err: &aws_smithy_runtime_api::client::result::SdkError<E, R>) -> Self
    where
        E: std::error::Error + aws_smithy_types::error::metadata::ProvideErrorMetadata + 'static,
        R: std::fmt::Debug + 'static,
    {
        use aws_smithy_types::error::metadata::ProvideErrorMetadata;
        CallError {
            code: err.code().unwrap_or_default().to_owned(),
            detail: kcld_lease::table::plain_error(err),
        }
    }
}

impl Destination {
    /// The destination `target` of the stream `config` reads, for the
    /// application at `application_url`.
    pub fn new(target: FailureDestination, config: &Settings, application_url: &str) -> Self {
        Destination {
            target,
            config: config.clone(),
            application_url: application_url.to_owned(),
            client: OnceCell::new(),
        }
    }

    /// The destination's ARN.
    pub fn arn(&self) -> &str {
        self.target.arn()
    }

    /// True for an S3 destination, which gets the refused request too.
    pub fn wants_payload(&self) -> bool {
        matches!(self.target, FailureDestination::S3 { .. })
    }

    async fn client(&self) -> Result<&Client, SinkError> {
        self.client
            .get_or_try_init(|| async {
                Ok::<_, crate::Error>(match &self.target {
                    FailureDestination::Sqs {
                        region,
                        account,
                        name,
                        ..
                    } => {
                        let base = self
                            .config
                            .aws
                            .sqs_endpoint
                            .clone()
                            .unwrap_or_else(|| format!("https://sqs.{region}.amazonaws.com"));
                        let url = format!("{}/{account}/{name}", base.trim_end_matches('/'));
                        Client::Sqs(crate::aws::sqs_client(&self.config, region).await?, url)
                    }
                    FailureDestination::Sns { region, .. } => {
                        Client::Sns(crate::aws::sns_client(&self.config, region).await?)
                    }
                    FailureDestination::S3 { bucket, .. } => Client::S3(
                        crate::aws::s3_client(&self.config, None).await?,
                        bucket.clone(),
                    ),
                })
            })
            .await
            .map_err(|e| SinkError::Fatal(format!("on-failure destination client: {e}")))
    }

    /// The invocation record of `batch`, in Lambda's shape.
    pub fn record(&self, batch: &FailedBatch<'_>) -> serde_json::Value {
        let first = &batch.records[0];
        let last = &batch.records[batch.records.len() - 1];
        let info_key = if self.config.stream_arn.is_dynamodb() {
            "DDBStreamBatchInfo"
        } else {
            "KinesisBatchInfo"
        };
        let mut record = serde_json::json!({
            "requestContext": {
                "requestId": uuid::Uuid::new_v4().to_string(),
                "functionArn": self.application_url,
                "condition": batch.condition.as_str(),
                "approximateInvokeCount": batch.attempts,
            },
            "responseContext": {
                "statusCode": batch.status.unwrap_or(0),
                "executedVersion": "$LATEST",
                "functionError": "Unhandled",
            },
            "version": "1.0",
            "timestamp": iso_millis(now_millis()),
        });
        record[info_key] = serde_json::json!({
            "shardId": batch.shard_id,
            "startSequenceNumber": first.sequence_number.as_str(),
            "endSequenceNumber": last.sequence_number.as_str(),
            "approximateArrivalOfFirstRecord": iso_millis(first.approximate_arrival_ms),
            "approximateArrivalOfLastRecord": iso_millis(last.approximate_arrival_ms),
            "batchSize": batch.records.len(),
            "streamArn": self.config.stream_arn.to_string(),
        });
        record
    }

    /// Sends `batch`'s record, retrying what may pass with time until
    /// `stop`; `Err(Stopped)` when stopped first, `Err(Fatal)` when the
    /// destination refuses kcld (the message names the policy to add).
    pub async fn send(
        &self,
        batch: &FailedBatch<'_>,
        stop: &CancellationToken,
    ) -> Result<(), SinkError> {
        let mut record = self.record(batch);
        if matches!(self.target, FailureDestination::S3 { .. }) {
            record["payload"] = String::from_utf8_lossy(batch.payload).into_owned().into();
        }
        let body = record.to_string();
        let mut backoff = Backoff::new(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_secs(30),
        );
        loop {
            let err = match self.call(batch, &body).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if let Some(fatal) = self.fatal(&err) {
                return Err(SinkError::Fatal(fatal));
            }
            let wait = backoff.next_wait();
            if backoff.worth_logging() {
                tracing::warn!(
                    shard = batch.shard_id,
                    destination = self.arn(),
                    "the on-failure destination did not take a failed batch's record ({}: {}); retrying in {wait:?}",
                    err.code,
                    err.detail
                );
            }
            if !Backoff::sleep(wait, stop).await {
                return Err(SinkError::Stopped { confirmed: 0 });
            }
        }
    }

    async fn call(&self, batch: &FailedBatch<'_>, body: &str) -> Result<(), CallError> {
        let client = self.client().await.map_err(|e| CallError {
            code: "kcld.Client".into(),
            detail: e.to_string(),
        })?;
        match client {
            Client::Sqs(sqs, url) => sqs
                .send_message()
                .queue_url(url)
                .message_body(body)
                .send()
                .await
                .map(drop)
                .map_err(|e| CallError::from_sdk(&e)),
            Client::Sns(sns) => sns
                .publish()
                .topic_arn(self.arn())
                .message(body)
                .send()
                .await
                .map(drop)
                .map_err(|e| CallError::from_sdk(&e)),
            Client::S3(s3, bucket) => {
                let first = &batch.records[0];
                let last = &batch.records[batch.records.len() - 1];
                let day = super::s3::layout::hour_prefix(now_millis());
                let key = format!(
                    "kcld/{}/{}/{}{}-{}.json",
                    self.config.application_name,
                    batch.shard_id,
                    &day[..11],
                    first.sequence_number.as_str(),
                    last.sequence_number.as_str()
                );
                super::s3::put_for_bucket_owner(
                    s3,
                    bucket,
                    &key,
                    bytes::Bytes::copy_from_slice(body.as_bytes()),
                    "application/json",
                )
                .await
                .map(drop)
                .map_err(|e| CallError::from_sdk(&e))
            }
        }
    }

    /// The message for a refusal no retry mends, naming the action and the
    /// statement the destination's owner adds.
    fn fatal(&self, err: &CallError) -> Option<String> {
        let (action, policy, fix) = match &self.target {
            FailureDestination::Sqs { .. } => (
                "sqs:SendMessage",
                "queue policy",
                "aws sqs set-queue-attributes",
            ),
            FailureDestination::Sns { .. } => (
                "sns:Publish",
                "topic policy",
                "aws sns set-topic-attributes --attribute-name Policy",
            ),
            FailureDestination::S3 { .. } => (
                "s3:PutObject",
                "bucket policy",
                "aws s3api put-bucket-policy",
            ),
        };
        let statement = crate::policy::destination_statement(
            &self.target,
            &crate::policy::role_placeholder(None),
        );
        match err.code.as_str() {
            "AccessDenied"
            | "AccessDeniedException"
            | "AuthorizationError"
            | "AllAccessDisabled"
            | "KMS.AccessDeniedException"
            | "KMSAccessDenied" => Some(format!(
                "access denied: {action} on the on-failure destination {} ({}). Its owner must allow {action} \
                 to this consumer's IAM role in the {policy} ({fix}; kcld policy prints it), and the role's own \
                 IAM policy must allow it too. Statement: {statement}",
                self.arn(),
                err.detail
            )),
            "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" | "NotFound" | "NoSuchBucket" => {
                Some(format!(
                    "sink.on_failure_destination: {} does not exist ({}); create it or fix the ARN",
                    self.arn(),
                    err.detail
                ))
            }
            _ => None,
        }
    }
}
