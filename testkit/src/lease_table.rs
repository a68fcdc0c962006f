//! Lease tables in the consumer account, read and written directly (not
//! through kcld's code): items, checkpoints, owners.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::Stack;

/// A raw item of a DynamoDB table, as the service returns it.
pub type Item = HashMap<String, aws_sdk_dynamodb::types::AttributeValue>;

impl Stack {
    /// Every item of a table in the consumer account, read directly (not
    /// through kcld's code).
    pub async fn scan_table(&self, table: &str) -> Result<Vec<Item>> {
        let ddb = self.consumer_dynamodb().await;
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let out = ddb
                .scan()
                .table_name(table)
                .consistent_read(true)
                .set_exclusive_start_key(start)
                .send()
                .await
                .with_context(|| format!("Scan {table}"))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
    }

    /// lease key -> (checkpoint, checkpointSubSequenceNumber) of every item
    /// with a checkpoint, read directly; items without one (KCL 3.x
    /// coordination) are left out. An unreadable table reads as empty.
    pub async fn checkpoints(&self, table: &str) -> BTreeMap<String, (String, u64)> {
        self.scan_table(table)
            .await
            .unwrap_or_default()
            .into_iter()
            .filter_map(|item| {
                let key = item.get("leaseKey")?.as_s().ok()?.clone();
                let checkpoint = item.get("checkpoint")?.as_s().ok()?.clone();
                let sub = item
                    .get("checkpointSubSequenceNumber")
                    .and_then(|v| v.as_n().ok())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                Some((key, (checkpoint, sub)))
            })
            .collect()
    }

    /// Waits until every shard of `placed` ((shard, sequence number), as
    /// [`Stack::put_records`] returns them) is checkpointed at its last
    /// record; an error with the checkpoints seen after `within`.
    pub async fn wait_checkpointed(
        &self,
        table: &str,
        placed: &[(String, String)],
        within: Duration,
    ) -> Result<()> {
        let mut last: HashMap<&str, &str> = HashMap::new();
        for (shard, seq) in placed {
            let e = last.entry(shard.as_str()).or_insert(seq.as_str());
            if (seq.len(), seq.as_str()) > (e.len(), *e) {
                *e = seq.as_str();
            }
        }
        let deadline = Instant::now() + within;
        loop {
            let checkpoints = self.checkpoints(table).await;
            if last
                .iter()
                .all(|(shard, seq)| checkpoints.get(*shard).is_some_and(|(c, _)| c == seq))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{checkpoints:?} never reached {last:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A lease table created the way the KCL creates one (`leaseKey` S as
    /// the only key, on demand), in the consumer account; waits until it is
    /// ACTIVE. Also used to create a table of another shape (`key`).
    pub async fn create_table(&self, name: &str, key: &str) -> Result<()> {
        use aws_sdk_dynamodb::types::{
            AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
            TableStatus,
        };
        let ddb = self.consumer_dynamodb().await;
        ddb.create_table()
            .table_name(name)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(key)
                    .attribute_type(ScalarAttributeType::S)
                    .build()?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(key)
                    .key_type(KeyType::Hash)
                    .build()?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .with_context(|| format!("CreateTable {name}"))?;
        for _ in 0..100 {
            let out = ddb.describe_table().table_name(name).send().await?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("table {name} did not become ACTIVE")
    }

    /// `leaseKey` -> `leaseOwner` for every lease item (None = unowned).
    pub async fn lease_owners(&self, table: &str) -> Result<HashMap<String, Option<String>>> {
        Ok(self
            .scan_table(table)
            .await?
            .into_iter()
            .filter(|item| {
                item.get("entityType")
                    .and_then(|v| v.as_s().ok())
                    .is_none_or(|t| t == "LEASE")
            })
            .filter_map(|item| {
                let key = item.get("leaseKey")?.as_s().ok()?.clone();
                let owner = item.get("leaseOwner").and_then(|v| v.as_s().ok()).cloned();
                Some((key, owner))
            })
            .collect())
    }
}
