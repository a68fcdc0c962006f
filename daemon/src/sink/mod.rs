//! Where records go. A sink confirms a batch only once the application has
//! it; the shard consumer checkpoints nothing before that confirmation, and
//! reads nothing new while a batch is in flight (back-pressure).

use std::sync::Arc;

use kcld_config::{Settings, SinkKind};

use crate::record::Batch;

pub mod event;
pub mod stdout;

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
}

/// Delivers batches of one shard's records to the application.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Returns once the application has every record of `batch`.
    async fn deliver(&self, batch: &Batch) -> Result<(), SinkError>;
}

/// The sink the configuration names.
pub fn from_settings(settings: &Settings) -> Arc<dyn Sink> {
    let context = event::EventContext::from_settings(settings);
    match settings.sink.kind {
        SinkKind::Stdout => Arc::new(stdout::StdoutSink::new(context)),
    }
}
