//! The shared stream, addressed by ARN on every call: describe it, list its
//! shards, get iterators and records. Also classifies Kinesis errors into
//! what the caller should do about them.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use kcld_records::getrecords;

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use aws_smithy_types::error::display::DisplayErrorContext;
use kcld_config::StreamArn;
use kcld_lease::ShardSpec;

use crate::error::Error;
use crate::policy;

/// What a failed Kinesis call means for the caller.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KinesisError {
    #[error("{message}")]
    AccessDenied {
        action: &'static str,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    /// ProvisionedThroughputExceeded or LimitExceeded: wait and retry.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The shard iterator is older than five minutes: get a new one.
    #[error("shard iterator expired")]
    ExpiredIterator,
    /// ResourceInUseException: another subscription to the shard is still
    /// open, or the consumer is being created or deleted: wait and retry.
    #[error("in use: {0}")]
    InUse(String),
    /// No connection to the endpoint, or it timed out.
    #[error("cannot reach Kinesis: {0}")]
    Unreachable(String),
    #[error("{0}")]
    Other(String),
}

impl KinesisError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            KinesisError::AccessDenied { .. } => "access_denied",
            KinesisError::NotFound(_) => "not_found",
            KinesisError::Throttled(_) => "throttled",
            KinesisError::ExpiredIterator => "expired_iterator",
            KinesisError::InUse(_) => "in_use",
            KinesisError::Unreachable(_) => "unreachable",
            KinesisError::Other(_) => "other",
        }
    }

    /// True for errors worth retrying in place.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            KinesisError::Throttled(_)
                | KinesisError::Unreachable(_)
                | KinesisError::InUse(_)
                | KinesisError::Other(_)
        )
    }

    fn classify<E, R>(err: SdkError<E, R>, stream: &StreamArn, action: &'static str) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let detail = DisplayErrorContext(&err).to_string();
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                return KinesisError::Unreachable(detail)
            }
            _ => {}
        }
        let code = err.code().unwrap_or_default().to_owned();
        let message = err.message().unwrap_or_default().to_owned();
        match code.as_str() {
            "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => {
                KinesisError::AccessDenied {
                    action,
                    message: policy::access_denied_message(stream, action, &message),
                }
            }
            "KMSAccessDeniedException" => KinesisError::AccessDenied {
                action,
                message: format!(
                    "{action} on {stream}: the stream is encrypted and this role may not use its \
                     KMS key ({message}); the owner must share a customer-managed key and allow \
                     kms:Decrypt to this consumer's role"
                ),
            },
            "ResourceNotFoundException" => KinesisError::NotFound(format!(
                "{action} on {stream}: not found ({message}); check stream_arn: the owner's \
                 account and region are part of the ARN"
            )),
            "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "ThrottlingException" => KinesisError::Throttled(format!("{action}: {code}")),
            "ExpiredIteratorException" => KinesisError::ExpiredIterator,
            "ResourceInUseException" => KinesisError::InUse(format!("{action}: {message}")),
            "" => KinesisError::Other(format!("{action}: {detail}")),
            _ => KinesisError::Other(format!("{action}: {code}: {message}")),
        }
    }
}

impl KinesisError {
    /// [`KinesisError::classify`] for calls on an enhanced fan-out consumer:
    /// access and not-found errors name the consumer and who must act.
    fn classify_consumer<E, R>(
        err: SdkError<E, R>,
        stream: &StreamArn,
        consumer: &str,
        action: &'static str,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let detail = err.message().unwrap_or_default().to_owned();
        match KinesisError::classify(err, stream, action) {
            KinesisError::AccessDenied { .. } => KinesisError::AccessDenied {
                action,
                message: policy::consumer_access_denied_message(stream, consumer, action, &detail),
            },
            KinesisError::NotFound(_) => KinesisError::NotFound(format!(
                "{action}: consumer {consumer} not found ({detail}); check consumer_arn: the \
                 stream owner (account {owner}) registers it with `aws kinesis \
                 register-stream-consumer --stream-arn {stream} --consumer-name <name>` and shares \
                 it with a consumer resource policy (`kcld policy --consumer-arn` prints it)",
                owner = stream.account,
            )),
            other => other,
        }
    }
}

impl From<KinesisError> for Error {
    fn from(e: KinesisError) -> Self {
        match e {
            KinesisError::Unreachable(detail) => Error::Aws(format!(
                "cannot reach Kinesis ({detail}); check aws.kinesis_endpoint / AWS_ENDPOINT_URL_KINESIS and the network"
            )),
            other => Error::Aws(other.to_string()),
        }
    }
}

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    TrimHorizon,
    Latest,
    AtTimestamp { epoch_millis: i64 },
    AtSequence(String),
    AfterSequence(String),
}

impl std::fmt::Display for StartAt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartAt::TrimHorizon => f.write_str("TRIM_HORIZON"),
            StartAt::Latest => f.write_str("LATEST"),
            StartAt::AtTimestamp { epoch_millis } => write!(f, "AT_TIMESTAMP {epoch_millis} ms"),
            StartAt::AtSequence(seq) => write!(f, "sequence number {seq}"),
            StartAt::AfterSequence(seq) => write!(f, "after sequence number {seq}"),
        }
    }
}

/// An enhanced fan-out consumer as DescribeStreamConsumer reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerInfo {
    pub arn: String,
    /// CREATING, ACTIVE or DELETING.
    pub status: String,
}

impl ConsumerInfo {
    fn from_description(
        d: Option<aws_sdk_kinesis::types::ConsumerDescription>,
    ) -> Result<Self, KinesisError> {
        let d = d.ok_or_else(|| {
            KinesisError::Other("DescribeStreamConsumer returned no description".into())
        })?;
        Ok(ConsumerInfo {
            arn: d.consumer_arn,
            status: d.consumer_status.as_str().to_owned(),
        })
    }
}

/// An open SubscribeToShard event stream.
pub struct Subscription {
    events: aws_sdk_kinesis::primitives::event_stream::EventReceiver<
        aws_sdk_kinesis::types::SubscribeToShardEventStream,
        aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError,
    >,
}

/// A summary of the stream for logs and readiness.
#[derive(Clone, Debug)]
pub struct StreamSummary {
    pub status: String,
    pub open_shards: i32,
    pub encryption: String,
    pub retention_hours: i32,
    /// When the stream was created, in epoch seconds (the KCL's
    /// `creationEpoch` in multi-stream lease keys).
    pub creation_epoch: Option<u64>,
}

/// The stream and the client that reads it.
#[derive(Clone, Debug)]
pub struct Stream {
    client: aws_sdk_kinesis::Client,
    arn: StreamArn,
    arn_text: String,
}

impl Stream {
    pub fn new(client: aws_sdk_kinesis::Client, arn: StreamArn) -> Self {
        let arn_text = arn.to_string();
        Stream {
            client,
            arn,
            arn_text,
        }
    }

    pub fn arn(&self) -> &StreamArn {
        &self.arn
    }

    pub fn client(&self) -> &aws_sdk_kinesis::Client {
        &self.client
    }

    /// DescribeStreamSummary, retried while throttled (its limit, 20 calls
    /// per second per account, is shared with every other reader).
    pub async fn describe(&self) -> Result<StreamSummary, KinesisError> {
        let mut throttled = 0u32;
        let out = loop {
            let result = self
                .client
                .describe_stream_summary()
                .stream_arn(&self.arn_text)
                .send()
                .await
                .map_err(|e| KinesisError::classify(e, &self.arn, "kinesis:DescribeStreamSummary"));
            match result {
                Ok(out) => break out,
                Err(KinesisError::Throttled(_)) if throttled < 10 => {
                    throttled += 1;
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(throttled))).await;
                }
                Err(e) => return Err(e),
            }
        };
        let d = out.stream_description_summary;
        Ok(StreamSummary {
            status: d
                .as_ref()
                .map(|d| d.stream_status.as_str().to_owned())
                .unwrap_or_default(),
            open_shards: d.as_ref().map(|d| d.open_shard_count).unwrap_or(0),
            encryption: d
                .as_ref()
                .and_then(|d| d.encryption_type.as_ref())
                .map(|e| e.as_str().to_owned())
                .unwrap_or_else(|| "NONE".into()),
            retention_hours: d.as_ref().map(|d| d.retention_period_hours).unwrap_or(0),
            creation_epoch: d
                .as_ref()
                .and_then(|d| u64::try_from(d.stream_creation_timestamp.secs()).ok()),
        })
    }

    /// Every shard the stream still has (open and closed), following
    /// pagination. `page_size` is ListShards' MaxResults (1 to 10,000).
    pub async fn list_shards(&self, page_size: i32) -> Result<Vec<ShardSpec>, KinesisError> {
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        let mut throttled = 0u32;
        loop {
            // Pages are chained with ExclusiveStartShardId rather than
            // NextToken: that keeps the stream ARN (what a cross-account
            // caller is authorised against) on every call, which the API
            // forbids beside a NextToken.
            let request = self
                .client
                .list_shards()
                .stream_arn(&self.arn_text)
                .set_exclusive_start_shard_id(next.clone());
            let out = match request.max_results(page_size).send().await {
                Ok(out) => out,
                Err(e) => match KinesisError::classify(e, &self.arn, "kinesis:ListShards") {
                    // ListShards allows 1000 calls/s per account, shared with
                    // every other reader of the stream: wait, then retry.
                    KinesisError::Throttled(_) if throttled < 10 => {
                        throttled += 1;
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(throttled))).await;
                        continue;
                    }
                    other => return Err(other),
                },
            };
            let page = out.shards.unwrap_or_default();
            shards.extend(page.iter().map(shard_spec));
            match (out.next_token, page.last()) {
                (Some(token), Some(last)) if !token.is_empty() => {
                    next = Some(last.shard_id().to_owned())
                }
                _ => break,
            }
        }
        Ok(shards)
    }

    pub async fn shard_iterator(
        &self,
        shard_id: &str,
        at: &StartAt,
    ) -> Result<String, KinesisError> {
        let mut req = self
            .client
            .get_shard_iterator()
            .stream_arn(&self.arn_text)
            .shard_id(shard_id);
        req = match at {
            StartAt::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartAt::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            StartAt::AtTimestamp { epoch_millis } => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_smithy_types::DateTime::from_millis(*epoch_millis)),
            StartAt::AtSequence(seq) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq),
            StartAt::AfterSequence(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
        };
        let out = req
            .send()
            .await
            .map_err(|e| KinesisError::classify(e, &self.arn, "kinesis:GetShardIterator"))?;
        out.shard_iterator.ok_or_else(|| {
            KinesisError::NotFound(format!("{shard_id}: GetShardIterator returned no iterator (the shard is closed and trimmed)"))
        })
    }

    /// DescribeStreamConsumer by consumer ARN.
    pub async fn describe_consumer(
        &self,
        consumer_arn: &str,
    ) -> Result<ConsumerInfo, KinesisError> {
        let out = self
            .client
            .describe_stream_consumer()
            .consumer_arn(consumer_arn)
            .send()
            .await
            .map_err(|e| {
                KinesisError::classify_consumer(
                    e,
                    &self.arn,
                    consumer_arn,
                    "kinesis:DescribeStreamConsumer",
                )
            })?;
        ConsumerInfo::from_description(out.consumer_description)
    }

    /// DescribeStreamConsumer by name on this stream; `Ok(None)` when the
    /// stream has no consumer of that name.
    pub async fn find_consumer(&self, name: &str) -> Result<Option<ConsumerInfo>, KinesisError> {
        let result = self
            .client
            .describe_stream_consumer()
            .stream_arn(&self.arn_text)
            .consumer_name(name)
            .send()
            .await;
        match result {
            Ok(out) => ConsumerInfo::from_description(out.consumer_description).map(Some),
            Err(e) => {
                match KinesisError::classify(e, &self.arn, "kinesis:DescribeStreamConsumer") {
                    KinesisError::NotFound(_) => Ok(None),
                    other => Err(other),
                }
            }
        }
    }

    /// RegisterStreamConsumer on this stream: only for a stream of the
    /// caller's own account (the caller checks).
    pub async fn register_consumer(&self, name: &str) -> Result<ConsumerInfo, KinesisError> {
        let out = self
            .client
            .register_stream_consumer()
            .stream_arn(&self.arn_text)
            .consumer_name(name)
            .send()
            .await
            .map_err(|e| KinesisError::classify(e, &self.arn, "kinesis:RegisterStreamConsumer"))?;
        let c = out.consumer.ok_or_else(|| {
            KinesisError::Other("RegisterStreamConsumer returned no consumer".into())
        })?;
        Ok(ConsumerInfo {
            arn: c.consumer_arn,
            status: c.consumer_status.as_str().to_owned(),
        })
    }

    /// SubscribeToShard through `consumer_arn`: the open event stream. Errors
    /// of the call and errors inside the stream are classified alike (see
    /// [`Stream::next_event`]).
    pub async fn subscribe(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        at: &StartAt,
    ) -> Result<Subscription, KinesisError> {
        use aws_sdk_kinesis::types::StartingPosition;
        let position = match at {
            StartAt::TrimHorizon => {
                StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon)
            }
            StartAt::Latest => StartingPosition::builder().r#type(ShardIteratorType::Latest),
            StartAt::AtTimestamp { epoch_millis } => StartingPosition::builder()
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(aws_smithy_types::DateTime::from_millis(*epoch_millis)),
            StartAt::AtSequence(seq) => StartingPosition::builder()
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(seq),
            StartAt::AfterSequence(seq) => StartingPosition::builder()
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(seq),
        }
        .build()
        .map_err(|e| KinesisError::Other(format!("SubscribeToShard: {e}")))?;
        let out = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id)
            .starting_position(position)
            .send()
            .await
            .map_err(|e| {
                KinesisError::classify_consumer(
                    e,
                    &self.arn,
                    consumer_arn,
                    "kinesis:SubscribeToShard",
                )
            })?;
        Ok(Subscription {
            events: out.event_stream,
        })
    }

    /// The next event of a subscription: `Ok(None)` when the service ended
    /// it (after five minutes, or earlier); an error inside the stream is
    /// classified like an error of the call.
    pub async fn next_event(
        &self,
        subscription: &mut Subscription,
        consumer_arn: &str,
    ) -> Result<Option<aws_sdk_kinesis::types::SubscribeToShardEvent>, KinesisError> {
        use aws_sdk_kinesis::types::SubscribeToShardEventStream;
        loop {
            let event = subscription
                .events
                .recv()
                .await
                .map_err(|e| self.event_error(e, consumer_arn))?;
            match event {
                None => return Ok(None),
                Some(SubscribeToShardEventStream::SubscribeToShardEvent(e)) => return Ok(Some(e)),
                // An event type newer than this SDK: skip it.
                Some(_) => continue,
            }
        }
    }

    /// An error inside a subscription's event stream. The SDK gives these
    /// their type but no error code, so they are told apart by type.
    fn event_error(
        &self,
        e: SdkError<
            aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError,
            aws_smithy_types::event_stream::RawMessage,
        >,
        consumer_arn: &str,
    ) -> KinesisError {
        use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError as E;
        let action = "kinesis:SubscribeToShard";
        if let Some(service) = e.as_service_error() {
            let text = service.to_string();
            match service {
                E::ResourceInUseException(_) => {
                    return KinesisError::InUse(format!("{action}: {text}"))
                }
                E::ResourceNotFoundException(_) => {
                    return KinesisError::NotFound(format!(
                        "{action} on consumer {consumer_arn}: {text}; the consumer or the shard is \
                         gone: check consumer_arn with the stream owner (account {})",
                        self.arn.account
                    ))
                }
                E::KmsThrottlingException(_) => {
                    return KinesisError::Throttled(format!("{action}: {text}"))
                }
                E::InternalFailureException(_) => {
                    return KinesisError::Other(format!("{action}: {text}"))
                }
                E::KmsAccessDeniedException(_)
                | E::KmsDisabledException(_)
                | E::KmsInvalidStateException(_)
                | E::KmsNotFoundException(_)
                | E::KmsOptInRequired(_) => {
                    return KinesisError::AccessDenied {
                        action: "kms:Decrypt",
                        message: format!(
                        "{action} on {}: the stream is encrypted and its KMS key cannot be used \
                             by this role ({text}); the owner must share a usable customer-managed \
                             key and allow kms:Decrypt to this consumer's role",
                        self.arn
                    ),
                    }
                }
                _ => {}
            }
        }
        KinesisError::classify_consumer(e, &self.arn, consumer_arn, action)
    }

    /// GetRecords through the SDK (credentials, signing, endpoint, retries,
    /// errors), with the successful body decoded by kcld's own decoder: the
    /// SDK's deserializer gets an empty body instead of the real one.
    pub async fn get_records(
        &self,
        iterator: &str,
        limit: i32,
    ) -> Result<getrecords::Response, KinesisError> {
        let capture = CaptureBody::default();
        self.client
            .get_records()
            .stream_arn(&self.arn_text)
            .shard_iterator(iterator)
            .limit(limit)
            .customize()
            .interceptor(capture.clone())
            .send()
            .await
            .map_err(|e| KinesisError::classify(e, &self.arn, "kinesis:GetRecords"))?;
        let body = capture.take().ok_or_else(|| {
            KinesisError::Other("GetRecords: the response body was not captured".into())
        })?;
        let bytes = aws_smithy_types::byte_stream::ByteStream::new(body)
            .collect()
            .await
            .map_err(|e| {
                KinesisError::Unreachable(format!("GetRecords: reading the response: {e}"))
            })?
            .into_bytes();
        getrecords::decode(bytes).map_err(|e| KinesisError::Other(e.to_string()))
    }
}

#[async_trait::async_trait]
impl kcld_lease::ShardLister for Stream {
    async fn list_shards(&self) -> Result<Vec<ShardSpec>, String> {
        Stream::list_shards(self, 1000)
            .await
            .map_err(|e| e.to_string())
    }
}

/// Takes the body of a successful response before the SDK deserializes it,
/// leaving the SDK a minimal valid body. Error responses are left to the
/// SDK, which classifies them.
#[derive(Clone, Debug, Default)]
struct CaptureBody {
    slot: Arc<Mutex<Option<SdkBody>>>,
}

impl CaptureBody {
    fn take(&self) -> Option<SdkBody> {
        self.slot.lock().ok()?.take()
    }
}

impl Intercept for CaptureBody {
    fn name(&self) -> &'static str {
        "kcld-getrecords-body"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if response.status().is_success() {
            let body = std::mem::replace(response.body_mut(), SdkBody::from(r#"{"Records":[]}"#));
            if let Ok(mut slot) = self.slot.lock() {
                *slot = Some(body);
            }
        }
        Ok(())
    }
}

fn shard_spec(shard: &Shard) -> ShardSpec {
    let parents = [shard.parent_shard_id(), shard.adjacent_parent_shard_id()]
        .into_iter()
        .flatten()
        .map(str::to_owned)
        .collect();
    let closed = shard
        .sequence_number_range()
        .and_then(|r| r.ending_sequence_number())
        .is_some();
    spec(shard.shard_id(), parents, shard.hash_key_range(), closed)
}

/// A shard as the lease layer sees it, from the SDK's parts.
pub(crate) fn spec(
    shard_id: &str,
    parents: Vec<String>,
    range: Option<&aws_sdk_kinesis::types::HashKeyRange>,
    closed: bool,
) -> ShardSpec {
    ShardSpec {
        shard_id: shard_id.to_owned(),
        parents,
        starting_hash_key: range
            .map(|r| r.starting_hash_key().to_owned())
            .unwrap_or_default(),
        ending_hash_key: range
            .map(|r| r.ending_hash_key().to_owned())
            .unwrap_or_default(),
        closed,
    }
}

/// A child shard as announced by GetRecords at the end of its parent.
pub fn child_spec(child: getrecords::ChildShard) -> ShardSpec {
    ShardSpec {
        shard_id: child.shard_id,
        parents: child.parent_shards,
        starting_hash_key: child.starting_hash_key,
        ending_hash_key: child.ending_hash_key,
        closed: false,
    }
}
