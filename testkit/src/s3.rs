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
