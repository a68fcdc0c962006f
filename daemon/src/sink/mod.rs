//! Where records go. A sink confirms a batch only once the application has
//! it; the shard consumer checkpoints nothing before that confirmation, and
//! reads nothing new while a batch is in flight (back-pressure).

use std::sync::Arc;

use kcld_config::{Settings, SinkKind};
use tokio_util::sync::CancellationToken;

use crate::record::Batch;

pub mod destination;
pub mod event;
pub mod http;
pub mod s3;
pub mod stdout;
pub mod utc;

/// Why a sink did not confirm a batch.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The application is not taking records right now; the batch will be
    /// offered again, unchanged, after a back-off.
    #[error("application unavailable: {0}")]
    Retry(String),
    /// The sink cannot work anymore (its output is closed): stop the daemon.
    #[error("{0}")]
    Fatal(String),
    /// `stop` fired while the application still had records to take: the
    /// first `confirmed` records of the batch are confirmed, the rest not.
    #[error("stopped with {confirmed} records of the batch confirmed")]
    Stopped {
        /// How many records at the start of the batch are confirmed.
        confirmed: usize,
    },
}

/// Delivers batches of one shard's records to the application.
///
/// This is the seam for embedding kcld as a library: implement it to hand
/// records to your own code. kcld checkpoints a record only after `deliver`
/// confirmed it, and reads nothing new for the shard while a batch is in
/// flight.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Returns once the application has every record of `batch` (or they
    /// went to a failure destination). A sink that retries should watch
    /// `stop` and return [`SinkError::Stopped`] with the confirmed prefix.
    async fn deliver(&self, batch: &Batch, stop: &CancellationToken) -> Result<(), SinkError>;

    /// Gather up to this many records for up to this long before calling
    /// `deliver` (a batching window); `None` delivers each read as it
    /// comes.
    fn batching_window(&self) -> Option<(usize, std::time::Duration)> {
        None
    }

    /// With a batching window: stop gathering once the records' data
    /// reaches this many bytes (the S3 sink's buffer size).
    fn batching_bytes(&self) -> Option<u64> {
        None
    }
}

/// The sink the configuration names.
pub fn from_settings(settings: &Settings) -> Result<Arc<dyn Sink>, crate::Error> {
    from_live_settings(settings, None, None)
}

/// [`from_settings`], the HTTP sink's tunables following `http` when
/// given (a configuration reload); `stream_label` labels its series when
/// several streams are read.
pub fn from_live_settings(
    settings: &Settings,
    http: Option<tokio::sync::watch::Receiver<kcld_config::HttpSinkSettings>>,
    stream_label: Option<Arc<str>>,
) -> Result<Arc<dyn Sink>, crate::Error> {
    let context = event::context(settings);
    let destination = |http: &kcld_config::HttpSinkSettings| {
        http.on_failure_destination
            .clone()
            .map(|d| Arc::new(destination::Destination::new(d, settings, &http.url)))
    };
    Ok(match (&settings.sink.kind, &settings.sink.http, http) {
        // The URL is this stream's (`Settings::for_stream`); the tunables
        // follow reloads.
        (SinkKind::Http, Some(http), Some(live)) => Arc::new(
            http::HttpSink::following_to(context, live, http.url.clone())?
                .labelled_in_metrics(stream_label)
                .with_destination(destination(http)),
        ),
        (SinkKind::Http, Some(http), None) => Arc::new(
            http::HttpSink::new(context, http.clone())?
                .labelled_in_metrics(stream_label)
                .with_destination(destination(http)),
        ),
        (SinkKind::S3, _, _) => match &settings.sink.s3 {
            Some(s3) => Arc::new(s3::S3Sink::new(settings, s3.clone(), context)),
            None => return Err(crate::Error::Usage("sink.type = \"s3\" without [sink.s3]")),
        },
        _ => Arc::new(stdout::StdoutSink::new(context)),
    })
}
