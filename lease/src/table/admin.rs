//! The table itself: created when missing (on-demand, `leaseKey` as its
//! only key, as the KCL creates it), its key schema checked, and the
//! probes `kcld doctor` uses to prove permissions without writing.

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::ProvideErrorMetadata;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TableStatus,
};

use super::{LeaseTable, TableError};
use crate::record::{attr, n};

impl LeaseTable {
    /// Creates the table (on-demand, `leaseKey` as its only key) when it is
    /// missing, waits until it is ACTIVE, and refuses a table of the same
    /// name with another key schema.
    pub async fn ensure(&self, wait: Duration) -> Result<(), TableError> {
        let deadline = Instant::now() + wait;
        let mut created = false;
        let mut warned = false;
        loop {
            match self.describe().await {
                Ok(Some(TableStatus::Active)) => {
                    if created {
                        tracing::info!(table = %self.name, "lease table created");
                    }
                    return Ok(());
                }
                Ok(Some(_)) => {}
                Ok(None) if !created => {
                    self.create().await?;
                    created = true;
                    continue;
                }
                Ok(None) => {}
                Err(TableError::Unavailable(e)) => {
                    if !std::mem::replace(&mut warned, true) {
                        tracing::warn!(table = %self.name, "lease table not reachable yet, retrying: {e}");
                    }
                }
                Err(other) => return Err(other),
            }
            if Instant::now() > deadline {
                return Err(TableError::Unavailable(format!(
                    "lease table {} did not become ACTIVE within {wait:?}",
                    self.name
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn create(&self) -> Result<(), TableError> {
        // `leaseKey` (S) as the only key, as the KCL creates it.
        match self.create_request(attr::LEASE_KEY)?.send().await {
            Ok(_) => Ok(()),
            // Another worker created it first.
            Err(e) if e.code() == Some("ResourceInUseException") => Ok(()),
            Err(e) => Err(TableError::classify(e, &self.name, "dynamodb:CreateTable")),
        }
    }

    /// CreateTable of this table, on demand, keyed by `leaseKey` (HASH),
    /// with `defined` as its one attribute definition (a string).
    fn create_request(
        &self,
        defined: &str,
    ) -> Result<
        aws_sdk_dynamodb::operation::create_table::builders::CreateTableFluentBuilder,
        TableError,
    > {
        let definition = AttributeDefinition::builder()
            .attribute_name(defined)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| TableError::Other(e.to_string()))?;
        let key = KeySchemaElement::builder()
            .attribute_name(attr::LEASE_KEY)
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| TableError::Other(e.to_string()))?;
        Ok(self
            .client
            .create_table()
            .table_name(&self.name)
            .attribute_definitions(definition)
            .key_schema(key)
            .billing_mode(BillingMode::PayPerRequest))
    }

    /// Whether this identity may create the table, without creating it.
    /// The request names a key that is not among its attribute
    /// definitions: DynamoDB refuses it in validation, which comes after
    /// the permission check, so a ValidationException means the permission
    /// is there and AccessDenied that it is missing. Should a server ever
    /// accept it, the table is deleted again and the probe fails.
    pub async fn probe_create(&self) -> Result<(), TableError> {
        let result = self.create_request("kcldDoctorProbe")?.send().await;
        match result {
            Err(e) if e.code() == Some("ValidationException") => Ok(()),
            Err(e) => Err(TableError::classify(e, &self.name, "dynamodb:CreateTable")),
            Ok(_) => {
                let _ = self
                    .client
                    .delete_table()
                    .table_name(&self.name)
                    .send()
                    .await;
                Err(TableError::Other(format!(
                    "the CreateTable probe for {} was accepted (and the table deleted again): \
                     this endpoint does not validate requests as DynamoDB does",
                    self.name
                )))
            }
        }
    }

    fn check_schema(
        &self,
        table: &aws_sdk_dynamodb::types::TableDescription,
    ) -> Result<(), TableError> {
        let keys: Vec<(&str, &KeyType)> = table
            .key_schema()
            .iter()
            .map(|k| (k.attribute_name(), k.key_type()))
            .collect();
        let key_type = table
            .attribute_definitions()
            .iter()
            .find(|d| d.attribute_name() == attr::LEASE_KEY)
            .map(|d| d.attribute_type().clone());
        if keys == [(attr::LEASE_KEY, &KeyType::Hash)] && key_type == Some(ScalarAttributeType::S) {
            Ok(())
        } else {
            Err(TableError::WrongSchema(format!(
                "table {} exists but is not a lease table (its key is {keys:?}, a lease table has leaseKey (S) \
                 as its only key); set lease_table to another name, or application_name if another application \
                 owns this table",
                self.name
            )))
        }
    }

    /// Whether the table exists (and has the lease table's key).
    pub async fn exists(&self) -> Result<bool, TableError> {
        self.describe().await.map(|status| status.is_some())
    }

    /// DescribeTable: the table's status, `None` when there is no such
    /// table; refuses a table with another key schema.
    async fn describe(&self) -> Result<Option<TableStatus>, TableError> {
        match self
            .client
            .describe_table()
            .table_name(&self.name)
            .send()
            .await
        {
            Ok(out) => {
                let Some(table) = out.table else {
                    return Err(TableError::Other(format!(
                        "DescribeTable {} returned no table",
                        self.name
                    )));
                };
                self.check_schema(&table)?;
                Ok(Some(table.table_status.unwrap_or(TableStatus::Creating)))
            }
            Err(e) => match TableError::classify(e, &self.name, "dynamodb:DescribeTable") {
                TableError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// Proves the right to make conditional writes without writing: an
    /// update conditioned on an item that does not exist, which the service
    /// refuses with ConditionalCheckFailed after checking permissions.
    pub async fn probe_conditional_write(&self) -> Result<(), TableError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.name)
            .set_key(Some(Self::key("kcld-doctor-probe-never-written")))
            .update_expression("SET #c = :one")
            .condition_expression("attribute_exists(#k)")
            .expression_attribute_names("#c", attr::LEASE_COUNTER)
            .expression_attribute_names("#k", attr::LEASE_KEY)
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match result.map_err(|e| TableError::classify(e, &self.name, "dynamodb:UpdateItem")) {
            Ok(_) | Err(TableError::ConditionFailed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}
