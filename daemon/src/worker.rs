//! The worker: checks the stream, takes the shards the lease source grants,
//! runs one shard consumer task per shard, and shuts down in order.

use std::time::Duration;

use kcld_checkpoint::Checkpoint;
use kcld_config::{InitialPosition, Settings};
use kcld_lease::memory::MemoryLeases;
use kcld_lease::LeaseSource;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::consumer::{self, Outcome};
use crate::error::{Error, Result};
use crate::retrieval::polling::PollingReader;
use crate::stream::Stream;
use crate::{aws, sink};

/// How long shard consumers get to finish the batch in hand after shutdown
/// began.
const SHUTDOWN_BUDGET: Duration = Duration::from_secs(20);

/// Runs the consumer until `shutdown` fires or a fatal error.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<()> {
    let clients = aws::connect(&settings).await?;
    let stream = Stream::new(clients.kinesis.clone(), settings.stream_arn.clone());
    let summary = stream.describe().await?;
    tracing::info!(
        stream = %settings.stream_arn,
        status = %summary.status,
        open_shards = summary.open_shards,
        encryption = %summary.encryption,
        retention_hours = summary.retention_hours,
        worker_id = %settings.worker_id,
        "stream described"
    );
    let shards = stream.list_shards(1000).await?;
    tracing::info!(shards = shards.len(), "shards listed");

    let (initial, at_timestamp) = match &settings.initial_position {
        InitialPosition::TrimHorizon => (Checkpoint::TrimHorizon, None),
        InitialPosition::Latest => (Checkpoint::Latest, None),
        InitialPosition::AtTimestamp { epoch_millis, .. } => {
            (Checkpoint::AtTimestamp, Some(*epoch_millis))
        }
    };
    let leases = MemoryLeases::new(shards, initial, shutdown.child_token());
    let sink = sink::from_settings(&settings);
    drive(
        leases,
        |grant| {
            let reader = PollingReader::new(
                stream.clone(),
                &grant.shard.shard_id,
                &grant.start,
                at_timestamp,
                &settings.polling,
            );
            consumer::run(grant, reader, sink.clone())
        },
        &shutdown,
    )
    .await
}

/// Spawns a consumer for every grant until shutdown, then waits for them
/// within the budget. The first fatal error stops every shard.
async fn drive<L, F, Fut>(mut leases: L, mut spawn: F, shutdown: &CancellationToken) -> Result<()>
where
    L: LeaseSource,
    F: FnMut(kcld_lease::Grant) -> Fut,
    Fut: std::future::Future<Output = Result<Outcome>> + Send + 'static,
{
    let mut tasks: JoinSet<Result<Outcome>> = JoinSet::new();
    let mut failure: Option<Error> = None;
    loop {
        tokio::select! {
            grant = leases.next_grant() => match grant {
                Some(grant) => { tasks.spawn(spawn(grant)); }
                None => break,
            },
            Some(done) = tasks.join_next() => {
                if let Some(e) = task_error(done) {
                    failure = Some(e);
                    break;
                }
            }
            _ = shutdown.cancelled() => break,
        }
    }
    // Stop every shard: consumers finish the batch in hand, then return.
    shutdown.cancel();
    let drained = tokio::time::timeout(SHUTDOWN_BUDGET, async {
        while let Some(done) = tasks.join_next().await {
            if let Some(e) = task_error(done) {
                failure.get_or_insert(e);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shard consumers did not stop within {SHUTDOWN_BUDGET:?}; abandoning them (their records are read again after a restart)");
        tasks.abort_all();
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn task_error(done: std::result::Result<Result<Outcome>, tokio::task::JoinError>) -> Option<Error> {
    match done {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e),
        Err(join) if join.is_cancelled() => None,
        Err(join) => Some(Error::Other(format!("a shard consumer crashed: {join}"))),
    }
}
