//! The default sink: one JSON object per record and line on stdout, in the
//! Lambda event record shape. A batch is written in one piece and flushed
//! before it counts as confirmed, so a crash never checkpoints past a line
//! that did not leave the process. Logs go to stderr and never mix in.
//!
//! A batch's lines (about 1.7 MB for 1,000 records of 1 KiB) are written by
//! a blocking thread from the buffer they were encoded into, without the
//! copy tokio's own stdout makes; when stdout is a pipe it is widened to
//! 1 MiB, so that a reader drains a batch in a few wake-ups of each side
//! instead of one per 64 KiB.

use std::io::Write;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::event::{encoded_len, write_record, EventContext};
use super::{Sink, SinkError};
use crate::record::Batch;

/// Writes every record as one line of JSON to stdout, in the Lambda Kinesis
/// event record shape.
pub struct StdoutSink {
    context: EventContext,
    /// One writer at a time, so that lines of two shards never interleave.
    turn: Mutex<()>,
}

impl StdoutSink {
    /// A sink on this process's stdout; `context` fills each record's shared
    /// fields.
    pub fn new(context: EventContext) -> Self {
        widen_pipe();
        StdoutSink {
            context,
            turn: Mutex::new(()),
        }
    }
}

/// Asks for a 1 MiB pipe buffer when stdout is a pipe (Linux allows that
/// much to any process by default); anything else is left as it is.
fn widen_pipe() {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsFd;
        let stdout = std::io::stdout();
        match rustix::pipe::fcntl_setpipe_size(stdout.as_fd(), 1 << 20) {
            Ok(size) => tracing::debug!(bytes = size, "stdout pipe widened"),
            Err(e) => tracing::debug!("stdout pipe size left as it is: {e}"),
        }
    }
}

#[async_trait::async_trait]
impl Sink for StdoutSink {
    async fn deliver(&self, batch: &Batch, _stop: &CancellationToken) -> Result<(), SinkError> {
        // Sized once for the whole batch: no growing and copying.
        let size = batch
            .records
            .iter()
            .map(|r| encoded_len(&self.context, &batch.shard_id, r) + 1)
            .sum();
        let mut buf = Vec::with_capacity(size);
        for record in &batch.records {
            write_record(&mut buf, &self.context, &batch.shard_id, record);
            buf.push(b'\n');
        }
        let _turn = self.turn.lock().await;
        let written = tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        written.map_err(|e| SinkError::Fatal(format!("cannot write to stdout: {e}")))
    }
}
