//! A KCL MultiLangDaemon properties file as kcld settings, so that
//! `kcld multilang -p app.properties` runs an existing record processor
//! (amazon-kclpy, aws-kcl for Node, ...) with its file unchanged.
//!
//! Each property the Java daemon reads is mapped to the kcld key that means
//! the same; the rest of kcld's keys keep their defaults, can come from
//! `--config FILE`, and `KCLD_` environment variables override everything.
//! Errors name the property, not the kcld key. Unlike the Java daemon, a
//! stream is addressed by `streamArn` across accounts.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::{load, ConfigError, Settings};

/// What `kcld multilang` needs beyond [`Settings`].
#[derive(Clone, Debug)]
pub struct MultiLangSettings {
    /// `executableName`, split on spaces as the Java daemon does (no
    /// shell, no quoting): the record processor started once per shard.
    pub command: Vec<String>,
    /// Directory of the properties file: a relative executable that is not
    /// found from the working directory is looked up here.
    pub base_dir: PathBuf,
    /// `timeoutInSeconds`: the longest wait for each message of the
    /// processor; `None` waits for ever. A processor that exceeds it is
    /// restarted.
    pub timeout: Option<Duration>,
    /// Properties the Java daemon reads that kcld does not need (metrics,
    /// thread pools, KCL 3 balancing, ...).
    pub ignored: Vec<String>,
    /// Properties neither the Java daemon nor kcld knows (typos?).
    pub unknown: Vec<String>,
}

/// Properties with a kcld key of the same meaning: (property, kcld
/// environment variable, kcld key).
const DIRECT: &[(&str, &str, &str)] = &[
    (
        "applicationName",
        "KCLD_APPLICATION_NAME",
        "application_name",
    ),
    ("streamArn", "KCLD_STREAM_ARN", "stream_arn"),
    ("tableName", "KCLD_LEASE_TABLE", "lease_table"),
    ("workerId", "KCLD_WORKER_ID", "worker_id"),
    ("workerIdentifier", "KCLD_WORKER_ID", "worker_id"),
    (
        "initialPositionInStream",
        "KCLD_INITIAL_POSITION",
        "initial_position",
    ),
    (
        "failoverTimeMillis",
        "KCLD_LEASE__FAILOVER_TIME_MS",
        "lease.failover_time_ms",
    ),
    (
        "shardSyncIntervalMillis",
        "KCLD_LEASE__SHARD_SYNC_INTERVAL_MS",
        "lease.shard_sync_interval_ms",
    ),
    (
        "maxLeasesForWorker",
        "KCLD_LEASE__MAX_LEASES_PER_WORKER",
        "lease.max_leases_per_worker",
    ),
    (
        "maxLeasesToStealAtOneTime",
        "KCLD_LEASE__MAX_LEASES_TO_STEAL",
        "lease.max_leases_to_steal",
    ),
    (
        "maxRecords",
        "KCLD_POLLING__MAX_RECORDS",
        "polling.max_records",
    ),
    (
        "idleTimeBetweenReadsInMillis",
        "KCLD_POLLING__IDLE_TIME_BETWEEN_READS_MS",
        "polling.idle_time_between_reads_ms",
    ),
    (
        "kinesisEndpoint",
        "KCLD_AWS__KINESIS_ENDPOINT",
        "aws.kinesis_endpoint",
    ),
    (
        "dynamoDBEndpoint",
        "KCLD_AWS__DYNAMODB_ENDPOINT",
        "aws.dynamodb_endpoint",
    ),
    (
        "regionName",
        "KCLD_AWS__DYNAMODB_REGION",
        "aws.dynamodb_region",
    ),
    (
        "shutdownGraceMillis",
        "KCLD_SHUTDOWN_TIMEOUT_MS",
        "shutdown_timeout_ms",
    ),
];

/// Properties that choose polling when `retrievalMode` is DEFAULT, as in
/// the KCL.
const POLLING: &[&str] = &[
    "maxRecords",
    "idleTimeBetweenReadsInMillis",
    "retryGetRecordsInSeconds",
    "maxGetRecordsThreadPool",
    "millisBehindLatestThresholdForReducedTps",
];

/// Properties the Java daemon reads that kcld has no use for.
const IGNORED: &[&str] = &[
    "processingLanguage",
    "maxActiveThreads",
    "streamName",
    "callProcessRecordsEvenForEmptyRecordList",
    "parentShardPollIntervalMillis",
    "cleanupLeasesUponShardCompletion",
    "ignoreUnexpectedChildShards",
    "taskBackoffTimeMillis",
    "validateSequenceNumberBeforeCheckpointing",
    "skipShardSyncAtWorkerInitializationIfLeasesExist",
    "schedulerInitializationBackoffTimeMillis",
    "leaseAssignmentIntervalMillis",
    "initialLeaseTableReadCapacity",
    "initialLeaseTableWriteCapacity",
    "maxLeaseRenewalThreads",
    "listShardsBackoffTimeInMillis",
    "maxListShardsRetryAttempts",
    "leaseTableScanTotalSegments",
    "enablePriorityLeaseAssignment",
    "leaseTableDeletionProtectionEnabled",
    "leaseTablePitrEnabled",
    "clientVersionConfig",
    "migrateAllEntitiesToLeaseTable",
    "tableMigrationCompleteBakeTimeSeconds",
    "logWarningForTaskAfterMillis",
    "metricsBufferTimeMillis",
    "metricsMaxQueueSize",
    "metricsLevel",
    "metricsEnabledDimensions",
    "retryGetRecordsInSeconds",
    "maxGetRecordsThreadPool",
    "millisBehindLatestThresholdForReducedTps",
    "gracefulLeaseHandoffTimeoutMillis",
    "isGracefulLeaseHandoffEnabled",
    "maxDescribeStreamSummaryRetries",
    "maxDescribeStreamConsumerRetries",
    "registerStreamConsumerRetries",
    "retryBackoffMillis",
    "AwsCredentialsProviderDynamoDB",
    "AwsCredentialsProviderCloudWatch",
];

/// Prefixes of KCL 3 property families kcld does not use.
const IGNORED_PREFIXES: &[&str] = &[
    "workerMetrics",
    "coordinatorState",
    "inMemoryWorkerMetrics",
    "noOfPersistedMetrics",
    "disableWorkerMetrics",
    "maxThroughputPerHostKBps",
    "dampeningPercentage",
    "reBalanceThresholdPercentage",
    "allowThroughputOvershoot",
    "varianceBalancingFrequency",
    "staleWorkerMetricsEntryCleanupDuration",
    "kinesisClient.",
    "dynamoDbClient.",
    "cloudWatchClient.",
];

fn key_error(key: &str, problem: impl Into<String>, fix: impl Into<String>) -> ConfigError {
    ConfigError::Key {
        key: key.to_owned(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Reads `properties` (the MultiLangDaemon's file), then `config` (kcld's
/// own TOML, optional) and `env` (`KCLD_` variables win over both).
pub fn load_properties(
    properties: &Path,
    config: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Settings, MultiLangSettings), ConfigError> {
    let file = std::fs::File::open(properties).map_err(|e| ConfigError::File {
        path: properties.to_owned(),
        problem: format!(
            "cannot read it ({e}); pass the MultiLangDaemon properties file with --properties-file"
        ),
    })?;
    let props =
        java_properties::read(std::io::BufReader::new(file)).map_err(|e| ConfigError::File {
            path: properties.to_owned(),
            problem: format!("not a Java properties file: {e}"),
        })?;
    let base_dir = properties
        .parent()
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from("."));
    let mut props: Vec<(String, String)> = props
        .into_iter()
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    props.sort();
    from_properties(&props, base_dir, config, env)
}

/// [`load_properties`] on already-read properties (sorted by key).
pub fn from_properties(
    props: &[(String, String)],
    base_dir: PathBuf,
    config: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(Settings, MultiLangSettings), ConfigError> {
    let get = |name: &str| {
        props
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut ignored = BTreeSet::new();
    let mut unknown = BTreeSet::new();
    for (key, value) in props {
        if let Some((_, var, _)) = DIRECT.iter().find(|(p, _, _)| p == key) {
            vars.push(((*var).to_owned(), value.clone()));
        } else if IGNORED.contains(&key.as_str())
            || IGNORED_PREFIXES.iter().any(|p| key.starts_with(p))
        {
            ignored.insert(key.clone());
        } else if !matches!(
            key.as_str(),
            "executableName"
                | "timeoutInSeconds"
                | "initialPositionInStreamExtended"
                | "retrievalMode"
                | "consumerArn"
                | "consumerName"
                | "fanoutConfig.consumerArn"
                | "fanoutConfig.consumerName"
        ) && !key
            .to_ascii_lowercase()
            .starts_with("awscredentialsprovider")
        {
            unknown.insert(key.clone());
        }
    }

    let command: Vec<String> = get("executableName")
        .map(|v| {
            v.split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if command.is_empty() {
        return Err(key_error(
            "executableName",
            "is missing",
            "name the record processor to start for each shard, e.g. executableName = python3 sample_kclpy_app.py",
        ));
    }
    // The stream comes from streamArn, or from the kcld configuration
    // (`--config`), which may list several (`[[streams]]`).
    let no_stream_arn = || {
        let fix = match get("streamName") {
            Some(name) => format!(
                "kcld reads streams by ARN, across accounts: add streamArn = arn:aws:kinesis:<region>:<owner account>:stream/{name}"
            ),
            None => "add streamArn = arn:aws:kinesis:<region>:<owner account>:stream/<name>, or list the streams in a kcld configuration (--config) as [[streams]]".into(),
        };
        key_error("streamArn", "is missing", fix)
    };
    let missing_arn = get("streamArn").is_none();
    if missing_arn && config.is_none() {
        return Err(no_stream_arn());
    }
    let timeout = match get("timeoutInSeconds") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(s) if s > 0 => Some(Duration::from_secs(s)),
            _ => {
                return Err(key_error(
                    "timeoutInSeconds",
                    format!("{v:?} is not a number of seconds above 0"),
                    "set the longest wait for each answer of the record processor, or remove it to wait for ever",
                ))
            }
        },
    };
    if let Some(v) = get("initialPositionInStreamExtended") {
        let seconds: i64 = v.parse().map_err(|_| {
            key_error(
                "initialPositionInStreamExtended",
                format!("{v:?} is not a number"),
                "give the start time in seconds since 1970 (AT_TIMESTAMP), e.g. 1636609142",
            )
        })?;
        let ts = aws_smithy_types::DateTime::from_secs(seconds)
            .fmt(aws_smithy_types::date_time::Format::DateTime)
            .map_err(|e| {
                key_error(
                    "initialPositionInStreamExtended",
                    format!("{v:?} is out of range ({e})"),
                    "give seconds since 1970",
                )
            })?;
        vars.push(("KCLD_INITIAL_POSITION".into(), "AT_TIMESTAMP".into()));
        vars.push(("KCLD_INITIAL_TIMESTAMP".into(), ts));
    }

    // Fan-out or polling, as the KCL decides it.
    let consumer_arn = get("consumerArn").or(get("fanoutConfig.consumerArn"));
    let consumer_name = get("consumerName").or(get("fanoutConfig.consumerName"));
    let mode = get("retrievalMode")
        .unwrap_or("DEFAULT")
        .to_ascii_uppercase();
    let fan_out = match mode.as_str() {
        "POLLING" => false,
        "FANOUT" => true,
        "DEFAULT" => consumer_arn.is_some() || !POLLING.iter().any(|p| get(p).is_some()),
        other => {
            return Err(key_error(
                "retrievalMode",
                format!("{other:?} is not a retrieval mode"),
                "use POLLING, FANOUT, or DEFAULT (fan-out unless a polling property such as maxRecords is set)",
            ))
        }
    };
    if fan_out {
        match (consumer_arn, consumer_name, get("applicationName")) {
            (Some(arn), _, _) => vars.push(("KCLD_CONSUMER_ARN".into(), arn.to_owned())),
            (None, Some(name), _) | (None, None, Some(name)) => {
                vars.push(("KCLD_CONSUMER_NAME".into(), name.to_owned()))
            }
            (None, None, None) => {}
        }
    }

    // Credentials: kcld uses the SDK's default chain; an assumed role is
    // taken over.
    if let Some((_, provider)) = props
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("AwsCredentialsProvider"))
    {
        for entry in provider.split(',').map(str::trim) {
            let mut parts = entry.split('|').map(str::trim);
            let name = parts.next().unwrap_or_default();
            let short = name.rsplit('.').next().unwrap_or(name);
            if short == "StsAssumeRoleCredentialsProvider"
                || short == "KclStsAssumeRoleCredentialsProvider"
            {
                let role = parts.next().unwrap_or_default();
                let session = parts.next().unwrap_or("kcld");
                vars.push(("KCLD_AWS__ASSUME_ROLE_ARN".into(), role.to_owned()));
                vars.push((
                    "KCLD_AWS__ASSUME_ROLE_SESSION_NAME".into(),
                    session.to_owned(),
                ));
                for nested in parts {
                    if let Some(id) = nested.strip_prefix("externalId=") {
                        vars.push(("KCLD_AWS__ASSUME_ROLE_EXTERNAL_ID".into(), id.to_owned()));
                    }
                }
            }
        }
    }

    let settings = load(config, vars.into_iter().chain(env)).map_err(|e| match e {
        ConfigError::Key { key, .. } if missing_arn && key == "stream_arn" => no_stream_arn(),
        e => rename_key(e),
    })?;
    Ok((
        settings,
        MultiLangSettings {
            command,
            base_dir,
            timeout,
            ignored: ignored.into_iter().collect(),
            unknown: unknown.into_iter().collect(),
        },
    ))
}

/// An error on a kcld key set from a property names the property.
fn rename_key(e: ConfigError) -> ConfigError {
    match e {
        ConfigError::Key { key, problem, fix } => {
            let property = match key.as_str() {
                "consumer_arn" => Some("consumerArn"),
                "consumer_name" => Some("consumerName"),
                "initial_timestamp" => Some("initialPositionInStreamExtended"),
                "aws.assume_role_arn" => Some("AwsCredentialsProvider"),
                k => DIRECT
                    .iter()
                    .find(|(_, _, kk)| *kk == k)
                    .map(|(p, _, _)| *p),
            };
            ConfigError::Key {
                key: property
                    .map(|p| format!("{p} (properties file)"))
                    .unwrap_or(key),
                problem,
                fix,
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
