//! One record processor process: started from `executableName` (split on
//! spaces, no shell, the daemon's environment and working directory, as
//! the Java daemon does), spoken to line by line, its stderr copied into
//! kcld's log, and ended by closing its stdin (then killed if it lingers).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{ChildStdin, ChildStdout, Command};

use super::protocol::{self, FromChild};

/// Why talking to the processor failed; each ends this process, and the
/// shard is read again from its last checkpoint by a new one.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// The process exited or its pipes closed; says how, with its exit
    /// status when known.
    #[error("the record processor exited ({0})")]
    Exited(String),
    /// No answer within `timeoutInSeconds` (the limit given).
    #[error("the record processor gave no answer within {0:?} (timeoutInSeconds)")]
    TimedOut(Duration),
    /// It answered out of turn (a status for another action); says how.
    #[error("the record processor broke the protocol: {0}")]
    Protocol(String),
}

/// A running record processor for one shard.
pub struct Child {
    process: tokio::process::Child,
    stdin: Option<ChildStdin>,
    /// The task copying stderr into the log, awaited at the end so that
    /// nothing the processor said last is lost.
    stderr: Option<tokio::task::JoinHandle<()>>,
    stdout: Lines<BufReader<ChildStdout>>,
    shard: String,
    timeout: Option<Duration>,
}

/// The longest stderr line logged as one; longer output is logged in
/// pieces of this size (a processor may write without newlines).
const MAX_LOG_LINE: usize = 16 * 1024;

/// Copies the processor's stderr into kcld's log, a line per entry.
async fn log_stderr(mut stderr: tokio::process::ChildStderr, shard: String) {
    use tokio::io::AsyncReadExt;
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 4096];
    let emit = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end_matches('\r');
        if !text.is_empty() {
            tracing::info!(target: "kcld::multilang::processor", shard = %shard, "{text}");
        }
    };
    loop {
        let n = match stderr.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            emit(&pending[..end]);
            pending.drain(..=end);
        }
        while pending.len() >= MAX_LOG_LINE {
            emit(&pending[..MAX_LOG_LINE]);
            pending.drain(..MAX_LOG_LINE);
        }
    }
    emit(&pending);
}

/// The program to run: as given when it names a path or a program on
/// PATH; otherwise, when it exists beside the properties file, that file.
pub fn resolve_program(program: &str, base_dir: &Path) -> PathBuf {
    let given = PathBuf::from(program);
    let exists_here = if program.contains('/') {
        given.exists()
    } else {
        std::env::var_os("PATH")
            .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
            .unwrap_or(false)
    };
    let beside = base_dir.join(program);
    if !exists_here && !given.is_absolute() && beside.is_file() {
        beside
    } else {
        given
    }
}

impl Child {
    /// Starts `command` for `shard` (of `stream`, named in the process's
    /// environment when several streams are read). An error here (no such
    /// program, not executable) is the configuration's: it is reported and
    /// kcld stops.
    pub fn spawn(
        command: &[String],
        base_dir: &Path,
        (shard, stream): (&str, Option<&str>),
        timeout: Option<Duration>,
    ) -> std::io::Result<Self> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| std::io::Error::other("executableName is empty"))?;
        let mut command = Command::new(resolve_program(program, base_dir));
        if let Some(arn) = stream {
            // Shard ids repeat from stream to stream.
            command.env("KCLD_STREAM_ARN", arn);
        }
        let mut process = command
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdin = process.stdin.take();
        let stdout = process
            .stdout
            .take()
            .ok_or_else(|| std::io::Error::other("no stdout pipe"))?;
        let stderr = process
            .stderr
            .take()
            .map(|stderr| tokio::spawn(log_stderr(stderr, shard.to_owned())));
        metrics::counter!("kcld_multilang_processes_started_total").increment(1);
        tracing::debug!(shard, pid = process.id(), "record processor started");
        Ok(Child {
            process,
            stdin,
            stderr,
            stdout: BufReader::new(stdout).lines(),
            shard: shard.to_owned(),
            timeout,
        })
    }

    /// Writes one message (a line).
    pub async fn send(&mut self, line: &str) -> Result<(), ChildError> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| ChildError::Exited("its stdin is closed".into()))?;
        let written = async {
            stdin.write_all(line.as_bytes()).await?;
            stdin.flush().await
        }
        .await;
        match written {
            Ok(()) => Ok(()),
            Err(e) => Err(self.exited(&format!("writing to it: {e}")).await),
        }
    }

    /// When the answer to an action sent now is due: `timeoutInSeconds`
    /// counts for the whole action (its checkpoints and status), not per
    /// line, as in the Java daemon.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        self.timeout
            .map(|limit| tokio::time::Instant::now() + limit)
    }

    /// The next protocol message, before `deadline` (see
    /// [`Child::deadline`]); lines that are not one are logged and skipped.
    pub async fn next(
        &mut self,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<FromChild, ChildError> {
        loop {
            let read = match (deadline, self.timeout) {
                (Some(at), Some(limit)) => tokio::time::timeout_at(at, self.stdout.next_line())
                    .await
                    .map_err(|_| ChildError::TimedOut(limit))?,
                _ => self.stdout.next_line().await,
            };
            let line = match read {
                Ok(Some(line)) => line,
                Ok(None) => return Err(self.exited("its stdout closed").await),
                Err(e) => return Err(self.exited(&format!("reading from it: {e}")).await),
            };
            match protocol::parse(&line) {
                FromChild::Skip(text) if text.is_empty() => continue,
                FromChild::Skip(text) => {
                    tracing::info!(shard = %self.shard, line = %text, "skipping a line of the record processor that is not a protocol message");
                }
                message => return Ok(message),
            }
        }
    }

    /// Closes stdin (the processor's signal to exit) and waits up to
    /// `grace` for it; then kills it.
    pub async fn finish(mut self, grace: Duration) {
        drop(self.stdin.take());
        if tokio::time::timeout(grace, self.process.wait())
            .await
            .is_err()
        {
            tracing::warn!(shard = %self.shard, "the record processor did not exit within {grace:?} of its stdin closing; killing it");
            let _ = self.process.kill().await;
        }
        if let Some(task) = self.stderr.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
    }

    /// Kills the process at once (a hung or broken processor).
    pub async fn kill(mut self) {
        let _ = self.process.kill().await;
    }

    /// The error for a processor that went away, with its exit status when
    /// it already has one.
    async fn exited(&mut self, how: &str) -> ChildError {
        let status = tokio::time::timeout(Duration::from_millis(200), self.process.wait()).await;
        match status {
            Ok(Ok(s)) => ChildError::Exited(format!("{how}; {s}")),
            _ => ChildError::Exited(how.to_owned()),
        }
    }
}
