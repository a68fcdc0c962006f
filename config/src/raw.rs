//! The configuration as written: every key optional, unknown keys refused.

use serde::{Deserialize, Serialize};

/// The file as written: every key optional, defaults applied by serde.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSettings {
    pub(crate) application_name: Option<String>,
    pub(crate) stream_arn: Option<String>,
    pub(crate) lease_table: Option<String>,
    pub(crate) worker_id: Option<String>,
    pub(crate) initial_position: Option<String>,
    pub(crate) initial_timestamp: Option<String>,
    pub(crate) shutdown_timeout_ms: Option<i64>,
    pub(crate) consumer_arn: Option<String>,
    pub(crate) consumer_name: Option<String>,
    pub(crate) streams: Vec<RawStream>,
    pub(crate) fan_out: RawFanOut,
    pub(crate) aws: RawAws,
    pub(crate) lease: RawLease,
    pub(crate) checkpoint: RawCheckpoint,
    pub(crate) polling: RawPolling,
    pub(crate) sink: RawSink,
    pub(crate) log: RawLog,
    pub(crate) ops: RawOps,
    pub(crate) filter: RawFilter,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawFilter {
    pub(crate) patterns: Option<Vec<String>>,
}

/// One `[[streams]]` entry.
#[derive(Debug, Deserialize, Serialize, Default, Clone)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawStream {
    pub(crate) arn: Option<String>,
    pub(crate) consumer_arn: Option<String>,
    pub(crate) consumer_name: Option<String>,
    pub(crate) initial_position: Option<String>,
    pub(crate) initial_timestamp: Option<String>,
    pub(crate) assume_role_arn: Option<String>,
    pub(crate) assume_role_session_name: Option<String>,
    pub(crate) assume_role_external_id: Option<String>,
    pub(crate) sink_url: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawFanOut {
    pub(crate) stall_timeout_ms: Option<i64>,
    pub(crate) subscription_max_age_ms: Option<i64>,
    pub(crate) registration_timeout_ms: Option<i64>,
    pub(crate) end_check_interval_ms: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawOps {
    pub(crate) listen: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawAws {
    pub(crate) endpoint: Option<String>,
    pub(crate) kinesis_endpoint: Option<String>,
    pub(crate) dynamodb_endpoint: Option<String>,
    pub(crate) dynamodb_streams_endpoint: Option<String>,
    pub(crate) s3_endpoint: Option<String>,
    pub(crate) sqs_endpoint: Option<String>,
    pub(crate) sns_endpoint: Option<String>,
    pub(crate) sts_endpoint: Option<String>,
    pub(crate) dynamodb_region: Option<String>,
    pub(crate) ca_file: Option<String>,
    pub(crate) assume_role_arn: Option<String>,
    pub(crate) assume_role_session_name: Option<String>,
    pub(crate) assume_role_external_id: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLease {
    pub(crate) store: Option<String>,
    pub(crate) failover_time_ms: Option<i64>,
    pub(crate) take_interval_ms: Option<i64>,
    pub(crate) probe_interval_ms: Option<i64>,
    pub(crate) probe_budget_percent: Option<i64>,
    pub(crate) shard_sync_interval_ms: Option<i64>,
    pub(crate) max_leases_per_worker: Option<i64>,
    pub(crate) max_leases_to_steal: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawCheckpoint {
    pub(crate) interval_ms: Option<i64>,
    pub(crate) max_records: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawPolling {
    pub(crate) max_records: Option<i64>,
    pub(crate) idle_time_between_reads_ms: Option<i64>,
    pub(crate) max_idle_time_ms: Option<i64>,
    pub(crate) prefetch_bytes: Option<i64>,
    pub(crate) prefetch_total_bytes: Option<i64>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawSink {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) invoke_identity_arn: Option<String>,
    pub(crate) url: Option<String>,
    pub(crate) batch_size: Option<i64>,
    pub(crate) max_retry_attempts: Option<i64>,
    pub(crate) max_record_age_seconds: Option<i64>,
    pub(crate) bisect_on_error: Option<bool>,
    pub(crate) on_failure_file: Option<String>,
    pub(crate) on_failure_destination: Option<String>,
    pub(crate) timeout_ms: Option<i64>,
    pub(crate) parallelization_factor: Option<i64>,
    pub(crate) batching_window_ms: Option<i64>,
    pub(crate) s3: RawS3Sink,
}

/// `[sink.s3]`.
#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawS3Sink {
    pub(crate) bucket_arn: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) prefix: Option<String>,
    pub(crate) buffer_size_mib: Option<i64>,
    pub(crate) buffer_interval_seconds: Option<i64>,
    pub(crate) compression: Option<String>,
    pub(crate) format: Option<String>,
    pub(crate) error_prefix: Option<String>,
    pub(crate) max_open_partitions: Option<i64>,
    pub(crate) multipart_threshold_mib: Option<i64>,
    pub(crate) encryption: Option<String>,
    pub(crate) kms_key_arn: Option<String>,
}

#[derive(Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct RawLog {
    pub(crate) format: Option<String>,
    pub(crate) level: Option<String>,
}
