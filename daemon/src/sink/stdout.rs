//! The default sink: one JSON object per record and line on stdout, in the
//! Lambda event record shape. A batch is written in one piece and flushed
//! before it counts as confirmed, so a crash never checkpoints past a line
//! that did not leave the process. Logs go to stderr and never mix in.
//!
//! A batch's lines (about 1.7 MB for 1,000 records of 1 KiB) are encoded
//! and written by a blocking thread, in its turn, through one reused buffer
//! of 256 KiB: shards waiting for their turn hold no encoded copy of their
//! batch (eight shards held up to 14 MB that way), and the writes skip the
//! copy tokio's own stdout makes. When stdout is a pipe it is widened to
//! 1 MiB, so that a reader drains a batch in a few wake-ups of each side
//! instead of one per 64 KiB.

use std::io::Write;
use std::sync::Arc;

use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::event::{write_record, EventContext};
use super::{Sink, SinkError};
use crate::record::Batch;

/// Writes every record as one line of JSON to stdout, in the Lambda Kinesis
/// event record shape.
pub struct StdoutSink {
    context: Arc<EventContext>,
    /// One writer at a time, so that lines of two shards never interleave;
    /// it holds the encoding buffer the writer reuses.
    turn: Arc<Mutex<Vec<u8>>>,
}

/// Lines are written to stdout in pieces of about this size.
const CHUNK: usize = 256 * 1024;

impl StdoutSink {
    /// A sink on this process's stdout; `context` fills each record's shared
    /// fields.
    pub fn new(context: EventContext) -> Self {
        widen_pipe();
        StdoutSink {
            context: Arc::new(context),
            turn: Arc::new(Mutex::new(Vec::new())),
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
        let mut buf = self.turn.clone().lock_owned().await;
        // The blocking thread needs its own handle on the records (shared
        // bytes: no record data is copied).
        let records = batch.records.clone();
        let shard = batch.shard_id.clone();
        let context = self.context.clone();
        let written = tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            buf.clear();
            buf.reserve(CHUNK + 64 * 1024);
            for record in &records {
                write_record(&mut buf, &context, &shard, record);
                buf.push(b'\n');
                if buf.len() >= CHUNK {
                    out.write_all(&buf)?;
                    buf.clear();
                }
            }
            out.write_all(&buf)?;
            // A large record's line grew the buffer: give that back.
            buf.clear();
            buf.shrink_to(CHUNK + 64 * 1024);
            out.flush()
        })
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        written.map_err(|e| SinkError::Fatal(format!("cannot write to stdout: {e}")))
    }
}
