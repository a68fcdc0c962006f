use super::*;
use std::io::Write;
use std::time::Duration;

const ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

fn err_key(e: ConfigError) -> String {
    match e {
        ConfigError::Key { key, .. } => key,
        other => panic!("expected a key error, got {other}"),
    }
}

#[test]
fn minimal_environment_only_config_gets_the_defaults() {
    let s = load(
        None,
        env(&[
            ("KCLD_APPLICATION_NAME", "orders-reader"),
            ("KCLD_STREAM_ARN", ARN),
        ]),
    )
    .unwrap();
    assert_eq!(s.lease_table, "orders-reader");
    assert_eq!(s.stream_arn.account, "111111111111");
    assert_eq!(s.aws.dynamodb_region, "us-east-1");
    assert_eq!(s.initial_position, InitialPosition::Latest);
    assert_eq!(s.polling.max_records, 10_000);
    assert_eq!(s.sink.kind, SinkKind::Stdout);
    assert!(
        s.worker_id.len() > 36,
        "worker id {:?} should be host + uuid",
        s.worker_id
    );
    assert!(s.aws.kinesis_endpoint.is_none());
}

#[test]
fn worker_ids_are_unique_by_default() {
    let e = env(&[("KCLD_APPLICATION_NAME", "app"), ("KCLD_STREAM_ARN", ARN)]);
    let a = load(None, e.clone()).unwrap().worker_id;
    let b = load(None, e).unwrap().worker_id;
    assert_ne!(a, b);
}

#[test]
fn environment_overrides_the_file_including_nested_keys() {
    let f = file(&format!(
        "application_name = \"from-file\"\nstream_arn = \"{ARN}\"\n[polling]\nmax_records = 500\n[aws]\nkinesis_endpoint = \"http://file:1\"\n"
    ));
    let s = load(
        Some(f.path()),
        env(&[
            ("KCLD_APPLICATION_NAME", "from-env"),
            ("KCLD_POLLING__MAX_RECORDS", "250"),
        ]),
    )
    .unwrap();
    assert_eq!(s.application_name, "from-env");
    assert_eq!(s.polling.max_records, 250);
    assert_eq!(s.aws.kinesis_endpoint.as_deref(), Some("http://file:1"));
}

#[test]
fn endpoints_follow_the_aws_sdk_variables_when_no_key_is_set() {
    let base = [("KCLD_APPLICATION_NAME", "app"), ("KCLD_STREAM_ARN", ARN)];
    let mut e = env(&base);
    e.extend(env(&[
        ("AWS_ENDPOINT_URL", "http://all:1"),
        ("AWS_ENDPOINT_URL_KINESIS", "http://kinesis:2"),
    ]));
    let s = load(None, e.clone()).unwrap();
    assert_eq!(s.aws.kinesis_endpoint.as_deref(), Some("http://kinesis:2"));
    assert_eq!(s.aws.dynamodb_endpoint.as_deref(), Some("http://all:1"));

    e.push(("KCLD_AWS__KINESIS_ENDPOINT".into(), "http://key:3".into()));
    let s = load(None, e).unwrap();
    assert_eq!(s.aws.kinesis_endpoint.as_deref(), Some("http://key:3"));
}

#[test]
fn at_timestamp_needs_an_rfc3339_time() {
    let base = [
        ("KCLD_APPLICATION_NAME", "app"),
        ("KCLD_STREAM_ARN", ARN),
        ("KCLD_INITIAL_POSITION", "AT_TIMESTAMP"),
    ];
    assert_eq!(
        err_key(load(None, env(&base)).unwrap_err()),
        "initial_timestamp"
    );
    let mut e = env(&base);
    e.push(("KCLD_INITIAL_TIMESTAMP".into(), "yesterday".into()));
    assert_eq!(err_key(load(None, e).unwrap_err()), "initial_timestamp");
    let mut e = env(&base);
    e.push((
        "KCLD_INITIAL_TIMESTAMP".into(),
        "2026-11-22T06:00:00Z".into(),
    ));
    match load(None, e).unwrap().initial_position {
        InitialPosition::AtTimestamp { epoch_millis, .. } => {
            assert_eq!(epoch_millis, 1_795_327_200_000)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_bad_value_names_its_key() {
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("KCLD_STREAM_ARN", ARN)], "application_name"),
        (&[("KCLD_APPLICATION_NAME", "app")], "stream_arn"),
        (
            &[
                ("KCLD_APPLICATION_NAME", "app"),
                ("KCLD_STREAM_ARN", "orders"),
            ],
            "stream_arn",
        ),
        (
            &[("KCLD_APPLICATION_NAME", "a b"), ("KCLD_STREAM_ARN", ARN)],
            "application_name",
        ),
        (
            &[
                ("KCLD_APPLICATION_NAME", "app"),
                ("KCLD_STREAM_ARN", ARN),
                ("KCLD_INITIAL_POSITION", "OLDEST"),
            ],
            "initial_position",
        ),
        (
            &[
                ("KCLD_APPLICATION_NAME", "app"),
                ("KCLD_STREAM_ARN", ARN),
                ("KCLD_POLLING__MAX_RECORDS", "20000"),
            ],
            "polling.max_records",
        ),
        (
            &[
                ("KCLD_APPLICATION_NAME", "app"),
                ("KCLD_STREAM_ARN", ARN),
                ("KCLD_SINK__TYPE", "kafka"),
            ],
            "sink.type",
        ),
        (
            &[
                ("KCLD_APPLICATION_NAME", "app"),
                ("KCLD_STREAM_ARN", ARN),
                ("AWS_ENDPOINT_URL_KINESIS", "localhost:4566"),
            ],
            "AWS_ENDPOINT_URL_KINESIS",
        ),
        (
            &[
                ("KCLD_APPLICATION_NAME", "app"),
                ("KCLD_STREAM_ARN", ARN),
                ("KCLD_AWS__ASSUME_ROLE_ARN", "arn:aws:iam::1:user/x"),
            ],
            "aws.assume_role_arn",
        ),
        (
            &[
                ("KCLD_APPLICATION_NAME", "app"),
                ("KCLD_STREAM_ARN", ARN),
                ("KCLD_AWS__CA_FILE", "/nonexistent/ca.pem"),
            ],
            "aws.ca_file",
        ),
    ];
    for (vars, key) in cases {
        let e = load(None, env(vars)).unwrap_err();
        let text = e.to_string();
        assert_eq!(err_key(e), *key, "{text}");
    }
}

#[test]
fn a_typo_in_the_file_is_named() {
    let f = file(&format!(
        "application_name = \"a12\"\nstream_arn = \"{ARN}\"\n[polling]\nmax_record = 5\n"
    ));
    let e = load(Some(f.path()), env(&[])).unwrap_err();
    assert!(e.to_string().contains("max_record"), "{e}");
}

#[test]
fn a_missing_or_broken_file_is_a_file_error() {
    let e = load(Some(Path::new("/nonexistent/kcld.toml")), env(&[])).unwrap_err();
    assert!(matches!(e, ConfigError::File { .. }), "{e}");
    let f = file("application_name = \n");
    let e = load(Some(f.path()), env(&[])).unwrap_err();
    assert!(matches!(e, ConfigError::File { .. }), "{e}");
}

#[test]
fn the_example_file_sets_every_key_to_its_default() {
    // The example sets every key explicitly; loading it must give exactly
    // what a configuration naming only the two required keys gives.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("kcld.example.toml");
    let from_example = load(Some(&example), env(&[])).unwrap();
    let defaults = load(
        None,
        env(&[
            ("KCLD_APPLICATION_NAME", &from_example.application_name),
            ("KCLD_STREAM_ARN", &from_example.stream_arn.to_string()),
        ]),
    )
    .unwrap();
    let strip_worker = |s: &Settings| {
        let mut t: toml::Table = toml::from_str(&s.to_toml()).unwrap();
        t.remove("worker_id");
        t
    };
    assert_eq!(strip_worker(&from_example), strip_worker(&defaults));
}

#[test]
fn a_consumer_turns_fan_out_on_and_must_belong_to_the_stream() {
    let base = [("KCLD_APPLICATION_NAME", "app"), ("KCLD_STREAM_ARN", ARN)];
    let with = |extra: &[(&str, &str)]| {
        let mut pairs = base.to_vec();
        pairs.extend_from_slice(extra);
        load(None, env(&pairs))
    };
    assert!(with(&[]).unwrap().fan_out.is_none(), "polling by default");

    let arn = format!("{ARN}/consumer/shared-efo:1795329156");
    let s = with(&[
        ("KCLD_CONSUMER_ARN", &arn),
        ("KCLD_FAN_OUT__STALL_TIMEOUT_MS", "5000"),
    ])
    .unwrap();
    let fan_out = s.fan_out.unwrap();
    assert_eq!(fan_out.consumer, FanOutConsumer::Arn(arn.parse().unwrap()));
    assert_eq!(fan_out.stall_timeout, Duration::from_millis(5000));
    assert_eq!(fan_out.subscription_max_age, Duration::from_millis(290_000));

    let s = with(&[("KCLD_CONSUMER_NAME", "orders-efo")]).unwrap();
    assert_eq!(
        s.fan_out.unwrap().consumer,
        FanOutConsumer::Name("orders-efo".into())
    );

    let other = "arn:aws:kinesis:us-east-1:111111111111:stream/payments/consumer/c:1";
    let e = with(&[("KCLD_CONSUMER_ARN", other)]).unwrap_err();
    assert!(e.to_string().contains("belongs to stream"), "{e}");
    assert_eq!(err_key(e), "consumer_arn");
    let e = with(&[("KCLD_CONSUMER_ARN", ARN)]).unwrap_err();
    assert_eq!(err_key(e), "consumer_arn");
    let e = with(&[("KCLD_CONSUMER_ARN", &arn), ("KCLD_CONSUMER_NAME", "x")]).unwrap_err();
    assert_eq!(err_key(e), "consumer_name");
    let e = with(&[("KCLD_CONSUMER_NAME", "a b")]).unwrap_err();
    assert_eq!(err_key(e), "consumer_name");
    let e = with(&[
        ("KCLD_CONSUMER_NAME", "efo"),
        ("KCLD_FAN_OUT__SUBSCRIPTION_MAX_AGE_MS", "600000"),
    ])
    .unwrap_err();
    assert_eq!(err_key(e), "fan_out.subscription_max_age_ms");
}

#[test]
fn a_variable_naming_no_setting_is_a_warning_with_the_nearest_one() {
    // Not fatal: a wrapper script's own KCLD_ variables must not stop kcld.
    let settings = load(
        None,
        env(&[
            ("KCLD_APPLICATION_NAME", "app"),
            ("KCLD_STREAM_ARN", ARN),
            ("KCLD_STREAM_ARM", ARN),
        ]),
    )
    .unwrap();
    assert_eq!(settings.warnings.len(), 1, "{:?}", settings.warnings);
    assert!(settings.warnings[0].contains("KCLD_STREAM_ARM"));
    assert!(settings.warnings[0].contains("did you mean KCLD_STREAM_ARN"));
}

#[test]
fn keys_are_checked_by_name() {
    assert!(check_key("polling.max_records").is_ok());
    let e = check_key("polling.max_recrds").unwrap_err().to_string();
    assert!(e.contains("did you mean `polling.max_records`"), "{e}");
}

#[test]
fn the_lease_table_is_in_the_consumers_region() {
    let base = [("KCLD_APPLICATION_NAME", "app"), ("KCLD_STREAM_ARN", ARN)];
    let with = |extra: &[(&str, &str)]| {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        load(None, env(&all))
    };
    // The stream is in us-east-1 (its ARN); the consumer runs in eu-west-1.
    let s = with(&[("AWS_REGION", "eu-west-1")]).unwrap();
    assert_eq!(s.aws.dynamodb_region, "eu-west-1");
    assert!(s
        .to_toml()
        .contains("in region eu-west-1 (from AWS_REGION)"));
    let s = with(&[("AWS_DEFAULT_REGION", "ap-south-1")]).unwrap();
    assert_eq!(s.aws.dynamodb_region, "ap-south-1");
    let s = with(&[]).unwrap();
    assert_eq!(s.aws.dynamodb_region, "us-east-1");
    assert!(s.aws.dynamodb_region_fallback);
    let printed = s.to_toml();
    assert!(
        printed.contains("(from the stream's ARN, unless the AWS profile or instance metadata"),
        "{printed}"
    );
    // Printed as a note, so the file loads back to the same lookup.
    assert!(printed.contains("# dynamodb_region: unset"), "{printed}");
    let s = with(&[
        ("AWS_REGION", "eu-west-1"),
        ("KCLD_AWS__DYNAMODB_REGION", "us-gov-west-1"),
    ])
    .unwrap();
    assert_eq!(s.aws.dynamodb_region, "us-gov-west-1");
    for bad in ["EU-WEST-1", "euwest1", "eu-west-x", "eu--1"] {
        let e = with(&[("KCLD_AWS__DYNAMODB_REGION", bad)]).unwrap_err();
        assert_eq!(err_key(e), "aws.dynamodb_region", "{bad}");
    }
}

#[test]
fn check_config_prints_a_file_that_loads_back_to_the_same_settings() {
    let consumer = format!("{ARN}/consumer/reader:1700000000");
    let source = file(&format!(
        "application_name = \"app\"\nstream_arn = \"{ARN}\"\nworker_id = \"w-1\"\n\
         initial_position = \"AT_TIMESTAMP\"\ninitial_timestamp = \"2026-11-01T10:00:00Z\"\n\
         consumer_arn = \"{consumer}\"\n[fan_out]\nstall_timeout_ms = 30000\n\
         [sink]\ntype = \"http\"\nurl = \"http://127.0.0.1:9000/events\"\nmax_retry_attempts = 3\n\
         on_failure_file = \"/tmp/failed.jsonl\"\n[aws]\nassume_role_arn = \"arn:aws:iam::222222222222:role/r\"\n\
         assume_role_external_id = \"ext\"\n[ops]\nlisten = \"off\"\n"
    ));
    let original = load(
        Some(source.path()),
        env(&[
            ("KCLD_POLLING__MAX_RECORDS", "500"),
            ("KCLD_LEASE__STORE", "memory"),
            ("KCLD_LOG__FORMAT", "json"),
        ]),
    )
    .unwrap();
    let printed = original.to_toml();
    // Every value says where it came from.
    assert!(
        printed.contains("max_records = 500  # variable KCLD_POLLING__MAX_RECORDS"),
        "{printed}"
    );
    assert!(
        printed.contains("stall_timeout_ms = 30000  # file "),
        "{printed}"
    );
    assert!(printed.contains("batch_size = 100  # default"), "{printed}");
    let again = file(&printed);
    let reloaded = load(Some(again.path()), env(&[])).unwrap();
    let comparable = |s: &Settings| {
        let mut s = s.clone();
        s.origins.clear();
        s.warnings.clear();
        s.aws.dynamodb_region_from.clear();
        format!("{s:?}")
    };
    assert_eq!(comparable(&original), comparable(&reloaded));

    // An id left to its default is a note, not a value that would pin it.
    let defaults = load(
        None,
        env(&[("KCLD_APPLICATION_NAME", "app"), ("KCLD_STREAM_ARN", ARN)]),
    )
    .unwrap();
    let printed = defaults.to_toml();
    assert!(
        printed.contains("# worker_id: unset: a new id at every start"),
        "{printed}"
    );
    let parsed: toml::Table = toml::from_str(&printed).unwrap();
    assert!(!parsed.contains_key("worker_id"));
    let reloaded = load(Some(file(&printed).path()), env(&[])).unwrap();
    assert_eq!(reloaded.lease_table, "app");
}

#[test]
fn streams_entries_inherit_the_top_level_start_and_role_unless_they_set_their_own() {
    let f = file(
        r#"
application_name = "central"
initial_position = "TRIM_HORIZON"

[aws]
assume_role_arn = "arn:aws:iam::222222222222:role/reader"

[[streams]]
arn = "arn:aws:kinesis:us-east-1:111111111111:stream/orders"

[[streams]]
arn = "arn:aws:kinesis:eu-west-1:444444444444:stream/clicks"
consumer_name = "central"
initial_position = "LATEST"
assume_role_arn = "arn:aws:iam::444444444444:role/clicks-reader"
assume_role_external_id = "central-analytics"
"#,
    );
    let s = load(Some(f.path()), env(&[])).unwrap();
    assert!(s.multi_stream);
    assert_eq!(s.streams.len(), 2);
    // The first stream stands for the application where one is needed.
    assert_eq!(s.stream_arn.stream_name, "orders");
    let (orders, clicks) = (&s.streams[0], &s.streams[1]);
    assert_eq!(orders.initial_position, InitialPosition::TrimHorizon);
    assert!(orders.fan_out.is_none());
    assert_eq!(
        orders.assume_role.as_ref().map(|r| r.role_arn.as_str()),
        Some("arn:aws:iam::222222222222:role/reader")
    );
    assert_eq!(clicks.arn.region, "eu-west-1");
    assert_eq!(clicks.initial_position, InitialPosition::Latest);
    assert!(clicks.fan_out.is_some());
    let role = clicks.assume_role.as_ref().unwrap();
    assert_eq!(
        role.role_arn,
        "arn:aws:iam::444444444444:role/clicks-reader"
    );
    assert_eq!(role.external_id.as_deref(), Some("central-analytics"));
    // The view of one stream puts its values where single-stream code
    // reads them.
    let one = s.for_stream(1);
    assert_eq!(one.stream_arn, clicks.arn);
    assert_eq!(one.initial_position, InitialPosition::Latest);
    assert!(one.fan_out.is_some());
    assert_eq!(
        one.aws.assume_role.map(|r| r.role_arn),
        Some("arn:aws:iam::444444444444:role/clicks-reader".to_owned())
    );
}

#[test]
fn a_stream_posts_to_its_own_url_and_the_others_to_sink_url() {
    let f = file(
        r#"
application_name = "central"

[sink]
type = "http"
url = "http://127.0.0.1:8080/all"

[[streams]]
arn = "arn:aws:kinesis:us-east-1:111111111111:stream/orders"
sink_url = "http://127.0.0.1:8081/orders"

[[streams]]
arn = "arn:aws:kinesis:us-east-1:333333333333:stream/clicks"
"#,
    );
    let s = load(Some(f.path()), env(&[])).unwrap();
    let url = |i: usize| s.for_stream(i).sink.http.map(|h| h.url);
    assert_eq!(url(0).as_deref(), Some("http://127.0.0.1:8081/orders"));
    assert_eq!(url(1).as_deref(), Some("http://127.0.0.1:8080/all"));
}

#[test]
fn a_single_stream_arn_is_a_list_of_one_with_single_stream_keys() {
    let s = load(
        None,
        env(&[
            ("KCLD_APPLICATION_NAME", "orders-reader"),
            ("KCLD_STREAM_ARN", ARN),
        ]),
    )
    .unwrap();
    assert!(!s.multi_stream);
    assert_eq!(s.streams.len(), 1);
    assert_eq!(s.streams[0].arn, s.stream_arn);
}

#[test]
fn streams_entries_are_refused_where_they_cannot_work() {
    let cases = [
        // Memory leases serve one stream.
        (
            "application_name = \"central\"\n[lease]\nstore = \"memory\"\n\n[[streams]]\narn = \"arn:aws:kinesis:us-east-1:111111111111:stream/a\"\n\n[[streams]]\narn = \"arn:aws:kinesis:us-east-1:111111111111:stream/b\"\n",
            "lease.store",
        ),
        // A top-level consumer would not say which stream it is of.
        (
            "application_name = \"central\"\nconsumer_name = \"c\"\n\n[[streams]]\narn = \"arn:aws:kinesis:us-east-1:111111111111:stream/a\"\n",
            "consumer_name",
        ),
        // A consumer of another stream.
        (
            "application_name = \"central\"\n\n[[streams]]\narn = \"arn:aws:kinesis:us-east-1:111111111111:stream/a\"\nconsumer_arn = \"arn:aws:kinesis:us-east-1:111111111111:stream/b/consumer/c:1\"\n",
            "streams[0].consumer_arn",
        ),
        (
            "application_name = \"central\"\n\n[[streams]]\narn = \"arn:aws:kinesis:us-east-1:111111111111:stream/a\"\ninitial_position = \"AT_TIMESTAMP\"\n",
            "streams[0].initial_timestamp",
        ),
        // A stream's own URL needs the HTTP sink.
        (
            "application_name = \"central\"\n\n[[streams]]\narn = \"arn:aws:kinesis:us-east-1:111111111111:stream/a\"\nsink_url = \"http://127.0.0.1:1/a\"\n",
            "streams[0].sink_url",
        ),
    ];
    for (text, key) in cases {
        let f = file(text);
        let e = load(Some(f.path()), env(&[])).unwrap_err();
        assert_eq!(err_key(e), key, "{text}");
    }
}

#[test]
fn s3_sink_keys_are_read_from_nested_variables_and_checked() {
    let base = [
        ("KCLD_APPLICATION_NAME", "app"),
        ("KCLD_STREAM_ARN", ARN),
        ("KCLD_SINK__TYPE", "s3"),
        ("KCLD_SINK__S3__BUCKET_ARN", "arn:aws:s3:::landing-1"),
    ];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut pairs = base.to_vec();
        pairs.extend_from_slice(extra);
        load(None, env(&pairs))
    };
    let s = with(&[
        (
            "KCLD_SINK__S3__PREFIX",
            "c=!{data:customer.id}/!{timestamp:yyyy/MM}/",
        ),
        ("KCLD_SINK__S3__ENCRYPTION", "sse-kms"),
        (
            "KCLD_SINK__S3__KMS_KEY_ARN",
            "arn:aws:kms:us-east-1:111111111111:key/k",
        ),
        ("KCLD_SINK__S3__COMPRESSION", "zstd"),
    ])
    .unwrap();
    let s3 = s.sink.s3.unwrap();
    assert_eq!(s3.bucket, "landing-1");
    let prefix = s3.prefix.unwrap();
    assert!(prefix.partitions_records());
    assert_eq!(
        prefix.parts,
        [
            KeyPart::Literal("c=".into()),
            KeyPart::Data(vec!["customer".into(), "id".into()]),
            KeyPart::Literal("/".into()),
            KeyPart::Timestamp("yyyy/MM".into()),
            KeyPart::Literal("/".into()),
        ]
    );
    assert_eq!(
        s3.encryption,
        S3Encryption::Kms("arn:aws:kms:us-east-1:111111111111:key/k".into())
    );
    assert_eq!(s3.compression, S3Compression::Zstd);
    // Firehose's hour layout unless a prefix is set; no partitions.
    assert!(with(&[]).unwrap().sink.s3.unwrap().prefix.is_none());

    let bad: &[(&[(&str, &str)], &str)] = &[
        (
            &[("KCLD_SINK__S3__PREFIX", "x/!{data:}/")],
            "sink.s3.prefix",
        ),
        (
            &[("KCLD_SINK__S3__PREFIX", "x/!{whatever}/")],
            "sink.s3.prefix",
        ),
        (&[("KCLD_SINK__S3__PREFIX", "x/!{shard/")], "sink.s3.prefix"),
        (
            &[("KCLD_SINK__S3__ERROR_PREFIX", "e/!{partitionKey}/")],
            "sink.s3.error_prefix",
        ),
        (
            &[("KCLD_SINK__S3__ENCRYPTION", "sse-kms")],
            "sink.s3.kms_key_arn",
        ),
        (
            &[(
                "KCLD_SINK__S3__KMS_KEY_ARN",
                "arn:aws:kms:us-east-1:1:key/k",
            )],
            "sink.s3.kms_key_arn",
        ),
        (
            &[("KCLD_SINK__S3__ENCRYPTION", "aes")],
            "sink.s3.encryption",
        ),
        (
            &[("KCLD_SINK__S3__MULTIPART_THRESHOLD_MIB", "4")],
            "sink.s3.multipart_threshold_mib",
        ),
        (
            &[("KCLD_SINK__S3__MAX_OPEN_PARTITIONS", "0")],
            "sink.s3.max_open_partitions",
        ),
        (
            &[("KCLD_SINK__S3__COMPRESSION", "lz4")],
            "sink.s3.compression",
        ),
    ];
    for (extra, key) in bad {
        let e = with(extra).unwrap_err();
        assert_eq!(err_key(e), *key, "{extra:?}");
    }
}

#[test]
fn on_failure_destinations_are_queue_topic_or_bucket_arns_of_any_account() {
    let with = |destination: &str, limit: bool| {
        let mut pairs = vec![
            ("KCLD_APPLICATION_NAME", "app"),
            ("KCLD_STREAM_ARN", ARN),
            ("KCLD_SINK__TYPE", "http"),
            ("KCLD_SINK__URL", "http://127.0.0.1:8080/"),
            ("KCLD_SINK__ON_FAILURE_DESTINATION", destination),
        ];
        if limit {
            pairs.push(("KCLD_SINK__MAX_RETRY_ATTEMPTS", "2"));
        }
        load(None, env(&pairs))
    };
    let queue = with("arn:aws:sqs:eu-west-1:222222222222:failed", true).unwrap();
    assert_eq!(
        queue.sink.http.unwrap().on_failure_destination,
        Some(FailureDestination::Sqs {
            arn: "arn:aws:sqs:eu-west-1:222222222222:failed".into(),
            region: "eu-west-1".into(),
            account: "222222222222".into(),
            name: "failed".into(),
        })
    );
    assert!(matches!(
        with("arn:aws:sns:us-east-1:222222222222:t", true)
            .unwrap()
            .sink
            .http
            .unwrap()
            .on_failure_destination,
        Some(FailureDestination::Sns { .. })
    ));
    assert!(matches!(
        with("arn:aws:s3:::failed-batches", true)
            .unwrap()
            .sink
            .http
            .unwrap()
            .on_failure_destination,
        Some(FailureDestination::S3 { .. })
    ));
    for bad in [
        "arn:aws:sqs:eu-west-1:2222:failed",
        "arn:aws:lambda:us-east-1:222222222222:function:f",
        "arn:aws:s3:::B",
        "failed",
    ] {
        assert_eq!(
            err_key(with(bad, true).unwrap_err()),
            "sink.on_failure_destination",
            "{bad}"
        );
    }
    // A retry limit needs somewhere for what it gives up.
    assert_eq!(
        err_key(with("", true).unwrap_err()),
        "sink.on_failure_destination"
    );
    assert!(with("", false).is_ok());
}
