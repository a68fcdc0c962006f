//! The default sink: one JSON object per record and line on stdout, in the
//! Lambda event record shape. A batch is written in one piece and flushed
//! before it counts as confirmed, so a crash never checkpoints past a line
//! that did not leave the process. Logs go to stderr and never mix in.

use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use super::event::{encoded_len, write_record, EventContext};
use super::{Sink, SinkError};
use crate::record::Batch;

/// Writes every record as one line of JSON to stdout, in the Lambda Kinesis
/// event record shape.
pub struct StdoutSink {
    context: EventContext,
    out: Mutex<tokio::io::Stdout>,
}

impl StdoutSink {
    /// A sink on this process's stdout; `context` fills each record's shared
    /// fields.
    pub fn new(context: EventContext) -> Self {
        StdoutSink {
            context,
            out: Mutex::new(tokio::io::stdout()),
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
        // One writer at a time, so that lines of two shards never interleave.
        let mut out = self.out.lock().await;
        let written = async {
            out.write_all(&buf).await?;
            out.flush().await
        };
        written
            .await
            .map_err(|e| SinkError::Fatal(format!("cannot write to stdout: {e}")))
    }
}
