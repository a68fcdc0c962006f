//! The HTTP sink's settings, with the semantics of a Lambda event source
//! mapping (batch size, retries, age limit, bisection, failure file).

use std::path::PathBuf;
use std::time::Duration;

use crate::non_empty;
use crate::raw::{RawS3Sink, RawSink};
use crate::{
    ConfigError, FailureDestination, HttpSinkSettings, KeyPart, KeyTemplate, S3Compression,
    S3Encryption, S3SinkSettings,
};

pub(super) fn validate_http_sink(raw: &RawSink) -> Result<HttpSinkSettings, ConfigError> {
    let url = non_empty(raw.url.clone()).ok_or_else(|| {
        ConfigError::key(
            "sink.url",
            "is required with sink.type = \"http\"",
            "set the application's endpoint, e.g. http://127.0.0.1:8080/kinesis",
        )
    })?;
    if !url.starts_with("http://") {
        return Err(ConfigError::key(
            "sink.url",
            format!("{url:?} is not an http:// URL"),
            "the HTTP sink talks to an application beside it, over plain HTTP: use http://127.0.0.1:<port>/<path>",
        ));
    }
    let batch_size = raw.batch_size.unwrap_or(100);
    if !(1..=10_000).contains(&batch_size) {
        return Err(ConfigError::key(
            "sink.batch_size",
            format!("{batch_size} is out of range"),
            "use 1 to 10000",
        ));
    }
    let max_retry_attempts = match raw.max_retry_attempts.unwrap_or(-1) {
        -1 => None,
        n if (0..=10_000).contains(&n) => Some(n as u32),
        n => {
            return Err(ConfigError::key(
                "sink.max_retry_attempts",
                format!("{n} is out of range"),
                "use -1 (retry until taken) or 0 to 10000",
            ))
        }
    };
    let max_record_age_seconds = match raw.max_record_age_seconds.unwrap_or(-1) {
        -1 => None,
        n if (1..=604_800).contains(&n) => Some(n as u64),
        n => {
            return Err(ConfigError::key(
                "sink.max_record_age_seconds",
                format!("{n} is out of range"),
                "use -1 (no limit) or 1 to 604800",
            ))
        }
    };
    let on_failure_file = non_empty(raw.on_failure_file.clone()).map(PathBuf::from);
    let on_failure_destination = non_empty(raw.on_failure_destination.clone())
        .map(|arn| failure_destination(&arn))
        .transpose()?;
    if (max_retry_attempts.is_some() || max_record_age_seconds.is_some())
        && on_failure_file.is_none()
        && on_failure_destination.is_none()
    {
        return Err(ConfigError::key(
            "sink.on_failure_destination",
            "(or sink.on_failure_file) is required when sink.max_retry_attempts or sink.max_record_age_seconds limits retries",
            "name an SQS queue, SNS topic or S3 bucket ARN for the details of batches that exhaust their retries, or a local file for the records themselves; without either they would be lost",
        ));
    }
    let timeout = super::millis("sink.timeout_ms", raw.timeout_ms, 30_000, 100, 900_000)?;
    let parallelization_factor = super::in_range(
        "sink.parallelization_factor",
        raw.parallelization_factor,
        1,
        1,
        10,
    )?;
    // Lambda's MaximumBatchingWindowInSeconds goes up to five minutes.
    let batching_window = super::millis(
        "sink.batching_window_ms",
        raw.batching_window_ms,
        0,
        0,
        300_000,
    )?;
    Ok(HttpSinkSettings {
        url,
        parallelization_factor: parallelization_factor as usize,
        batching_window,
        batch_size: batch_size as usize,
        max_retry_attempts,
        max_record_age: max_record_age_seconds.map(Duration::from_secs),
        bisect_on_error: raw.bisect_on_error.unwrap_or(false),
        on_failure_file,
        on_failure_destination,
        timeout,
    })
}

/// `sink.on_failure_destination`: an SQS queue, SNS topic or S3 bucket
/// ARN, of any account (Lambda's on-failure destinations).
fn failure_destination(arn: &str) -> Result<FailureDestination, ConfigError> {
    let bad = || {
        ConfigError::key(
            "sink.on_failure_destination",
            format!("{arn:?} is not an SQS queue, SNS topic or S3 bucket ARN"),
            "use arn:aws:sqs:<region>:<account>:<queue>, arn:aws:sns:<region>:<account>:<topic> or arn:aws:s3:::<bucket>",
        )
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || !parts[1].starts_with("aws") {
        return Err(bad());
    }
    let (service, region, account, name) = (parts[2], parts[3], parts[4], parts[5]);
    let named = !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    let placed = super::is_region(region)
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit());
    match service {
        "sqs" if named && placed => Ok(FailureDestination::Sqs {
            arn: arn.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            name: name.to_owned(),
        }),
        "sns" if named && placed => Ok(FailureDestination::Sns {
            arn: arn.to_owned(),
            region: region.to_owned(),
        }),
        "s3" if region.is_empty() && account.is_empty() && bucket_name(name) => {
            Ok(FailureDestination::S3 {
                arn: arn.to_owned(),
                bucket: name.to_owned(),
            })
        }
        _ => Err(bad()),
    }
}

/// An S3 bucket name: 3 to 63 lower-case letters, digits, '-' and '.'.
fn bucket_name(name: &str) -> bool {
    (3..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
}

/// A key prefix template (`sink.s3.prefix`, `sink.s3.error_prefix`):
/// literal text and `!{timestamp:<pattern>}`, `!{stream}`, `!{shard}`,
/// `!{partitionKey}`, `!{data:<field>[.<field>...]}`.
pub(super) fn key_template(key: &str, text: &str) -> Result<KeyTemplate, ConfigError> {
    let fix = "use literal text and !{timestamp:yyyy/MM/dd/HH}, !{stream}, !{shard}, !{partitionKey} or !{data:<field>.<field>}, e.g. \"events/!{data:customer_id}/!{timestamp:yyyy/MM/dd}/\"";
    let mut parts = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("!{") {
        if open > 0 {
            parts.push(KeyPart::Literal(rest[..open].to_owned()));
        }
        let after = &rest[open + 2..];
        let close = after.find('}').ok_or_else(|| {
            ConfigError::key(key, format!("{text:?} has a !{{ without its }}"), fix)
        })?;
        let inner = &after[..close];
        let part = match inner.split_once(':') {
            None if inner == "stream" => KeyPart::Stream,
            None if inner == "shard" => KeyPart::Shard,
            None if inner == "partitionKey" => KeyPart::PartitionKey,
            Some(("timestamp", pattern))
                if !pattern.is_empty()
                    && ["yyyy", "MM", "dd", "HH", "mm"]
                        .iter()
                        .any(|t| pattern.contains(t)) =>
            {
                KeyPart::Timestamp(pattern.to_owned())
            }
            Some(("data", path))
                if !path.is_empty() && path.split('.').all(|f| !f.trim().is_empty()) =>
            {
                KeyPart::Data(path.split('.').map(|f| f.trim().to_owned()).collect())
            }
            _ => {
                return Err(ConfigError::key(
                    key,
                    format!("!{{{inner}}} in {text:?} is not a key part"),
                    fix,
                ))
            }
        };
        parts.push(part);
        rest = &after[close + 1..];
    }
    if !rest.is_empty() {
        parts.push(KeyPart::Literal(rest.to_owned()));
    }
    Ok(KeyTemplate {
        text: text.to_owned(),
        parts,
    })
}

/// `[sink.s3]`: the bucket by ARN (of this or another account), buffering
/// as Firehose's hints (1 to 128 MiB, 0 to 900 s), gzip or not, the
/// records' bytes or the Lambda shape.
pub(super) fn validate_s3_sink(raw: &RawS3Sink) -> Result<S3SinkSettings, ConfigError> {
    let bucket_arn = non_empty(raw.bucket_arn.clone()).ok_or_else(|| {
        ConfigError::key(
            "sink.s3.bucket_arn",
            "is required with sink.type = \"s3\"",
            "set the bucket's ARN, e.g. arn:aws:s3:::analytics-landing (the bucket owner's policy must allow this consumer's role to write)",
        )
    })?;
    let bucket = bucket_arn
        .strip_prefix("arn:")
        .and_then(|rest| rest.split_once(":s3:::"))
        .map(|(_, name)| name.to_owned())
        .filter(|name| bucket_name(name))
        .ok_or_else(|| {
            ConfigError::key(
                "sink.s3.bucket_arn",
                format!("{bucket_arn:?} is not an S3 bucket ARN"),
                "use arn:aws:s3:::<bucket>, the bucket name of 3 to 63 lower-case letters, digits, '-' and '.'",
            )
        })?;
    let buffer_size_mib = raw.buffer_size_mib.unwrap_or(5);
    if !(1..=128).contains(&buffer_size_mib) {
        return Err(ConfigError::key(
            "sink.s3.buffer_size_mib",
            format!("{buffer_size_mib} is out of range"),
            "use 1 to 128 (MiB, as Firehose's buffering hints)",
        ));
    }
    let buffer_interval_seconds = raw.buffer_interval_seconds.unwrap_or(300);
    if !(0..=900).contains(&buffer_interval_seconds) {
        return Err(ConfigError::key(
            "sink.s3.buffer_interval_seconds",
            format!("{buffer_interval_seconds} is out of range"),
            "use 0 to 900 (seconds, as Firehose's buffering hints)",
        ));
    }
    let compression = match non_empty(raw.compression.clone()).as_deref() {
        None | Some("gzip") => S3Compression::Gzip,
        Some("zstd") => S3Compression::Zstd,
        Some("none") => S3Compression::None,
        Some(other) => {
            return Err(ConfigError::key(
                "sink.s3.compression",
                format!("{other:?} is not a compression"),
                "use gzip, zstd or none",
            ))
        }
    };
    let lambda_format = match non_empty(raw.format.clone()).as_deref() {
        None | Some("raw") => false,
        Some("lambda") => true,
        Some(other) => {
            return Err(ConfigError::key(
                "sink.s3.format",
                format!("{other:?} is not a format"),
                "use raw (each record's bytes and a newline) or lambda (the Lambda record shape, one JSON line each)",
            ))
        }
    };
    let prefix = non_empty(raw.prefix.clone())
        .map(|p| key_template("sink.s3.prefix", &p))
        .transpose()?;
    let error_prefix = key_template(
        "sink.s3.error_prefix",
        &non_empty(raw.error_prefix.clone())
            .unwrap_or_else(|| "processing-failed/!{timestamp:yyyy/MM/dd/HH}/".to_owned()),
    )?;
    if error_prefix.partitions_records() {
        return Err(ConfigError::key(
            "sink.s3.error_prefix",
            "takes no !{partitionKey} or !{data:...}: it is where records go whose partition cannot be read",
            "use literal text, !{timestamp:...}, !{stream} and !{shard}",
        ));
    }
    // Firehose's default limit of active partitions is 500.
    let max_open_partitions = super::in_range(
        "sink.s3.max_open_partitions",
        raw.max_open_partitions,
        500,
        1,
        10_000,
    )?;
    // S3's parts are at least 5 MiB (but the last).
    let multipart_threshold_mib = super::in_range(
        "sink.s3.multipart_threshold_mib",
        raw.multipart_threshold_mib,
        16,
        5,
        1024,
    )?;
    let kms_key_arn = non_empty(raw.kms_key_arn.clone());
    let encryption = match (non_empty(raw.encryption.clone()).as_deref(), kms_key_arn) {
        (None | Some("bucket-default"), None) => S3Encryption::BucketDefault,
        (Some("sse-s3"), None) => S3Encryption::S3,
        (Some("sse-kms"), Some(key)) if key.starts_with("arn:") && key.contains(":kms:") => {
            S3Encryption::Kms(key)
        }
        (Some("sse-kms"), Some(key)) => {
            return Err(ConfigError::key(
                "sink.s3.kms_key_arn",
                format!("{key:?} is not a KMS key ARN"),
                "use the bucket owner's key ARN, arn:aws:kms:<region>:<account>:key/<id> (an alias would be resolved in this consumer's account)",
            ))
        }
        (Some("sse-kms"), None) => {
            return Err(ConfigError::key(
                "sink.s3.kms_key_arn",
                "is required with sink.s3.encryption = \"sse-kms\"",
                "set the bucket owner's KMS key ARN; its key policy must allow this consumer's role kms:GenerateDataKey and kms:Decrypt",
            ))
        }
        (None | Some("bucket-default" | "sse-s3"), Some(_)) => {
            return Err(ConfigError::key(
                "sink.s3.kms_key_arn",
                "is only used with sink.s3.encryption = \"sse-kms\"",
                "set encryption = \"sse-kms\", or remove the key",
            ))
        }
        (Some(other), _) => {
            return Err(ConfigError::key(
                "sink.s3.encryption",
                format!("{other:?} is not an encryption"),
                "use bucket-default (nothing asked), sse-s3 or sse-kms (with kms_key_arn)",
            ))
        }
    };
    Ok(S3SinkSettings {
        bucket,
        bucket_arn,
        region: non_empty(raw.region.clone()),
        prefix,
        error_prefix,
        max_open_partitions: max_open_partitions as usize,
        multipart_threshold: multipart_threshold_mib * 1024 * 1024,
        encryption,
        buffer_size: buffer_size_mib as u64 * 1024 * 1024,
        buffer_interval: Duration::from_secs(buffer_interval_seconds as u64),
        compression,
        lambda_format,
    })
}
