//! `kcld multilang`: a drop-in for the KCL's MultiLangDaemon. One record
//! processor process per leased shard, spoken to with the MultiLang
//! protocol ([`protocol`]) exactly as the Java daemon does, so processors
//! written for amazon-kclpy or aws-kcl run unchanged; unlike the Java
//! daemon, kcld reads the stream by ARN across accounts.
//!
//! The process is a [`ShardProcessor`] driven by the shard lifecycle
//! ([`crate::lifecycle`]), like every other processor. Checkpoints are the
//! processor's: it asks for them, the lifecycle's checkpointer judges them
//! as the KCL does (between the last checkpoint and the last record
//! delivered) and writes them. kcld never checkpoints on its own here, so a
//! record is never skipped that the processor did not checkpoint past.
//!
//! A processor that exits, hangs past `timeoutInSeconds` (for one whole
//! action) or breaks the protocol is replaced by a new one, and everything
//! after the last checkpoint is delivered again (the Java daemon exits
//! instead).

use std::sync::Arc;
use std::time::Duration;

use kcld_checkpoint::{Checkpoint, ExtendedSequenceNumber};
use kcld_config::multilang::MultiLangSettings;
use kcld_lease::ShardSpec;

use crate::error::Error;
use crate::lifecycle::{
    CheckpointFailure, Checkpointer, ProcessorError, ProcessorFactory, ShardInfo, ShardProcessor,
};
use crate::record::Batch;

pub mod child;
pub mod protocol;

use child::{Child, ChildError};
use protocol::{Action, CheckpointRefusal, CheckpointRequest, FromChild};

/// How long a processor gets to exit after its stdin closed.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Starts a record processor process per shard.
pub struct Processors {
    settings: Arc<MultiLangSettings>,
    /// The stream whose shards these processors read, named to them when
    /// several streams are read.
    stream_arn: Option<Arc<str>>,
}

impl Processors {
    /// Starts processors as the properties file describes.
    pub fn new(settings: Arc<MultiLangSettings>) -> Self {
        Processors {
            settings,
            stream_arn: None,
        }
    }

    /// The same, for the shards of the stream `arn` of several: each
    /// processor is told its stream (`streamArn` in `initialize`,
    /// `KCLD_STREAM_ARN` in its environment).
    pub fn of_stream(mut self, arn: Option<Arc<str>>) -> Self {
        self.stream_arn = arn;
        self
    }
}

impl ProcessorFactory for Processors {
    fn create(&self, shard: &ShardSpec) -> Result<Box<dyn ShardProcessor>, Error> {
        let s = &self.settings;
        let child = Child::spawn(
            &s.command,
            &s.base_dir,
            (&shard.shard_id, self.stream_arn.as_deref()),
            s.timeout,
        )
        .map_err(|e| {
            Error::Config(kcld_config::ConfigError::Key {
                key: "executableName (properties file)".into(),
                problem: format!("cannot start {:?}: {e}", s.command.join(" ")),
                fix: "name an executable record processor (a path, a program on PATH, or a file beside the properties file) with its arguments".into(),
            })
        })?;
        tracing::info!(shard = %shard.shard_id, "record processor started");
        Ok(Box::new(MultiLangProcessor {
            child: Some(child),
            shard_id: shard.shard_id.clone(),
            stream_arn: self.stream_arn.clone(),
        }))
    }
}

/// One record processor process.
pub struct MultiLangProcessor {
    /// Taken by `close`.
    child: Option<Child>,
    shard_id: String,
    stream_arn: Option<Arc<str>>,
}

impl From<ChildError> for ProcessorError {
    fn from(e: ChildError) -> Self {
        ProcessorError::Failed(e.to_string())
    }
}

impl MultiLangProcessor {
    fn child(&mut self) -> Result<&mut Child, ProcessorError> {
        self.child
            .as_mut()
            .ok_or_else(|| ProcessorError::Failed("the record processor was closed".into()))
    }

    /// Sends `message` for `action`, then answers the processor's
    /// checkpoint requests until its status for `action` comes, all within
    /// one `timeoutInSeconds`. Without a checkpointer (initialize,
    /// leaseLost) every checkpoint is refused as the KCL refuses it there.
    async fn exchange(
        &mut self,
        action: Action,
        message: &str,
        mut checkpointer: Option<&mut Checkpointer<'_>>,
    ) -> Result<(), ProcessorError> {
        let shard_id = self.shard_id.clone();
        let child = self.child()?;
        child.send(message).await?;
        let deadline = child.deadline();
        loop {
            match child.next(deadline).await? {
                FromChild::Status { response_for } if response_for == action.as_str() => {
                    return Ok(())
                }
                FromChild::Status { response_for } => {
                    return Err(ChildError::Protocol(format!(
                        "it answered status for {response_for:?} to {:?}",
                        action.as_str()
                    ))
                    .into())
                }
                FromChild::Checkpoint(request) => {
                    let refusal = match checkpointer.as_deref_mut() {
                        None => Some(CheckpointRefusal::InvalidState),
                        Some(cp) => checkpoint(&shard_id, cp, &request).await?,
                    };
                    child
                        .send(&protocol::checkpoint_reply(&request, refusal))
                        .await?;
                }
                FromChild::Skip(_) => {}
            }
        }
    }
}

/// One checkpoint request: judged and written by the checkpointer, and
/// answered as the Java daemon answers (`None` = done).
async fn checkpoint(
    shard_id: &str,
    cp: &mut Checkpointer<'_>,
    request: &CheckpointRequest,
) -> Result<Option<CheckpointRefusal>, ProcessorError> {
    if let Some(problem) = &request.malformed {
        tracing::warn!(shard = %shard_id, "checkpoint refused: {problem}");
        return Ok(Some(CheckpointRefusal::IllegalArgument));
    }
    let position = match &request.sequence_number {
        None => None,
        Some(seq) if seq == Checkpoint::SHARD_END => Some(Checkpoint::ShardEnd),
        Some(seq) => match seq.parse() {
            Ok(sequence) => Some(Checkpoint::At(ExtendedSequenceNumber::new(
                sequence,
                request.sub_sequence_number.unwrap_or(0),
            ))),
            Err(_) => {
                tracing::warn!(shard = %shard_id, "checkpoint refused: {seq:?} is not a sequence number");
                return Ok(Some(CheckpointRefusal::IllegalArgument));
            }
        },
    };
    match cp.checkpoint(position).await {
        Ok(()) => Ok(None),
        Err(CheckpointFailure::LeaseLost) => Ok(Some(CheckpointRefusal::Shutdown)),
        Err(e @ CheckpointFailure::OutOfRange { .. }) => {
            tracing::warn!(shard = %shard_id, "checkpoint refused: {e}");
            Ok(Some(CheckpointRefusal::IllegalArgument))
        }
        Err(CheckpointFailure::Unavailable(e)) => {
            tracing::warn!(shard = %shard_id, "checkpoint not written: {e}");
            Ok(Some(CheckpointRefusal::Throttling))
        }
        Err(CheckpointFailure::Fatal(e)) => Err(ProcessorError::Fatal(e.into())),
    }
}

#[async_trait::async_trait]
impl ShardProcessor for MultiLangProcessor {
    async fn initialize(&mut self, shard: &ShardInfo<'_>) -> Result<(), ProcessorError> {
        let message =
            protocol::initialize(shard.shard_id, self.stream_arn.as_deref(), shard.checkpoint);
        self.exchange(Action::Initialize, &message, None).await
    }

    async fn process_records(
        &mut self,
        batch: &Batch,
        cp: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        let message = protocol::process_records(batch);
        self.exchange(Action::ProcessRecords, &message, Some(cp))
            .await
    }

    async fn shard_ended(&mut self, cp: &mut Checkpointer<'_>) -> Result<(), ProcessorError> {
        let message = protocol::notice(Action::ShardEnded);
        self.exchange(Action::ShardEnded, &message, Some(cp)).await
    }

    async fn shutdown_requested(
        &mut self,
        cp: &mut Checkpointer<'_>,
    ) -> Result<(), ProcessorError> {
        let message = protocol::notice(Action::ShutdownRequested);
        self.exchange(Action::ShutdownRequested, &message, Some(cp))
            .await
    }

    async fn lease_lost(&mut self) -> Result<(), ProcessorError> {
        let message = protocol::notice(Action::LeaseLost);
        self.exchange(Action::LeaseLost, &message, None).await
    }

    /// A failed processor is killed; one that finished is asked to exit
    /// (stdin closed) and given a grace period.
    async fn close(mut self: Box<Self>, failed: bool) {
        if let Some(child) = self.child.take() {
            if failed {
                child.kill().await;
            } else {
                child.finish(EXIT_GRACE).await;
            }
        }
    }
}
