//! The streams a worker reads: each opened with its region's and role's
//! clients (described, its fan-out consumer resolved), the readers and
//! processors of its shards, and streams added while the worker runs (a
//! configuration reload that lists more `[[streams]]`).

use std::sync::{Arc, Mutex as StdMutex};

use aws_credential_types::provider::SharedCredentialsProvider;
use kcld_checkpoint::Checkpoint;
use kcld_config::multilang::MultiLangSettings;
use kcld_config::{InitialPosition, Settings, StreamSettings};
use kcld_lease::dynamo::{LeaseStream, StreamAdder};
use kcld_lease::key::StreamScope;
use kcld_lease::ShardSpec;
use kcld_records::kpl::HashRange;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::lifecycle::sink::{LivePolicy, SinkProcessors};
use crate::lifecycle::ProcessorFactory;
use crate::ops::Health;
use crate::retrieval::fanout::FanOutReader;
use crate::retrieval::isolation::StreamAccess;
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
    /// The running settings; `streams` grows as streams are added.
    pub(super) settings: Settings,
    pub(super) credentials: Option<SharedCredentialsProvider>,
    pub(super) cache: aws::ClientsCache,
    pub(super) health: Arc<Health>,
    pub(super) factories: Factories,
}

impl Maker {
    /// Connects (clients shared per region and role) and opens stream `i`
    /// of the settings.
    pub(super) async fn open(&mut self, i: usize) -> Result<StreamRun> {
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
    pub(super) fn parts(&self, i: usize, run: &StreamRun) -> Result<StreamParts> {
        let label = stream_label(&self.settings, i);
        // With `[[streams]]`, one stream that cannot be read waits alone.
        let access = self.settings.multi_stream.then(|| {
            let access = StreamAccess::new(run.settings.stream_arn.to_string());
            self.health.watch_stream(access.clone());
            access
        });
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
        Ok(StreamParts {
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
/// is not added; the request is answered with why.
pub(super) async fn add_streams(
    mut maker: Maker,
    parts: Parts,
    adder: StreamAdder,
    mut requests: mpsc::UnboundedReceiver<AddStream>,
    shutdown: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let arn = request.stream.arn.to_string();
        let result = add_one(&mut maker, &parts, &adder, request.stream).await;
        match &result {
            Ok(()) => tracing::info!(stream = %arn, "stream added"),
            Err(e) => tracing::warn!(stream = %arn, "stream not added: {e}"),
        }
        let _ = request.done.send(result);
    }
}

async fn add_one(
    maker: &mut Maker,
    parts: &Parts,
    adder: &StreamAdder,
    stream: StreamSettings,
) -> std::result::Result<(), String> {
    let i = maker.settings.streams.len();
    maker.settings.streams.push(stream);
    let opened = match maker.open(i).await {
        Ok(run) => maker.parts(i, &run).map(|p| (run, p)),
        Err(e) => Err(e),
    };
    let (run, made) = match opened {
        Ok(ok) => ok,
        Err(e) => {
            maker.settings.streams.pop();
            return Err(e.to_string());
        }
    };
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
