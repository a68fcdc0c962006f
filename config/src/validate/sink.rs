//! The HTTP sink's settings, with the semantics of a Lambda event source
//! mapping (batch size, retries, age limit, bisection, failure file).

use std::path::PathBuf;
use std::time::Duration;

use crate::non_empty;
use crate::raw::RawSink;
use crate::{ConfigError, HttpSinkSettings};

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
