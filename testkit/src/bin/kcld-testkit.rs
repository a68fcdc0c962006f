//! Local stack chores for the demo: create a shared stream in the producer
//! account and put sample records into it. Reads the environment printed by
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
