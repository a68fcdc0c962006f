//! The command line: `kcld run`, `kcld check-config`, `kcld --version`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use kcld_config::{LogFormat, Settings};
use tokio_util::sync::CancellationToken;

use crate::error::Result;
use crate::{logging, shutdown, worker};

/// kcld: a KCL-compatible consumer for Kinesis data streams shared across
/// AWS accounts. It reads every shard of a stream given by ARN and hands the
/// records to your application.
#[derive(Debug, Parser)]
#[command(name = "kcld", version, about, long_about = None, after_help = "\
Configuration: a TOML file (see config/kcld.example.toml for every key and its \
default) plus environment variables: KCLD_<KEY>, and KCLD_<SECTION>__<KEY> for \
keys in a section (KCLD_AWS__KINESIS_ENDPOINT). Credentials come from the AWS \
SDK's default chain. AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_KINESIS and \
AWS_ENDPOINT_URL_DYNAMODB are honoured.\n\nExit codes: 0 done, 1 runtime error, \
2 configuration or usage error.")]
pub struct Cli {
    /// Configuration file (TOML).
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "KCLD_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,

    /// Log format on stderr; overrides log.format.
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the stream and deliver its records until SIGTERM or SIGINT.
    Run,
    /// Print the effective configuration (file, environment and defaults
    /// resolved) and exit: 0 when valid, 2 on any error.
    CheckConfig,
}

/// Runs the command; the caller turns errors into one line and an exit code.
pub async fn run(cli: Cli) -> Result<()> {
    let mut settings: Settings = kcld_config::load(cli.config.as_deref(), std::env::vars())?;
    if let Some(format) = cli.log_format {
        settings.log.format = match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    match cli.command {
        Command::CheckConfig => {
            print!("{}", settings.to_toml());
            Ok(())
        }
        Command::Run => {
            logging::init(&settings.log.format, &settings.log.level);
            let token = CancellationToken::new();
            shutdown::on_signal(token.clone());
            worker::run(settings, token).await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}
