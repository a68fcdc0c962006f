//! Enhanced fan-out calls on the stream: the consumer (describe, find,
//! register) and its SubscribeToShard event streams.

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::ShardIteratorType;

use super::{KinesisError, StartAt, Stream};

/// An enhanced fan-out consumer as DescribeStreamConsumer reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerInfo {
    /// The consumer's ARN, with its registration timestamp.
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

impl Stream {
    /// Classifies a failed call on the fan-out consumer `consumer_arn`.
    fn consumer_error<'a, E, R>(
        &'a self,
        consumer_arn: &'a str,
        action: &'static str,
    ) -> impl FnOnce(SdkError<E, R>) -> KinesisError + 'a
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        move |e| KinesisError::classify_consumer(e, &self.arn, consumer_arn, action)
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
            .map_err(self.consumer_error(consumer_arn, "kinesis:DescribeStreamConsumer"))?;
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
            .map_err(self.consumer_error(consumer_arn, "kinesis:SubscribeToShard"))?;
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
            let kms = match service {
                E::KmsDisabledException(_) => Some("KMSDisabledException"),
                E::KmsNotFoundException(_) => Some("KMSNotFoundException"),
                E::KmsInvalidStateException(_) => Some("KMSInvalidStateException"),
                E::KmsOptInRequired(_) => Some("KMSOptInRequired"),
                _ => None,
            };
            if let Some(code) = kms {
                return super::error::kms_unusable(code, &self.arn, action, &text);
            }
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
                E::KmsAccessDeniedException(_) => {
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
}
