//! Records into objects of an S3 bucket, of this or another account: what
//! a Firehose delivery stream does, without Firehose's cross-account limits
//! (dynamic partitioning included).
//!
//! Each shard's records are gathered by the lifecycle's batching window (up
//! to `buffer_size` bytes or `buffer_interval`), cut into objects by
//! [`layout::plan`] (by size, and by partition when the prefix names the
//! record's partition key or data) and written: PutObject, or a multipart
//! upload above `multipart_threshold`. `deliver` returns only once every
//! object of the batch was completed (PutObject or CompleteMultipartUpload
//! answered), so the checkpoint never passes a record that is not in the
//! bucket; a crash re-sends at most the batch in flight, under the same
//! keys.
//!
//! The bucket owner must own, or fully control, what kcld writes: objects
//! are written with the `bucket-owner-full-control` ACL, and when the
//! bucket refuses ACLs (object ownership "bucket owner enforced", where the
//! owner owns every object anyway) without one, after one log line.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    CompletedMultipartUpload, CompletedPart, ObjectCannedAcl, ServerSideEncryption,
};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use kcld_config::{S3Encryption, S3SinkSettings, Settings};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::event::EventContext;
use super::{Sink, SinkError};
use crate::record::Batch;

pub mod body;
pub mod layout;

/// Objects of one batch written at once.
const WRITES_IN_FLIGHT: usize = 4;

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

/// One request's headers that every object carries: the ACL and the
/// encryption.
macro_rules! object_headers {
    ($sink:expr, $request:expr, $with_acl:expr) => {{
        let mut request = $request;
        if $with_acl {
            request = request.acl(ObjectCannedAcl::BucketOwnerFullControl);
        }
        match &$sink.settings.encryption {
            S3Encryption::BucketDefault => request,
            S3Encryption::S3 => request.server_side_encryption(ServerSideEncryption::Aes256),
            S3Encryption::Kms(key) => request
                .server_side_encryption(ServerSideEncryption::AwsKms)
                .ssekms_key_id(key),
        }
    }};
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

    /// Writes one object, whole or in parts, with the bucket owner's ACL
    /// unless the bucket refuses ACLs.
    async fn write(&self, key: &str, body: Bytes) -> Result<(), SinkError> {
        // A client that cannot be made (a bad CA file) is fatal, not retried.
        let client = self.client().await?;
        loop {
            let with_acl = self.with_acl.load(Ordering::Acquire);
            let result = if body.len() as u64 > self.settings.multipart_threshold {
                self.multipart(client, key, &body, with_acl).await
            } else {
                self.put(client, key, &body, with_acl).await
            };
            match result {
                Ok(()) => {
                    metrics::counter!("kcld_s3_objects_written_total").increment(1);
                    metrics::counter!("kcld_s3_bytes_written_total").increment(body.len() as u64);
                    return Ok(());
                }
                Err(Failure { code, .. })
                    if code == "AccessControlListNotSupported" && with_acl =>
                {
                    tracing::info!(
                        bucket = %self.settings.bucket,
                        "the bucket refuses ACLs (object ownership: bucket owner enforced): its owner owns every object kcld writes; writing without an ACL"
                    );
                    self.with_acl.store(false, Ordering::Release);
                }
                Err(failure) => return Err(self.failure(failure)),
            }
        }
    }

    async fn put(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        body: &Bytes,
        with_acl: bool,
    ) -> Result<(), Failure> {
        let request = client
            .put_object()
            .bucket(&self.settings.bucket)
            .key(key)
            .body(ByteStream::from(body.clone()));
        object_headers!(self, request, with_acl)
            .send()
            .await
            .map(drop)
            .map_err(|e| Failure::new("s3:PutObject", &e))
    }

    /// A multipart upload of `body` in parts of at most 8 MiB (at least
    /// 5 MiB but the last, as S3 requires); aborted when a part fails, so
    /// no parts are left behind to be billed.
    async fn multipart(
        &self,
        client: &aws_sdk_s3::Client,
        key: &str,
        body: &Bytes,
        with_acl: bool,
    ) -> Result<(), Failure> {
        let bucket = &self.settings.bucket;
        let request = client.create_multipart_upload().bucket(bucket).key(key);
        let upload = object_headers!(self, request, with_acl)
            .send()
            .await
            .map_err(|e| Failure::new("s3:PutObject", &e))?;
        let Some(id) = upload.upload_id() else {
            return Err(Failure {
                code: String::new(),
                action: "s3:PutObject",
                detail: "CreateMultipartUpload answered no upload id".into(),
            });
        };
        let part_size = self.settings.multipart_threshold.min(8 << 20) as usize;
        let parts = async {
            let mut done = Vec::new();
            for (i, start) in (0..body.len()).step_by(part_size).enumerate() {
                let number = i as i32 + 1;
                let part = body.slice(start..(start + part_size).min(body.len()));
                let answer = client
                    .upload_part()
                    .bucket(bucket)
                    .key(key)
                    .upload_id(id)
                    .part_number(number)
                    .body(ByteStream::from(part))
                    .send()
                    .await
                    .map_err(|e| Failure::new("s3:PutObject", &e))?;
                done.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(answer.e_tag().map(str::to_owned))
                        .build(),
                );
            }
            client
                .complete_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(done))
                        .build(),
                )
                .send()
                .await
                .map(drop)
                .map_err(|e| Failure::new("s3:PutObject", &e))
        }
        .await;
        if parts.is_err() {
            if let Err(e) = client
                .abort_multipart_upload()
                .bucket(bucket)
                .key(key)
                .upload_id(id)
                .send()
                .await
            {
                tracing::warn!(
                    bucket = %bucket,
                    key,
                    "could not abort a failed multipart upload ({}); a lifecycle rule for incomplete uploads removes its parts",
                    kcld_lease::table::plain_error(&e)
                );
            }
        }
        parts
    }

    /// What a failed write means: access and a missing bucket need a
    /// person (the message names the action and the bucket policy);
    /// anything else is retried.
    fn failure(&self, failure: Failure) -> SinkError {
        let Failure {
            code,
            action,
            detail,
        } = failure;
        match code.as_str() {
            "AccessDenied" | "AllAccessDisabled" => SinkError::Fatal(format!(
                "access denied: {action} on {}/* ({detail}). The bucket owner must allow s3:PutObject and \
                 s3:PutObjectAcl (and s3:AbortMultipartUpload) to this consumer's IAM role in the bucket \
                 policy (kcld policy prints it), and the role's own IAM policy must allow them too{}. \
                 Statement for the bucket policy: {}",
                self.settings.bucket_arn,
                match &self.settings.encryption {
                    S3Encryption::Kms(key) => format!(
                        "; with SSE-KMS the key policy of {key} must allow the role kms:GenerateDataKey and kms:Decrypt"
                    ),
                    _ => String::new(),
                },
                crate::policy::bucket_write_statement(
                    &self.settings.bucket_arn,
                    &crate::policy::role_placeholder(None)
                )
            )),
            "KMS.AccessDeniedException" | "KMS.NotFoundException" | "KMS.DisabledException" => {
                SinkError::Fatal(format!(
                    "sink.s3.kms_key_arn: the bucket refused the KMS key ({detail}); its key policy must allow this consumer's role kms:GenerateDataKey and kms:Decrypt"
                ))
            }
            "NoSuchBucket" => SinkError::Fatal(format!(
                "sink.s3.bucket_arn: no bucket {} ({detail}); check the name and sink.s3.region",
                self.settings.bucket
            )),
            _ => SinkError::Retry(format!("{action} to {}: {detail}", self.settings.bucket)),
        }
    }
}

/// The bucket accepted the object with `bucket-owner-full-control` (true),
/// or refused ACLs and took it without one (false).
pub type WithOwnerAcl = bool;

/// One small object written for the bucket's owner: with the
/// `bucket-owner-full-control` ACL, again without it when the bucket
/// refuses ACLs (owner enforced, where its owner owns it anyway). The write
/// `kcld doctor`'s probe and an S3 on-failure destination make; the sink
/// itself remembers the refusal and adds encryption ([`S3Sink`]).
pub async fn put_for_bucket_owner(
    client: &aws_sdk_s3::Client,
    bucket: &str,
    key: &str,
    body: Bytes,
    content_type: &str,
) -> Result<
    WithOwnerAcl,
    aws_sdk_s3::error::SdkError<aws_sdk_s3::operation::put_object::PutObjectError>,
> {
    let put = |acl: bool| {
        let mut request = client
            .put_object()
            .bucket(bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body.clone()));
        if acl {
            request = request.acl(ObjectCannedAcl::BucketOwnerFullControl);
        }
        request.send()
    };
    match put(true).await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some("AccessControlListNotSupported") => {
            put(false).await.map(|_| false)
        }
        Err(e) => Err(e),
    }
}

/// A failed S3 call: its error code, the action it needed, the message.
struct Failure {
    code: String,
    action: &'static str,
    detail: String,
}

impl Failure {
    fn new<E, R>(action: &'static str, err: &aws_sdk_s3::error::SdkError<E, R>) -> Self
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: std::fmt::Debug + 'static,
    {
        Failure {
            code: err.code().unwrap_or_default().to_owned(),
            action,
            detail: kcld_lease::table::plain_error(err),
        }
    }
}

#[async_trait::async_trait]
impl Sink for S3Sink {
    async fn deliver(&self, batch: &Batch, _stop: &CancellationToken) -> Result<(), SinkError> {
        let shard = &*batch.shard_id;
        let planned = layout::plan(&self.settings, &self.stream_name, shard, &batch.records);
        futures::stream::iter(planned)
            .map(|object| async move {
                let records = object.records.iter().map(|&i| &batch.records[i]);
                let body = body::encode(
                    &self.context,
                    shard,
                    records,
                    self.settings.lambda_format,
                    self.settings.compression,
                )
                .map_err(|e| SinkError::Fatal(format!("compressing an object: {e}")))?;
                self.write(&object.key, body).await
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
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
