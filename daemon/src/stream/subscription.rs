//! A SubscribeToShard event stream, read by kcld: the SDK opens the call
//! (credentials, signing, endpoint, the call's errors) but its deserializer
//! gets an empty body; kcld frames the event-stream messages (prelude and
//! message checksums) and decodes each event's JSON payload with the same
//! one-buffer decoder as GetRecords. Errors are the caller's to classify
//! ([`Fault`]).

use aws_smithy_eventstream::frame::read_message_from;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::event_stream::Message;
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use kcld_records::getrecords::{EventSplitter, SubscribeEvent};
use kcld_records::Record;

use super::error::EventException;

mod message;
use message::{decode_message, is_subscribe_event};

/// An open SubscribeToShard event stream (see the module documentation).
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
    /// A run of a large event's records, or a large event complete.
    Piece(EventPiece),
    /// A message received whole.
    Message(Message),
    /// More bytes are needed.
    More,
}

/// Why a subscription's event stream cannot go on.
#[derive(Debug)]
pub(super) enum Fault {
    /// The stream is not a well-formed event stream, or the connection
    /// failed or ended inside a message.
    Broken(String),
    /// The service sent an exception.
    Exception(EventException),
}

impl Subscription {
    /// Reads the event stream of a SubscribeToShard response's `body`.
    pub(super) fn new(body: SdkBody) -> Self {
        Subscription {
            body,
            buf: BytesMut::new(),
            pending: bytes::Bytes::new(),
            splitting: None,
        }
    }

    /// Frames what has been received, without reading more.
    fn frame(&mut self) -> Result<Framed, String> {
        if let Some(splitting) = self.splitting.take() {
            return self.feed(splitting);
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
                return self.feed(Splitting {
                    splitter: EventSplitter::new(RUN_BYTES),
                    payload_left: payload,
                    crc,
                });
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
        read_message_from(frame)
            .map(Framed::Message)
            .map_err(|e| e.to_string())
    }

    /// Feeds a large event's splitter from what was received, a run's worth
    /// at a time, so that it never copies more than that ahead of its
    /// runs: a run, the event complete (its checksum checked), or `More`.
    fn feed(&mut self, mut splitting: Splitting) -> Result<Framed, String> {
        loop {
            let fed = self.feed_piece(&mut splitting);
            if let Some(run) = splitting.splitter.take_run().map_err(|e| e.to_string())? {
                self.splitting = Some(splitting);
                return Ok(Framed::Piece(EventPiece::Records(run)));
            }
            if fed == 0 {
                break;
            }
        }
        if splitting.payload_left > 0 || self.buf.len() < 4 {
            self.splitting = Some(splitting);
            return Ok(Framed::More);
        }
        let sent = self.buf.get_u32();
        let computed = splitting.crc.finalize();
        if sent != computed {
            return Err(format!(
                "message checksum mismatch ({computed:#x} computed, {sent:#x} sent)"
            ));
        }
        splitting
            .splitter
            .finish()
            .map(|event| Framed::Piece(EventPiece::Event(event)))
            .map_err(|e| e.to_string())
    }

    /// Gives `splitting` up to a run's worth of the bytes received, the
    /// framing buffer first, then the chunk received last; returns how many
    /// it took.
    fn feed_piece(&mut self, splitting: &mut Splitting) -> usize {
        if !self.buf.is_empty() {
            let taken = splitting.take(&self.buf[..self.buf.len().min(RUN_BYTES)]);
            self.buf.advance(taken);
            return taken;
        }
        let piece = self.pending.len().min(RUN_BYTES);
        let taken = splitting.take(&self.pending[..piece]);
        self.pending.advance(taken);
        if taken < piece {
            // The payload ended inside this chunk: what follows (the
            // checksum, the next messages) is framed as usual.
            self.buf.extend_from_slice(&self.pending);
        }
        if taken < piece || self.pending.is_empty() {
            // Let go of the chunk's allocation now, not when the next chunk
            // replaces it: a chunk is a slice of the connection's read
            // buffer (up to about 400 KiB on a busy HTTP/1.1 connection),
            // which the HTTP client reuses for its next read only if nothing
            // else holds it, and allocates again otherwise.
            self.pending = bytes::Bytes::new();
        }
        taken
    }

    /// The next piece of the stream (an event, or a run of a large one's
    /// records): `Ok(None)` when the service ended it; messages of other
    /// types are skipped.
    pub(super) async fn next_piece(&mut self) -> Result<Option<EventPiece>, Fault> {
        loop {
            let message = match self.frame().map_err(Fault::Broken)? {
                Framed::Piece(piece) => return Ok(Some(piece)),
                Framed::Message(message) => message,
                Framed::More => {
                    if self.receive().await.map_err(Fault::Broken)? {
                        continue;
                    }
                    if self.buf.is_empty() && self.pending.is_empty() && self.splitting.is_none() {
                        return Ok(None);
                    }
                    return Err(Fault::Broken("the stream ended inside a message".into()));
                }
            };
            // The initial response, or an event type newer than kcld: None.
            if let Some(event) = decode_message(&message)? {
                return Ok(Some(EventPiece::Event(event)));
            }
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

#[cfg(test)]
pub(super) mod tests {
    //! Event-stream messages as the service frames them, read through the
    //! same framing as a live subscription.

    use super::*;
    use crate::stream::{KinesisError, Stream};
    use aws_smithy_eventstream::frame::write_message_to;
    use aws_smithy_types::event_stream::{Header, HeaderValue};

    pub(in crate::stream) fn message(headers: &[(&str, &str)], payload: &str) -> Vec<u8> {
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

    pub(in crate::stream) fn stream() -> Stream {
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

    pub(in crate::stream) const CONSUMER: &str =
        "arn:aws:kinesis:us-east-1:111111111111:stream/orders/consumer/c:1";

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
            // 7 MB of events in runs of one to two RUN_BYTES of JSON.
            assert!(runs >= 50, "{runs} runs");
            let expected = ["2500", "5000", "5002"].map(|c| Some(c.to_owned()));
            assert_eq!(events, expected);
        }
    }

    #[tokio::test]
    async fn a_chunk_fed_to_the_splitter_is_let_go_before_the_next_is_read() {
        use futures::StreamExt as _;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        /// A chunk that counts the chunks still held anywhere.
        struct Held(Vec<u8>, Arc<AtomicUsize>);
        impl AsRef<[u8]> for Held {
            fn as_ref(&self) -> &[u8] {
                &self.0
            }
        }
        impl Drop for Held {
            fn drop(&mut self) {
                self.1.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let mut body = large_event(1, 2_000, "2000");
        body.extend(large_event(2_001, 2_000, "4000"));
        let live = Arc::new(AtomicUsize::new(0));
        // Held when the next chunk is read, at most.
        let most = Arc::new(AtomicUsize::new(0));
        let chunks: Vec<Vec<u8>> = body.chunks(400 * 1024).map(<[u8]>::to_vec).collect();
        let reads = futures::stream::iter(chunks).map({
            let (live, most) = (live.clone(), most.clone());
            move |chunk| {
                most.fetch_max(live.load(Ordering::SeqCst), Ordering::SeqCst);
                live.fetch_add(1, Ordering::SeqCst);
                let chunk = bytes::Bytes::from_owner(Held(chunk, live.clone()));
                Ok::<_, std::io::Error>(hyper::body::Frame::data(chunk))
            }
        });
        let mut subscription = Subscription::new(SdkBody::from_body_1_x(
            http_body_util::StreamBody::new(reads),
        ));
        let s = stream();
        let mut records = 0;
        while let Some(piece) = s.next_event(&mut subscription, CONSUMER).await.unwrap() {
            records += piece.records().len();
        }
        assert_eq!(records, 4_000);
        // Every chunk was fed whole to a splitter and given back before the
        // next read, so the client could reuse its buffer.
        assert_eq!(most.load(Ordering::SeqCst), 0);
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
