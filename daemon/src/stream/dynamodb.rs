//! A DynamoDB table's stream, read through DynamoDB Streams by its ARN
//! (`arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>`).
//!
//! The same shape as a Kinesis stream (shards with parents, sequence
//! numbers, iterators), with other limits: DescribeStream lists the shards
//! (100 a page), a shard has at most one parent and rolls over every few
//! hours, GetRecords returns up to 1,000 records or 1 MB, iterators expire
//! after 15 minutes, records are kept for 24 hours, and there is no
//! AT_TIMESTAMP and no enhanced fan-out. Records are decoded by
//! [`kcld_records::dynamodb`] (each kept as its JSON), never into the SDK's
//! attribute-value trees: the SDK is used for its signing, endpoints,
//! retries and errors, and its deserializer gets an empty body.
//!
//! A checkpoint older than the stream keeps (TrimmedDataAccessException)
//! resumes at the oldest record left, as the KCL's DynamoDB Streams adapter
//! does by default, after one error line and `kcld_records_trimmed_total`:
//! the records in between are gone from the stream.

use std::time::Duration;

use aws_sdk_dynamodbstreams::types::{ShardFilter, ShardFilterType, ShardIteratorType};
use aws_sdk_dynamodbstreams::Client;
use kcld_config::StreamArn;
use kcld_lease::ShardSpec;
use kcld_records::getrecords;

use super::capture::CaptureBody;
use super::{KinesisError, StartAt, StreamSummary};
use crate::backoff::{Backoff, CONTROL_PLANE_RETRIES};

/// DynamoDB Streams' page size for DescribeStream.
const PAGE: i32 = 100;
/// GetRecords returns at most this many records.
const MAX_RECORDS: i32 = 1000;
/// The hash key range the KCL's adapter writes on every DynamoDB shard's
/// lease (the service has none).
const HASH_RANGE: (&str, &str) = ("0", "1");

/// The calls on one DynamoDB stream.
#[derive(Clone, Debug)]
pub(super) struct DynamoDbStream {
    pub(super) client: Client,
}

impl DynamoDbStream {
    /// DescribeStream's first page: the stream's status and shards.
    pub(super) async fn describe(&self, arn: &StreamArn) -> Result<StreamSummary, KinesisError> {
        let out = self.describe_page(arn, None, None).await?;
        let d = out.stream_description;
        let shards = d.as_ref().map(|d| d.shards()).unwrap_or_default();
        Ok(StreamSummary {
            status: d
                .as_ref()
                .and_then(|d| d.stream_status())
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            open_shards: shards
                .iter()
                .filter(|s| {
                    s.sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_none()
                })
                .count() as i32,
            // Encrypted at rest with the table's key: nothing for a reader
            // to do.
            encryption: "table".into(),
            retention_hours: 24,
            // The KCL's adapter keys multi-stream leases with the constant
            // 1 (the label in the stream's name tells streams apart).
            creation_epoch: Some(1),
        })
    }

    async fn describe_page(
        &self,
        arn: &StreamArn,
        after: Option<String>,
        children_of: Option<&str>,
    ) -> Result<
        aws_sdk_dynamodbstreams::operation::describe_stream::DescribeStreamOutput,
        KinesisError,
    > {
        let mut throttled = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        loop {
            let mut request = self
                .client
                .describe_stream()
                .stream_arn(arn.to_string())
                .limit(PAGE)
                .set_exclusive_start_shard_id(after.clone());
            if let Some(parent) = children_of {
                request = request.shard_filter(
                    ShardFilter::builder()
                        .r#type(ShardFilterType::ChildShards)
                        .shard_id(parent)
                        .build(),
                );
            }
            match request.send().await {
                Ok(out) => return Ok(out),
                Err(e) => match KinesisError::classify(e, arn, "dynamodb:DescribeStream") {
                    // DescribeStream allows 10 calls a second per stream.
                    KinesisError::Throttled(_) if throttled.failures() < CONTROL_PLANE_RETRIES => {
                        tokio::time::sleep(throttled.next_wait()).await;
                    }
                    other => return Err(other),
                },
            }
        }
    }

    /// Every shard the stream still has, following DescribeStream's pages.
    pub(super) async fn list_shards(
        &self,
        arn: &StreamArn,
    ) -> Result<Vec<ShardSpec>, KinesisError> {
        let mut shards = Vec::new();
        let mut after = None;
        loop {
            let out = self.describe_page(arn, after.take(), None).await?;
            let Some(d) = out.stream_description else {
                break;
            };
            shards.extend(d.shards().iter().map(spec));
            match d.last_evaluated_shard_id {
                Some(last) if !last.is_empty() => after = Some(last),
                _ => break,
            }
        }
        Ok(shards)
    }

    /// The children of a shard read to its end: DescribeStream with the
    /// CHILD_SHARDS filter, keeping only shards whose parent it is (an
    /// endpoint without the filter lists every shard).
    async fn children(
        &self,
        arn: &StreamArn,
        parent: &str,
    ) -> Result<Vec<ShardSpec>, KinesisError> {
        let out = self.describe_page(arn, None, Some(parent)).await?;
        let listed: Vec<ShardSpec> = out
            .stream_description
            .map(|d| d.shards().iter().map(spec).collect())
            .unwrap_or_default();
        let children: Vec<ShardSpec> = listed
            .into_iter()
            .filter(|s| s.parents.iter().any(|p| p == parent))
            .collect();
        if !children.is_empty() {
            return Ok(children);
        }
        // Paged past the first page, or not yet created: the whole list.
        Ok(self
            .list_shards(arn)
            .await?
            .into_iter()
            .filter(|s| s.parents.iter().any(|p| p == parent))
            .collect())
    }

    /// GetShardIterator. A position older than the stream keeps
    /// (TrimmedDataAccessException) becomes the oldest record left.
    pub(super) async fn shard_iterator(
        &self,
        arn: &StreamArn,
        shard_id: &str,
        at: &StartAt,
    ) -> Result<String, KinesisError> {
        let (kind, sequence) = match at {
            StartAt::TrimHorizon => (ShardIteratorType::TrimHorizon, None),
            StartAt::Latest => (ShardIteratorType::Latest, None),
            StartAt::AtSequence(seq) => (ShardIteratorType::AtSequenceNumber, Some(seq.clone())),
            StartAt::AfterSequence(seq) => {
                (ShardIteratorType::AfterSequenceNumber, Some(seq.clone()))
            }
            StartAt::AtTimestamp { .. } => {
                return Err(KinesisError::Other(format!(
                "{arn}: DynamoDB Streams has no AT_TIMESTAMP position; use TRIM_HORIZON or LATEST"
            )))
            }
        };
        let result = self
            .client
            .get_shard_iterator()
            .stream_arn(arn.to_string())
            .shard_id(shard_id)
            .shard_iterator_type(kind)
            .set_sequence_number(sequence.clone())
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            Err(e) if trimmed(&e) && sequence.is_some() => {
                tracing::error!(
                    stream = %arn,
                    shard = shard_id,
                    position = %at,
                    "the checkpoint is older than the 24 hours DynamoDB Streams keeps records: \
                     reading from the oldest record left; the changes in between are lost"
                );
                metrics::counter!("kcld_records_trimmed_total", "shard" => shard_id.to_owned())
                    .increment(1);
                return Box::pin(self.shard_iterator(arn, shard_id, &StartAt::TrimHorizon)).await;
            }
            Err(e) => return Err(KinesisError::classify(e, arn, "dynamodb:GetShardIterator")),
        };
        out.shard_iterator.ok_or_else(|| {
            KinesisError::NotFound(format!(
                "{shard_id}: GetShardIterator returned no iterator (the shard is closed and trimmed)"
            ))
        })
    }

    /// GetRecords (up to 1,000 records), decoded by kcld's own decoder; at
    /// the end of a closed shard its children come with the response.
    pub(super) async fn get_records(
        &self,
        arn: &StreamArn,
        shard_id: Option<&str>,
        iterator: &str,
        limit: i32,
    ) -> Result<getrecords::Response, KinesisError> {
        let capture = CaptureBody::default();
        self.client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.clamp(1, MAX_RECORDS))
            .customize()
            .interceptor(capture.clone())
            .send()
            .await
            .map_err(|e| match trimmed(&e) {
                // The iterator's position went past the 24 hours kept: a
                // new iterator from the last record read finds the oldest.
                true => KinesisError::ExpiredIterator,
                false => KinesisError::classify(e, arn, "dynamodb:GetRecords"),
            })?;
        let bytes = capture.body().await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let mut response = kcld_records::dynamodb::decode(bytes, now_ms)
            .map_err(|e| KinesisError::Other(e.to_string()))?;
        if response.next_shard_iterator.is_none() {
            if let Some(shard) = shard_id {
                let children = self.children(arn, shard).await?;
                response.child_shards = Some(
                    children
                        .into_iter()
                        .map(|c| getrecords::ChildShard {
                            shard_id: c.shard_id,
                            parent_shards: c.parents,
                            starting_hash_key: c.starting_hash_key,
                            ending_hash_key: c.ending_hash_key,
                        })
                        .collect(),
                );
            }
        }
        Ok(response)
    }
}

fn trimmed<E, R>(err: &aws_sdk_kinesis::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata,
{
    use aws_sdk_kinesis::error::ProvideErrorMetadata;
    err.code() == Some("TrimmedDataAccessException")
}

fn spec(shard: &aws_sdk_dynamodbstreams::types::Shard) -> ShardSpec {
    ShardSpec {
        shard_id: shard.shard_id().unwrap_or_default().to_owned(),
        parents: shard
            .parent_shard_id()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        starting_hash_key: HASH_RANGE.0.into(),
        ending_hash_key: HASH_RANGE.1.into(),
        closed: shard
            .sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .is_some(),
    }
}
