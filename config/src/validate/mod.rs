//! Raw configuration into [`Settings`]: every value checked, every derived
//! value resolved; each error names the key and the fix.

use std::collections::HashMap;
use std::time::Duration;

use crate::raw::*;
use crate::*;

mod sink;
mod streams;
use sink::validate_http_sink;
use streams::{
    check_dynamodb, parse_stream_arn, required_arn, validate_assume_role, validate_fan_out,
    validate_initial_position, validate_streams,
};

pub(crate) fn validate(
    mut raw: RawSettings,
    env: &HashMap<String, String>,
) -> Result<Settings, ConfigError> {
    let application_name = non_empty(raw.application_name).ok_or_else(|| {
        ConfigError::key(
            "application_name",
            "is missing",
            "set it in the config file or KCLD_APPLICATION_NAME; it names the lease table, as in the KCL",
        )
    })?;
    check_table_name("application_name", &application_name)?;

    let raw_streams = std::mem::take(&mut raw.streams);
    let arn_text = non_empty(raw.stream_arn.take());
    if arn_text.is_some() && !raw_streams.is_empty() {
        return Err(ConfigError::key(
            "stream_arn",
            "is set together with [[streams]]",
            "move it into a [[streams]] entry (arn = \"...\") or remove the [[streams]] entries",
        ));
    }
    let stream_arn: StreamArn = match (&arn_text, raw_streams.first()) {
        (Some(text), _) => parse_stream_arn("stream_arn", text)?,
        (None, Some(first)) => {
            parse_stream_arn("streams[0].arn", &required_arn(0, first.arn.clone())?)?
        }
        (None, None) => {
            return Err(ConfigError::key(
                "stream_arn",
                "is missing",
                "set it in the config file or KCLD_STREAM_ARN, e.g. arn:aws:kinesis:us-east-1:111111111111:stream/orders (or list several streams as [[streams]] entries)",
            ))
        }
    };

    let lease_table = non_empty(raw.lease_table).unwrap_or_else(|| application_name.clone());
    check_table_name("lease_table", &lease_table)?;

    let worker_id = non_empty(raw.worker_id).unwrap_or_else(default_worker_id);

    let initial_position =
        validate_initial_position("", raw.initial_position, raw.initial_timestamp)?;

    let aws = validate_aws(raw.aws, &stream_arn, env)?;

    let ms = in_range;
    let shutdown_timeout = millis(
        "shutdown_timeout_ms",
        raw.shutdown_timeout_ms,
        20_000,
        1_000,
        3_600_000,
    )?;
    let fan_out = validate_fan_out(
        "",
        non_empty(raw.consumer_arn),
        non_empty(raw.consumer_name),
        &raw.fan_out,
        &stream_arn,
    )?;
    let multi_stream = !raw_streams.is_empty();
    let streams = if multi_stream {
        if let Some(f) = &fan_out {
            return Err(ConfigError::key(
                match f.consumer {
                    FanOutConsumer::Arn(_) => "consumer_arn",
                    FanOutConsumer::Name(_) => "consumer_name",
                },
                "is set together with [[streams]]",
                "set consumer_arn or consumer_name in the [[streams]] entry of the stream it reads",
            ));
        }
        validate_streams(
            raw_streams,
            &initial_position,
            &aws.assume_role,
            &raw.fan_out,
        )?
    } else {
        vec![StreamSettings {
            arn: stream_arn.clone(),
            fan_out: fan_out.clone(),
            initial_position: initial_position.clone(),
            assume_role: aws.assume_role.clone(),
            sink_url: None,
        }]
    };
    for (i, stream) in streams.iter().enumerate() {
        let prefix = if multi_stream {
            format!("streams[{i}].")
        } else {
            String::new()
        };
        check_dynamodb(&prefix, stream)?;
    }
    let store = match non_empty(raw.lease.store)
        .unwrap_or_else(|| "dynamodb".into())
        .as_str()
    {
        "dynamodb" => LeaseStore::Dynamodb,
        "memory" => LeaseStore::Memory,
        other => {
            return Err(ConfigError::key(
                "lease.store",
                format!("{other:?} is not a lease store"),
                "use dynamodb (shared, KCL-compatible) or memory (one instance, no table)",
            ))
        }
    };
    if store == LeaseStore::Memory && streams.len() > 1 {
        return Err(ConfigError::key(
            "lease.store",
            "\"memory\" reads one stream, and [[streams]] lists several",
            "use lease.store = \"dynamodb\" (the default) to read several streams",
        ));
    }
    let failover_time = millis(
        "lease.failover_time_ms",
        raw.lease.failover_time_ms,
        10_000,
        1_000,
        3_600_000,
    )?;
    let lease = LeaseSettings {
        store,
        failover_time,
        // The KCL's: its taker runs every twice the failover time (probes
        // between scans keep the takeover within about the failover time).
        take_interval: millis(
            "lease.take_interval_ms",
            raw.lease.take_interval_ms,
            i64::try_from((2 * failover_time.as_millis()).min(3_600_000)).unwrap_or(3_600_000),
            100,
            3_600_000,
        )?,
        probe_interval: millis(
            "lease.probe_interval_ms",
            raw.lease.probe_interval_ms,
            1_000,
            100,
            3_600_000,
        )?,
        probe_budget_percent: ms(
            "lease.probe_budget_percent",
            raw.lease.probe_budget_percent,
            1,
            0,
            100,
        )? as u32,
        shard_sync_interval: millis(
            "lease.shard_sync_interval_ms",
            raw.lease.shard_sync_interval_ms,
            60_000,
            1_000,
            86_400_000,
        )?,
        max_leases_per_worker: ms(
            "lease.max_leases_per_worker",
            raw.lease.max_leases_per_worker,
            0,
            0,
            1_000_000,
        )?,
        max_leases_to_steal: ms(
            "lease.max_leases_to_steal",
            raw.lease.max_leases_to_steal,
            1,
            0,
            1_000_000,
        )?,
    };
    let max_idle_time = millis(
        "polling.max_idle_time_ms",
        raw.polling.max_idle_time_ms,
        5_000,
        0,
        300_000,
    )?;
    let prefetch_bytes = ms(
        "polling.prefetch_bytes",
        raw.polling.prefetch_bytes,
        8 << 20,
        1 << 16,
        1 << 32,
    )?;
    let prefetch_total_bytes = ms(
        "polling.prefetch_total_bytes",
        raw.polling.prefetch_total_bytes,
        256 << 20,
        1 << 20,
        1 << 40,
    )?;
    let checkpoint = CheckpointSettings {
        interval: millis(
            "checkpoint.interval_ms",
            raw.checkpoint.interval_ms,
            5_000,
            0,
            3_600_000,
        )?,
        max_records: ms(
            "checkpoint.max_records",
            raw.checkpoint.max_records,
            10_000,
            1,
            1_000_000_000,
        )?,
    };

    let max_records = raw.polling.max_records.unwrap_or(10_000);
    if !(1..=10_000).contains(&max_records) {
        return Err(ConfigError::key(
            "polling.max_records",
            format!("{max_records} is out of range"),
            "GetRecords takes 1 to 10000 records per call",
        ));
    }
    let idle = raw.polling.idle_time_between_reads_ms.unwrap_or(1_000);
    if !(0..=300_000).contains(&idle) {
        return Err(ConfigError::key(
            "polling.idle_time_between_reads_ms",
            format!("{idle} is out of range"),
            "use 0 to 300000 milliseconds",
        ));
    }

    let kind = match non_empty(raw.sink.kind.clone())
        .unwrap_or_else(|| "stdout".into())
        .as_str()
    {
        "stdout" => SinkKind::Stdout,
        "http" => SinkKind::Http,
        "s3" => SinkKind::S3,
        other => {
            return Err(ConfigError::key(
                "sink.type",
                format!("{other:?} is not a sink"),
                "use stdout, http or s3",
            ))
        }
    };
    let s3 = if kind == SinkKind::S3 {
        Some(sink::validate_s3_sink(&raw.sink.s3)?)
    } else {
        None
    };
    let http = if kind == SinkKind::Http {
        Some(validate_http_sink(&raw.sink)?)
    } else {
        None
    };
    if kind != SinkKind::Http {
        if let Some(i) = streams.iter().position(|s| s.sink_url.is_some()) {
            return Err(ConfigError::key(
                &format!("streams[{i}].sink_url"),
                "is set, but records go to stdout",
                "set sink.type = \"http\" (with sink.url for the streams without their own), or remove it",
            ));
        }
    }
    let invoke_identity_arn = non_empty(raw.sink.invoke_identity_arn)
        .or_else(|| aws.assume_role.as_ref().map(|r| r.role_arn.clone()))
        .unwrap_or_default();

    let format = match non_empty(raw.log.format)
        .unwrap_or_else(|| "text".into())
        .as_str()
    {
        "text" => LogFormat::Text,
        "json" => LogFormat::Json,
        other => {
            return Err(ConfigError::key(
                "log.format",
                format!("{other:?} is not a log format"),
                "use text or json",
            ))
        }
    };
    let level = non_empty(raw.log.level).unwrap_or_else(|| "info".into());
    let listen = match raw.ops.listen.map(|s| s.trim().to_owned()) {
        None => Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9898))),
        Some(s) if s.is_empty() || s == "off" => None,
        Some(s) => Some(s.parse().map_err(|_| {
            ConfigError::key(
                "ops.listen",
                format!("{s:?} is not an address and port"),
                "write it like 127.0.0.1:9898 (0.0.0.0:9898 for a sidecar probe), or off",
            )
        })?),
    };

    Ok(Settings {
        warnings: Vec::new(),
        origins: Default::default(),
        application_name,
        stream_arn,
        streams,
        multi_stream,
        lease_table,
        worker_id,
        initial_position,
        shutdown_timeout,
        fan_out,
        aws,
        lease,
        checkpoint,
        polling: PollingSettings {
            max_records: max_records as i32,
            idle_time_between_reads: Duration::from_millis(idle as u64),
            max_idle_time,
            prefetch_bytes,
            prefetch_total_bytes,
        },
        sink: SinkSettings {
            kind,
            invoke_identity_arn,
            http,
            s3,
        },
        log: LogSettings { format, level },
        ops: OpsSettings { listen },
        filter: validate_filter(raw.filter)?,
    })
}

/// `filter.patterns`: each must parse as Lambda's filter criteria.
fn validate_filter(raw: RawFilter) -> Result<FilterSettings, ConfigError> {
    let patterns = raw.patterns.unwrap_or_default();
    kcld_records::filter::Filters::parse(&patterns, kcld_records::filter::RecordShape::Kinesis)
        .map_err(|e| {
            ConfigError::key(
                "filter.patterns",
                e.to_string(),
                "write each pattern as Lambda's filter criteria, a JSON object of fields and lists of rules, e.g. '{\"data\": {\"status\": [\"shipped\"]}}'",
            )
        })?;
    Ok(FilterSettings { patterns })
}

fn validate_aws(
    raw: RawAws,
    stream: &StreamArn,
    env: &HashMap<String, String>,
) -> Result<AwsSettings, ConfigError> {
    let env_value = |name: &str| non_empty(env.get(name).cloned());
    let all = non_empty(raw.endpoint);
    let resolve = |key: &str, own: Option<String>, service_env: &str| {
        let chosen = own
            .map(|v| (key.to_owned(), v))
            .or_else(|| env_value(service_env).map(|v| (service_env.to_owned(), v)))
            .or_else(|| all.clone().map(|v| ("aws.endpoint".to_owned(), v)))
            .or_else(|| env_value("AWS_ENDPOINT_URL").map(|v| ("AWS_ENDPOINT_URL".to_owned(), v)));
        match chosen {
            None => Ok(None),
            Some((from, url)) if url.starts_with("http://") || url.starts_with("https://") => {
                let _ = from;
                Ok(Some(url))
            }
            Some((from, url)) => Err(ConfigError::key(
                &from,
                format!("{url:?} is not an endpoint URL"),
                "write it with its scheme, e.g. http://127.0.0.1:4566 or https://kinesis.us-east-1.amazonaws.com",
            )),
        }
    };
    let kinesis_endpoint = resolve(
        "aws.kinesis_endpoint",
        non_empty(raw.kinesis_endpoint),
        "AWS_ENDPOINT_URL_KINESIS",
    )?;
    let dynamodb_endpoint = resolve(
        "aws.dynamodb_endpoint",
        non_empty(raw.dynamodb_endpoint),
        "AWS_ENDPOINT_URL_DYNAMODB",
    )?;
    let dynamodb_streams_endpoint = resolve(
        "aws.dynamodb_streams_endpoint",
        non_empty(raw.dynamodb_streams_endpoint),
        "AWS_ENDPOINT_URL_DYNAMODB_STREAMS",
    )?;
    let s3_endpoint = resolve(
        "aws.s3_endpoint",
        non_empty(raw.s3_endpoint),
        "AWS_ENDPOINT_URL_S3",
    )?;
    let sqs_endpoint = resolve(
        "aws.sqs_endpoint",
        non_empty(raw.sqs_endpoint),
        "AWS_ENDPOINT_URL_SQS",
    )?;
    let sns_endpoint = resolve(
        "aws.sns_endpoint",
        non_empty(raw.sns_endpoint),
        "AWS_ENDPOINT_URL_SNS",
    )?;
    let sts_endpoint = resolve(
        "aws.sts_endpoint",
        non_empty(raw.sts_endpoint),
        "AWS_ENDPOINT_URL_STS",
    )?;

    let ca_file = non_empty(raw.ca_file).map(PathBuf::from);
    if let Some(path) = &ca_file {
        if !path.is_file() {
            return Err(ConfigError::key(
                "aws.ca_file",
                format!("{} does not exist", path.display()),
                "point it at a PEM file of the CA that signed the endpoint's certificate, or remove it",
            ));
        }
    }

    let assume_role = validate_assume_role(
        "aws.",
        raw.assume_role_arn,
        raw.assume_role_session_name,
        raw.assume_role_external_id,
    )?;

    // The lease table lives in the consumer's region: the key, else the
    // SDK's region variables, else (decided at start, where the profile
    // and instance metadata can be read) the SDK's region chain, else the
    // stream's region.
    let (dynamodb_region, dynamodb_region_from) = match non_empty(raw.dynamodb_region) {
        Some(r) => (r, "aws.dynamodb_region".to_owned()),
        None => match env_value("AWS_REGION").or_else(|| env_value("AWS_DEFAULT_REGION")) {
            Some(r) if env_value("AWS_REGION").is_some() => (r, "AWS_REGION".to_owned()),
            Some(r) => (r, "AWS_DEFAULT_REGION".to_owned()),
            None => (
                stream.region.clone(),
                "the stream's ARN, unless the AWS profile or instance metadata names a region at start"
                    .to_owned(),
            ),
        },
    };
    let dynamodb_region_fallback = dynamodb_region_from.starts_with("the stream's ARN");
    if !is_region(&dynamodb_region) {
        return Err(ConfigError::key(
            &dynamodb_region_from,
            format!("{dynamodb_region:?} is not an AWS region"),
            "write it like us-east-1 or eu-west-2 (the lease table's region, in the consumer's account)",
        ));
    }

    Ok(AwsSettings {
        kinesis_endpoint,
        dynamodb_endpoint,
        dynamodb_streams_endpoint,
        s3_endpoint,
        sqs_endpoint,
        sns_endpoint,
        sts_endpoint,
        dynamodb_region,
        dynamodb_region_from,
        dynamodb_region_fallback,
        ca_file,
        assume_role,
    })
}

/// An AWS region name: lowercase words and a number joined by hyphens
/// (`us-east-1`, `us-gov-west-1`, `cn-north-1`).
fn is_region(name: &str) -> bool {
    let parts: Vec<&str> = name.split('-').collect();
    parts.len() >= 3
        && name.len() <= 25
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].bytes().all(|b| b.is_ascii_digit())
        && !parts[parts.len() - 1].is_empty()
}

/// A whole number setting: `default` when unset, else within `min..=max`.
fn in_range(
    key: &str,
    v: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<u64, ConfigError> {
    let v = v.unwrap_or(default);
    if (min..=max).contains(&v) {
        Ok(v as u64)
    } else {
        Err(ConfigError::key(
            key,
            format!("{v} is out of range"),
            format!("use {min} to {max}"),
        ))
    }
}

/// [`in_range`] for a key in milliseconds.
fn millis(
    key: &str,
    v: Option<i64>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<Duration, ConfigError> {
    in_range(key, v, default, min, max).map(Duration::from_millis)
}

/// DynamoDB table names: 3 to 255 characters of a-z, A-Z, 0-9, '_', '-', '.'.
fn check_table_name(key: &str, name: &str) -> Result<(), ConfigError> {
    let ok = (3..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::key(
            key,
            format!("{name:?} cannot name a DynamoDB lease table"),
            "use 3 to 255 characters of a-z, A-Z, 0-9, '_', '-', '.'",
        ))
    }
}

/// `<hostname>-<uuid>`: unique per process, and says which host it runs on.
fn default_worker_id() -> String {
    let host = gethostname::gethostname().to_string_lossy().into_owned();
    let host = if host.is_empty() {
        "kcld".to_owned()
    } else {
        host
    };
    format!("{host}-{}", uuid::Uuid::new_v4())
}
