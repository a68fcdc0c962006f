//! The streams a worker reads: each opened with its region's and role's
//! clients (described, its fan-out consumer resolved), the readers and
//! processors of its shards, and streams added while the worker runs (a
//! configuration reload that lists more `[[streams]]`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex as StdMutex};

use aws_credential_types::provider::SharedCredentialsProvider;
use kcld_checkpoint::Checkpoint;
use kcld_config::multilang::MultiLangSettings;
use kcld_config::{InitialPosition, Settings, StreamSettings};
use kcld_lease::dynamo::{LeaseStream, StreamAdder};
use kcld_lease::key::StreamScope;
use kcld_lease::ShardSpec;
use kcld_records::filter::{Filters, RecordShape};
use kcld_records::kpl::HashRange;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lifecycle::sink::{LivePolicy, SinkProcessors};
use crate::lifecycle::ProcessorFactory;
use crate::ops::Health;
use crate::retrieval::fanout::FanOutReader;
use crate::retrieval::isolation::{stream_level, StreamAccess, FIRST_WAIT, MAX_WAIT};
use crate::retrieval::polling::PollingReader;
use crate::retrieval::{registration, Reader, Resume};
use crate::sink::Sink;
use crate::stream::Stream;
use crate::{aws, multilang};

/// Makes the sink of one stream (its settings as if it were the only one,
/// and the `stream` label of its series when several are read).
pub type SinkMaker =
    Arc<dyn Fn(&Settings, Option<Arc<str>>) -> Result<Arc<dyn Sink>> + Send + Sync>;

/// A stream to add to a running worker, and where to say whether it was.
#[derive(Debug)]
pub struct AddStream {
    /// The stream, as the reloaded configuration lists it.
    pub stream: StreamSettings,
    /// `Ok` once its shards are leased; `Err` says why it was not added.
    pub done: oneshot::Sender<std::result::Result<(), String>>,
}

/// One stream as the worker reads it.
pub(super) struct StreamRun {
    /// The settings as if this were the only stream.
    pub(super) settings: Settings,
    pub(super) stream: Stream,
    pub(super) consumer_arn: Option<Arc<str>>,
    pub(super) initial: Checkpoint,
    pub(super) at_timestamp: Option<i64>,
    pub(super) scope: StreamScope,
}

impl StreamRun {
    /// The stream as the lease source leases it.
    pub(super) fn lease_stream(&self, multi_stream: bool) -> LeaseStream {
        LeaseStream {
            scope: self.scope.clone(),
            lister: Arc::new(self.stream.clone()),
            multi_stream,
            initial: self.initial.clone(),
        }
    }
}

/// Describes one stream and resolves its fan-out consumer.
pub(super) async fn open_stream(settings: Settings, clients: &aws::Clients) -> Result<StreamRun> {
    let stream = Stream::open(clients, settings.stream_arn.clone());
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
        stream_name: settings.stream_arn.lease_stream_name(),
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

/// The `stream` label of stream `i`'s series: its ARN when the streams come
/// from `[[streams]]` ([`crate::ops::ShardLabels`]); with `stream_arn`
/// every series carries it already.
pub(super) fn stream_label(settings: &Settings, i: usize) -> Option<Arc<str>> {
    if !settings.multi_stream {
        return None;
    }
    settings
        .streams
        .get(i)
        .map(|s| Arc::from(s.arn.to_string()))
}

/// Makes the reader of a shard, positioned at a checkpoint, by the
/// configured strategy.
#[derive(Clone)]
pub(super) struct Readers {
    pub(super) stream: Stream,
    consumer_arn: Option<Arc<str>>,
    settings: Settings,
    at_timestamp: Option<i64>,
    /// With `[[streams]]`, the stream's access its shards share: a stream
    /// that cannot be read waits alone.
    pub(super) access: Option<Arc<StreamAccess>>,
}

impl Readers {
    pub(super) fn reader(&self, shard: &ShardSpec, start: &Resume) -> Reader {
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

/// What the shards of one stream are read and processed with.
#[derive(Clone)]
pub(super) struct StreamParts {
    pub(super) readers: Readers,
    pub(super) processors: Arc<dyn ProcessorFactory>,
    /// The filter criteria, in the shape of this stream's records.
    pub(super) filters: Option<Arc<Filters>>,
}

/// Every stream's parts, by a grant's `stream`; streams added while the
/// worker runs come at the end, in the order the lease source got them.
pub(super) type Parts = Arc<StdMutex<Vec<StreamParts>>>;

/// How each stream's processors are made.
#[derive(Clone)]
pub(super) enum Factories {
    /// One factory for every stream (an embedding application's).
    Shared(Arc<dyn ProcessorFactory>),
    /// A sink per stream, checkpointing what it confirmed.
    Sinks(SinkMaker, LivePolicy),
    /// MultiLang processes, told their stream.
    MultiLang(Arc<MultiLangSettings>),
}

/// What making a stream's parts needs, kept for streams added later.
pub(super) struct Maker {
    /// The running settings; `streams` lists the streams read, in the
    /// lease source's order, and grows as streams are added.
    pub(super) settings: Settings,
    pub(super) credentials: Option<SharedCredentialsProvider>,
    pub(super) cache: aws::ClientsCache,
    pub(super) health: Arc<Health>,
    pub(super) factories: Factories,
    /// Each stream's access (readiness, its error line), made once.
    pub(super) accesses: HashMap<String, Arc<StreamAccess>>,
}

impl Maker {
    /// Opens `stream` as the next stream read: its run and parts. An error
    /// leaves the streams read as they were.
    pub(super) async fn open_next(
        &mut self,
        stream: StreamSettings,
    ) -> Result<(StreamRun, StreamParts)> {
        let i = self.settings.streams.len();
        self.settings.streams.push(stream);
        let opened = match self.open(i).await {
            Ok(run) => self.parts(i, &run).map(|p| (run, p)),
            Err(e) => Err(e),
        };
        if opened.is_err() {
            self.settings.streams.pop();
        }
        opened
    }

    /// With `[[streams]]`, whether `e`, met opening `stream`, is the
    /// stream's own (deleted, access refused, KMS): then the stream is
    /// reported failing and opened again later, and the others go on.
    pub(super) fn refused(&mut self, stream: &StreamSettings, e: &Error) -> bool {
        match e {
            Error::Kinesis(k) if self.settings.multi_stream && stream_level(k) => {
                self.access(&stream.arn.to_string()).failed(None, k);
                true
            }
            _ => false,
        }
    }

    /// The access of the stream `arn`, watched by readiness.
    fn access(&mut self, arn: &str) -> Arc<StreamAccess> {
        self.accesses
            .entry(arn.to_owned())
            .or_insert_with(|| {
                let access = StreamAccess::new(arn);
                self.health.watch_stream(access.clone());
                access
            })
            .clone()
    }

    /// Connects (clients shared per region and role) and opens stream `i`
    /// of the settings.
    async fn open(&mut self, i: usize) -> Result<StreamRun> {
        let one = self.settings.for_stream(i);
        let clients = self.cache.get(&one, &self.credentials).await?;
        self.health.credentials_resolved();
        let mut run = open_stream(one, &clients).await?;
        if stream_label(&self.settings, i).is_some() {
            run.stream = run.stream.labelled_in_metrics();
        }
        Ok(run)
    }

    /// The readers and processors of stream `i`, opened as `run`.
    fn parts(&mut self, i: usize, run: &StreamRun) -> Result<StreamParts> {
        let label = stream_label(&self.settings, i);
        // With `[[streams]]`, one stream that cannot be read waits alone.
        let access = self
            .settings
            .multi_stream
            .then(|| self.access(&run.settings.stream_arn.to_string()));
        if let Some(access) = &access {
            access.recovered();
        }
        let processors: Arc<dyn ProcessorFactory> = match &self.factories {
            Factories::Shared(factory) => factory.clone(),
            Factories::Sinks(make, policy) => Arc::new(SinkProcessors {
                sink: make(&run.settings, label.clone())?,
                policy: policy.clone(),
                stream_label: label,
            }),
            Factories::MultiLang(ml) => {
                Arc::new(multilang::Processors::new(ml.clone()).of_stream(label))
            }
        };
        let patterns = &self.settings.filter.patterns;
        let filters = match patterns.is_empty() {
            true => None,
            false => {
                let shape = match run.settings.stream_arn.is_dynamodb() {
                    true => RecordShape::DynamoDb,
                    false => RecordShape::Kinesis,
                };
                let parsed = Filters::parse(patterns, shape).map_err(|e| {
                    // Checked when the configuration loaded: not met here.
                    Error::Config(kcld_config::ConfigError::Key {
                        key: "filter.patterns".into(),
                        problem: e.to_string(),
                        fix: "write each pattern as Lambda's filter criteria".into(),
                    })
                })?;
                Some(Arc::new(parsed))
            }
        };
        Ok(StreamParts {
            filters,
            readers: Readers {
                stream: run.stream.clone(),
                consumer_arn: run.consumer_arn.clone(),
                settings: run.settings.clone(),
                at_timestamp: run.at_timestamp,
                access,
            },
            processors,
        })
    }
}

/// Adds each stream `requests` asks for, until `shutdown`: opened, its
/// parts made, then handed to the lease source, whose grants of it find
/// them. A stream that cannot be opened (not shared yet, no such stream)
/// is not added; the request is answered with why. Streams that could not
/// be opened at start (`waiting`) are opened again, every 30 s at most,
/// and added once they can be.
pub(super) async fn add_streams(
    mut maker: Maker,
    parts: Parts,
    adder: StreamAdder,
    mut requests: Option<mpsc::UnboundedReceiver<AddStream>>,
    mut waiting: Vec<StreamSettings>,
    shutdown: CancellationToken,
) {
    let mut wait = FIRST_WAIT;
    loop {
        let retry = async {
            if waiting.is_empty() {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(wait).await;
        };
        let request = async {
            match requests.as_mut() {
                Some(r) => r.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = retry => {
                let mut still = Vec::new();
                for stream in std::mem::take(&mut waiting) {
                    let arn = stream.arn.to_string();
                    match add_one(&mut maker, &parts, &adder, stream.clone()).await {
                        Ok(()) => tracing::info!(stream = %arn, "stream opened: its shards are read"),
                        Err(e) => {
                            // Still failing: readiness keeps naming it.
                            if !maker.refused(&stream, &e) {
                                tracing::warn!(stream = %arn, "stream not opened: {e}");
                            }
                            still.push(stream);
                        }
                    }
                }
                waiting = still;
                wait = (wait * 2).min(MAX_WAIT);
            }
            request = request => match request {
                Some(request) => {
                    let arn = request.stream.arn.to_string();
                    let result = add_one(&mut maker, &parts, &adder, request.stream)
                        .await
                        .map_err(|e| e.to_string());
                    match &result {
                        Ok(()) => tracing::info!(stream = %arn, "stream added"),
                        Err(e) => tracing::warn!(stream = %arn, "stream not added: {e}"),
                    }
                    let _ = request.done.send(result);
                }
                None => requests = None,
            },
        }
    }
}

/// Opens `stream` and hands it to the lease source.
async fn add_one(
    maker: &mut Maker,
    parts: &Parts,
    adder: &StreamAdder,
    stream: StreamSettings,
) -> Result<()> {
    let (run, made) = maker.open_next(stream).await?;
    let i = maker.settings.streams.len() - 1;
    // The parts first: a grant of the new stream finds them.
    parts.lock().unwrap_or_else(|p| p.into_inner()).push(made);
    let leased = adder
        .add(run.lease_stream(maker.settings.multi_stream))
        .await;
    debug_assert_eq!(
        leased, i,
        "the lease source and the worker agree on indexes"
    );
    Ok(())
}
