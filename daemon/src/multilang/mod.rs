//! `kcld multilang`: a drop-in for the KCL's MultiLangDaemon. One record
//! processor process per leased shard, spoken to with the MultiLang
//! protocol ([`protocol`]) exactly as the Java daemon does, so processors
//! written for amazon-kclpy or aws-kcl run unchanged; unlike the Java
//! daemon, kcld reads the stream by ARN across accounts.
//!
//! Checkpoints are the processor's: it asks for them, kcld checks them as
//! the KCL does (between the last checkpoint and the last record delivered)
//! and writes them to the lease table. kcld never checkpoints on its own
//! here, so a record is never skipped that the processor did not
//! checkpoint past.
//!
//! A processor that exits, hangs past `timeoutInSeconds` or breaks the
//! protocol is replaced by a new one, initialized at the last checkpoint,
//! and everything after it is delivered again (the Java daemon exits
//! instead).

use std::sync::Arc;
use std::time::Duration;

use kcld_checkpoint::{Checkpoint, CheckpointError};
use kcld_config::multilang::MultiLangSettings;
use kcld_lease::{Grant, ShardSpec};

use crate::consumer::{self, Outcome, PREFETCH_BATCHES};
use crate::error::Error;
use crate::retrieval::prefetch::{ByteBudget, Prefetch};
use crate::retrieval::{Fetched, Reader};

pub mod child;
pub mod protocol;

use child::{Child, ChildError};
use protocol::{Action, CheckpointRefusal, CheckpointRequest, FromChild};

/// How long a processor gets to exit after its stdin closed.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// Runs one shard through record processor processes until the shard ends,
/// the lease goes, or a fatal error. `reader` makes a reader positioned at
/// a checkpoint (a new one after each processor restart).
pub async fn run_shard<R>(
    grant: Grant,
    mut reader: R,
    settings: Arc<MultiLangSettings>,
    budget: ByteBudget,
) -> Result<Outcome, Error>
where
    R: FnMut(&Checkpoint) -> Reader + Send,
{
    let shard_id = grant.shard.shard_id.clone();
    if grant.start == Checkpoint::ShardEnd {
        return consumer::end_shard(&grant, &[]).await;
    }
    let mut session = Session {
        grant: &grant,
        last: grant.start.clone(),
        largest: grant.start.clone(),
        mode: Mode::Closed,
    };
    let mut restarts = 0u32;
    loop {
        let mut child = Child::spawn(
            &settings.command,
            &settings.base_dir,
            &shard_id,
            settings.timeout,
        )
        .map_err(|e| {
            Error::Config(kcld_config::ConfigError::Key {
                key: "executableName (properties file)".into(),
                problem: format!("cannot start {:?}: {e}", settings.command.join(" ")),
                fix: "name an executable record processor (a path, a program on PATH, or a file beside the properties file) with its arguments".into(),
            })
        })?;
        tracing::info!(shard = %shard_id, start = %session.last, "record processor started");
        let started = tokio::time::Instant::now();
        let result = session.drive(&mut child, &mut reader, &budget).await;
        if started.elapsed() > Duration::from_secs(60) {
            restarts = 0;
        }
        match result {
            Ok(Finish::ShardEnded) => {
                child.finish(EXIT_GRACE).await;
                tracing::info!(shard = %shard_id, "shard ended");
                return Ok(Outcome::ShardEnded);
            }
            Ok(Finish::Stopped) => {
                child.finish(EXIT_GRACE).await;
                return stopped(&grant).await;
            }
            Ok(Finish::EndNotCheckpointed) => {
                child.finish(EXIT_GRACE).await;
                tracing::warn!(shard = %shard_id, "the record processor did not checkpoint at shardEnded (it must call checkpoint() there); delivering again from its last checkpoint");
            }
            Err(Failure::Fatal(e)) => {
                child.finish(EXIT_GRACE).await;
                return Err(e);
            }
            Err(Failure::Child(e)) => {
                child.kill().await;
                metrics::counter!("kcld_multilang_processor_failures_total", "shard" => shard_id.clone())
                    .increment(1);
                tracing::warn!(shard = %shard_id, "{e}; starting a new one at the last checkpoint {}", session.last);
            }
        }
        if grant.stop.is_cancelled() {
            return stopped(&grant).await;
        }
        // A processor that keeps failing is restarted ever more slowly.
        restarts = restarts.saturating_add(1);
        let wait = Duration::from_millis((250u64 << restarts.min(7)).min(30_000));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = grant.stop.cancelled() => return stopped(&grant).await,
        }
        session.largest = session.last.clone();
    }
}

/// The lease is going: complete a handoff, write nothing (checkpoints are
/// the processor's).
async fn stopped(grant: &Grant) -> Result<Outcome, Error> {
    match grant.lease.stopped(None).await {
        Err(CheckpointError::Fatal(e)) => Err(Error::Aws(e)),
        _ => Ok(Outcome::Stopped),
    }
}

/// How one processor's run ended, when it did not fail.
enum Finish {
    ShardEnded,
    /// The lease was lost, handed over, or kcld is shutting down.
    Stopped,
    /// shardEnded was answered without a SHARD_END checkpoint.
    EndNotCheckpointed,
}

enum Failure {
    /// The processor failed: replace it.
    Child(ChildError),
    /// Reading the shard or the lease table failed for good.
    Fatal(Error),
}

impl From<ChildError> for Failure {
    fn from(e: ChildError) -> Self {
        Failure::Child(e)
    }
}

/// Which checkpoints the processor may ask for while it answers.
#[derive(Clone, PartialEq, Eq)]
enum Mode {
    /// During initialize and leaseLost: none (InvalidStateException).
    Closed,
    /// During processRecords and shutdownRequested.
    Open,
    /// During shardEnded: SHARD_END, with these children.
    ShardEnd(Vec<ShardSpec>),
}

/// The shard's positions across processor restarts.
struct Session<'a> {
    grant: &'a Grant,
    /// The last checkpoint written (or the grant's start).
    last: Checkpoint,
    /// The last record delivered to the current processor.
    largest: Checkpoint,
    mode: Mode,
}

impl Session<'_> {
    /// One processor's life: initialize, records until the shard ends or
    /// the lease goes, and the matching goodbye.
    async fn drive<R>(
        &mut self,
        child: &mut Child,
        reader: &mut R,
        budget: &ByteBudget,
    ) -> Result<Finish, Failure>
    where
        R: FnMut(&Checkpoint) -> Reader + Send,
    {
        let shard_id = self.grant.shard.shard_id.clone();
        child
            .send(&protocol::initialize(&shard_id, &self.last))
            .await?;
        self.converse(child, Action::Initialize, Mode::Closed)
            .await?;
        let mut prefetch = Prefetch::spawn(
            reader(&self.last),
            self.grant.stop.clone(),
            PREFETCH_BATCHES,
            budget.clone(),
        );
        loop {
            let item = tokio::select! {
                biased;
                _ = self.grant.stop.cancelled() => None,
                item = prefetch.next() => item,
            };
            let fetched = match item {
                None => return self.goodbye(child).await,
                Some(Err(e)) => return Err(Failure::Fatal(e.into())),
                Some(Ok(p)) => p.fetched,
            };
            if self.grant.stop.is_cancelled() {
                return self.goodbye(child).await;
            }
            match fetched {
                Fetched::Records(batch) => {
                    if let Some(position) = batch.last_position() {
                        self.largest = Checkpoint::At(position);
                    }
                    child.send(&protocol::process_records(&batch)).await?;
                    self.converse(child, Action::ProcessRecords, Mode::Open)
                        .await?;
                    consumer::record_delivery(&shard_id, &batch);
                }
                Fetched::ShardEnd { children } => {
                    child.send(&protocol::notice(Action::ShardEnded)).await?;
                    self.converse(child, Action::ShardEnded, Mode::ShardEnd(children))
                        .await?;
                    return Ok(if self.last == Checkpoint::ShardEnd {
                        Finish::ShardEnded
                    } else {
                        Finish::EndNotCheckpointed
                    });
                }
            }
        }
    }

    /// The lease is going: shutdownRequested (the processor may still
    /// checkpoint; the lease layer refuses if the lease is already lost),
    /// then leaseLost.
    async fn goodbye(&mut self, child: &mut Child) -> Result<Finish, Failure> {
        child
            .send(&protocol::notice(Action::ShutdownRequested))
            .await?;
        self.converse(child, Action::ShutdownRequested, Mode::Open)
            .await?;
        child.send(&protocol::notice(Action::LeaseLost)).await?;
        self.converse(child, Action::LeaseLost, Mode::Closed)
            .await?;
        Ok(Finish::Stopped)
    }

    /// Answers checkpoint requests until the status for `action` comes.
    async fn converse(
        &mut self,
        child: &mut Child,
        action: Action,
        mode: Mode,
    ) -> Result<(), Failure> {
        self.mode = mode;
        loop {
            match child.next().await? {
                FromChild::Status { response_for } if response_for == action.as_str() => {
                    self.mode = Mode::Closed;
                    return Ok(());
                }
                FromChild::Status { response_for } => {
                    return Err(Failure::Child(ChildError::Protocol(format!(
                        "it answered status for {response_for:?} to {:?}",
                        action.as_str()
                    ))))
                }
                FromChild::Checkpoint(request) => {
                    let refusal = self.checkpoint(&request).await?;
                    child
                        .send(&protocol::checkpoint_reply(&request, refusal))
                        .await?;
                }
                FromChild::Skip(_) => {}
            }
        }
    }

    /// One checkpoint request: judged, written, and answered as the KCL
    /// would (`None` = done).
    async fn checkpoint(
        &mut self,
        request: &CheckpointRequest,
    ) -> Result<Option<CheckpointRefusal>, Failure> {
        let children = match &self.mode {
            Mode::Closed => return Ok(Some(CheckpointRefusal::InvalidState)),
            Mode::Open => None,
            Mode::ShardEnd(children) => Some(children.clone()),
        };
        let target = match protocol::resolve(request, &self.last, &self.largest, children.is_some())
        {
            Ok(t) => t,
            Err(refusal) => return Ok(Some(refusal)),
        };
        if target == self.last && !matches!(target, Checkpoint::ShardEnd) {
            return Ok(None);
        }
        let lease = &self.grant.lease;
        let written = match (&target, &children) {
            (Checkpoint::ShardEnd, Some(children)) => lease.shard_ended(children).await,
            _ => lease.checkpoint(&target).await,
        };
        let shard = &self.grant.shard.shard_id;
        match written {
            Ok(()) => {
                metrics::counter!("kcld_checkpoints_total", "shard" => shard.clone()).increment(1);
                self.last = target;
                Ok(None)
            }
            Err(CheckpointError::LeaseLost { .. }) => Ok(Some(CheckpointRefusal::Shutdown)),
            Err(CheckpointError::Unavailable(e)) => {
                tracing::warn!(shard = %shard, "checkpoint not written: {e}");
                Ok(Some(CheckpointRefusal::Throttling))
            }
            Err(CheckpointError::Invalid { reason, .. }) => {
                tracing::warn!(shard = %shard, "checkpoint refused: {reason}");
                Ok(Some(CheckpointRefusal::IllegalArgument))
            }
            Err(CheckpointError::Fatal(e)) => Err(Failure::Fatal(Error::Aws(e))),
        }
    }
}
