//! Resharding a shared stream as its owner does: splitting shards in the
//! middle of their hash key range, waiting out a reshard still in progress.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use aws_sdk_kinesis::types::Shard;

use crate::Stack;

impl Stack {
    /// Every shard of the stream (open and closed), as its owner lists them.
    pub async fn shards(&self, arn: &str) -> Result<Vec<Shard>> {
        Ok(self
            .producer_kinesis()
            .await
            .list_shards()
            .stream_arn(arn)
            .send()
            .await
            .context("ListShards")?
            .shards
            .unwrap_or_default())
    }

    /// Splits `shard` in the middle of its hash key range, retrying while
    /// an earlier reshard is still being applied.
    pub async fn split_shard(&self, arn: &str, shard: &Shard) -> Result<()> {
        let range = shard
            .hash_key_range()
            .ok_or_else(|| anyhow!("shard {} has no hash key range", shard.shard_id()))?;
        let start: u128 = range.starting_hash_key().parse()?;
        let end: u128 = range.ending_hash_key().parse()?;
        let producer = self.producer_kinesis().await;
        for _ in 0..100 {
            let split = producer
                .split_shard()
                .stream_arn(arn)
                .shard_to_split(shard.shard_id())
                .new_starting_hash_key((start + (end - start) / 2 + 1).to_string())
                .send()
                .await;
            if split.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!("shard {} could not be split", shard.shard_id())
    }

    /// Splits every open shard in two, then gives the stream a moment to
    /// become ACTIVE again.
    pub async fn split_open_shards(&self, arn: &str) -> Result<()> {
        for shard in self.shards(arn).await? {
            let closed = shard
                .sequence_number_range()
                .and_then(|r| r.ending_sequence_number())
                .is_some();
            if !closed {
                self.split_shard(arn, &shard).await?;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(())
    }
}
