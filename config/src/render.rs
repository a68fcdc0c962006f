//! `kcld check-config`: the effective configuration as a file that loads
//! back to the same settings, in the keys and sections of
//! `config/kcld.example.toml`, each value with where it came from (the
//! file, a variable, or the default).

use std::fmt::Write;

use toml::Value;

use crate::settings::{
    FanOutConsumer, InitialPosition, LeaseStore, LogFormat, S3Compression, S3Encryption, Settings,
    SinkKind,
};

/// One line of the rendered file: a key and its value, or a note when the
/// key is left unset on purpose.
enum Line {
    Set(&'static str, Value),
    Unset(&'static str, String),
}

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn n(v: impl TryInto<i64>) -> Value {
    Value::Integer(v.try_into().unwrap_or(i64::MAX))
}

fn ms(d: std::time::Duration) -> Value {
    n(d.as_millis())
}

/// The whole file.
pub(crate) fn render(settings: &Settings) -> String {
    let st = settings;
    let mut top = vec![
        Line::Set("application_name", s(&st.application_name)),
        if st.multi_stream {
            Line::Unset("stream_arn", "unset: the [[streams]] below".into())
        } else {
            Line::Set("stream_arn", s(st.stream_arn.to_string()))
        },
        Line::Set("lease_table", s(&st.lease_table)),
    ];
    top.push(if st.origins.contains_key("worker_id") {
        Line::Set("worker_id", s(&st.worker_id))
    } else {
        Line::Unset(
            "worker_id",
            format!(
                "unset: a new id at every start (this run: {:?}); set one for an id that stays",
                st.worker_id
            ),
        )
    });
    position_lines(&mut top, &st.initial_position);
    top.push(Line::Set("shutdown_timeout_ms", ms(st.shutdown_timeout)));
    if !st.multi_stream {
        consumer_lines(&mut top, st.fan_out.as_ref().map(|f| &f.consumer));
    }

    let fan_out = match st.streams.iter().find_map(|s| s.fan_out.as_ref()) {
        Some(f) => vec![
            Line::Set("stall_timeout_ms", ms(f.stall_timeout)),
            Line::Set("subscription_max_age_ms", ms(f.subscription_max_age)),
            Line::Set("registration_timeout_ms", ms(f.registration_timeout)),
            Line::Set("end_check_interval_ms", ms(f.end_check_interval)),
        ],
        None => vec![],
    };

    let a = &st.aws;
    let opt = |v: &Option<String>| s(v.clone().unwrap_or_default());
    let mut aws = vec![
        Line::Set("kinesis_endpoint", opt(&a.kinesis_endpoint)),
        Line::Set("dynamodb_endpoint", opt(&a.dynamodb_endpoint)),
        Line::Set(
            "dynamodb_streams_endpoint",
            opt(&a.dynamodb_streams_endpoint),
        ),
        Line::Set("s3_endpoint", opt(&a.s3_endpoint)),
        Line::Set("sqs_endpoint", opt(&a.sqs_endpoint)),
        Line::Set("sns_endpoint", opt(&a.sns_endpoint)),
        Line::Set("sts_endpoint", opt(&a.sts_endpoint)),
        if a.dynamodb_region_fallback {
            Line::Unset(
                "dynamodb_region",
                format!(
                    "unset: the AWS profile's or the instance's region, looked up at start, else \
                     the stream's ({})",
                    a.dynamodb_region
                ),
            )
        } else {
            Line::Set("dynamodb_region", s(&a.dynamodb_region))
        },
        Line::Set(
            "ca_file",
            s(a.ca_file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default()),
        ),
    ];
    if let Some(role) = &a.assume_role {
        aws.push(Line::Set("assume_role_arn", s(&role.role_arn)));
        aws.push(Line::Set("assume_role_session_name", s(&role.session_name)));
        aws.push(Line::Set("assume_role_external_id", opt(&role.external_id)));
    }

    let l = &st.lease;
    let lease = vec![
        Line::Set(
            "store",
            s(match l.store {
                LeaseStore::Dynamodb => "dynamodb",
                LeaseStore::Memory => "memory",
            }),
        ),
        Line::Set("failover_time_ms", ms(l.failover_time)),
        Line::Set("take_interval_ms", ms(l.take_interval)),
        Line::Set("probe_interval_ms", ms(l.probe_interval)),
        Line::Set("probe_budget_percent", n(l.probe_budget_percent)),
        Line::Set("shard_sync_interval_ms", ms(l.shard_sync_interval)),
        Line::Set("max_leases_per_worker", n(l.max_leases_per_worker)),
        Line::Set("max_leases_to_steal", n(l.max_leases_to_steal)),
    ];
    let checkpoint = vec![
        Line::Set("interval_ms", ms(st.checkpoint.interval)),
        Line::Set("max_records", n(st.checkpoint.max_records)),
    ];
    let p = &st.polling;
    let polling = vec![
        Line::Set("max_records", n(p.max_records)),
        Line::Set("idle_time_between_reads_ms", ms(p.idle_time_between_reads)),
        Line::Set("max_idle_time_ms", ms(p.max_idle_time)),
        Line::Set("prefetch_bytes", n(p.prefetch_bytes)),
        Line::Set("prefetch_total_bytes", n(p.prefetch_total_bytes)),
    ];
    let mut sink = vec![
        Line::Set(
            "type",
            s(match st.sink.kind {
                SinkKind::Stdout => "stdout",
                SinkKind::Http => "http",
                SinkKind::S3 => "s3",
            }),
        ),
        Line::Set("invoke_identity_arn", s(&st.sink.invoke_identity_arn)),
    ];
    if let Some(h) = &st.sink.http {
        sink.extend([
            Line::Set("url", s(&h.url)),
            Line::Set("batch_size", n(h.batch_size)),
            Line::Set(
                "max_retry_attempts",
                n(h.max_retry_attempts.map_or(-1, i64::from)),
            ),
            Line::Set(
                "max_record_age_seconds",
                n(h.max_record_age
                    .map_or(-1, |v| i64::try_from(v.as_secs()).unwrap_or(i64::MAX))),
            ),
            Line::Set("bisect_on_error", Value::Boolean(h.bisect_on_error)),
            Line::Set(
                "on_failure_file",
                s(h.on_failure_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()),
            ),
            Line::Set(
                "on_failure_destination",
                s(h.on_failure_destination
                    .as_ref()
                    .map(|d| d.arn().to_owned())
                    .unwrap_or_default()),
            ),
            Line::Set("timeout_ms", ms(h.timeout)),
            Line::Set("parallelization_factor", n(h.parallelization_factor)),
            Line::Set("batching_window_ms", ms(h.batching_window)),
        ]);
    }
    let mut sink_s3 = Vec::new();
    if let Some(c) = &st.sink.s3 {
        sink_s3.extend([
            Line::Set("bucket_arn", s(&c.bucket_arn)),
            Line::Set("region", s(c.region.clone().unwrap_or_default())),
            Line::Set(
                "prefix",
                s(c.prefix
                    .as_ref()
                    .map(|p| p.text.clone())
                    .unwrap_or_default()),
            ),
            Line::Set("error_prefix", s(&c.error_prefix.text)),
            Line::Set("max_open_partitions", n(c.max_open_partitions)),
            Line::Set("buffer_size_mib", n(c.buffer_size / (1024 * 1024))),
            Line::Set("buffer_interval_seconds", n(c.buffer_interval.as_secs())),
            Line::Set(
                "multipart_threshold_mib",
                n(c.multipart_threshold / (1024 * 1024)),
            ),
            Line::Set(
                "compression",
                s(match c.compression {
                    S3Compression::Gzip => "gzip",
                    S3Compression::Zstd => "zstd",
                    S3Compression::None => "none",
                }),
            ),
            Line::Set("format", s(if c.lambda_format { "lambda" } else { "raw" })),
            Line::Set(
                "encryption",
                s(match c.encryption {
                    S3Encryption::BucketDefault => "bucket-default",
                    S3Encryption::S3 => "sse-s3",
                    S3Encryption::Kms(_) => "sse-kms",
                }),
            ),
            Line::Set(
                "kms_key_arn",
                s(match &c.encryption {
                    S3Encryption::Kms(k) => k.clone(),
                    _ => String::new(),
                }),
            ),
        ]);
    }
    let log = vec![
        Line::Set(
            "format",
            s(match st.log.format {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            }),
        ),
        Line::Set("level", s(&st.log.level)),
    ];
    let ops = vec![Line::Set(
        "listen",
        s(st.ops.listen.map_or("off".to_owned(), |a| a.to_string())),
    )];
    let filter = vec![Line::Set(
        "patterns",
        Value::Array(st.filter.patterns.iter().map(s).collect()),
    )];

    let mut out = String::new();
    for (i, stream) in st.streams.iter().enumerate() {
        let _ = writeln!(
            out,
            "# stream {} in account {}, region {} (from {})",
            stream.arn.stream_name,
            stream.arn.account,
            stream.arn.region,
            if st.multi_stream {
                format!("streams[{i}].arn")
            } else {
                "stream_arn".to_owned()
            }
        );
    }
    let _ = write!(
        out,
        "# lease table {} in region {} (from {}){}\n\
         # Each value says where it came from: the file, a variable, or the default.\n",
        st.lease_table,
        st.aws.dynamodb_region,
        st.aws.dynamodb_region_from,
        if st.multi_stream {
            ", leases keyed account:stream:creationEpoch:shardId"
        } else {
            ""
        }
    );
    write_section(&mut out, st, None, &top);
    for (name, lines) in [
        ("fan_out", fan_out),
        ("aws", aws),
        ("lease", lease),
        ("checkpoint", checkpoint),
        ("polling", polling),
        ("sink", sink),
        ("sink.s3", sink_s3),
        ("log", log),
        ("ops", ops),
        ("filter", filter),
    ] {
        if !lines.is_empty() {
            write_section(&mut out, st, Some(name), &lines);
        }
    }
    if st.multi_stream {
        for stream in &st.streams {
            let mut lines = vec![Line::Set("arn", s(stream.arn.to_string()))];
            consumer_lines(&mut lines, stream.fan_out.as_ref().map(|f| &f.consumer));
            position_lines(&mut lines, &stream.initial_position);
            if let Some(role) = &stream.assume_role {
                lines.push(Line::Set("assume_role_arn", s(&role.role_arn)));
                lines.push(Line::Set("assume_role_session_name", s(&role.session_name)));
                if let Some(id) = &role.external_id {
                    lines.push(Line::Set("assume_role_external_id", s(id)));
                }
            }
            if let Some(url) = &stream.sink_url {
                lines.push(Line::Set("sink_url", s(url)));
            }
            out.push_str("\n[[streams]]\n");
            // An entry's values come from the file: variables cannot set
            // list entries.
            for line in &lines {
                match line {
                    Line::Set(key, value) => {
                        let _ = writeln!(out, "{key} = {value}  # file");
                    }
                    Line::Unset(key, note) => {
                        let _ = writeln!(out, "# {key}: {note}");
                    }
                }
            }
        }
    }
    out
}

fn position_lines(lines: &mut Vec<Line>, position: &InitialPosition) {
    match position {
        InitialPosition::TrimHorizon => {
            lines.push(Line::Set("initial_position", s("TRIM_HORIZON")))
        }
        InitialPosition::Latest => lines.push(Line::Set("initial_position", s("LATEST"))),
        InitialPosition::AtTimestamp { rfc3339, .. } => {
            lines.push(Line::Set("initial_position", s("AT_TIMESTAMP")));
            lines.push(Line::Set("initial_timestamp", s(rfc3339)));
        }
    }
}

fn consumer_lines(lines: &mut Vec<Line>, consumer: Option<&FanOutConsumer>) {
    match consumer {
        Some(FanOutConsumer::Arn(arn)) => lines.push(Line::Set("consumer_arn", s(arn.to_string()))),
        Some(FanOutConsumer::Name(name)) => lines.push(Line::Set("consumer_name", s(name))),
        None => lines.push(Line::Unset(
            "consumer_arn",
            "unset: polling (set consumer_arn or consumer_name for enhanced fan-out)".into(),
        )),
    }
}

fn write_section(out: &mut String, st: &Settings, section: Option<&str>, lines: &[Line]) {
    if let Some(name) = section {
        let _ = write!(out, "\n[{name}]\n");
    }
    for line in lines {
        match line {
            Line::Set(key, value) => {
                let dotted = match section {
                    Some(name) => format!("{name}.{key}"),
                    None => (*key).to_owned(),
                };
                let from = st
                    .origins
                    .get(&dotted)
                    .map(String::as_str)
                    .unwrap_or("default");
                let _ = writeln!(out, "{key} = {value}  # {from}");
            }
            Line::Unset(key, note) => {
                let _ = writeln!(out, "# {key}: {note}");
            }
        }
    }
}
