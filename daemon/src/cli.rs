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

    /// The subcommand to run.
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether the final error should be a JSON line like the logs:
    /// `--log-format json`, or `KCLD_LOG__FORMAT=json` (read before the
    /// configuration, which may be what failed).
    pub fn json_errors(&self) -> bool {
        match self.log_format {
            Some(LogFormatArg::Json) => true,
            Some(LogFormatArg::Text) => false,
            None => std::env::var("KCLD_LOG__FORMAT").is_ok_and(|f| f.trim() == "json"),
        }
    }
}

/// The values of `--log-format`, as for `log.format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormatArg {
    /// Plain lines for people.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// What kcld is asked to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read the stream and deliver its records until SIGTERM or SIGINT.
    Run,
    /// Print the effective configuration (file, environment and defaults
    /// resolved) and exit: 0 when valid, 2 on any error.
    CheckConfig,
    /// Run record processors written for the KCL's MultiLangDaemon
    /// (amazon-kclpy, aws-kcl, ...) unchanged: one process per leased
    /// shard, speaking the MultiLang protocol, configured by the same
    /// properties file (streamArn reads across accounts).
    Multilang(MultiLangArgs),
    /// Print, as one JSON document, the resource policy the stream owner
    /// attaches (kinesis:DescribeStream included), the consumer resource
    /// policy for enhanced fan-out, the consumer role's IAM policy (stream,
    /// lease table, KMS key) and the commands that apply them. Reads the
    /// stream and lease table from the configuration unless given here.
    Policy(PolicyArgs),
    /// Call every API the configuration needs (credentials, the stream's
    /// describe, list, iterator and read calls, the lease table's reads and
    /// conditional writes) and print what passed; for each failure, the
    /// missing action, which account must fix it, and the statement to add.
    /// Exit 0 only when every check passes.
    Doctor {
        /// JSON for scripts instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print kcld's manual page (roff, from this command line's help) to
    /// stdout: what the Debian package installs as kcld(1).
    #[command(hide = true)]
    Manpage,
    /// Show the lease table: every shard's owner, whether its lease is being
    /// renewed and when status last saw it renewed, its checkpoint, how far
    /// the checkpoint is behind the shard's tip (one read per shard), parents
    /// and children.
    Status {
        /// JSON for scripts instead of a table (with --watch, one JSON line
        /// per refresh).
        #[arg(long)]
        json: bool,
        /// How long to watch lease counters to tell live owners.
        #[arg(long, default_value_t = 2000, value_name = "MS")]
        sample_ms: u64,
        /// Refresh every MS milliseconds (default 2000) until interrupted,
        /// redrawing the table in place.
        #[arg(long, value_name = "MS", num_args = 0..=1, default_missing_value = "2000")]
        watch: Option<u64>,
    },
}

/// The arguments of `kcld multilang`, as the KCL's MultiLangDaemon takes them.
#[derive(Debug, clap::Args)]
pub struct MultiLangArgs {
    /// The MultiLangDaemon properties file (executableName, applicationName,
    /// streamArn, ...).
    #[arg(short = 'p', long = "properties-file", value_name = "FILE")]
    pub properties_file: Option<PathBuf>,
    /// The properties file, as the Java daemon also takes it.
    #[arg(value_name = "FILE", conflicts_with = "properties_file")]
    pub file: Option<PathBuf>,
    /// The Java daemon's logback file: accepted and ignored (kcld logs with
    /// log.level and --log-format).
    #[arg(short = 'l', long = "log-configuration", value_name = "FILE")]
    pub log_configuration: Option<PathBuf>,
}

/// The arguments of `kcld policy`.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// The consumer's IAM role ARN: the principal of the resource policies.
    #[arg(long, value_name = "ROLE_ARN")]
    pub consumer_role_arn: String,
    /// The shared stream (default: stream_arn from the configuration).
    #[arg(long, value_name = "ARN")]
    pub stream_arn: Option<String>,
    /// A shared enhanced fan-out consumer ARN, to read through fan-out.
    #[arg(long, value_name = "ARN", conflicts_with = "consumer_name")]
    pub consumer_arn: Option<String>,
    /// An enhanced fan-out consumer by name: kcld registers it on a stream
    /// of its own account (the role then needs RegisterStreamConsumer); on
    /// another account's stream its owner registers and shares it.
    #[arg(long, value_name = "NAME")]
    pub consumer_name: Option<String>,
    /// The stream's customer-managed KMS key, for an encrypted stream.
    #[arg(long, value_name = "ARN")]
    pub kms_key_arn: Option<String>,
    /// The lease table (default: from the configuration, else the
    /// application name `kcld`).
    #[arg(long, value_name = "NAME")]
    pub lease_table: Option<String>,
}

/// Runs the command; the caller turns errors into one line and an exit code.
pub async fn run(cli: Cli) -> Result<()> {
    if let Command::Policy(args) = &cli.command {
        return print_policy(args, cli.config.as_deref()).await;
    }
    if let Command::Multilang(args) = &cli.command {
        return run_multilang(args, &cli).await;
    }
    if let Command::Manpage = &cli.command {
        return print_manpage();
    }
    let mut settings: Settings = kcld_config::load(cli.config.as_deref(), std::env::vars())?;
    if !matches!(cli.command, Command::Run) {
        // No logger yet for the one-shot commands: straight to stderr.
        for warning in &settings.warnings {
            eprintln!("kcld: warning: {warning}");
        }
    }
    if let Some(format) = cli.log_format {
        settings.log.format = match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    if !matches!(cli.command, Command::CheckConfig) {
        crate::aws::settle_consumer_region(&mut settings).await;
    }
    match cli.command {
        Command::CheckConfig => {
            print!("{}", settings.to_toml());
            Ok(())
        }
        Command::Policy(_) | Command::Multilang(_) | Command::Manpage => Ok(()),
        Command::Doctor { json } => {
            let checks = crate::doctor::run(&settings).await;
            print_as(json, checks.as_slice(), crate::doctor::render)?;
            let failed = checks.iter().filter(|c| !c.ok).count();
            if failed > 0 {
                return Err(crate::Error::ChecksFailed { failed });
            }
            Ok(())
        }
        Command::Status {
            json,
            sample_ms,
            watch: None,
        } => {
            let leases =
                crate::status::collect(&settings, std::time::Duration::from_millis(sample_ms))
                    .await?;
            print_as(json, leases.as_slice(), crate::status::render)?;
            Ok(())
        }
        Command::Status {
            json,
            sample_ms,
            watch: Some(every),
        } => watch_status(&settings, json, sample_ms, every).await,
        Command::Run => {
            logging::init(&settings.log.format, &settings.log.level);
            for warning in &settings.warnings {
                tracing::warn!("{warning}");
            }
            let token = CancellationToken::new();
            let (reload, requests) = tokio::sync::mpsc::channel(1);
            shutdown::on_signal(token.clone(), Some(reload));
            let live = crate::reload::spawn(
                cli.config.clone(),
                settings.clone(),
                requests,
                token.clone(),
            );
            worker::run_live(settings, token, live).await?;
            tracing::info!("stopped");
            Ok(())
        }
    }
}

/// kcld(1): the top-level page, then each visible command's description
/// and options as a section of its own.
fn print_manpage() -> Result<()> {
    use clap::CommandFactory;
    let command = Cli::command();
    let mut page = Vec::new();
    let io = |e: std::io::Error| crate::Error::setup("writing the manual page", e);
    clap_mangen::Man::new(command.clone())
        .render(&mut page)
        .map_err(io)?;
    for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
        let heading = format!(".SH \"KCLD {}\"\n", sub.get_name().to_uppercase());
        page.extend_from_slice(heading.as_bytes());
        let man = clap_mangen::Man::new(sub.clone());
        man.render_description_section(&mut page).map_err(io)?;
        man.render_options_section(&mut page).map_err(io)?;
    }
    std::io::Write::write_all(&mut std::io::stdout(), &page).map_err(io)
}

async fn run_multilang(args: &MultiLangArgs, cli: &Cli) -> Result<()> {
    let Some(file) = args.properties_file.as_ref().or(args.file.as_ref()) else {
        return Err(crate::Error::Config(kcld_config::ConfigError::Other(
            "kcld multilang needs the MultiLangDaemon properties file: kcld multilang -p app.properties".into(),
        )));
    };
    let (mut settings, ml) =
        kcld_config::multilang::load_properties(file, cli.config.as_deref(), std::env::vars())?;
    if let Some(format) = cli.log_format {
        settings.log.format = match format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        };
    }
    logging::init(&settings.log.format, &settings.log.level);
    for warning in &settings.warnings {
        tracing::warn!("{warning}");
    }
    if let Some(logback) = &args.log_configuration {
        tracing::info!(file = %logback.display(), "--log-configuration is the Java daemon's logback file: ignored; kcld logs by log.level and --log-format");
    }
    if !ml.ignored.is_empty() {
        tracing::info!(properties = ?ml.ignored, "properties of the Java daemon that kcld does not need");
    }
    if !ml.unknown.is_empty() {
        tracing::warn!(properties = ?ml.unknown, "properties neither the KCL nor kcld knows; check their spelling");
    }
    tracing::info!(command = ?ml.command, "record processor per shard");
    let token = CancellationToken::new();
    shutdown::on_signal(token.clone(), None);
    worker::run_with(
        settings,
        worker::Delivery::MultiLang(std::sync::Arc::new(ml)),
        token,
    )
    .await
    .map_err(in_properties_terms)?;
    tracing::info!("stopped");
    Ok(())
}

/// A fan-out registration refused on another account's stream, in the
/// properties file's words.
fn in_properties_terms(e: crate::Error) -> crate::Error {
    match e {
        crate::Error::ForeignRegistration(refused) => {
            crate::Error::Config(refused.properties_error())
        }
        other => other,
    }
}

async fn print_policy(args: &PolicyArgs, config: Option<&std::path::Path>) -> Result<()> {
    use kcld_config::{ConfigError, StreamArn};
    let bad = |key: &str, problem: String, fix: &str| {
        crate::Error::Config(ConfigError::Other(format!("--{key}: {problem}; {fix}")))
    };
    if crate::policy::role_account(&args.consumer_role_arn).is_none() {
        return Err(bad(
            "consumer-role-arn",
            format!("{:?} is not an IAM role ARN", args.consumer_role_arn),
            "use arn:aws:iam::<account>:role/<name>: resource policies name roles, not users or functions",
        ));
    }
    let mut consumer_arn = args.consumer_arn.clone();
    let mut consumer_name = args.consumer_name.clone();
    let mut notes: Vec<String> = Vec::new();
    let mut assumed: Option<kcld_config::AssumeRole> = None;
    // The sink of a configuration: its bucket and destination policies.
    let mut sink: Option<kcld_config::SinkSettings> = None;
    let (stream, table, table_region) = match &args.stream_arn {
        Some(arn) => {
            let stream: StreamArn = arn.parse().map_err(|e: kcld_config::ArnError| {
                bad("stream-arn", e.to_string(), "pass the stream's ARN")
            })?;
            // The lease table is in the consumer's region.
            let region = ["AWS_REGION", "AWS_DEFAULT_REGION"]
                .iter()
                .find_map(|v| std::env::var(v).ok().filter(|r| !r.trim().is_empty()))
                .unwrap_or_else(|| stream.region.clone());
            let table = args.lease_table.clone().unwrap_or_else(|| {
                notes.push(
                    "consumer_role_policy names the lease table <application_name>: replace it \
                     with the application's name (or pass --lease-table)"
                        .into(),
                );
                "<application_name>".into()
            });
            (stream, table, region)
        }
        None if config.is_none() && std::env::var("KCLD_STREAM_ARN").is_err() => {
            return Err(bad(
                "stream-arn",
                "missing: the policies are for one shared stream".into(),
                "pass --stream-arn arn:aws:kinesis:<region>:<owner-account>:stream/<name>, or a configuration with stream_arn",
            ));
        }
        None => {
            let mut settings = kcld_config::load(config, std::env::vars())?;
            crate::aws::settle_consumer_region(&mut settings).await;
            if settings.streams.len() > 1 {
                return print_policies_for_streams(args, &settings);
            }
            if consumer_arn.is_none() && consumer_name.is_none() {
                match settings.fan_out.as_ref().map(|f| &f.consumer) {
                    Some(kcld_config::FanOutConsumer::Arn(arn)) => {
                        consumer_arn = Some(arn.to_string())
                    }
                    Some(kcld_config::FanOutConsumer::Name(name)) => {
                        consumer_name = Some(name.clone())
                    }
                    None => {}
                }
            }
            let table = args.lease_table.clone().unwrap_or(settings.lease_table);
            assumed = settings.aws.assume_role.clone();
            sink = Some(settings.sink);
            (settings.stream_arn, table, settings.aws.dynamodb_region)
        }
    };
    if let Some(name) = consumer_name
        .as_deref()
        .filter(|n| !kcld_config::arn::valid_name(n))
    {
        return Err(bad(
            "consumer-name",
            format!("{name:?} is not a Kinesis consumer name"),
            "use 1 to 128 letters, digits, '_', '.' or '-'",
        ));
    }
    if let Some(key) = args.kms_key_arn.as_deref().filter(|k| !is_kms_key_arn(k)) {
        return Err(bad(
            "kms-key-arn",
            format!("{key:?} is not a KMS key ARN"),
            "pass the stream's key as arn:aws:kms:<region>:<owner-account>:key/<key-id> (`aws kinesis describe-stream-summary` shows its KeyId); an alias cannot be granted in a policy",
        ));
    }
    if let Some(text) = &consumer_arn {
        let parsed: kcld_config::ConsumerArn =
            text.parse().map_err(|e: kcld_config::ArnError| {
                bad(
                    "consumer-arn",
                    e.to_string(),
                    "pass the ConsumerARN the stream owner registered",
                )
            })?;
        if parsed.stream != stream {
            return Err(bad(
                "consumer-arn",
                format!("belongs to stream {}, not {stream}", parsed.stream),
                "pass a consumer of the same stream",
            ));
        }
    }
    let mut doc = crate::policy::policies(&crate::policy::PolicyRequest {
        stream: &stream,
        role_arn: &args.consumer_role_arn,
        consumer_arn: consumer_arn.as_deref(),
        consumer_name: consumer_name.as_deref(),
        kms_key_arn: args.kms_key_arn.as_deref(),
        lease_table: &table,
        lease_table_region: &table_region,
        assumed_with_external_id: assumed.as_ref().map(|r| r.external_id.as_deref()),
    });
    if let Some(sink) = &sink {
        crate::policy::add_delivery(&mut doc, sink, &args.consumer_role_arn);
    }
    if !notes.is_empty() {
        doc["notes"] = serde_json::json!(notes);
    }
    print_json(&doc)?;
    Ok(())
}

/// `arn:<partition>:kms:<region>:<12-digit account>:key/<id>`: the form a
/// key policy statement and an IAM `Resource` take (an alias ARN is not).
fn is_kms_key_arn(text: &str) -> bool {
    let parts: Vec<&str> = text.splitn(6, ':').collect();
    matches!(parts.as_slice(), ["arn", partition, "kms", region, account, resource]
    if !partition.is_empty()
        && !region.is_empty()
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && resource.strip_prefix("key/").is_some_and(|id| {
            !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        }))
}

/// `kcld policy` over a configuration of several streams: the consumer
/// and the KMS key are per stream, so they come from the file, never from
/// the command line.
fn print_policies_for_streams(args: &PolicyArgs, settings: &Settings) -> Result<()> {
    for (flag, given) in [
        ("consumer-arn", args.consumer_arn.is_some()),
        ("consumer-name", args.consumer_name.is_some()),
        ("kms-key-arn", args.kms_key_arn.is_some()),
    ] {
        if given {
            return Err(crate::Error::Config(kcld_config::ConfigError::Other(format!(
                "--{flag}: the configuration lists {} streams and this is one stream's; set it in \
                 that stream's [[streams]] entry, or run kcld policy --stream-arn <that stream> --{flag} ...",
                settings.streams.len()
            ))));
        }
    }
    let streams: Vec<crate::policy::StreamPolicyRequest<'_>> = settings
        .streams
        .iter()
        .map(|s| {
            let consumer = s.fan_out.as_ref().map(|f| &f.consumer);
            crate::policy::StreamPolicyRequest {
                stream: &s.arn,
                consumer_arn: match consumer {
                    Some(kcld_config::FanOutConsumer::Arn(arn)) => Some(arn.to_string()),
                    _ => None,
                },
                consumer_name: match consumer {
                    Some(kcld_config::FanOutConsumer::Name(name)) => Some(name.as_str()),
                    _ => None,
                },
                assume_role: s
                    .assume_role
                    .as_ref()
                    .map(|r| (r.role_arn.as_str(), r.external_id.as_deref())),
            }
        })
        .collect();
    let table = args
        .lease_table
        .clone()
        .unwrap_or_else(|| settings.lease_table.clone());
    let mut doc = crate::policy::policies_for_streams(
        &args.consumer_role_arn,
        &streams,
        &table,
        &settings.aws.dynamodb_region,
    );
    crate::policy::add_delivery(&mut doc, &settings.sink, &args.consumer_role_arn);
    print_json(&doc)
}

/// `kcld status --watch`: the table redrawn in place (or one JSON line per
/// refresh) until interrupted.
async fn watch_status(
    settings: &kcld_config::Settings,
    json: bool,
    sample_ms: u64,
    every_ms: u64,
) -> Result<()> {
    use std::io::Write;
    let every = std::time::Duration::from_millis(every_ms.max(100));
    let mut watch = crate::status::Watch::new(settings).await?;
    watch.read().await?;
    tokio::time::sleep(std::time::Duration::from_millis(sample_ms)).await;
    loop {
        let leases = watch.read().await?;
        let text = if json {
            let mut line = serde_json::to_string(&leases)
                .map_err(|e| crate::Error::setup("status as JSON", e))?;
            line.push('\n');
            line
        } else {
            // Home, clear the screen, then the table under a heading.
            format!(
                "\x1b[H\x1b[2J{} leases of {}, every {} ms (Ctrl-C stops)\n\n{}",
                leases.len(),
                watch.table_name(),
                every.as_millis(),
                crate::status::render(&leases)
            )
        };
        let mut stdout = std::io::stdout().lock();
        if stdout
            .write_all(text.as_bytes())
            .and_then(|_| stdout.flush())
            .is_err()
        {
            // The reader went away (a closed pipe): nothing left to do.
            return Ok(());
        }
        drop(stdout);
        tokio::time::sleep(every).await;
    }
}

/// Prints `value` as pretty JSON with `--json`, else as `render` writes it.
fn print_as<T: serde::Serialize + ?Sized>(
    json: bool,
    value: &T,
    render: impl FnOnce(&T) -> String,
) -> Result<()> {
    if json {
        print_json(value)
    } else {
        print!("{}", render(value));
        Ok(())
    }
}

fn print_json<T: serde::Serialize + ?Sized>(value: &T) -> Result<()> {
    let text =
        serde_json::to_string_pretty(value).map_err(|e| crate::Error::setup("JSON output", e))?;
    println!("{text}");
    Ok(())
}
