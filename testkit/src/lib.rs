//! The local AWS stack (`deploy/local/stack`) as tests and the demo see it.
//!
//! Two simulated accounts: the producer (111111111111) owns the stream and
//! attaches a resource policy naming the consumer's role; the consumer
//! (222222222222) runs kcld. The Kinesis emulator takes the access key id as
//! the caller's account, so each account gets its own static keys.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub mod cut;
pub mod fault;
pub mod fleet;
pub mod h2relay;
mod lease_table;
pub mod private;
mod process;
mod queues;
pub mod reshard;
mod s3;
mod source_tables;
pub mod sts;

pub use lease_table::Item;
pub use process::{doctor_checks, http_get, metric_sum, Delivered, Exited, Kcld};

use anyhow::{anyhow, bail, Context, Result};
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};

pub const REGION: &str = "us-east-1";

/// Endpoints and keys printed by `deploy/local/stack env`.
#[derive(Clone, Debug)]
pub struct Stack {
    pub kinesis_endpoint: String,
    pub kinesis_tls_endpoint: String,
    pub dynamodb_endpoint: String,
    /// DynamoDB and DynamoDB Streams of the source tables (moto behind the
    /// account relay): tables of any account, read by stream ARN.
    pub streams_endpoint: String,
    pub ca_file: PathBuf,
    pub producer_account: String,
    pub producer_key: (String, String),
    pub consumer_account: String,
    pub consumer_key: (String, String),
    pub consumer_role_arn: String,
    /// The unpacked amazon-kclpy package (for PYTHONPATH).
    pub kclpy_dir: PathBuf,
}

fn var(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| {
        anyhow!("{name} is not set: start the local stack and load its environment: deploy/local/stack up && eval \"$(deploy/local/stack env)\" (scripts/test does both)")
    })
}

impl Stack {
    /// Reads the stack's environment; fails with the command to run when it
    /// is missing.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(var)
    }

    fn from_vars(var: impl Fn(&str) -> Result<String>) -> Result<Self> {
        Ok(Stack {
            kinesis_endpoint: var("AWS_ENDPOINT_URL_KINESIS")?,
            kinesis_tls_endpoint: var("LOCALAWS_KINESIS_TLS_ENDPOINT")?,
            dynamodb_endpoint: var("AWS_ENDPOINT_URL_DYNAMODB")?,
            streams_endpoint: var("AWS_ENDPOINT_URL_DYNAMODB_STREAMS")?,
            ca_file: var("LOCALAWS_CA_FILE")?.into(),
            producer_account: var("LOCALAWS_PRODUCER_ACCOUNT")?,
            producer_key: (
                var("LOCALAWS_PRODUCER_ACCESS_KEY_ID")?,
                var("LOCALAWS_PRODUCER_SECRET_ACCESS_KEY")?,
            ),
            consumer_account: var("LOCALAWS_CONSUMER_ACCOUNT")?,
            consumer_key: (
                var("LOCALAWS_CONSUMER_ACCESS_KEY_ID")?,
                var("LOCALAWS_CONSUMER_SECRET_ACCESS_KEY")?,
            ),
            consumer_role_arn: var("LOCALAWS_CONSUMER_ROLE_ARN")?,
            kclpy_dir: var("LOCALAWS_KCLPY_DIR")?.into(),
        })
    }

    async fn sdk_config(&self, key: &(String, String)) -> aws_config::SdkConfig {
        let http = aws_smithy_http_client::Builder::new().build_http();
        aws_config::defaults(BehaviorVersion::latest())
            .http_client(http)
            .region(Region::new(REGION))
            .credentials_provider(Credentials::new(&key.0, &key.1, None, None, "kcld-testkit"))
            .load()
            .await
    }

    /// The Kinesis emulator's plain address, for relays in front of it.
    /// The SDK configuration of `account` (its 12-digit id as the access
    /// key, which the emulators take as the caller's account) in `region`.
    async fn config_as(&self, account: &str, region: &str) -> aws_config::SdkConfig {
        self.sdk_config(&(account.to_owned(), "secret".to_owned()))
            .await
            .into_builder()
            .region(Region::new(region.to_owned()))
            .build()
    }

    pub fn kinesis_addr(&self) -> std::net::SocketAddr {
        self.kinesis_endpoint
            .trim_start_matches("http://")
            .parse()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 14568)))
    }

    /// Kinesis as the producer account (the stream owner) sees it.
    pub async fn producer_kinesis(&self) -> aws_sdk_kinesis::Client {
        let conf = self.sdk_config(&self.producer_key).await;
        aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::config::Builder::from(&conf)
                .endpoint_url(&self.kinesis_endpoint)
                .build(),
        )
    }

    /// Kinesis as the consumer account sees it.
    pub async fn consumer_kinesis(&self) -> aws_sdk_kinesis::Client {
        let conf = self.sdk_config(&self.consumer_key).await;
        aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::config::Builder::from(&conf)
                .endpoint_url(&self.kinesis_endpoint)
                .build(),
        )
    }

    /// DynamoDB in the consumer account (where the lease table lives).
    pub async fn consumer_dynamodb(&self) -> aws_sdk_dynamodb::Client {
        let conf = self.sdk_config(&self.consumer_key).await;
        aws_sdk_dynamodb::Client::from_conf(
            aws_sdk_dynamodb::config::Builder::from(&conf)
                .endpoint_url(&self.dynamodb_endpoint)
                .build(),
        )
    }

    /// The environment a kcld process of the consumer account runs with.
    pub fn consumer_env(&self) -> HashMap<String, String> {
        HashMap::from([
            ("AWS_ACCESS_KEY_ID".into(), self.consumer_key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.consumer_key.1.clone()),
            ("AWS_REGION".into(), REGION.into()),
            (
                "AWS_ENDPOINT_URL_KINESIS".into(),
                self.kinesis_endpoint.clone(),
            ),
            (
                "AWS_ENDPOINT_URL_DYNAMODB".into(),
                self.dynamodb_endpoint.clone(),
            ),
            (
                "AWS_ENDPOINT_URL_DYNAMODB_STREAMS".into(),
                self.streams_endpoint.clone(),
            ),
            ("AWS_ENDPOINT_URL_S3".into(), self.streams_endpoint.clone()),
            ("AWS_ENDPOINT_URL_SQS".into(), self.streams_endpoint.clone()),
            ("AWS_ENDPOINT_URL_SNS".into(), self.streams_endpoint.clone()),
        ])
    }

    /// kcld's environment as the consumer account for `app` (its lease
    /// table) reading `arn` as `worker` from TRIM_HORIZON, polling paced for
    /// tests (200 ms idle, at most 1,000 records a call: kinesis-local
    /// stalls on larger reads). Callers add or override keys.
    pub fn kcld_env(&self, arn: &str, app: &str, worker: &str) -> HashMap<String, String> {
        let mut env = self.consumer_env();
        for (k, v) in [
            ("KCLD_APPLICATION_NAME", app),
            ("KCLD_STREAM_ARN", arn),
            ("KCLD_WORKER_ID", worker),
            ("KCLD_INITIAL_POSITION", "TRIM_HORIZON"),
            ("KCLD_POLLING__IDLE_TIME_BETWEEN_READS_MS", "200"),
            ("KCLD_POLLING__MAX_RECORDS", "1000"),
        ] {
            env.insert(k.into(), v.into());
        }
        env
    }

    /// Creates a stream in the producer account, waits until it is ACTIVE,
    /// and attaches the resource policy that shares it with the consumer
    /// role. Returns the stream ARN.
    pub async fn create_shared_stream(&self, name: &str, shards: i32) -> Result<String> {
        let kinesis = self.producer_kinesis().await;
        let arn = Self::create_stream_as(&kinesis, &self.producer_account, name, shards).await?;
        self.share(&kinesis, &arn).await?;
        Ok(arn)
    }

    /// Attaches the resource policy that shares `arn` with the consumer
    /// role, as its owner (`kinesis`).
    async fn share(&self, kinesis: &aws_sdk_kinesis::Client, arn: &str) -> Result<()> {
        kinesis
            .put_resource_policy()
            .resource_arn(arn)
            .policy(self.stream_policy(arn).to_string())
            .send()
            .await
            .context("PutResourcePolicy")?;
        Ok(())
    }

    /// The stream's creation time in epoch seconds (the `creationEpoch` of
    /// the KCL's multi-stream lease keys), as its owner describes it.
    pub async fn creation_epoch(&self, arn: &str) -> Result<i64> {
        let out = self
            .producer_kinesis()
            .await
            .describe_stream_summary()
            .stream_arn(arn)
            .send()
            .await
            .context("DescribeStreamSummary")?;
        Ok(out
            .stream_description_summary
            .context("no stream description")?
            .stream_creation_timestamp
            .secs())
    }

    /// Creates a stream in the consumer's own account (no policy needed),
    /// for readers that cannot leave their account, such as the KCL's
    /// MultiLangDaemon; waits until it is ACTIVE. Returns the stream ARN.
    pub async fn create_own_stream(&self, name: &str, shards: i32) -> Result<String> {
        let kinesis = self.consumer_kinesis().await;
        Self::create_stream_as(&kinesis, &self.consumer_account, name, shards).await
    }

    /// Creates a stream owned by `account` in `region` (the emulator takes
    /// a 12-digit access key id as the caller's account), waits until it is
    /// ACTIVE, and attaches the policy that shares it with the consumer
    /// role. Returns the stream ARN.
    pub async fn create_stream_in(
        &self,
        account: &str,
        region: &str,
        name: &str,
        shards: i32,
    ) -> Result<String> {
        let kinesis = self.owner_kinesis(account, region).await;
        let arn = Self::create_stream_at(&kinesis, account, region, name, shards).await?;
        self.share(&kinesis, &arn).await?;
        Ok(arn)
    }

    /// Deletes the stream `arn` as its owner (the account and region in the
    /// ARN) would.
    pub async fn delete_stream(&self, arn: &str) -> Result<()> {
        let parts: Vec<&str> = arn.split(':').collect();
        let (Some(region), Some(account)) = (parts.get(3), parts.get(4)) else {
            bail!("not a stream ARN: {arn}");
        };
        self.owner_kinesis(account, region)
            .await
            .delete_stream()
            .stream_arn(arn)
            .enforce_consumer_deletion(true)
            .send()
            .await
            .with_context(|| format!("DeleteStream {arn}"))?;
        Ok(())
    }

    /// A Kinesis client as `account` in `region` (the emulator takes a
    /// 12-digit access key id as the caller's account).
    async fn owner_kinesis(&self, account: &str, region: &str) -> aws_sdk_kinesis::Client {
        let conf = self.config_as(account, region).await;
        aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::config::Builder::from(&conf)
                .endpoint_url(&self.kinesis_endpoint)
                .build(),
        )
    }

    async fn create_stream_as(
        kinesis: &aws_sdk_kinesis::Client,
        account: &str,
        name: &str,
        shards: i32,
    ) -> Result<String> {
        Self::create_stream_at(kinesis, account, REGION, name, shards).await
    }

    async fn create_stream_at(
        kinesis: &aws_sdk_kinesis::Client,
        account: &str,
        region: &str,
        name: &str,
        shards: i32,
    ) -> Result<String> {
        kinesis
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await
            .with_context(|| format!("CreateStream {name}"))?;
        let arn = format!("arn:aws:kinesis:{region}:{account}:stream/{name}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let summary = kinesis
                .describe_stream_summary()
                .stream_arn(&arn)
                .send()
                .await;
            if let Ok(out) = summary {
                if out
                    .stream_description_summary()
                    .map(|d| d.stream_status() == &StreamStatus::Active)
                    .unwrap_or(false)
                {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("stream {name} did not become ACTIVE within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(arn)
    }

    /// Registers an enhanced fan-out consumer on the stream as its owner,
    /// waits until it is ACTIVE, and shares it with the consumer role
    /// (DescribeStreamConsumer, SubscribeToShard). Returns its ARN.
    pub async fn register_shared_consumer(&self, stream_arn: &str, name: &str) -> Result<String> {
        use aws_sdk_kinesis::types::ConsumerStatus;
        let kinesis = self.producer_kinesis().await;
        let out = kinesis
            .register_stream_consumer()
            .stream_arn(stream_arn)
            .consumer_name(name)
            .send()
            .await
            .with_context(|| format!("RegisterStreamConsumer {name}"))?;
        let arn = out
            .consumer()
            .context("no consumer")?
            .consumer_arn()
            .to_owned();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let d = kinesis
                .describe_stream_consumer()
                .consumer_arn(&arn)
                .send()
                .await
                .context("DescribeStreamConsumer")?;
            if d.consumer_description().map(|c| c.consumer_status())
                == Some(&ConsumerStatus::Active)
            {
                break;
            }
            if Instant::now() > deadline {
                bail!("consumer {name} did not become ACTIVE within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let policy = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "ShareFanOutWithConsumerAccount",
                "Effect": "Allow",
                "Principal": { "AWS": self.consumer_role_arn },
                "Action": ["kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard"],
                "Resource": arn,
            }]
        });
        kinesis
            .put_resource_policy()
            .resource_arn(&arn)
            .policy(policy.to_string())
            .send()
            .await
            .context("PutResourcePolicy on the consumer")?;
        Ok(arn)
    }

    /// The resource policy of the seeds: the consumer's role may read the
    /// stream, kinesis:DescribeStream included.
    pub fn stream_policy(&self, arn: &str) -> serde_json::Value {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Sid": "ShareWithConsumerAccount",
                "Effect": "Allow",
                "Principal": { "AWS": self.consumer_role_arn },
                "Action": [
                    "kinesis:DescribeStream",
                    "kinesis:DescribeStreamSummary",
                    "kinesis:GetRecords",
                    "kinesis:GetShardIterator",
                    "kinesis:ListShards"
                ],
                "Resource": arn
            }]
        })
    }

    /// Puts records as the producer, retrying entries Kinesis refused.
    /// Returns (shard id, sequence number) per record, in input order.
    pub async fn put_records(
        &self,
        arn: &str,
        records: &[(String, Vec<u8>)],
    ) -> Result<Vec<(String, String)>> {
        let kinesis = self.producer_kinesis().await;
        let mut placed = vec![None; records.len()];
        for (chunk_no, chunk) in records.chunks(500).enumerate() {
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            let mut attempts = 0;
            while !pending.is_empty() {
                attempts += 1;
                if attempts > 20 {
                    bail!("PutRecords kept failing for {} records", pending.len());
                }
                let entries = pending
                    .iter()
                    .map(|&i| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(&chunk[i].0)
                            .data(Blob::new(chunk[i].1.clone()))
                            .build()
                            .map_err(|e| anyhow!("{e}"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                let out = match kinesis
                    .put_records()
                    .stream_arn(arn)
                    .set_records(Some(entries))
                    .send()
                    .await
                {
                    Ok(out) => out,
                    Err(e) => {
                        pause(attempts).await;
                        if attempts > 5 {
                            return Err(e).context("PutRecords");
                        }
                        continue;
                    }
                };
                let mut failed = Vec::new();
                for (slot, result) in pending.iter().zip(out.records()) {
                    match (result.shard_id(), result.sequence_number()) {
                        (Some(shard), Some(seq)) => {
                            placed[chunk_no * 500 + slot] = Some((shard.to_owned(), seq.to_owned()))
                        }
                        _ => failed.push(*slot),
                    }
                }
                pending = failed;
                if !pending.is_empty() {
                    pause(attempts).await;
                }
            }
        }
        placed
            .into_iter()
            .map(|p| p.ok_or_else(|| anyhow!("a record was not placed")))
            .collect()
    }
}

async fn pause(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
}

/// A jar `deploy/local/stack up` built under `interop/`, named by the
/// stack variable `variable` (`LOCALAWS_KCL3_JAR`, ...). Panics with what
/// to run when it is missing: a test that needs the Java KCL cannot pass
/// without it.
pub fn interop_jar(variable: &str) -> std::path::PathBuf {
    let path = std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run `eval \"$(deploy/local/stack env)\"` after `deploy/local/stack up`")
    });
    let path = std::path::PathBuf::from(path);
    assert!(
        path.is_file(),
        "{} does not exist: `deploy/local/stack up` builds it",
        path.display()
    );
    path
}

/// A name no other test uses.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// `count` records with partition keys spread over `keys` values and data
/// that names its own index, so that a test can check every byte.
pub fn sample_records(count: usize, keys: usize) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let pk = format!("key-{}", i % keys.max(1));
            let mut data = format!("record {i} of {count} ").into_bytes();
            // Binary tail, so that base64 round trips are tested too.
            data.extend((0..(i % 7 + 1)).map(|b| (i as u8).wrapping_mul(31).wrapping_add(b as u8)));
            (pk, data)
        })
        .collect()
}
