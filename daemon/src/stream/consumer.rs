//! Enhanced fan-out calls on the stream: the consumer (describe, find,
//! register) and its SubscribeToShard event streams.

use aws_sdk_kinesis::error::{ErrorMetadata, ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_smithy_eventstream::error::Error as EventStreamError;
use aws_smithy_eventstream::frame::{read_message_from, UnmarshallMessage, UnmarshalledMessage};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::event_stream::Message;
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use kcld_records::getrecords::{self, EventSplitter, SubscribeEvent};
use kcld_records::Record;

use super::capture::CaptureBody;
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

/// An open SubscribeToShard event stream, read by kcld's own decoder: the
/// SDK opens it (credentials, signing, endpoint, the call's errors) but its
/// deserializer gets an empty body; kcld frames the event-stream messages
/// and decodes each event's JSON payload with the same one-buffer decoder
/// as GetRecords.
///
/// An event larger than [`RUN_BYTES`] (the service sends events of many
/// megabytes at catch-up) is decoded while it arrives and handed on in runs
/// of about that much JSON: the body is read only as fast as the runs are
/// taken, so a catching-up shard holds a run or two, not the whole event
/// and then its records, on every shard at once. Such an event's message
/// checksum can only be checked once it has arrived, after its first runs
/// were handed on; a mismatch ends the subscription with an error (the
/// transport, TLS on the service, already checks every byte), and the next
/// one resumes after the last record handed on.
pub struct Subscription {
    body: SdkBody,
    /// Bytes received and not yet framed.
    buf: BytesMut,
    /// While a large event arrives: the chunk received last, after `buf`,
    /// not yet fed to its splitter.
    pending: bytes::Bytes,
    /// A large event being decoded as it arrives.
    splitting: Option<Splitting>,
}

/// The JSON in a run of a large event's records (about 45 records of 1 KiB),
/// and the payload above which an event is split into runs. At catch-up
/// every shard's read-ahead is full at once (the service pushes as fast as
/// the sink takes), so this sets fan-out's memory: measured with 8 shards
/// (BENCHMARKS.md, "Large events handed on as they arrive"), 1 MiB runs
/// peaked at 49 MiB, 256 KiB at 37, 128 KiB at 32 to 33, 64 KiB at 29 to
/// 30, 32 KiB at 28 with more CPU and twice the context switches.
pub const RUN_BYTES: usize = 64 * 1024;
/// The event-stream format's largest message (16 MiB of payload, its
/// headers and framing).
const MAX_MESSAGE: usize = 16 * 1024 * 1024 + MAX_HEADERS + 16;
/// A message's headers at most (the format allows a few hundred bytes per
/// header; the service sends three): bounds what is buffered before a
/// large event's headers say whether it is split.
const MAX_HEADERS: usize = 128 * 1024;
/// Total length, headers length, prelude checksum.
const PRELUDE: usize = 12;

/// A large `SubscribeToShardEvent` arriving.
struct Splitting {
    splitter: EventSplitter,
    /// Payload bytes still to come.
    payload_left: usize,
    /// The checksum of the message so far (prelude, headers, payload).
    crc: crc32fast::Hasher,
}

impl Splitting {
    /// Takes up to what is left of the payload from `bytes`; returns how
    /// many bytes it took.
    fn take(&mut self, bytes: &[u8]) -> usize {
        let n = self.payload_left.min(bytes.len());
        self.crc.update(&bytes[..n]);
        self.splitter.push(&bytes[..n]);
        self.payload_left -= n;
        n
    }
}

/// What a subscription gives next.
#[derive(Debug)]
pub enum EventPiece {
    /// Records of a large event still arriving.
    Records(Vec<Record>),
    /// An event complete: for a large one, the records after its last run
    /// and the members that come with the whole event (continuation, lag,
    /// children).
    Event(SubscribeEvent),
}

impl EventPiece {
    /// The records this piece carries.
    pub fn records(&self) -> &[Record] {
        match self {
            EventPiece::Records(records) => records,
            EventPiece::Event(event) => &event.records,
        }
    }
}

/// One step of framing the bytes received.
enum Framed {
    /// A run of a large event's records.
    Run(Vec<Record>),
    /// A large event complete.
    Split(SubscribeEvent),
    /// A message received whole.
    Message(Message),
    /// More bytes are needed.
    More,
}

impl Subscription {
    fn new(body: SdkBody) -> Self {
        Subscription {
            body,
            buf: BytesMut::new(),
            pending: bytes::Bytes::new(),
            splitting: None,
        }
    }

    /// Frames what has been received, without reading more.
    fn frame(&mut self) -> Result<Framed, String> {
        loop {
            if let Some(splitting) = self.splitting.as_mut() {
                // The bytes received, fed a run's worth at a time (the
                // framing buffer first, then the chunk received last): the
                // splitter never copies more than that ahead of its runs.
                loop {
                    let fed = if !self.buf.is_empty() {
                        let piece = self.buf.len().min(RUN_BYTES);
                        let taken = splitting.take(&self.buf[..piece]);
                        self.buf.advance(taken);
                        taken
                    } else if !self.pending.is_empty() {
                        let piece = self.pending.len().min(RUN_BYTES);
                        let taken = splitting.take(&self.pending[..piece]);
                        self.pending.advance(taken);
                        if taken < piece {
                            // The payload ended inside this chunk: what
                            // follows (the checksum, the next messages) is
                            // framed as usual.
                            self.buf.extend_from_slice(&self.pending);
                            self.pending.clear();
                        }
                        taken
                    } else {
                        0
                    };
                    if let Some(run) = splitting.splitter.take_run().map_err(|e| e.to_string())? {
                        return Ok(Framed::Run(run));
                    }
                    if fed == 0 {
                        break;
                    }
                }
                if splitting.payload_left > 0 || self.buf.len() < 4 {
                    return Ok(Framed::More);
                }
                let sent = self.buf.get_u32();
                let Some(splitting) = self.splitting.take() else {
                    return Ok(Framed::More);
                };
                let computed = splitting.crc.finalize();
                if sent != computed {
                    return Err(format!(
                        "message checksum mismatch ({computed:#x} computed, {sent:#x} sent)"
                    ));
                }
                return splitting
                    .splitter
                    .finish()
                    .map(Framed::Split)
                    .map_err(|e| e.to_string());
            }
            if self.buf.len() < PRELUDE {
                return Ok(Framed::More);
            }
            let word = |at: usize| {
                u32::from_be_bytes([
                    self.buf[at],
                    self.buf[at + 1],
                    self.buf[at + 2],
                    self.buf[at + 3],
                ]) as usize
            };
            let (total, headers) = (word(0), word(4));
            if crc32fast::hash(&self.buf[..8]) as usize != word(8) {
                return Err("prelude checksum mismatch".into());
            }
            if total < PRELUDE + 4 || headers > total - PRELUDE - 4 || headers > MAX_HEADERS {
                return Err(format!(
                    "message of {total} bytes with {headers} bytes of headers"
                ));
            }
            let payload = total - PRELUDE - 4 - headers;
            if payload > RUN_BYTES {
                if self.buf.len() < PRELUDE + headers {
                    return Ok(Framed::More);
                }
                if is_subscribe_event(&self.buf[PRELUDE..PRELUDE + headers]) {
                    let head = self.buf.split_to(PRELUDE + headers);
                    let mut crc = crc32fast::Hasher::new();
                    crc.update(&head);
                    self.splitting = Some(Splitting {
                        splitter: EventSplitter::new(RUN_BYTES),
                        payload_left: payload,
                        crc,
                    });
                    continue;
                }
            }
            // Only a message held whole is bounded: a split event holds a
            // run at a time, whatever its size.
            if total > MAX_MESSAGE {
                return Err(format!(
                    "message of {total} bytes, more than the event-stream format allows"
                ));
            }
            if self.buf.len() < total {
                // The whole message in one allocation as it arrives.
                self.buf.reserve(total - self.buf.len());
                return Ok(Framed::More);
            }
            let frame = self.buf.split_to(total).freeze();
            return read_message_from(frame)
                .map(Framed::Message)
                .map_err(|e| e.to_string());
        }
    }

    /// Reads the body's next bytes: `Ok(false)` at its end.
    async fn receive(&mut self) -> Result<bool, String> {
        loop {
            match self.body.frame().await {
                None => return Ok(false),
                Some(Err(e)) => return Err(e.to_string()),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        // Trailers: nothing to frame.
                        continue;
                    };
                    // A large event's payload is kept as it came and fed to
                    // its splitter by `frame`, not copied into the framing
                    // buffer.
                    if self.splitting.is_some() && self.buf.is_empty() {
                        self.pending = data;
                    } else {
                        self.buf.extend_from_slice(&data);
                    }
                    return Ok(true);
                }
            }
        }
    }
}

/// Whether an event-stream header block says `:message-type` `event` and
/// `:event-type` `SubscribeToShardEvent`; `false` for anything it cannot
/// read (the message is then framed whole, and its errors reported).
fn is_subscribe_event(mut headers: &[u8]) -> bool {
    let (mut event, mut subscribe) = (false, false);
    while let Some((&name_len, rest)) = headers.split_first() {
        let Some((name, rest)) = rest.split_at_checked(usize::from(name_len)) else {
            return false;
        };
        let Some((&kind, rest)) = rest.split_first() else {
            return false;
        };
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return false,
        };
        let (value, rest) = match fixed {
            Some(n) => match rest.split_at_checked(n) {
                Some(split) => split,
                None => return false,
            },
            None => {
                let Some((len, rest)) = rest.split_at_checked(2) else {
                    return false;
                };
                match rest.split_at_checked(usize::from(u16::from_be_bytes([len[0], len[1]]))) {
                    Some(split) => split,
                    None => return false,
                }
            }
        };
        if kind == 7 {
            match name {
                b":message-type" => event = value == b"event",
                b":event-type" => subscribe = value == b"SubscribeToShardEvent",
                _ => {}
            }
        }
        headers = rest;
    }
    event && subscribe
}

/// Turns each event-stream message into a decoded `SubscribeToShardEvent`
/// (`Some`), an event of another type to skip (`None`: the initial
/// response, or a type newer than kcld), or the exception it carries.
#[derive(Debug)]
struct EventUnmarshaller;

impl UnmarshallMessage for EventUnmarshaller {
    type Output = Option<SubscribeEvent>;
    type Error = EventException;

    fn unmarshall(
        &self,
        message: &Message,
    ) -> Result<UnmarshalledMessage<Self::Output, Self::Error>, EventStreamError> {
        let header = |name: &str| {
            message
                .headers()
                .iter()
                .find(|h| h.name().as_str() == name)
                .and_then(|h| h.value().as_string().ok())
                .map(|v| v.as_str().to_owned())
        };
        match header(":message-type").as_deref() {
            Some("event") => match header(":event-type").as_deref() {
                Some("SubscribeToShardEvent") => {
                    let event = getrecords::decode_subscribe_event(message.payload())
                        .map_err(|e| EventStreamError::unmarshalling(e.to_string()))?;
                    Ok(UnmarshalledMessage::Event(Some(event)))
                }
                _ => Ok(UnmarshalledMessage::Event(None)),
            },
            Some("exception") => {
                #[derive(serde::Deserialize)]
                struct Body {
                    #[serde(alias = "Message")]
                    message: Option<String>,
                }
                let message_text = serde_json::from_slice::<Body>(message.payload())
                    .ok()
                    .and_then(|b| b.message)
                    .unwrap_or_default();
                Ok(UnmarshalledMessage::Error(EventException::new(
                    header(":exception-type").unwrap_or_default(),
                    message_text,
                )))
            }
            Some("error") => Ok(UnmarshalledMessage::Error(EventException::new(
                header(":error-code").unwrap_or_default(),
                header(":error-message").unwrap_or_default(),
            ))),
            other => Err(EventStreamError::unmarshalling(format!(
                "event-stream message of type {other:?}"
            ))),
        }
    }
}

/// An exception inside a subscription's event stream (`ResourceInUse`,
/// the KMS errors, `InternalFailure`, ...), with the service's code, so it
/// is classified like the same error of a call.
#[derive(Debug)]
pub(crate) struct EventException {
    meta: ErrorMetadata,
}

impl EventException {
    fn new(code: String, message: String) -> Self {
        EventException {
            meta: ErrorMetadata::builder().code(code).message(message).build(),
        }
    }
}

impl std::fmt::Display for EventException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.meta.code().unwrap_or("unknown exception"),
            self.meta.message().unwrap_or_default()
        )
    }
}

impl std::error::Error for EventException {}

impl ProvideErrorMetadata for EventException {
    fn meta(&self) -> &ErrorMetadata {
        &self.meta
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
        self.client
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
        let broken = |e: String| KinesisError::Other(format!("SubscribeToShard event stream: {e}"));
        loop {
            let message = match subscription.frame().map_err(broken)? {
                Framed::Run(records) => return Ok(Some(EventPiece::Records(records))),
                Framed::Split(event) => return Ok(Some(EventPiece::Event(event))),
                Framed::Message(message) => message,
                Framed::More => {
                    if subscription.receive().await.map_err(broken)? {
                        continue;
                    }
                    if subscription.buf.is_empty()
                        && subscription.pending.is_empty()
                        && subscription.splitting.is_none()
                    {
                        return Ok(None);
                    }
                    return Err(broken("the stream ended inside a message".into()));
                }
            };
            match EventUnmarshaller.unmarshall(&message) {
                Ok(UnmarshalledMessage::Event(Some(event))) => {
                    return Ok(Some(EventPiece::Event(event)))
                }
                // The initial response, or an event type newer than kcld.
                Ok(UnmarshalledMessage::Event(None)) => continue,
                Ok(UnmarshalledMessage::Error(exception)) => {
                    return Err(self.event_error(exception, consumer_arn))
                }
                Err(e) => return Err(broken(e.to_string())),
            }
        }
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
    //! Event-stream messages as the service frames them, read through the
    //! same framing and unmarshaller as a live subscription.

    use super::*;
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue};

    fn message(headers: &[(&str, &str)], payload: &str) -> Vec<u8> {
        let mut m = Message::new(payload.as_bytes().to_vec());
        for (name, value) in headers {
            m = m.add_header(Header::new(
                name.to_string(),
                HeaderValue::String(value.to_string().into()),
            ));
        }
        let mut out = Vec::new();
        write_message_to(&m, &mut out).unwrap();
        out
    }

    fn stream() -> Stream {
        let client = aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::Config::builder()
                .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
                .region(aws_sdk_kinesis::config::Region::new("us-east-1"))
                .build(),
        );
        Stream::new(
            client,
            "arn:aws:kinesis:us-east-1:111111111111:stream/orders"
                .parse()
                .unwrap(),
        )
    }

    const CONSUMER: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/orders/consumer/c:1";

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

    /// A body delivered in `chunk`-byte pieces, as the network does.
    fn chunked(body: Vec<u8>, chunk: usize) -> SdkBody {
        let chunks: Vec<_> = body
            .chunks(chunk)
            .map(|c| {
                Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::copy_from_slice(c)))
            })
            .collect();
        SdkBody::from_body_1_x(http_body_util::StreamBody::new(futures::stream::iter(
            chunks,
        )))
    }

    /// A SubscribeToShardEvent of `n` records of 1 KiB from `first`.
    fn large_event(first: u64, n: u64, continuation: &str) -> Vec<u8> {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode([7u8; 1024]);
        let records: Vec<String> = (first..first + n)
            .map(|i| format!(r#"{{"SequenceNumber":"{i}","Data":"{data}","PartitionKey":"k"}}"#))
            .collect();
        message(
            &[
                (":message-type", "event"),
                (":event-type", "SubscribeToShardEvent"),
            ],
            &format!(
                r#"{{"Records":[{}],"ContinuationSequenceNumber":"{continuation}","MillisBehindLatest":0}}"#,
                records.join(",")
            ),
        )
    }

    #[tokio::test]
    async fn large_events_are_handed_on_in_runs_as_they_arrive() {
        // Two events of 3.5 MB and a small one, in chunks as HTTP/2 frames
        // bring them (16 KiB), as a busy HTTP/1.1 connection does (400
        // KiB), and whole.
        let mut body = large_event(1, 2_500, "2500");
        body.extend(large_event(2_501, 2_500, "5000"));
        body.extend(large_event(5_001, 2, "5002"));
        for chunk in [16 * 1024, 400 * 1024, body.len()] {
            let s = stream();
            let mut subscription = Subscription::new(chunked(body.clone(), chunk));
            let mut sequence = 0u64;
            let mut events = Vec::new();
            let mut runs = 0;
            while let Some(piece) = s.next_event(&mut subscription, CONSUMER).await.unwrap() {
                for r in piece.records() {
                    sequence += 1;
                    assert_eq!(r.sequence_number.as_str(), sequence.to_string());
                    assert_eq!(&r.data[..], &[7u8; 1024][..]);
                }
                match piece {
                    EventPiece::Records(records) => {
                        runs += 1;
                        // About RUN_BYTES of JSON each: never a whole event.
                        assert!(records.len() < 100, "{}", records.len());
                    }
                    EventPiece::Event(e) => events.push(e.continuation_sequence_number),
                }
                // The splitter copies at most a run ahead of what it hands
                // on, whatever the size of the chunks.
                let copied = subscription
                    .splitting
                    .as_ref()
                    .map_or(0, |s| s.splitter.held());
                assert!(
                    copied < 2 * RUN_BYTES + 2_048,
                    "{copied} bytes copied ahead"
                );
            }
            assert_eq!(sequence, 5_002, "chunks of {chunk}");
            assert!(runs >= 100, "{runs} runs");
            let expected = ["2500", "5000", "5002"].map(|c| Some(c.to_owned()));
            assert_eq!(events, expected);
        }
    }

    #[tokio::test]
    async fn a_large_event_that_fails_its_checksum_is_an_error_after_its_runs() {
        let mut body = large_event(1, 2_000, "2000");
        let last = body.len() - 1;
        body[last] ^= 1;
        let s = stream();
        let mut subscription = Subscription::new(chunked(body, 64 * 1024));
        let mut handed_on = 0;
        let e = loop {
            match s.next_event(&mut subscription, CONSUMER).await {
                Ok(Some(EventPiece::Records(records))) => handed_on += records.len(),
                Ok(other) => panic!("{other:?}"),
                Err(e) => break e,
            }
        };
        assert!(handed_on > 0 && handed_on < 2_000, "{handed_on}");
        assert!(
            matches!(e, KinesisError::Other(ref m) if m.contains("checksum")) && e.is_transient(),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_impossible_frame_is_an_error_at_once_not_a_wait() {
        use futures::StreamExt as _;
        let prelude = |total: u32, headers: u32| {
            let mut p = total.to_be_bytes().to_vec();
            p.extend(headers.to_be_bytes());
            p.extend(crc32fast::hash(&p).to_be_bytes());
            p
        };
        let other = message(
            &[(":message-type", "event"), (":event-type", "Other")],
            "{}",
        );
        let other_headers = u32::from_be_bytes([other[4], other[5], other[6], other[7]]);
        let mut huge_other = prelude(64 << 20, other_headers);
        huge_other.extend(&other[12..12 + other_headers as usize]);
        for (body, why) in [
            // Headers of half a gigabyte: not buffered while waiting.
            (prelude(1 << 30, 1 << 29), "headers"),
            // A message of 64 MiB that would be held whole.
            (huge_other, "more than"),
            (prelude(8, 0), "bytes of headers"),
        ] {
            // The connection stays open: the error must not wait for bytes.
            let chunks = futures::stream::iter([Ok::<_, std::io::Error>(
                hyper::body::Frame::data(bytes::Bytes::from(body)),
            )])
            .chain(futures::stream::pending());
            let chunks = Box::pin(chunks);
            let mut subscription = Subscription::new(SdkBody::from_body_1_x(
                http_body_util::StreamBody::new(chunks),
            ));
            let e = tokio::time::timeout(
                std::time::Duration::from_secs(5),
                stream().next_event(&mut subscription, CONSUMER),
            )
            .await
            .expect("an error, not a wait")
            .unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_message_is_an_error_not_an_end() {
        for body in [
            large_event(1, 2_000, "2000"),
            message(
                &[
                    (":message-type", "event"),
                    (":event-type", "SubscribeToShardEvent"),
                ],
                r#"{"Records":[],"ContinuationSequenceNumber":"1"}"#,
            ),
        ] {
            let cut = body[..body.len() - 10].to_vec();
            let s = stream();
            let mut subscription = Subscription::new(chunked(cut, 4096));
            let e = loop {
                match s.next_event(&mut subscription, CONSUMER).await {
                    Ok(Some(EventPiece::Records(_))) => continue,
                    Ok(other) => panic!("{other:?}"),
                    Err(e) => break e,
                }
            };
            assert!(e.to_string().contains("ended inside a message"), "{e}");
        }
    }

    #[test]
    fn header_blocks_are_read_by_type() {
        let headers = |m: &[u8]| {
            let len = u32::from_be_bytes([m[4], m[5], m[6], m[7]]) as usize;
            m[12..12 + len].to_vec()
        };
        let event = headers(&large_event(1, 1, "1"));
        assert!(is_subscribe_event(&event));
        let other = message(
            &[
                (":message-type", "event"),
                (":event-type", "initial-response"),
            ],
            "{}",
        );
        assert!(!is_subscribe_event(&headers(&other)));
        // Cut short, or of an unknown type: not read, so framed whole.
        assert!(!is_subscribe_event(&event[..event.len() - 1]));
        assert!(!is_subscribe_event(&[3, b'a', b'b', b'c', 42]));
    }
}
