//! S3 buckets on moto's server behind the account relay, for the S3 sink's
//! tests.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::{Stack, REGION};

impl Stack {
    /// S3 as `account`, on moto's server behind the account relay (path
    /// style; moto's buckets are seen by every account).
    pub async fn s3_as(&self, account: &str) -> aws_sdk_s3::Client {
        let conf = self.config_as(account, REGION).await;
        aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&conf)
                .endpoint_url(&self.streams_endpoint)
                .force_path_style(true)
                .build(),
        )
    }

    /// A new bucket of the producer account (the bucket owner), shared
    /// with the consumer account's roles when `shared` (the seed's seven
    /// actions in the bucket policy, as `kcld policy` prints them).
    pub async fn create_bucket(&self, prefix: &str, shared: bool) -> Result<String> {
        let name = crate::unique_name(prefix).to_lowercase();
        let s3 = self.s3_as(&self.producer_account).await;
        s3.create_bucket()
            .bucket(&name)
            .send()
            .await
            .with_context(|| format!("CreateBucket {name}"))?;
        if shared {
            self.put_bucket_policy(&name, &self.bucket_policy_for_consumer(&name))
                .await?;
        }
        Ok(name)
    }

    /// The bucket policy letting the consumer account's roles write the S3
    /// sink's objects.
    pub fn bucket_policy_for_consumer(&self, bucket: &str) -> String {
        serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [{
                "Effect": "Allow",
                "Principal": { "AWS": format!("arn:aws:iam::{}:root", self.consumer_account) },
                "Action": [
                    "s3:AbortMultipartUpload", "s3:GetBucketLocation", "s3:GetObject", "s3:ListBucket",
                    "s3:ListBucketMultipartUploads", "s3:PutObject", "s3:PutObjectAcl",
                ],
                "Resource": [format!("arn:aws:s3:::{bucket}"), format!("arn:aws:s3:::{bucket}/*")],
            }],
        })
        .to_string()
    }

    /// Sets `bucket`'s policy, as its owner (the producer account).
    pub async fn put_bucket_policy(&self, bucket: &str, policy: &str) -> Result<()> {
        self.s3_as(&self.producer_account)
            .await
            .put_bucket_policy()
            .bucket(bucket)
            .policy(policy)
            .send()
            .await
            .with_context(|| format!("PutBucketPolicy {bucket}"))?;
        Ok(())
    }

    /// Every object of `bucket` with its bytes, by key.
    pub async fn bucket_objects(&self, bucket: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let s3 = self.s3_as(&self.producer_account).await;
        let mut out = BTreeMap::new();
        let mut token = None;
        loop {
            let page = s3
                .list_objects_v2()
                .bucket(bucket)
                .set_continuation_token(token.take())
                .send()
                .await
                .with_context(|| format!("ListObjectsV2 {bucket}"))?;
            for object in page.contents() {
                let key = object.key().unwrap_or_default().to_owned();
                let body = s3
                    .get_object()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .with_context(|| format!("GetObject {key}"))?
                    .body
                    .collect()
                    .await?
                    .into_bytes()
                    .to_vec();
                out.insert(key, body);
            }
            match page.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        Ok(out)
    }
}
