//! Source tables and their DynamoDB streams, in any account and region, on
//! moto's server behind the account relay: created, shared by resource
//! policy, listed, and rolled over.

use anyhow::{bail, Context, Result};

use crate::Stack;

impl Stack {
    /// DynamoDB as `account` in `region`, on the source tables' emulator.
    pub async fn source_dynamodb(&self, account: &str, region: &str) -> aws_sdk_dynamodb::Client {
        let conf = self.config_as(account, region).await;
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&conf)
                .endpoint_url(&self.streams_endpoint)
                .build(),
        )
    }

    /// Creates a table `name` (string key `id`) with a stream of new and old
    /// images, owned by `account` in `region`, and shares the stream with
    /// the consumer role by its resource policy (the three actions a
    /// reader needs). Returns the stream's ARN.
    pub async fn create_table_stream_in(
        &self,
        account: &str,
        region: &str,
        name: &str,
    ) -> Result<String> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
            StreamSpecification, StreamViewType,
        };
        let ddb = self.source_dynamodb(account, region).await;
        let out = ddb
            .create_table()
            .table_name(name)
            .billing_mode(BillingMode::PayPerRequest)
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("id")
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("id")
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()?,
            )
            .send()
            .await
            .with_context(|| format!("CreateTable {name}"))?;
        let arn = out
            .table_description
            .and_then(|t| t.latest_stream_arn)
            .context("CreateTable returned no stream ARN")?;
        self.share_table_stream(account, region, &arn, &self.consumer_role_arn)
            .await?;
        Ok(arn)
    }

    /// The shard ids of the table stream `arn`, as its owner lists them.
    pub async fn table_stream_shards(&self, arn: &str) -> Result<Vec<String>> {
        let parts: Vec<&str> = arn.split(':').collect();
        let (Some(region), Some(account)) = (parts.get(3), parts.get(4)) else {
            bail!("not a stream ARN: {arn}");
        };
        let conf = self.config_as(account, region).await;
        let streams = aws_sdk_dynamodbstreams::Client::from_conf(
            aws_sdk_dynamodbstreams::config::Builder::from(&conf)
                .endpoint_url(&self.streams_endpoint)
                .build(),
        );
        let out = streams
            .describe_stream()
            .stream_arn(arn)
            .send()
            .await
            .with_context(|| format!("DescribeStream {arn}"))?;
        Ok(out
            .stream_description
            .map(|d| {
                d.shards()
                    .iter()
                    .filter_map(|s| s.shard_id().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Rolls the table stream `arn`'s open shard over, as DynamoDB does
    /// every few hours: the account relay closes it at its last record and
    /// opens a child after it. Returns (closed shard, its ending sequence
    /// number, the new shard).
    pub async fn rollover_table_stream(&self, arn: &str) -> Result<(String, String, String)> {
        use http_body_util::BodyExt;
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>();
        let request = hyper::Request::post(format!("{}/_relay/rollover", self.streams_endpoint))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                serde_json::json!({ "StreamArn": arn }).to_string(),
            )))?;
        let response = client.request(request).await.context("rollover")?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            bail!(
                "rollover of {arn}: {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        let out: serde_json::Value = serde_json::from_slice(&body)?;
        let field = |k: &str| {
            out[k]
                .as_str()
                .map(str::to_owned)
                .context("rollover answer")
        };
        Ok((
            field("Closed")?,
            field("EndingSequenceNumber")?,
            field("Opened")?,
        ))
    }

    /// Attaches a resource policy to the stream `arn` (as its owner) that
    /// lets `principal` read it.
    pub async fn share_table_stream(
        &self,
        account: &str,
        region: &str,
        arn: &str,
        principal: &str,
    ) -> Result<()> {
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "ShareStreamWithConsumer",
                "Effect": "Allow",
                "Principal": { "AWS": principal },
                "Action": [
                    "dynamodb:DescribeStream",
                    "dynamodb:GetRecords",
                    "dynamodb:GetShardIterator"
                ],
                "Resource": arn
            }]
        });
        self.source_dynamodb(account, region)
            .await
            .put_resource_policy()
            .resource_arn(arn)
            .policy(policy.to_string())
            .send()
            .await
            .with_context(|| format!("PutResourcePolicy {arn}"))?;
        Ok(())
    }
}
