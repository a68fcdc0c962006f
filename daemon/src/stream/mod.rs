//! The shared stream, addressed by ARN on every call: describe it, list its
//! shards, get iterators and records ([`consumer`]: the fan-out calls).
//! [`error`] classifies Kinesis errors into what the caller should do about
//! them; [`capture`] hands GetRecords bodies to kcld's own decoder;
//! [`direct`] sends GetRecords without the SDK's orchestration once the
//! first call showed the transport and endpoint; [`dynamodb`] makes the
//! same calls on a DynamoDB table's stream.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use kcld_records::getrecords;

use crate::backoff::{Backoff, CONTROL_PLANE_RETRIES};

use aws_sdk_kinesis::types::{Shard, ShardIteratorType};
use kcld_config::StreamArn;
use kcld_lease::ShardSpec;

mod capture;
mod consumer;
mod direct;
mod dynamodb;
mod error;
mod subscription;

use capture::CaptureBody;
pub use consumer::ConsumerInfo;
use direct::DirectGetRecords;
pub use error::KinesisError;
pub use subscription::{EventPiece, Subscription, RUN_BYTES};

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// At the oldest record still in the shard (`TRIM_HORIZON`).
    TrimHorizon,
    /// After the newest record at the time of the call (`LATEST`).
    Latest,
    /// At the first record that arrived at or after a time (`AT_TIMESTAMP`).
    AtTimestamp {
        /// The time, in milliseconds since the Unix epoch.
        epoch_millis: i64,
    },
    /// At this sequence number (`AT_SEQUENCE_NUMBER`).
    AtSequence(String),
    /// Just after this sequence number (`AFTER_SEQUENCE_NUMBER`).
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

/// A summary of the stream for logs and readiness.
#[derive(Clone, Debug)]
pub struct StreamSummary {
    /// `StreamStatus`: CREATING, ACTIVE, UPDATING or DELETING.
    pub status: String,
    /// How many shards are open.
    pub open_shards: i32,
    /// `EncryptionType`: NONE or KMS.
    pub encryption: String,
    /// How long records are kept, in hours.
    pub retention_hours: i32,
    /// When the stream was created, in epoch seconds (the KCL's
    /// `creationEpoch` in multi-stream lease keys).
    pub creation_epoch: Option<u64>,
}

/// The stream and the client that reads it.
#[derive(Clone, Debug)]
pub struct Stream {
    client: aws_sdk_kinesis::Client,
    /// The client SubscribeToShard goes through: `client` with an HTTP
    /// client that bounds what a subscription reads ahead
    /// ([`crate::aws::Clients::kinesis_subscriptions`]).
    subscriber: aws_sdk_kinesis::Client,
    arn: StreamArn,
    arn_text: String,
    /// GetRecords without the SDK's orchestration, set up after the first
    /// GetRecords through the SDK; shared by every clone (every shard).
    direct: Arc<OnceLock<DirectGetRecords>>,
    /// The `stream` label of its shards' series, when several streams are
    /// read ([`crate::ops::ShardLabels`]).
    metric_label: Option<Arc<str>>,
    /// Set for a DynamoDB table's stream: every call goes to DynamoDB
    /// Streams.
    dynamodb: Option<dynamodb::DynamoDbStream>,
}

impl Stream {
    /// The stream at `arn`, read with `client`.
    pub fn new(client: aws_sdk_kinesis::Client, arn: StreamArn) -> Self {
        let arn_text = arn.to_string();
        Stream {
            subscriber: client.clone(),
            client,
            arn,
            arn_text,
            direct: Arc::default(),
            metric_label: None,
            dynamodb: None,
        }
    }

    /// The stream at `arn`, a Kinesis stream or a DynamoDB table's stream,
    /// read with `clients`.
    pub fn open(clients: &crate::aws::Clients, arn: StreamArn) -> Self {
        let dynamodb = arn.is_dynamodb().then(|| dynamodb::DynamoDbStream {
            client: clients.dynamodb_streams.clone(),
        });
        Stream {
            dynamodb,
            subscriber: clients.kinesis_subscriptions.clone(),
            ..Stream::new(clients.kinesis.clone(), arn)
        }
    }

    /// The same stream, its shards' series labelled with its ARN: for a
    /// process reading several streams.
    pub fn labelled_in_metrics(mut self) -> Self {
        self.metric_label = Some(Arc::from(self.arn_text.as_str()));
        self
    }

    /// The `stream` label of its shards' series, if they need one.
    pub fn metric_label(&self) -> Option<&str> {
        self.metric_label.as_deref()
    }

    /// The stream's ARN.
    pub fn arn(&self) -> &StreamArn {
        &self.arn
    }

    /// The Kinesis client every call goes through.
    pub fn client(&self) -> &aws_sdk_kinesis::Client {
        &self.client
    }

    /// DescribeStreamSummary, retried while throttled (its limit, 20 calls
    /// per second per account, is shared with every other reader).
    pub async fn describe(&self) -> Result<StreamSummary, KinesisError> {
        if let Some(d) = &self.dynamodb {
            return d.describe(&self.arn).await;
        }
        let mut throttled = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
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
                Err(KinesisError::Throttled(_)) if throttled.failures() < CONTROL_PLANE_RETRIES => {
                    tokio::time::sleep(throttled.next_wait()).await;
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
        if let Some(d) = &self.dynamodb {
            return d.list_shards(&self.arn).await;
        }
        let mut shards = Vec::new();
        let mut next: Option<String> = None;
        let mut throttled = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
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
                    KinesisError::Throttled(_) if throttled.failures() < CONTROL_PLANE_RETRIES => {
                        tokio::time::sleep(throttled.next_wait()).await;
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

    /// GetShardIterator: an iterator for `shard_id` starting `at`, valid for
    /// five minutes. Errors are returned, not retried.
    pub async fn shard_iterator(
        &self,
        shard_id: &str,
        at: &StartAt,
    ) -> Result<String, KinesisError> {
        if let Some(d) = &self.dynamodb {
            return d.shard_iterator(&self.arn, shard_id, at).await;
        }
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

    /// DescribeStream (one shard's worth): kcld reads with
    /// DescribeStreamSummary and ListShards, but the KCL calls
    /// DescribeStream, so the owner's policy grants it and `kcld doctor`
    /// checks it (an application moving back to the KCL needs it).
    pub async fn describe_stream(&self) -> Result<String, KinesisError> {
        if let Some(d) = &self.dynamodb {
            return d.describe(&self.arn).await.map(|s| s.status);
        }
        let out = self
            .client
            .describe_stream()
            .stream_arn(&self.arn_text)
            .limit(1)
            .send()
            .await
            .map_err(|e| KinesisError::classify(e, &self.arn, "kinesis:DescribeStream"))?;
        Ok(out
            .stream_description()
            .map(|d| d.stream_status().as_str().to_owned())
            .unwrap_or_default())
    }

    /// GetRecords, the successful body decoded by kcld's own decoder. The
    /// first call goes through the SDK (credentials, signing, endpoint,
    /// retries, errors; its deserializer gets an empty body instead of the
    /// real one); later calls reuse its transport and endpoint without the
    /// SDK's orchestration ([`direct`]).
    pub async fn get_records(
        &self,
        iterator: &str,
        limit: i32,
    ) -> Result<getrecords::Response, KinesisError> {
        self.get_shard_records(None, iterator, limit).await
    }

    /// [`Stream::get_records`] on `shard_id`'s iterator: at the end of a
    /// DynamoDB stream's shard its children come with the response, as
    /// Kinesis sends them.
    pub async fn get_shard_records(
        &self,
        shard_id: Option<&str>,
        iterator: &str,
        limit: i32,
    ) -> Result<getrecords::Response, KinesisError> {
        if let Some(d) = &self.dynamodb {
            return d.get_records(&self.arn, shard_id, iterator, limit).await;
        }
        if let Some(direct) = self.direct.get() {
            return direct
                .get_records(&self.arn, &self.arn_text, iterator, limit)
                .await;
        }
        let capture = CaptureBody::default();
        let learn = direct::Learn::default();
        self.client
            .get_records()
            .stream_arn(&self.arn_text)
            .shard_iterator(iterator)
            .limit(limit)
            .customize()
            .interceptor(capture.clone())
            .interceptor(learn.clone())
            .send()
            .await
            .map_err(|e| KinesisError::classify(e, &self.arn, "kinesis:GetRecords"))?;
        let bytes = capture.body().await?;
        let response = getrecords::decode(bytes).map_err(|e| KinesisError::Other(e.to_string()))?;
        if let Some(learned) = learn.take() {
            let config = self.client.config();
            let region = config
                .region()
                .map_or(self.arn.region.as_str(), |r| r.as_ref());
            if let Some(direct) = DirectGetRecords::new(learned, region) {
                let _ = self.direct.set(direct);
            }
        }
        Ok(response)
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
