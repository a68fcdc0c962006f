//! kcld as a library with a record processor of your own.
//!
//! Every record goes to `Processor::deliver`; kcld checkpoints a record only
//! after `deliver` returned `Ok` for its batch, so a crash loses nothing.
//! Configuration is the daemon's (a TOML file named by KCLD_CONFIG, or
//! KCLD_* variables). Against the local stack:
//!
//!     eval "$(deploy/local/stack env)"
//!     KCLD_APPLICATION_NAME=embedded KCLD_STREAM_ARN=<arn> cargo run --example embedded

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kcld::record::Batch;
use kcld::sink::{Sink, SinkError};
use tokio_util::sync::CancellationToken;

/// Counts records and bytes per batch; a real processor would write them to
/// its store and return only once they are safe there.
#[derive(Default)]
struct Processor {
    records: AtomicU64,
}

#[async_trait::async_trait]
impl Sink for Processor {
    async fn deliver(&self, batch: &Batch, _stop: &CancellationToken) -> Result<(), SinkError> {
        let total = self
            .records
            .fetch_add(batch.records.len() as u64, Ordering::Relaxed)
            + batch.records.len() as u64;
        for record in &batch.records {
            // `record.data` is a slice of the response buffer: no copy.
            let _ = (&record.partition_key, record.data.len());
        }
        eprintln!(
            "{}: {} records ({} bytes), {total} so far",
            batch.shard_id,
            batch.records.len(),
            batch.data_bytes()
        );
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = std::env::var_os("KCLD_CONFIG").map(std::path::PathBuf::from);
    let settings = match kcld_config::load(config.as_deref(), std::env::vars()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    kcld::logging::init(&settings.log.format, &settings.log.level);
    let shutdown = CancellationToken::new();
    kcld::shutdown::on_signal(shutdown.clone());
    match kcld::worker::run_with_sink(settings, Arc::new(Processor::default()), shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            std::process::ExitCode::from(e.exit_code() as u8)
        }
    }
}
