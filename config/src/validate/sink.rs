//! The HTTP sink's settings, with the semantics of a Lambda event source
//! mapping (batch size, retries, age limit, bisection, failure file).

use std::path::PathBuf;
use std::time::Duration;

use crate::non_empty;
use crate::raw::{RawS3Sink, RawSink};
use crate::{ConfigError, HttpSinkSettings, S3SinkSettings};

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
    if (max_retry_attempts.is_some() || max_record_age_seconds.is_some())
        && on_failure_file.is_none()
    {
        return Err(ConfigError::key(
            "sink.on_failure_file",
            "is required when sink.max_retry_attempts or sink.max_record_age_seconds limits retries",
            "name a file for records that exhaust their retries; without it they would be lost",
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
        timeout,
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
        .filter(|name| {
            (3..=63).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        })
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
    let gzip = match non_empty(raw.compression.clone()).as_deref() {
        None | Some("gzip") => true,
        Some("none") => false,
        Some(other) => {
            return Err(ConfigError::key(
                "sink.s3.compression",
                format!("{other:?} is not a compression"),
                "use gzip or none",
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
    Ok(S3SinkSettings {
        bucket,
        bucket_arn,
        region: non_empty(raw.region.clone()),
        prefix: non_empty(raw.prefix.clone()),
        buffer_size: buffer_size_mib as u64 * 1024 * 1024,
        buffer_interval: Duration::from_secs(buffer_interval_seconds as u64),
        gzip,
        lambda_format,
    })
}
