//! kcld as a library, with a record processor of your own that checkpoints
//! when it chooses: here every 10 records, at shutdown, and (as it must) at
//! the end of a shard. It prints each record as `<shard> <sequence> <data>`.
//!
//! Against the local stack (`deploy/local/stack up`):
//!
//!     eval "$(deploy/local/stack env)"
//!     cargo run --example embedded -- <stream-arn> <application-name>
//!
//! The region and the owner's account come from the ARN; credentials and
//! endpoints from the usual AWS variables. Ctrl-C or SIGTERM stops it after
//! its last checkpoint.

use std::sync::Arc;

use kcld::lifecycle::{Checkpointer, ProcessorError, ProcessorFactory, ShardInfo, ShardProcessor};
use kcld::record::Batch;
use kcld_lease::ShardSpec;

/// Records since the last checkpoint, and how many make one due.
struct Printer {
    shard: String,
    since_checkpoint: usize,
    every: usize,
}

fn failed(e: impl std::fmt::Display) -> ProcessorError {
    ProcessorError::Failed(e.to_string())
}

#[async_trait::async_trait]
impl ShardProcessor for Printer {
    async fn initialize(&mut self, shard: &ShardInfo<'_>) -> Result<(), ProcessorError> {
        self.shard = shard.shard_id.to_owned();
        eprintln!("{}: starting after {}", shard.shard_id, shard.checkpoint);
        Ok(())
    }

    async fn process_records(
        &mut self,
        batch: &Batch,
        checkpointer: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        for record in &batch.records {
            println!(
                "{} {} {}",
                self.shard,
                record.sequence_number,
                String::from_utf8_lossy(&record.data)
            );
        }
        self.since_checkpoint += batch.records.len();
        if self.since_checkpoint >= self.every {
            // Printed above: safe to checkpoint the batch's last record.
            checkpointer.checkpoint(None).await.map_err(failed)?;
            self.since_checkpoint = 0;
        }
        Ok(())
    }

    async fn shard_ended(
        &mut self,
        checkpointer: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        checkpointer.checkpoint(None).await.map_err(failed)
    }

    async fn shutdown_requested(
        &mut self,
        checkpointer: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        checkpointer.checkpoint(None).await.map_err(failed)
    }
}

struct Printers;

impl ProcessorFactory for Printers {
    fn create(&self, _shard: &ShardSpec) -> kcld::Result<Box<dyn ShardProcessor>> {
        Ok(Box::new(Printer {
            shard: String::new(),
            since_checkpoint: 0,
            every: 10,
        }))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [stream_arn, application] = args.as_slice() else {
        eprintln!("usage: embedded <stream-arn> <application-name>");
        return std::process::ExitCode::from(2);
    };
    let consumer = kcld::Consumer::builder(stream_arn)
        .application_name(application)
        .initial_position("TRIM_HORIZON")
        .option("polling.idle_time_between_reads_ms", 200)
        .processors(Arc::new(Printers))
        .build();
    let consumer = match consumer {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let stop = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
    };
    match consumer.run(stop).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::FAILURE
        }
    }
}
