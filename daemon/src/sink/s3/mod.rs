//! Records into objects of an S3 bucket, of this or another account: what
//! a Firehose delivery stream does, without Firehose's cross-account limits.
//!
//! Each shard's records are gathered by the lifecycle's batching window (up
//! to `buffer_size` bytes or `buffer_interval`) and written as one object
//! per batch (more when a batch outgrows the buffer size). An object's key
//! is the prefix (Firehose's `YYYY/MM/DD/HH/` from the first record's
//! arrival time, UTC, by default), then the stream, the shard and the first
//! record's sequence number: the same records make the same key, so a batch
//! written again after a crash replaces its object instead of adding a
//! second one. `deliver` returns only once every object of the batch was
//! written (PutObject answered), so the checkpoint never passes a record
//! that is not in the bucket.
//!
//! The bucket owner must own, or fully control, what kcld writes: objects
//! are written with the `bucket-owner-full-control` ACL, and when the
//! bucket refuses ACLs (object ownership "bucket owner enforced", where the
//! owner owns every object anyway) without one, after one log line.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ObjectCannedAcl;
use bytes::Bytes;
use kcld_config::{S3SinkSettings, Settings};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::event::{write_record, EventContext};
use super::{Sink, SinkError};
use crate::record::{Batch, Record};

/// The S3 sink of one stream.
pub struct S3Sink {
    settings: S3SinkSettings,
    /// The whole configuration, for the client (endpoint, CA file).
    config: Settings,
    context: EventContext,
    /// The stream's name in object keys.
    stream_name: String,
    client: OnceCell<aws_sdk_s3::Client>,
    /// Cleared once the bucket refuses ACLs (owner enforced).
    with_acl: AtomicBool,
}

impl S3Sink {
    /// The sink the configuration's `[sink.s3]` describes, for the stream
    /// of `settings` (its context names the stream in the Lambda format).
    pub fn new(settings: &Settings, s3: S3SinkSettings, context: EventContext) -> Self {
        S3Sink {
            settings: s3,
            config: settings.clone(),
            context,
            stream_name: settings.stream_arn.stream_name.clone(),
            client: OnceCell::new(),
            with_acl: AtomicBool::new(true),
        }
    }

    async fn client(&self) -> Result<&aws_sdk_s3::Client, SinkError> {
        self.client
            .get_or_try_init(|| {
                crate::aws::s3_client(&self.config, self.settings.region.as_deref())
            })
            .await
            .map_err(|e| SinkError::Fatal(format!("S3 client: {e}")))
    }

    /// The object key of records starting with `first`.
    fn key(&self, shard_id: &str, first: &Record) -> String {
        let prefix = match &self.settings.prefix {
            Some(p) => p.clone(),
            None => hour_prefix(first.approximate_arrival_ms),
        };
        let ext = if self.settings.gzip { ".gz" } else { "" };
        format!(
            "{prefix}{}-{shard_id}-{}-{}{ext}",
            self.stream_name,
            first.sequence_number.as_str(),
            first.sub_sequence_number
        )
    }

    /// The object's bytes: each record's data (or Lambda shape) and a
    /// newline, gzip-compressed when configured.
    fn body(&self, shard_id: &str, records: &[Record]) -> Result<Bytes, SinkError> {
        let mut lines = Vec::with_capacity(records.iter().map(|r| r.data.len() + 1).sum());
        for record in records {
            if self.settings.lambda_format {
                write_record(&mut lines, &self.context, shard_id, record);
            } else {
                lines.extend_from_slice(&record.data);
            }
            lines.push(b'\n');
        }
        if !self.settings.gzip {
            return Ok(Bytes::from(lines));
        }
        let mut gz = flate2::write::GzEncoder::new(
            Vec::with_capacity(lines.len() / 3),
            flate2::Compression::default(),
        );
        gz.write_all(&lines)
            .and_then(|_| gz.finish())
            .map(Bytes::from)
            .map_err(|e| SinkError::Fatal(format!("gzip: {e}")))
    }

    async fn put(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        let client = self.client().await?;
        loop {
            let with_acl = self.with_acl.load(Ordering::Acquire);
            let mut request = client
                .put_object()
                .bucket(&self.settings.bucket)
                .key(key)
                .body(ByteStream::from(body.clone()));
            if with_acl {
                request = request.acl(ObjectCannedAcl::BucketOwnerFullControl);
            }
            let result = request.send().await;
            let Err(err) = result else {
                metrics::counter!("kcld_s3_objects_written_total").increment(1);
                metrics::counter!("kcld_s3_bytes_written_total").increment(body.len() as u64);
                return Ok(());
            };
            let code = err.code().unwrap_or_default().to_owned();
            if code == "AccessControlListNotSupported" && with_acl {
                tracing::info!(
                    bucket = %self.settings.bucket,
                    "the bucket refuses ACLs (object ownership: bucket owner enforced): its owner owns every object kcld writes; writing without an ACL"
                );
                self.with_acl.store(false, Ordering::Release);
                continue;
            }
            return Err(self.failure(&code, &err));
        }
    }

    /// What a failed PutObject means: access and a missing bucket need a
    /// person (the message names the action and the bucket policy);
    /// anything else is retried.
    fn failure<
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: std::fmt::Debug + 'static,
    >(
        &self,
        code: &str,
        err: &aws_sdk_s3::error::SdkError<E, R>,
    ) -> SinkError {
        let detail = kcld_lease::table::plain_error(err);
        match code {
            "AccessDenied" | "AllAccessDisabled" => SinkError::Fatal(format!(
                "access denied: s3:PutObject on {}/* ({detail}). The bucket owner must allow s3:PutObject and \
                 s3:PutObjectAcl to this consumer's IAM role in the bucket policy (kcld policy prints it), and \
                 the role's own IAM policy must allow them too. Statement for the bucket policy: {}",
                self.settings.bucket_arn,
                crate::policy::bucket_write_statement(
                    &self.settings.bucket_arn,
                    &crate::policy::role_placeholder(None)
                )
            )),
            "NoSuchBucket" => SinkError::Fatal(format!(
                "sink.s3.bucket_arn: no bucket {} ({detail}); check the name and sink.s3.region",
                self.settings.bucket
            )),
            _ => SinkError::Retry(format!("PutObject to {}: {detail}", self.settings.bucket)),
        }
    }
}

/// Firehose's default prefix, `YYYY/MM/DD/HH/` in UTC.
fn hour_prefix(epoch_ms: i64) -> String {
    let secs = epoch_ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let hour = secs.rem_euclid(86_400) / 3600;
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}/{month:02}/{day:02}/{hour:02}/")
}

#[async_trait::async_trait]
impl Sink for S3Sink {
    async fn deliver(&self, batch: &Batch, _stop: &CancellationToken) -> Result<(), SinkError> {
        // One object per buffer's worth: a window that gathered more than
        // the buffer size is split.
        let mut start = 0;
        while start < batch.records.len() {
            let mut end = start;
            let mut size = 0u64;
            while end < batch.records.len()
                && (end == start
                    || size + batch.records[end].data.len() as u64 <= self.settings.buffer_size)
            {
                size += batch.records[end].data.len() as u64 + 1;
                end += 1;
            }
            let records = &batch.records[start..end];
            let key = self.key(&batch.shard_id, &records[0]);
            let body = self.body(&batch.shard_id, records)?;
            self.put(&key, body).await?;
            start = end;
        }
        Ok(())
    }

    fn batching_window(&self) -> Option<(usize, Duration)> {
        // Records of at least a few bytes each: the byte limit comes first.
        let records = (self.settings.buffer_size / 16).clamp(1, 1_000_000) as usize;
        Some((records, self.settings.buffer_interval))
    }

    fn batching_bytes(&self) -> Option<u64> {
        Some(self.settings.buffer_size)
    }
}

#[cfg(test)]
mod tests {
    use super::hour_prefix;

    #[test]
    fn firehose_prefixes_are_the_utc_hour_of_arrival() {
        assert_eq!(hour_prefix(0), "1970/01/01/00/");
        // 2024-02-29T23:59:59.999Z, a leap day.
        assert_eq!(hour_prefix(1_709_251_199_999), "2024/02/29/23/");
        // 2026-12-07T09:28:33Z.
        assert_eq!(hour_prefix(1_796_635_713_000), "2026/12/07/09/");
    }
}
