//! The worker: checks the stream, starts the lease source, runs one shard
//! consumer task per granted shard, and shuts down in order: stop reading,
//! let in-flight batches be confirmed, write final checkpoints, release the
//! leases, all within `shutdown_timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use futures::FutureExt;
use kcld_checkpoint::Checkpoint;
use kcld_config::multilang::MultiLangSettings;
use kcld_config::{InitialPosition, LeaseStore, Settings};
use kcld_lease::dynamo::{DynamoLeases, LeaseSettings, LeaseStream};
use kcld_lease::key::StreamScope;
use kcld_lease::memory::MemoryLeases;
use kcld_lease::table::LeaseTable;
use kcld_lease::{Grant, LeaseSource, ShardSpec};
use kcld_records::kpl::HashRange;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lifecycle::sink::{CheckpointPolicy, LivePolicy, SinkProcessors};
use crate::lifecycle::{self, Outcome, ProcessorFactory, RecordSource};
use crate::ops::{self, Health, ShardLabels};
use crate::retrieval::fanout::FanOutReader;
use crate::retrieval::isolation::{Patient, StreamAccess};
use crate::retrieval::polling::PollingReader;
use crate::retrieval::prefetch::ByteBudget;
use crate::retrieval::{registration, Reader, Resume};
use crate::sink::Sink;
use crate::stream::Stream;
use crate::{aws, multilang, sink};

/// Where a worker's records go.
pub enum Delivery {
    /// To a sink; kcld checkpoints what it confirmed.
    Sink(Arc<dyn Sink>),
    /// To one sink per stream (in the order of `streams`), so that each
    /// record names its own stream; kcld checkpoints what each confirmed.
    Sinks(Vec<Arc<dyn Sink>>),
    /// To MultiLang record processor processes, one per shard, which
    /// checkpoint for themselves (`kcld multilang`).
    MultiLang(Arc<MultiLangSettings>),
    /// To an application's own processors, which checkpoint when they
    /// choose (see [`crate::Consumer`]).
    Processors(Arc<dyn ProcessorFactory>),
}

/// Runs the consumer until `shutdown` fires or a fatal error, delivering to
/// the sink the configuration names.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> Result<()> {
    let live = crate::reload::Live {
        policy: CheckpointPolicy::from(&settings.checkpoint).into(),
        http: None,
    };
    run_live(settings, shutdown, live).await
}

/// [`run`] with the checkpoint policy and the HTTP sink's tunables
/// following configuration reloads (`kcld run` on SIGHUP,
/// [`crate::reload`]).
pub async fn run_live(
    settings: Settings,
    shutdown: CancellationToken,
    live: crate::reload::Live,
) -> Result<()> {
    let sinks = (0..settings.streams.len())
        .map(|i| {
            sink::from_live_settings(
                &settings.for_stream(i),
                live.http.clone(),
                stream_label(&settings, i),
            )
        })
        .collect::<Result<Vec<_>>>()?;
    run_embedded(
        settings,
        Delivery::Sinks(sinks),
        shutdown,
        None,
        Some(live.policy),
    )
    .await
}

/// The `stream` label of stream `i`'s series: its ARN when several streams
/// are read ([`ops::ShardLabels`]).
fn stream_label(settings: &Settings, i: usize) -> Option<Arc<str>> {
    match settings.streams.as_slice() {
        [_, _, ..] => settings
            .streams
            .get(i)
            .map(|s| Arc::from(s.arn.to_string())),
        _ => None,
    }
}

/// The same, delivering to `sink`: how a Rust application embeds kcld with
/// its own record processor (see `daemon/examples/embedded.rs`).
pub async fn run_with_sink(
    settings: Settings,
    sink: Arc<dyn Sink>,
    shutdown: CancellationToken,
) -> Result<()> {
    run_with(settings, Delivery::Sink(sink), shutdown).await
}

/// The same for any [`Delivery`].
pub async fn run_with(
    settings: Settings,
    delivery: Delivery,
    shutdown: CancellationToken,
) -> Result<()> {
    run_embedded(settings, delivery, shutdown, None, None).await
}

/// One stream as the worker reads it.
struct StreamRun {
    /// The settings as if this were the only stream.
    settings: Settings,
    stream: Stream,
    consumer_arn: Option<Arc<str>>,
    initial: Checkpoint,
    at_timestamp: Option<i64>,
    scope: StreamScope,
}

/// Describes one stream and resolves its fan-out consumer.
async fn open_stream(settings: Settings, clients: &aws::Clients) -> Result<StreamRun> {
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
    // Fan-out: the consumer must be ACTIVE before any shard is read.
    let consumer_arn: Option<Arc<str>> = match &settings.fan_out {
        None => None,
        Some(fan_out) => {
            let arn = registration::resolve(&stream, fan_out, || clients.caller_account()).await?;
            tracing::info!(consumer = %arn, "reading through enhanced fan-out");
            Some(Arc::from(arn))
        }
    };
    let (initial, at_timestamp) = match &settings.initial_position {
        InitialPosition::TrimHorizon => (Checkpoint::TrimHorizon, None),
        InitialPosition::Latest => (Checkpoint::Latest, None),
        InitialPosition::AtTimestamp { epoch_millis, .. } => {
            (Checkpoint::AtTimestamp, Some(*epoch_millis))
        }
    };
    let scope = StreamScope {
        account: settings.stream_arn.account.clone(),
        stream_name: settings.stream_arn.stream_name.clone(),
        creation_epoch: summary.creation_epoch,
    };
    Ok(StreamRun {
        settings,
        stream,
        consumer_arn,
        initial,
        at_timestamp,
        scope,
    })
}

/// The same, calling AWS with `credentials` when given (else the default
/// chain, or the configured role).
pub(crate) async fn run_embedded(
    settings: Settings,
    delivery: Delivery,
    shutdown: CancellationToken,
    credentials: Option<SharedCredentialsProvider>,
    policy: Option<LivePolicy>,
) -> Result<()> {
    let health = Arc::new(Health::default());
    // The ops listener outlives the shard consumers: it stops last.
    let ops_stop = CancellationToken::new();
    let _ops_guard = ops_stop.clone().drop_guard();
    if let Some(listen) = settings.ops.listen {
        let label = match settings.streams.as_slice() {
            [one] => Some(one.arn.to_string()),
            _ => None,
        };
        let metrics = ops::install_metrics(label.as_deref())?;
        ops::serve(listen, metrics, health.clone(), ops_stop.clone()).await?;
    }
    ops::systemd::spawn_watchdog(ops_stop.clone());

    let mut settings = settings;
    aws::settle_consumer_region(&mut settings).await;
    tracing::debug!(region = %settings.aws.dynamodb_region, from = %settings.aws.dynamodb_region_from, "lease table region");
    let mut cache = aws::ClientsCache::default();
    let mut streams = Vec::with_capacity(settings.streams.len());
    let mut lease_clients = None;
    for i in 0..settings.streams.len() {
        let one = settings.for_stream(i);
        let clients = cache.get(&one, &credentials).await?;
        health.credentials_resolved();
        lease_clients.get_or_insert_with(|| clients.clone());
        let mut run = open_stream(one, &clients).await?;
        if stream_label(&settings, i).is_some() {
            run.stream = run.stream.labelled_in_metrics();
        }
        streams.push(run);
    }
    health.stream_described();
    let Some(clients) = lease_clients else {
        return Err(Error::Usage("no stream to read"));
    };

    let leases: Box<dyn LeaseSource> = match settings.lease.store {
        LeaseStore::Memory => {
            // One stream (the configuration refuses more).
            let [only] = streams.as_slice() else {
                return Err(Error::Usage("lease.store = \"memory\" reads one stream"));
            };
            let shards = only.stream.list_shards(1000).await?;
            Box::new(MemoryLeases::new(
                shards,
                only.initial.clone(),
                shutdown.child_token(),
            ))
        }
        LeaseStore::Dynamodb => {
            let failover = settings.lease.failover_time;
            let lease_settings = LeaseSettings {
                worker_id: settings.worker_id.clone(),
                failover,
                renew_interval: LeaseSettings::kcl_renew_interval(failover),
                take_interval: settings.lease.take_interval,
                probe_interval: settings.lease.probe_interval,
                probe_budget_percent: settings.lease.probe_budget_percent,
                shard_sync_interval: settings.lease.shard_sync_interval,
                max_leases: match settings.lease.max_leases_per_worker {
                    0 => usize::MAX,
                    n => n as usize,
                },
                max_steal: settings.lease.max_leases_to_steal as usize,
                initial: streams[0].initial.clone(),
            };
            let lease_streams = streams
                .iter()
                .map(|s| LeaseStream {
                    scope: s.scope.clone(),
                    lister: Arc::new(s.stream.clone()),
                    multi_stream: settings.multi_stream,
                    initial: s.initial.clone(),
                })
                .collect();
            let table = LeaseTable::new(clients.dynamodb.clone(), &settings.lease_table);
            let leases = DynamoLeases::start_streams(
                table,
                lease_streams,
                lease_settings,
                shutdown.child_token(),
            )
            .await
            .map_err(|e| match e {
                kcld_lease::table::TableError::Kcl3Fleet(fleet) => Error::Leases(fleet.into()),
                e => Error::lease_table(&settings.lease_table, e),
            })?;
            health.watch_table(
                leases.health(),
                failover.max(3 * settings.lease.take_interval),
            );
            tracing::info!(table = %settings.lease_table, "lease table ready");
            Box::new(leases)
        }
    };

    health.leases_started();
    ops::systemd::ready();
    let policy = policy.unwrap_or_else(|| CheckpointPolicy::from(&settings.checkpoint).into());
    let budget = settings.shutdown_timeout;
    let prefetch_bytes = settings.polling.prefetch_bytes as usize;
    let total_bytes = settings.polling.prefetch_total_bytes as usize;
    let worker_budget = ByteBudget::worker(total_bytes);
    let several = streams.len() > 1;
    let readers: Vec<Readers> = streams
        .into_iter()
        .map(|s| {
            // With several streams, one that cannot be read waits alone.
            let access = several.then(|| {
                let access = StreamAccess::new(s.settings.stream_arn.to_string());
                health.watch_stream(access.clone());
                access
            });
            Readers {
                stream: s.stream,
                consumer_arn: s.consumer_arn,
                settings: s.settings,
                at_timestamp: s.at_timestamp,
                access,
            }
        })
        .collect();
    let processors: Vec<Arc<dyn ProcessorFactory>> = match delivery {
        Delivery::Sink(sink) => vec![Arc::new(SinkProcessors {
            sink,
            policy,
            stream_label: None,
        })],
        Delivery::Sinks(sinks) => sinks
            .into_iter()
            .enumerate()
            .map(|(i, sink)| {
                Arc::new(SinkProcessors {
                    sink,
                    policy: policy.clone(),
                    stream_label: stream_label(&settings, i),
                }) as Arc<dyn ProcessorFactory>
            })
            .collect(),
        Delivery::MultiLang(ml) => (0..settings.streams.len())
            .map(|i| {
                Arc::new(
                    multilang::Processors::new(ml.clone()).of_stream(stream_label(&settings, i)),
                ) as Arc<dyn ProcessorFactory>
            })
            .collect(),
        Delivery::Processors(factory) => vec![factory],
    };
    drive(
        leases,
        |grant: Grant| {
            let budget = ByteBudget::new(worker_budget.clone(), total_bytes, prefetch_bytes);
            let shard = grant.shard.clone();
            let readers = readers[grant.stream.min(readers.len() - 1)].clone();
            let labels = ShardLabels::new(readers.stream.metric_label(), &shard.shard_id);
            let processors = processors[grant.stream.min(processors.len() - 1)].clone();
            let sources = move |at: &Resume| -> Box<dyn RecordSource> {
                let reader: Box<dyn RecordSource> = Box::new(readers.reader(&shard, at));
                match &readers.access {
                    Some(access) => Box::new(Patient::new(reader, access.clone(), &shard.shard_id)),
                    None => reader,
                }
            };
            lifecycle::run(grant, labels, sources, processors, budget).boxed()
        },
        &shutdown,
        budget,
    )
    .await
}

/// Makes the reader of a shard, positioned at a checkpoint, by the
/// configured strategy.
#[derive(Clone)]
struct Readers {
    stream: Stream,
    consumer_arn: Option<Arc<str>>,
    settings: Settings,
    at_timestamp: Option<i64>,
    /// With several streams, the stream's access its shards share.
    access: Option<Arc<StreamAccess>>,
}

impl Readers {
    fn reader(&self, shard: &ShardSpec, start: &Resume) -> Reader {
        let range = HashRange::parse(&shard.starting_hash_key, &shard.ending_hash_key);
        match (&self.consumer_arn, &self.settings.fan_out) {
            (Some(arn), Some(fan_out)) => Reader::FanOut(Box::new(FanOutReader::new(
                self.stream.clone(),
                arn.clone(),
                &shard.shard_id,
                start,
                self.at_timestamp,
                range,
                fan_out,
            ))),
            _ => Reader::Polling(Box::new(PollingReader::new(
                self.stream.clone(),
                &shard.shard_id,
                start,
                self.at_timestamp,
                range,
                &self.settings.polling,
            ))),
        }
    }
}

/// Spawns a consumer for every grant until shutdown, then stops them within
/// the budget and releases the leases. The first fatal error stops every
/// shard the same orderly way.
async fn drive<F, Fut>(
    mut leases: Box<dyn LeaseSource>,
    mut spawn: F,
    shutdown: &CancellationToken,
    budget: Duration,
) -> Result<()>
where
    F: FnMut(Grant) -> Fut,
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
    ops::systemd::stopping();
    let deadline = tokio::time::Instant::now() + budget;
    // Keep a slice of the budget for releasing the leases.
    let release_reserve = (budget / 4).min(Duration::from_secs(3));
    shutdown.cancel();
    let drained = tokio::time::timeout_at(deadline - release_reserve, async {
        while let Some(done) = tasks.join_next().await {
            if let Some(e) = task_error(done) {
                failure.get_or_insert(e);
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("shard consumers did not stop in time; abandoning them (their unconfirmed records are read again by the next owner)");
        tasks.abort_all();
    }
    if tokio::time::timeout_at(deadline, leases.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "leases not all released within the shutdown budget; others take them after expiry"
        );
    }
    if failure.is_none() {
        failure = leases.failure().map(Error::Leases);
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
        Err(join) => Some(Error::Crashed(join)),
    }
}
