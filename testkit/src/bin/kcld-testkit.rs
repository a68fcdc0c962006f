//! Local stack chores for the demo: create a shared stream (or a table with
//! a shared stream) in the producer account and put sample records into it
//! (or change its items). Reads the environment printed by
//! `deploy/local/stack env`.

use anyhow::Result;
use clap::{Parser, Subcommand};
use kcld_testkit::Stack;

#[derive(Parser)]
#[command(about = "Local two-account stack chores for kcld's demo")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a stream in the producer account and share it with the consumer role; prints its ARN.
    CreateStream {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 4)]
        shards: i32,
        /// Create it in the consumer's own account instead (no policy), for
        /// readers that cannot leave their account (the KCL's MultiLangDaemon).
        #[arg(long)]
        own: bool,
        /// Create it in this (12-digit) account instead of the producer's,
        /// shared with the consumer role.
        #[arg(long, conflicts_with = "own")]
        account: Option<String>,
        /// The region of a stream created with --account.
        #[arg(long, default_value = kcld_testkit::REGION)]
        region: String,
    },
    /// Put sample records (as the producer account) into the stream.
    Put {
        #[arg(long)]
        arn: String,
        #[arg(long, default_value_t = 20)]
        count: usize,
    },
    /// Print the resource policy the producer attached to the stream.
    ShowPolicy {
        #[arg(long)]
        arn: String,
    },
    /// Create a DynamoDB table with a stream (new and old images) in the
    /// producer account and share the stream with the consumer role; prints
    /// the stream's ARN.
    CreateTableStream {
        #[arg(long)]
        name: String,
        /// The (12-digit) account owning the table; default the producer's.
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value = kcld_testkit::REGION)]
        region: String,
    },
    /// Put, update and delete items of the table whose stream ARN is given
    /// (as its owner): `count` orders put, each then marked shipped, every
    /// fourth deleted.
    ChangeItems {
        #[arg(long)]
        arn: String,
        #[arg(long, default_value_t = 8)]
        count: usize,
    },
}

#[tokio::main]
async fn main() -> Result<()> {
    let stack = Stack::from_env()?;
    match Cli::parse().command {
        Cmd::CreateStream {
            name,
            shards,
            own,
            account,
            region,
        } => {
            let arn = match (own, account) {
                (true, _) => stack.create_own_stream(&name, shards).await?,
                (false, Some(account)) => {
                    stack
                        .create_stream_in(&account, &region, &name, shards)
                        .await?
                }
                (false, None) => stack.create_shared_stream(&name, shards).await?,
            };
            println!("{arn}");
        }
        Cmd::Put { arn, count } => {
            let records: Vec<(String, Vec<u8>)> = (0..count)
                .map(|i| {
                    let customer = format!("customer-{}", i % 8);
                    let body = format!(
                        r#"{{"order_id":{i},"customer":"{customer}","amount_cents":{}}}"#,
                        100 + i * 7
                    );
                    (customer, body.into_bytes())
                })
                .collect();
            let placed = stack.put_records(&arn, &records).await?;
            eprintln!(
                "put {} records into {arn} as account {}",
                placed.len(),
                stack.producer_account
            );
        }
        Cmd::CreateTableStream {
            name,
            account,
            region,
        } => {
            let account = account.unwrap_or_else(|| stack.producer_account.clone());
            let arn = stack
                .create_table_stream_in(&account, &region, &name)
                .await?;
            println!("{arn}");
        }
        Cmd::ChangeItems { arn, count } => {
            use aws_sdk_dynamodb::types::AttributeValue;
            let parts: Vec<&str> = arn.split(':').collect();
            let (Some(region), Some(account), Some(resource)) =
                (parts.get(3), parts.get(4), parts.get(5))
            else {
                anyhow::bail!("not a DynamoDB stream ARN: {arn}");
            };
            let table = resource
                .strip_prefix("table/")
                .and_then(|r| r.split('/').next())
                .ok_or_else(|| anyhow::anyhow!("not a DynamoDB stream ARN: {arn}"))?;
            let ddb = stack.source_dynamodb(account, region).await;
            for i in 0..count {
                ddb.put_item()
                    .table_name(table)
                    .item("id", AttributeValue::S(format!("order-{i}")))
                    .item("status", AttributeValue::S("placed".into()))
                    .item("amount_cents", AttributeValue::N((100 + i * 7).to_string()))
                    .send()
                    .await?;
            }
            for i in 0..count {
                let key = AttributeValue::S(format!("order-{i}"));
                ddb.update_item()
                    .table_name(table)
                    .key("id", key.clone())
                    .update_expression("SET #s = :s")
                    .expression_attribute_names("#s", "status")
                    .expression_attribute_values(":s", AttributeValue::S("shipped".into()))
                    .send()
                    .await?;
                if i % 4 == 3 {
                    ddb.delete_item()
                        .table_name(table)
                        .key("id", key)
                        .send()
                        .await?;
                }
            }
            eprintln!("changed {count} items of table {table} as account {account}");
        }
        Cmd::ShowPolicy { arn } => {
            let out = stack
                .producer_kinesis()
                .await
                .get_resource_policy()
                .resource_arn(&arn)
                .send()
                .await?;
            println!("{}", out.policy());
        }
    }
    Ok(())
}
