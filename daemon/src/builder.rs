//! kcld embedded in a Rust application: the same worker as the daemon
//! (leases in the KCL's table, every shard of a stream read by ARN across
//! accounts, checkpoints only of what the application confirmed), with the
//! application's own [`ShardProcessor`] or [`Sink`].
//!
//! ```no_run
//! use std::sync::Arc;
//! use kcld::lifecycle::{Checkpointer, ProcessorError, ProcessorFactory, ShardProcessor};
//! use kcld::record::Batch;
//!
//! struct Print;
//!
//! #[async_trait::async_trait]
//! impl ShardProcessor for Print {
//!     async fn process_records(
//!         &mut self,
//!         batch: &Batch,
//!         checkpointer: &mut Checkpointer<'_>,
//!     ) -> Result<(), ProcessorError> {
//!         for record in &batch.records {
//!             println!("{} bytes", record.data.len());
//!         }
//!         // Everything above is done: checkpoint the batch's last record.
//!         checkpointer.checkpoint(None).await.map_err(|e| ProcessorError::Failed(e.to_string()))
//!     }
//!
//!     async fn shard_ended(&mut self, checkpointer: &mut Checkpointer<'_>) -> Result<(), ProcessorError> {
//!         checkpointer.checkpoint(None).await.map_err(|e| ProcessorError::Failed(e.to_string()))
//!     }
//! }
//!
//! struct Factory;
//! impl ProcessorFactory for Factory {
//!     fn create(&self, _shard: &kcld_lease::ShardSpec) -> kcld::Result<Box<dyn ShardProcessor>> {
//!         Ok(Box::new(Print))
//!     }
//! }
//!
//! # async fn example() -> kcld::Result<()> {
//! let consumer = kcld::Consumer::builder("arn:aws:kinesis:us-east-1:111111111111:stream/orders")
//!     .application_name("orders-reader")
//!     .option("lease.failover_time_ms", 10_000)
//!     .processors(Arc::new(Factory))
//!     .build()?;
//! consumer.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use aws_credential_types::provider::SharedCredentialsProvider;
use kcld_config::Settings;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::lifecycle::ProcessorFactory;
use crate::sink::Sink;
use crate::worker::{self, Delivery};

/// A configured kcld worker, ready to run.
pub struct Consumer {
    settings: Settings,
    delivery: Delivery,
    credentials: Option<SharedCredentialsProvider>,
}

impl Consumer {
    /// Starts a configuration for the stream `stream_arn` (the region and
    /// the owner's account come from it).
    pub fn builder(stream_arn: impl Into<String>) -> ConsumerBuilder {
        ConsumerBuilder {
            options: HashMap::from([
                ("stream_arn".to_owned(), stream_arn.into()),
                // Embedded, kcld serves no endpoint and installs no metrics
                // recorder unless asked: the application owns both.
                ("ops.listen".to_owned(), "off".to_owned()),
            ]),
            file: None,
            delivery: None,
            credentials: None,
        }
    }

    /// The validated settings the worker runs with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Reads until `shutdown` resolves (or a fatal error), then stops in
    /// order: no new reads, last checkpoints of what was confirmed, leases
    /// released for other workers, all within `shutdown_timeout_ms`.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let token = CancellationToken::new();
        let trigger = token.clone();
        let watcher = tokio::spawn(async move {
            shutdown.await;
            trigger.cancel();
        });
        let result = worker::run_embedded(
            self.settings,
            self.delivery,
            token,
            self.credentials,
            None,
            None,
        )
        .await;
        watcher.abort();
        result
    }
}

/// Settings for a [`Consumer`]: the daemon's keys (`config/kcld.example.toml`)
/// by name, a file, and the processor.
pub struct ConsumerBuilder {
    /// Keys as in the TOML file (`lease.failover_time_ms`), winning over
    /// the file.
    options: HashMap<String, String>,
    file: Option<PathBuf>,
    delivery: Option<Delivery>,
    credentials: Option<SharedCredentialsProvider>,
}

impl ConsumerBuilder {
    /// The KCL application name: it names the lease table unless
    /// `lease_table` is set.
    pub fn application_name(self, name: impl Into<String>) -> Self {
        self.option("application_name", name.into())
    }

    /// The lease table's name (in the consumer's account).
    pub fn lease_table(self, name: impl Into<String>) -> Self {
        self.option("lease_table", name.into())
    }

    /// Where shards without a checkpoint start: TRIM_HORIZON, LATEST or
    /// AT_TIMESTAMP (then set `initial_timestamp` too).
    pub fn initial_position(self, position: impl Into<String>) -> Self {
        self.option("initial_position", position.into())
    }

    /// Any key of the configuration file, by its dotted name
    /// (`polling.max_records`, `lease.failover_time_ms`, `ops.listen`);
    /// checked with the rest at [`ConsumerBuilder::build`].
    pub fn option(mut self, key: &str, value: impl ToString) -> Self {
        self.options.insert(key.to_owned(), value.to_string());
        self
    }

    /// A TOML configuration file, under the options set here.
    pub fn config_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// The credentials kcld calls AWS with (default: the SDK's default
    /// chain, or the role in `aws.assume_role_arn`).
    pub fn credentials(mut self, provider: SharedCredentialsProvider) -> Self {
        self.credentials = Some(provider);
        self
    }

    /// The processors of the shards: one is made per leased shard (again
    /// after a failure), and checkpoints when it chooses.
    pub fn processors(mut self, factory: Arc<dyn ProcessorFactory>) -> Self {
        self.delivery = Some(Delivery::Processors(factory));
        self
    }

    /// A sink instead of processors: kcld checkpoints what it confirmed on
    /// the checkpoint policy (`checkpoint.interval_ms`, `max_records`).
    pub fn sink(mut self, sink: Arc<dyn Sink>) -> Self {
        self.delivery = Some(Delivery::Sink(sink));
        self
    }

    /// Validates the configuration. Errors name the key and the fix, as
    /// the daemon's do.
    pub fn build(self) -> Result<Consumer> {
        for key in self.options.keys() {
            kcld_config::check_key(key)?;
        }
        // The AWS SDK's own variables (AWS_REGION, AWS_ENDPOINT_URL_*) count
        // as they do for the daemon; KCLD_ variables of the process do not:
        // the application configures kcld here.
        let env = std::env::vars()
            .filter(|(name, _)| !name.starts_with("KCLD_"))
            .chain(self.options.iter().map(|(key, value)| {
                let name = format!("KCLD_{}", key.replace('.', "__").to_uppercase());
                (name, value.clone())
            }));
        let settings = kcld_config::load(self.file.as_deref(), env).map_err(Error::Config)?;
        let delivery = self.delivery.ok_or_else(|| {
            Error::Usage("no processor: call ConsumerBuilder::processors (or sink) before build")
        })?;
        Ok(Consumer {
            settings,
            delivery,
            credentials: self.credentials,
        })
    }
}
