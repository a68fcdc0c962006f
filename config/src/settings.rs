//! Validated settings: what the rest of kcld reads.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::arn::{ConsumerArn, StreamArn};

/// Where a shard with no checkpoint starts reading.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InitialPosition {
    /// The oldest record still in the shard (the KCL's `TRIM_HORIZON`).
    TrimHorizon,
    /// Only records that arrive after the shard is first read (`LATEST`).
    Latest,
    /// Records that arrived at or after this time (RFC 3339, kept as given
    /// and as epoch milliseconds).
    AtTimestamp {
        /// The time as configured.
        rfc3339: String,
        /// The same time in milliseconds since the Unix epoch.
        epoch_millis: i64,
    },
}

/// Validated settings; see `config/kcld.example.toml` for each key.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// What loading noticed but did not refuse (unknown `KCLD_` variables,
    /// say): the caller logs them once logging is set up.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// Where each key set by the file or a variable came from (dotted key
    /// -> "file ...", "variable KCLD_..."); keys absent took their default.
    #[serde(skip)]
    pub origins: std::collections::BTreeMap<String, String>,
    /// Names this consumer; the lease table is named after it unless set, as in
    /// the KCL.
    pub application_name: String,
    /// The stream to read; its account and region come from here. With
    /// `[[streams]]`, the first of them.
    pub stream_arn: StreamArn,
    /// Every stream read, each with its own consumer, start and role:
    /// `stream_arn` (with the top-level `consumer_*`, `initial_position`
    /// and `aws.assume_role_*`) as a list of one, or the `[[streams]]`
    /// entries.
    pub streams: Vec<StreamSettings>,
    /// Leases use the KCL's multi-stream keys
    /// (`account:stream:creationEpoch:shardId`): set when the streams come
    /// from `[[streams]]`, even one, so that adding a stream later keeps
    /// the keys; `stream_arn` keeps the single-stream keys (shard ids).
    pub multi_stream: bool,
    /// The DynamoDB table for leases and checkpoints; `application_name` unless
    /// set.
    pub lease_table: String,
    /// This worker's id in the lease table (`leaseOwner`); `<hostname>-<uuid>`,
    /// new at every start, unless set.
    pub worker_id: String,
    /// Where a shard with no checkpoint starts reading.
    pub initial_position: InitialPosition,
    /// After SIGTERM/SIGINT: time to finish in-flight batches, write final
    /// checkpoints and release leases.
    #[serde(serialize_with = "millis")]
    pub shutdown_timeout: Duration,
    /// Enhanced fan-out (SubscribeToShard) instead of polling, when a
    /// consumer is configured.
    pub fan_out: Option<FanOutSettings>,
    /// AWS endpoints, regions and credentials.
    pub aws: AwsSettings,
    /// How leases are kept, taken and balanced.
    pub lease: LeaseSettings,
    /// How often confirmed records are checkpointed.
    pub checkpoint: CheckpointSettings,
    /// How shards are read with GetRecords.
    pub polling: PollingSettings,
    /// Where records are delivered.
    pub sink: SinkSettings,
    /// Log format and level.
    pub log: LogSettings,
    /// The metrics and health endpoint.
    pub ops: OpsSettings,
    /// Which records are delivered.
    pub filter: FilterSettings,
}

/// Filter criteria with Lambda's syntax ([`kcld_records::filter`]): a
/// record is delivered when it matches one of the patterns (all records
/// without any); the others are counted and checkpointed past.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FilterSettings {
    /// Up to five patterns, each a JSON object as text (checked at load).
    pub patterns: Vec<String>,
}

impl Settings {
    /// These settings as if `streams[i]` were the only stream: its ARN,
    /// consumer, start and role in the top-level fields, so that code
    /// written for one stream serves each of several.
    pub fn for_stream(&self, i: usize) -> Settings {
        let mut one = self.clone();
        if let Some(stream) = self.streams.get(i) {
            one.stream_arn = stream.arn.clone();
            one.fan_out = stream.fan_out.clone();
            one.initial_position = stream.initial_position.clone();
            one.aws.assume_role = stream.assume_role.clone();
            if let (Some(url), Some(http)) = (&stream.sink_url, one.sink.http.as_mut()) {
                http.url = url.clone();
            }
            one.streams = vec![stream.clone()];
        }
        one
    }
}

/// One stream to read.
#[derive(Clone, Debug, Serialize)]
pub struct StreamSettings {
    /// Its ARN: the owner's account and the region come from here.
    pub arn: StreamArn,
    /// Enhanced fan-out through this consumer, else polling.
    pub fan_out: Option<FanOutSettings>,
    /// Where its shards with no checkpoint start.
    pub initial_position: InitialPosition,
    /// The role assumed for its Kinesis calls (`None`: the default
    /// credentials).
    pub assume_role: Option<AssumeRole>,
    /// Where the HTTP sink posts this stream's records (`None`:
    /// `sink.url`).
    pub sink_url: Option<String>,
}

/// Which enhanced fan-out consumer to read through.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FanOutConsumer {
    /// Registered by the stream owner and shared with this account.
    Arn(ConsumerArn),
    /// Looked up by name on the stream; registered when missing, which
    /// only the stream's own account may do.
    Name(String),
}

/// Reading through an enhanced fan-out consumer with SubscribeToShard.
#[derive(Clone, Debug, Serialize)]
pub struct FanOutSettings {
    /// The consumer to subscribe through.
    pub consumer: FanOutConsumer,
    /// A subscription with no event for this long is restarted.
    #[serde(serialize_with = "millis")]
    pub stall_timeout: Duration,
    /// A subscription is renewed after this long, before the service ends
    /// it at 5 minutes.
    #[serde(serialize_with = "millis")]
    pub subscription_max_age: Duration,
    /// How long to wait for a registered consumer to become ACTIVE.
    #[serde(serialize_with = "millis")]
    pub registration_timeout: Duration,
    /// While caught up, how often to check with GetRecords whether the
    /// shard was closed and fully read; 0 = only the service's own
    /// end-of-shard event.
    #[serde(serialize_with = "millis")]
    pub end_check_interval: Duration,
}

/// The operations endpoint: Prometheus metrics and health probes.
#[derive(Clone, Debug, Serialize)]
pub struct OpsSettings {
    /// Where /metrics, /healthz and /readyz are served; `None` = off.
    pub listen: Option<std::net::SocketAddr>,
}

/// AWS endpoints, regions and credentials, with every default resolved.
#[derive(Clone, Debug, Serialize)]
pub struct AwsSettings {
    /// Resolved: `aws.kinesis_endpoint`, else `AWS_ENDPOINT_URL_KINESIS`,
    /// else `aws.endpoint`, else `AWS_ENDPOINT_URL`, else the AWS default.
    pub kinesis_endpoint: Option<String>,
    /// Resolved like `kinesis_endpoint`, from `aws.dynamodb_endpoint` and
    /// `AWS_ENDPOINT_URL_DYNAMODB`.
    pub dynamodb_endpoint: Option<String>,
    /// Resolved like `kinesis_endpoint`, from `aws.dynamodb_streams_endpoint`
    /// and `AWS_ENDPOINT_URL_DYNAMODB_STREAMS`: where a DynamoDB table's
    /// stream is read.
    pub dynamodb_streams_endpoint: Option<String>,
    /// Resolved like `kinesis_endpoint`, from `aws.s3_endpoint` and
    /// `AWS_ENDPOINT_URL_S3`: where the S3 sink writes.
    pub s3_endpoint: Option<String>,
    /// Resolved like `kinesis_endpoint`, from `aws.sqs_endpoint` and
    /// `AWS_ENDPOINT_URL_SQS`: an on-failure destination queue's.
    pub sqs_endpoint: Option<String>,
    /// Resolved like `kinesis_endpoint`, from `aws.sns_endpoint` and
    /// `AWS_ENDPOINT_URL_SNS`: an on-failure destination topic's.
    pub sns_endpoint: Option<String>,
    /// Resolved like `kinesis_endpoint`, from `aws.sts_endpoint` and
    /// `AWS_ENDPOINT_URL_STS`.
    pub sts_endpoint: Option<String>,
    /// Region of the lease table, in the consumer's account: the key, else
    /// `AWS_REGION` / `AWS_DEFAULT_REGION`, else (at start) the AWS
    /// profile's or the instance's region, else the stream's region.
    pub dynamodb_region: String,
    /// Where `dynamodb_region` came from, for `check-config`.
    #[serde(skip)]
    pub dynamodb_region_from: String,
    /// True when nothing in the file or the environment named the
    /// consumer's region, so `dynamodb_region` is the stream's as a
    /// fallback: at start kcld asks the SDK's region chain (the AWS
    /// profile, then instance metadata) first.
    #[serde(skip)]
    pub dynamodb_region_fallback: bool,
    /// A PEM CA certificate to trust besides the system's; `None` = the
    /// system's only.
    pub ca_file: Option<PathBuf>,
    /// A role to assume for Kinesis calls; `None` = Kinesis uses the default
    /// credentials too.
    pub assume_role: Option<AssumeRole>,
}

/// A role assumed through STS for the Kinesis calls only; DynamoDB keeps the
/// default credentials.
#[derive(Clone, Debug, Serialize)]
pub struct AssumeRole {
    /// The ARN of the role to assume.
    pub role_arn: String,
    /// The role session name; `kcld` unless set.
    pub session_name: String,
    /// The external id the role's trust policy requires; `None` = none is sent.
    pub external_id: Option<String>,
}

/// Where leases and checkpoints are kept.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LeaseStore {
    /// The KCL-compatible DynamoDB lease table: shared, durable.
    Dynamodb,
    /// In memory: one instance reads every shard; positions are lost at exit.
    Memory,
}

/// How leases are kept, taken and balanced; the timings mirror the KCL's.
#[derive(Clone, Debug, Serialize)]
pub struct LeaseSettings {
    /// Where leases and checkpoints are kept.
    pub store: LeaseStore,
    /// A lease whose counter has not moved for this long, may
    /// be taken by another worker (the KCL's `failoverTimeMillis`).
    #[serde(serialize_with = "millis")]
    pub failover_time: Duration,
    /// How often a settled fleet's lease table is scanned for leases to
    /// take, in milliseconds (twice the failover time by default, as the
    /// KCL).
    #[serde(serialize_with = "millis")]
    pub take_interval: Duration,
    /// How often, between scans, one lease of each other worker is read to
    /// see it alive, and how often the table is scanned while leases change
    /// hands, in milliseconds.
    #[serde(serialize_with = "millis")]
    pub probe_interval: Duration,
    /// The most the probes may cost, in percent of what this worker's
    /// lease renewals cost (a write costs five reads); probes are spaced
    /// further than `probe_interval` to stay within it. 0: no probes.
    pub probe_budget_percent: u32,
    /// How often shards are listed to add leases for new shards and remove
    /// finished parents, in milliseconds.
    #[serde(serialize_with = "millis")]
    pub shard_sync_interval: Duration,
    /// 0 = no limit.
    pub max_leases_per_worker: u64,
    /// The most leases taken from a busier worker in one scan (the KCL's
    /// `maxLeasesToStealAtOneTime`).
    pub max_leases_to_steal: u64,
}

/// When confirmed records are checkpointed.
#[derive(Clone, Debug, Serialize)]
pub struct CheckpointSettings {
    /// Checkpoint confirmed records at least this often...
    #[serde(serialize_with = "millis")]
    pub interval: Duration,
    /// ...and whenever this many records were confirmed since the last one.
    pub max_records: u64,
}

/// Reading shards with GetRecords.
#[derive(Clone, Debug, Serialize)]
pub struct PollingSettings {
    /// `Limit` of each GetRecords call, 1 to 10,000.
    pub max_records: i32,
    /// Wait after an empty GetRecords before the next call on that shard;
    /// it doubles with every further empty read, up to `max_idle_time_ms`.
    #[serde(serialize_with = "millis")]
    pub idle_time_between_reads: Duration,
    /// The longest wait between reads of an idle shard, in milliseconds.
    #[serde(serialize_with = "millis")]
    pub max_idle_time: Duration,
    /// Record data read ahead of the sink, per shard...
    pub prefetch_bytes: u64,
    /// ...and for all shards of this worker together.
    pub prefetch_total_bytes: u64,
}

/// Which sink records are delivered to (the `sink.type` key).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// One JSON object per record and line on stdout, in the shape of a Lambda
    /// Kinesis event record.
    Stdout,
    /// POST batches in the Lambda Kinesis event shape to `sink.url`.
    Http,
    /// Objects in an S3 bucket, of this or another account (`[sink.s3]`).
    S3,
}

/// Where and how records are delivered.
#[derive(Clone, Debug, Serialize)]
pub struct SinkSettings {
    /// The sink in use.
    #[serde(rename = "type")]
    pub kind: SinkKind,
    /// `invokeIdentityArn` of each record; empty when not configured.
    pub invoke_identity_arn: String,
    /// The HTTP sink's settings; present exactly when `kind` is
    /// [`SinkKind::Http`].
    pub http: Option<HttpSinkSettings>,
    /// The S3 sink's settings; present exactly when `kind` is
    /// [`SinkKind::S3`].
    pub s3: Option<S3SinkSettings>,
}

/// The S3 sink: records buffered per shard and written as objects, as
/// Firehose writes them, the checkpoint moving only past written objects.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct S3SinkSettings {
    /// The bucket's name (from `arn:aws:s3:::<name>`).
    pub bucket: String,
    /// The bucket's ARN as given.
    pub bucket_arn: String,
    /// The bucket's region; `None`: the consumer's region.
    pub region: Option<String>,
    /// The key prefix template; `None`: Firehose's `YYYY/MM/DD/HH/` from
    /// the first record's arrival time (UTC).
    pub prefix: Option<KeyTemplate>,
    /// Where records go whose partition values cannot be read (a missing
    /// JSON field, data that is not JSON), as Firehose's error output
    /// prefix; only used when `prefix` partitions records.
    pub error_prefix: KeyTemplate,
    /// Partitions buffered at once within a shard's buffer; a record of
    /// one more writes the open ones first.
    pub max_open_partitions: usize,
    /// Objects larger than this are written by multipart upload.
    pub multipart_threshold: u64,
    /// Server-side encryption asked for on each object.
    pub encryption: S3Encryption,
    /// An object is written once this many bytes are buffered.
    pub buffer_size: u64,
    /// ... or once the oldest buffered record waited this long.
    pub buffer_interval: Duration,
    /// How objects are compressed.
    pub compression: S3Compression,
    /// Each line is the Lambda record shape (JSON) instead of the record's
    /// own bytes.
    pub lambda_format: bool,
}

/// How the S3 sink compresses objects.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum S3Compression {
    /// As written (no extension).
    None,
    /// gzip (`.gz`), as Firehose's GZIP.
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

/// Server-side encryption the S3 sink asks for.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub enum S3Encryption {
    /// Nothing asked: the bucket's default encryption applies.
    BucketDefault,
    /// SSE-S3 (`AES256`).
    S3,
    /// SSE-KMS with this key (the bucket owner's key ARN).
    Kms(String),
}

/// An S3 key prefix template: literal text and `!{...}` parts, each
/// resolved per record (see [`KeyPart`]).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct KeyTemplate {
    /// As written, for messages and `check-config`.
    pub text: String,
    /// The parsed parts, in order.
    #[serde(skip)]
    pub parts: Vec<KeyPart>,
}

impl KeyTemplate {
    /// True when a part depends on the record's own partition key or data
    /// (dynamic partitioning), not only on its arrival time, stream and
    /// shard.
    pub fn partitions_records(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, KeyPart::PartitionKey | KeyPart::Data(_)))
    }
}

/// One part of a [`KeyTemplate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// Text as written.
    Literal(String),
    /// `!{timestamp:<pattern>}`: the record's arrival time in UTC, the
    /// pattern's `yyyy`, `MM`, `dd`, `HH` and `mm` replaced (Firehose's).
    Timestamp(String),
    /// `!{stream}`: the stream's name.
    Stream,
    /// `!{shard}`: the shard id.
    Shard,
    /// `!{partitionKey}`: the record's partition key.
    PartitionKey,
    /// `!{data:a.b}`: the field `a.b` of the record's JSON data.
    Data(Vec<String>),
}

/// Where a batch's details go once it exhausted its retries or age, as a
/// Lambda event source mapping's on-failure destination.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FailureDestination {
    /// An SQS queue (`arn:aws:sqs:<region>:<account>:<name>`).
    Sqs {
        /// As given.
        arn: String,
        /// The queue's region.
        region: String,
        /// The queue owner's account.
        account: String,
        /// The queue's name.
        name: String,
    },
    /// An SNS topic (`arn:aws:sns:<region>:<account>:<name>`).
    Sns {
        /// As given.
        arn: String,
        /// The topic's region.
        region: String,
    },
    /// An S3 bucket (`arn:aws:s3:::<bucket>`).
    S3 {
        /// As given.
        arn: String,
        /// The bucket's name.
        bucket: String,
    },
}

impl FailureDestination {
    /// The destination's ARN as configured.
    pub fn arn(&self) -> &str {
        match self {
            FailureDestination::Sqs { arn, .. }
            | FailureDestination::Sns { arn, .. }
            | FailureDestination::S3 { arn, .. } => arn,
        }
    }
}

/// The HTTP sink, with the semantics of a Lambda event source mapping.
#[derive(Clone, Debug, Serialize)]
pub struct HttpSinkSettings {
    /// The application's endpoint the batches are POSTed to.
    pub url: String,
    /// Records per request, 1 to 10,000.
    pub batch_size: usize,
    /// Attempts per record before it goes to the failure file; `None` =
    /// until the application takes it.
    pub max_retry_attempts: Option<u32>,
    /// Age past which a failing record goes to the failure file.
    #[serde(serialize_with = "seconds")]
    pub max_record_age: Option<Duration>,
    /// On an error, split the batch in two and retry each half.
    pub bisect_on_error: bool,
    /// Where records that exhausted their retries are written (JSON lines)
    /// before they are checkpointed past.
    pub on_failure_file: Option<PathBuf>,
    /// Where the details of a batch that exhausted its retries go (SQS,
    /// SNS or S3, of any account), in Lambda's invocation record shape.
    pub on_failure_destination: Option<FailureDestination>,
    /// How long one request may take, in milliseconds.
    #[serde(serialize_with = "millis")]
    pub timeout: Duration,
    /// Requests in flight per shard, 1 to 10; records of one partition key
    /// always go through the same one, in order.
    pub parallelization_factor: usize,
    /// Wait up to this long for a full batch before sending a smaller one.
    #[serde(serialize_with = "millis")]
    pub batching_window: Duration,
}

/// How log lines are written to stderr.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Plain lines for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Logging to stderr.
#[derive(Clone, Debug, Serialize)]
pub struct LogSettings {
    /// How each line is written.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `kcld=debug,info`.
    pub level: String,
}

impl Settings {
    /// The effective configuration as TOML, for `kcld check-config`.
    pub fn to_toml(&self) -> String {
        crate::render::render(self)
    }
}

/// Durations are written as whole milliseconds, as the keys that set them.
fn millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `sink.max_record_age_seconds` is written in whole seconds.
fn seconds<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs()),
        None => s.serialize_none(),
    }
}
