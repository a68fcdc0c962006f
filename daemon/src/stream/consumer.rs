//! Enhanced fan-out calls on the stream: the consumer (describe, find,
//! register), SubscribeToShard, and the errors of its event streams
//! classified like those of a call (the stream itself is read by
//! [`super::subscription`]).

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_smithy_types::body::SdkBody;

use super::capture::CaptureBody;
use super::error::EventException;
use super::subscription::{EventPiece, Fault, Subscription};
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
        let capture = CaptureBody::replacing_with(SdkBody::empty);
        self.subscriber
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id)
            .starting_position(position)
            .customize()
            .interceptor(capture.clone())
            .send()
            .await
            .map_err(self.consumer_error(consumer_arn, "kinesis:SubscribeToShard"))?;
        let body = capture.take().ok_or_else(|| {
            KinesisError::Other("SubscribeToShard: the event stream was not captured".into())
        })?;
        Ok(Subscription::new(body))
    }

    /// The next piece of a subscription (an event, or a run of a large
    /// one's records): `Ok(None)` when the service ended it (after five
    /// minutes, or earlier); an error inside the stream is classified like
    /// an error of the call.
    pub async fn next_event(
        &self,
        subscription: &mut Subscription,
        consumer_arn: &str,
    ) -> Result<Option<EventPiece>, KinesisError> {
        subscription
            .next_piece()
            .await
            .map_err(|fault| match fault {
                Fault::Broken(e) => {
                    KinesisError::Other(format!("SubscribeToShard event stream: {e}"))
                }
                Fault::Exception(exception) => self.event_error(exception, consumer_arn),
            })
    }

    /// An exception inside a subscription's event stream, by its type; a
    /// shard or consumer not found names who must act.
    fn event_error(&self, exception: EventException, consumer_arn: &str) -> KinesisError {
        let action = "kinesis:SubscribeToShard";
        if exception.code() == Some("ResourceNotFoundException") {
            return KinesisError::NotFound(format!(
                "{action} on consumer {consumer_arn}: {}; the consumer or the shard is gone: \
                 check consumer_arn with the stream owner (account {})",
                exception.message().unwrap_or_default(),
                self.arn.account
            ));
        }
        KinesisError::classify_consumer(
            SdkError::<EventException, ()>::service_error(exception, ()),
            &self.arn,
            consumer_arn,
            action,
        )
    }
}

#[cfg(test)]
mod tests {
    //! Messages and exceptions of a subscription, classified like the
    //! errors of a call.

    use super::*;
    use crate::stream::subscription::tests::{message, stream, CONSUMER};

    #[tokio::test]
    async fn events_are_decoded_and_other_messages_skipped() {
        let mut body = message(
            &[
                (":message-type", "event"),
                (":event-type", "initial-response"),
            ],
            "{}",
        );
        body.extend(message(
            &[(":message-type", "event"), (":event-type", "SubscribeToShardEvent")],
            r#"{"ContinuationSequenceNumber":"2","MillisBehindLatest":7,"Records":[{"SequenceNumber":"1","Data":"aGVsbG8=","PartitionKey":"k"}]}"#,
        ));
        body.extend(message(
            &[
                (":message-type", "event"),
                (":event-type", "SomethingNewer"),
            ],
            "{}",
        ));
        // Split across chunks, as the network delivers it.
        let (a, b) = body.split_at(body.len() / 2);
        let chunks = [a, b].map(|c| {
            Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(c)))
        });
        let body = SdkBody::from_body_1_x(http_body_util::StreamBody::new(futures::stream::iter(
            chunks,
        )));
        let mut subscription = Subscription::new(body);
        let s = stream();
        let Some(EventPiece::Event(event)) =
            s.next_event(&mut subscription, CONSUMER).await.unwrap()
        else {
            panic!("an event")
        };
        assert_eq!(&event.records[0].data[..], b"hello");
        assert_eq!(event.continuation_sequence_number.as_deref(), Some("2"));
        assert_eq!(event.millis_behind_latest, Some(7));
        // The newer event type is skipped; then the service ended the stream.
        assert!(s
            .next_event(&mut subscription, CONSUMER)
            .await
            .unwrap()
            .is_none());
    }

    async fn error_of(headers: &[(&str, &str)], payload: &str) -> KinesisError {
        let mut subscription = Subscription::new(SdkBody::from(message(headers, payload)));
        stream()
            .next_event(&mut subscription, CONSUMER)
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn exceptions_in_the_stream_are_classified_like_errors_of_the_call() {
        let exception =
            |kind: &'static str| [(":message-type", "exception"), (":exception-type", kind)];
        let e = error_of(
            &exception("ResourceInUseException"),
            r#"{"message":"busy"}"#,
        )
        .await;
        assert!(
            matches!(e, KinesisError::InUse(_)) && e.is_transient(),
            "{e}"
        );
        let e = error_of(&exception("KMSDisabledException"), r#"{"message":"off"}"#).await;
        assert!(
            matches!(e, KinesisError::Kms(ref m) if m.contains("enable-key")),
            "{e}"
        );
        let e = error_of(&exception("KMSAccessDeniedException"), "{}").await;
        assert!(
            matches!(e, KinesisError::AccessDenied { action: "kms:Decrypt", ref message } if message.contains("KMS key")),
            "{e}"
        );
        let e = error_of(
            &exception("ResourceNotFoundException"),
            r#"{"message":"gone"}"#,
        )
        .await;
        assert!(
            matches!(e, KinesisError::NotFound(ref m) if m.contains("gone") && m.contains(CONSUMER)),
            "{e}"
        );
        let e = error_of(&exception("InternalFailureException"), "{}").await;
        assert!(e.is_transient(), "{e}");
        let e = error_of(
            &[
                (":message-type", "error"),
                (":error-code", "AccessDeniedException"),
                (":error-message", "no"),
            ],
            "",
        )
        .await;
        assert!(matches!(e, KinesisError::AccessDenied { .. }), "{e}");
        // A payload that is not an event: an error, not a panic or a skip.
        let e = error_of(
            &[
                (":message-type", "event"),
                (":event-type", "SubscribeToShardEvent"),
            ],
            "{not json",
        )
        .await;
        assert!(matches!(e, KinesisError::Other(_)), "{e}");
    }
}
