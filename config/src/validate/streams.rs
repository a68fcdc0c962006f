//! The streams read: `stream_arn` with the top-level consumer, start and
//! role, or each `[[streams]]` entry with its own; every error names the
//! entry's key (`streams[1].consumer_arn`).

use super::*;

/// `consumer_arn` or `consumer_name` (not both) turn fan-out on; the
/// consumer ARN must belong to `stream_arn`.
pub(super) fn validate_fan_out(
    prefix: &str,
    consumer_arn: Option<String>,
    consumer_name: Option<String>,
    raw: &RawFanOut,
    stream: &StreamArn,
) -> Result<Option<FanOutSettings>, ConfigError> {
    let key = |k: &str| format!("{prefix}{k}");
    let arn_key = if prefix.is_empty() {
        "stream_arn".to_owned()
    } else {
        key("arn")
    };
    let consumer = match (consumer_arn, consumer_name) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ConfigError::key(
                &key("consumer_name"),
                "is set together with consumer_arn",
                "set only consumer_arn (a consumer the stream owner registered and shared) or only consumer_name (kcld registers it in the stream's own account)",
            ))
        }
        (Some(text), None) => {
            let arn: ConsumerArn = text.parse().map_err(|e: ArnError| {
                ConfigError::key(
                    &key("consumer_arn"),
                    e.to_string(),
                    "copy the ConsumerARN the stream owner got from `aws kinesis register-stream-consumer` or `describe-stream-consumer`",
                )
            })?;
            if arn.stream != *stream {
                return Err(ConfigError::key(
                    &key("consumer_arn"),
                    format!("belongs to stream {}, not to {arn_key} {stream}", arn.stream),
                    format!("use a consumer registered on the stream that {arn_key} names (`aws kinesis list-stream-consumers --stream-arn <{arn_key}>` in the owner's account lists them)"),
                ));
            }
            FanOutConsumer::Arn(arn)
        }
        (None, Some(name)) => {
            if !arn::valid_name(&name) {
                return Err(ConfigError::key(
                    &key("consumer_name"),
                    format!("{name:?} cannot name a consumer"),
                    "use 1 to 128 characters of a-z, A-Z, 0-9, '_', '.', '-'",
                ));
            }
            FanOutConsumer::Name(name)
        }
    };
    Ok(Some(FanOutSettings {
        consumer,
        stall_timeout: millis(
            "fan_out.stall_timeout_ms",
            raw.stall_timeout_ms,
            60_000,
            1_000,
            3_600_000,
        )?,
        subscription_max_age: millis(
            "fan_out.subscription_max_age_ms",
            raw.subscription_max_age_ms,
            290_000,
            1_000,
            300_000,
        )?,
        registration_timeout: millis(
            "fan_out.registration_timeout_ms",
            raw.registration_timeout_ms,
            120_000,
            1_000,
            3_600_000,
        )?,
        end_check_interval: millis(
            "fan_out.end_check_interval_ms",
            raw.end_check_interval_ms,
            30_000,
            0,
            3_600_000,
        )?,
    }))
}

/// `initial_position` (and `initial_timestamp` for AT_TIMESTAMP), at the
/// top level or in a `[[streams]]` entry (`prefix`).
pub(super) fn validate_initial_position(
    prefix: &str,
    position: Option<String>,
    timestamp: Option<String>,
) -> Result<InitialPosition, ConfigError> {
    let key = |k: &str| format!("{prefix}{k}");
    let position = match non_empty(position)
        .unwrap_or_else(|| "LATEST".into())
        .to_ascii_uppercase()
        .as_str()
    {
        "TRIM_HORIZON" => InitialPosition::TrimHorizon,
        "LATEST" => InitialPosition::Latest,
        "AT_TIMESTAMP" => {
            let ts = non_empty(timestamp).ok_or_else(|| {
                ConfigError::key(
                    &key("initial_timestamp"),
                    "is required when initial_position is AT_TIMESTAMP",
                    "set an RFC 3339 time such as 2026-11-22T06:00:00Z",
                )
            })?;
            let parsed = aws_smithy_types::DateTime::from_str(
                &ts,
                aws_smithy_types::date_time::Format::DateTime,
            )
            .map_err(|e| {
                ConfigError::key(
                    &key("initial_timestamp"),
                    format!("{ts:?} is not an RFC 3339 time ({e})"),
                    "write it like 2026-11-22T06:00:00Z or 2026-11-22T07:00:00+01:00",
                )
            })?;
            let epoch_millis = parsed.to_millis().map_err(|e| {
                ConfigError::key(
                    &key("initial_timestamp"),
                    format!("{ts:?} is out of range ({e})"),
                    "use a time after 1970",
                )
            })?;
            InitialPosition::AtTimestamp {
                rfc3339: ts,
                epoch_millis,
            }
        }
        other => {
            return Err(ConfigError::key(
                &key("initial_position"),
                format!("{other:?} is not a position"),
                "use TRIM_HORIZON, LATEST or AT_TIMESTAMP (with initial_timestamp)",
            ))
        }
    };
    Ok(position)
}

/// A role to assume for Kinesis calls: `aws.assume_role_*`, or a
/// `[[streams]]` entry's own (`prefix`).
pub(super) fn validate_assume_role(
    prefix: &str,
    role_arn: Option<String>,
    session_name: Option<String>,
    external_id: Option<String>,
) -> Result<Option<AssumeRole>, ConfigError> {
    let role = match non_empty(role_arn) {
        None => None,
        Some(role_arn) => {
            if arn::role_account(&role_arn).is_none() {
                return Err(ConfigError::key(
                    &format!("{prefix}assume_role_arn"),
                    format!("{role_arn:?} is not an IAM role ARN"),
                    "use arn:aws:iam::<account>:role/<name>, or remove it to use the default credentials for Kinesis",
                ));
            }
            Some(AssumeRole {
                role_arn,
                session_name: non_empty(session_name).unwrap_or_else(|| "kcld".into()),
                external_id: non_empty(external_id),
            })
        }
    };
    Ok(role)
}

pub(super) fn parse_stream_arn(key: &str, text: &str) -> Result<StreamArn, ConfigError> {
    text.parse().map_err(|e: ArnError| {
        ConfigError::key(
            key,
            e.to_string(),
            "copy the ARN from the stream owner's console or `aws kinesis describe-stream-summary`",
        )
    })
}

pub(super) fn required_arn(i: usize, arn: Option<String>) -> Result<String, ConfigError> {
    non_empty(arn).ok_or_else(|| {
        ConfigError::key(
            &format!("streams[{i}].arn"),
            "is missing",
            "give every [[streams]] entry the ARN of its stream, e.g. arn = \"arn:aws:kinesis:us-east-1:111111111111:stream/orders\"",
        )
    })
}

/// The `[[streams]]` entries: each with its ARN, and its own consumer,
/// start and role or the top level's (`initial_position`,
/// `aws.assume_role_*`). A stream listed twice is refused: its shards
/// would be leased twice over.
pub(super) fn validate_streams(
    raw: Vec<RawStream>,
    initial_position: &InitialPosition,
    assume_role: &Option<AssumeRole>,
    fan_out: &RawFanOut,
) -> Result<Vec<StreamSettings>, ConfigError> {
    let mut streams: Vec<StreamSettings> = Vec::with_capacity(raw.len());
    for (i, entry) in raw.into_iter().enumerate() {
        let prefix = format!("streams[{i}].");
        let arn = parse_stream_arn(&format!("{prefix}arn"), &required_arn(i, entry.arn)?)?;
        if let Some(j) = streams.iter().position(|s| s.arn == arn) {
            return Err(ConfigError::key(
                &format!("{prefix}arn"),
                format!("lists {arn} again (streams[{j}] has it)"),
                "list each stream once",
            ));
        }
        let initial_position =
            if entry.initial_position.is_some() || entry.initial_timestamp.is_some() {
                validate_initial_position(&prefix, entry.initial_position, entry.initial_timestamp)?
            } else {
                initial_position.clone()
            };
        let own_role = validate_assume_role(
            &prefix,
            entry.assume_role_arn,
            entry.assume_role_session_name,
            entry.assume_role_external_id,
        )?;
        let fan_out = validate_fan_out(
            &prefix,
            non_empty(entry.consumer_arn),
            non_empty(entry.consumer_name),
            fan_out,
            &arn,
        )?;
        let sink_url = non_empty(entry.sink_url);
        if let Some(url) = &sink_url {
            if !url.starts_with("http://") {
                return Err(ConfigError::key(
                    &format!("{prefix}sink_url"),
                    format!("{url:?} is not an http:// URL"),
                    "use http://127.0.0.1:<port>/<path>, or remove it to post to sink.url",
                ));
            }
        }
        streams.push(StreamSettings {
            arn,
            fan_out,
            initial_position,
            assume_role: own_role.or_else(|| assume_role.clone()),
            sink_url,
        });
    }
    Ok(streams)
}

/// What a DynamoDB table's stream cannot do: enhanced fan-out, and starting
/// at a time (DynamoDB Streams has TRIM_HORIZON and LATEST only).
pub(super) fn check_dynamodb(prefix: &str, stream: &StreamSettings) -> Result<(), ConfigError> {
    if !stream.arn.is_dynamodb() {
        return Ok(());
    }
    if let Some(f) = &stream.fan_out {
        return Err(ConfigError::key(
            &format!(
                "{prefix}{}",
                match f.consumer {
                    FanOutConsumer::Arn(_) => "consumer_arn",
                    FanOutConsumer::Name(_) => "consumer_name",
                }
            ),
            format!(
                "is set for the DynamoDB stream {}, which has no enhanced fan-out",
                stream.arn
            ),
            "remove it: kcld reads DynamoDB streams with GetRecords",
        ));
    }
    if matches!(stream.initial_position, InitialPosition::AtTimestamp { .. }) {
        return Err(ConfigError::key(
            &format!("{prefix}initial_position"),
            format!(
                "AT_TIMESTAMP is not a position of the DynamoDB stream {}",
                stream.arn
            ),
            "use TRIM_HORIZON (the oldest change kept, up to 24 hours) or LATEST",
        ));
    }
    Ok(())
}
