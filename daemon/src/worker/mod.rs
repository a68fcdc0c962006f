//! The worker: checks the streams, starts the lease source, runs one shard
//! consumer task per granted shard, and shuts down in order: stop reading,
//! let in-flight batches be confirmed, write final checkpoints, release the
//! leases, all within `shutdown_timeout_ms`.

mod streams;

use std::sync::Arc;
use std::time::Duration;

use aws_credential_types::provider::SharedCredentialsProvider;
use futures::FutureExt;
use kcld_config::multilang::MultiLangSettings;
use kcld_config::{LeaseStore, Settings};
use kcld_lease::dynamo::{DynamoLeases, LeaseSettings};
use kcld_lease::memory::MemoryLeases;
use kcld_lease::table::LeaseTable;
use kcld_lease::{Grant, LeaseSource};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lifecycle::sink::{CheckpointPolicy, LivePolicy, SinkProcessors};
use crate::lifecycle::{self, Outcome, ProcessorFactory, RecordSource};
use crate::ops::{self, Health, ShardLabels};
use crate::retrieval::isolation::Patient;
use crate::retrieval::prefetch::ByteBudget;
use crate::retrieval::Resume;
use crate::sink::Sink;
use crate::{aws, sink};
pub use streams::{AddStream, SinkMaker};
use streams::{Factories, Maker, Parts, StreamParts};

/// Where a worker's records go.
pub enum Delivery {
    /// To a sink; kcld checkpoints what it confirmed.
    Sink(Arc<dyn Sink>),
    /// To one sink per stream, made for each stream (also one added while
    /// kcld runs), so that each record names its own stream; kcld
    /// checkpoints what each confirmed.
    SinkPerStream(SinkMaker),
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
        added: None,
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
    let http = live.http.clone();
    let make: SinkMaker =
        Arc::new(move |one, label| sink::from_live_settings(one, http.clone(), label));
    run_embedded(
        settings,
        Delivery::SinkPerStream(make),
        shutdown,
        None,
        Some(live.policy),
        live.added,
    )
    .await
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
    run_embedded(settings, delivery, shutdown, None, None, None).await
}

/// The same, calling AWS with `credentials` when given (else the default
/// chain, or the configured role); streams asked for on `added` are added
/// while it runs (with the lease table).
pub(crate) async fn run_embedded(
    settings: Settings,
    delivery: Delivery,
    shutdown: CancellationToken,
    credentials: Option<SharedCredentialsProvider>,
    policy: Option<LivePolicy>,
    added: Option<mpsc::UnboundedReceiver<AddStream>>,
) -> Result<()> {
    let health = Arc::new(Health::default());
    // The ops listener outlives the shard consumers: it stops last.
    let ops_stop = CancellationToken::new();
    let _ops_guard = ops_stop.clone().drop_guard();
    if let Some(listen) = settings.ops.listen {
        // With `[[streams]]` each series names its stream itself.
        let label = (!settings.multi_stream).then(|| settings.stream_arn.to_string());
        let metrics = ops::install_metrics(label.as_deref())?;
        ops::serve(listen, metrics, health.clone(), ops_stop.clone()).await?;
    }
    ops::systemd::spawn_watchdog(ops_stop.clone());
    crate::memory::spawn_periodic_trim(ops_stop.clone());

    let mut settings = settings;
    aws::settle_consumer_region(&mut settings).await;
    tracing::debug!(region = %settings.aws.dynamodb_region, from = %settings.aws.dynamodb_region_from, "lease table region");
    let policy = policy.unwrap_or_else(|| CheckpointPolicy::from(&settings.checkpoint).into());
    let factories = match delivery {
        Delivery::Sink(sink) => Factories::Shared(Arc::new(SinkProcessors {
            sink,
            policy,
            stream_label: None,
        })),
        Delivery::SinkPerStream(make) => Factories::Sinks(make, policy),
        Delivery::MultiLang(ml) => Factories::MultiLang(ml),
        Delivery::Processors(factory) => Factories::Shared(factory),
    };
    let mut maker = Maker {
        settings: Settings {
            streams: Vec::new(),
            ..settings.clone()
        },
        credentials: credentials.clone(),
        cache: aws::ClientsCache::default(),
        health: health.clone(),
        factories,
        accesses: Default::default(),
    };
    let mut streams = Vec::with_capacity(settings.streams.len());
    let mut parts = Vec::with_capacity(settings.streams.len());
    // With `[[streams]]`, a stream its owner deleted or stopped sharing
    // does not keep the others from starting: it is opened again later.
    let mut waiting = Vec::new();
    let mut refusal = None;
    for stream in settings.streams.iter().cloned() {
        match maker.open_next(stream.clone()).await {
            Ok((run, made)) => {
                streams.push(run);
                parts.push(made);
            }
            Err(e) if maker.refused(&stream, &e) => {
                waiting.push(stream);
                refusal.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    let Some(first) = streams.first() else {
        return Err(refusal.unwrap_or(Error::Usage("no stream to read")));
    };
    health.stream_described();
    // The lease table with the default credentials (those of every stream
    // read without a role of its own), in the consumer's region.
    let clients = maker.cache.get(&first.settings, &credentials).await?;
    let parts: Parts = Arc::new(std::sync::Mutex::new(parts));

    let mut adder = None;
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
                initial: first.initial.clone(),
            };
            let lease_streams = streams
                .iter()
                .map(|s| s.lease_stream(settings.multi_stream))
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
            adder = Some(leases.adder());
            Box::new(leases)
        }
    };
    drop(streams);
    // Streams a reload adds: only to `[[streams]]` (whose keys name their
    // stream) over the lease table.
    match (added, adder) {
        (requests, Some(adder)) if settings.multi_stream => {
            tokio::spawn(streams::add_streams(
                maker,
                parts.clone(),
                adder,
                requests,
                waiting,
                shutdown.child_token(),
            ));
        }
        (Some(mut requests), _) => {
            // Refused: the reload names it as a change for a restart.
            tokio::spawn(async move {
                while let Some(request) = requests.recv().await {
                    let _ = request.done.send(Err(
                        "streams are added to a running kcld only when they are listed as [[streams]] over the DynamoDB lease table; restart to apply".into(),
                    ));
                }
            });
        }
        (None, _) => {}
    }

    health.leases_started();
    ops::systemd::ready();
    let budget = settings.shutdown_timeout;
    let prefetch_bytes = settings.polling.prefetch_bytes as usize;
    let total_bytes = settings.polling.prefetch_total_bytes as usize;
    let worker_budget = ByteBudget::worker(total_bytes);
    drive(
        leases,
        |grant: Grant| {
            let budget = ByteBudget::new(worker_budget.clone(), total_bytes, prefetch_bytes);
            let shard = grant.shard.clone();
            let StreamParts {
                readers,
                processors,
                filters,
            } = {
                let parts = parts.lock().unwrap_or_else(|p| p.into_inner());
                // Every granted stream has its parts (added before it is
                // leased); the last one stands in were it ever otherwise.
                parts[grant.stream.min(parts.len() - 1)].clone()
            };
            let labels = ShardLabels::new(readers.stream.metric_label(), &shard.shard_id);
            let sources = move |at: &Resume| -> Box<dyn RecordSource> {
                let reader: Box<dyn RecordSource> = Box::new(readers.reader(&shard, at));
                match &readers.access {
                    Some(access) => Box::new(Patient::new(reader, access.clone(), &shard.shard_id)),
                    None => reader,
                }
            };
            let context = lifecycle::ShardContext { labels, filters };
            lifecycle::run(grant, context, sources, processors, budget).boxed()
        },
        &shutdown,
        budget,
    )
    .await
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
