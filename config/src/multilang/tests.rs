use super::*;
use std::time::Duration;

const ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";

fn props(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    v.sort();
    v
}

fn load(pairs: &[(&str, &str)]) -> Result<(Settings, MultiLangSettings), ConfigError> {
    from_properties(&props(pairs), PathBuf::from("/app"), None, Vec::new())
}

#[test]
fn the_kclpy_sample_maps_to_kcld_settings() {
    // samples/sample.properties of amazon-kclpy, with a real stream ARN.
    let (s, m) = load(&[
        ("executableName", "sample_kclpy_app.py"),
        ("streamArn", ARN),
        ("streamName", "orders"),
        ("applicationName", "PythonKCLSample"),
        ("AWSCredentialsProvider", "DefaultCredentialsProvider"),
        ("processingLanguage", "python/3.8"),
        ("initialPositionInStream", "TRIM_HORIZON"),
        ("regionName", "eu-west-1"),
    ])
    .unwrap();
    assert_eq!(m.command, ["sample_kclpy_app.py"]);
    assert_eq!(s.application_name, "PythonKCLSample");
    assert_eq!(s.lease_table, "PythonKCLSample");
    assert_eq!(s.initial_position, crate::InitialPosition::TrimHorizon);
    assert_eq!(
        s.aws.dynamodb_region, "eu-west-1",
        "the lease table's region"
    );
    assert_eq!(
        s.stream_arn.region, "us-east-1",
        "the stream's region is the ARN's"
    );
    // No polling property: DEFAULT is fan-out through a consumer named
    // after the application, as in the KCL.
    assert_eq!(
        s.fan_out.unwrap().consumer,
        crate::FanOutConsumer::Name("PythonKCLSample".into())
    );
    assert_eq!(m.ignored, ["processingLanguage", "streamName"]);
    assert!(m.unknown.is_empty());
}

#[test]
fn polling_properties_and_the_rest_map_by_meaning() {
    let (s, m) = load(&[
        ("executableName", "python3  app.py --verbose"),
        ("streamArn", ARN),
        ("applicationName", "app"),
        ("maxRecords", "500"),
        ("idleTimeBetweenReadsInMillis", "250"),
        ("failoverTimeMillis", "20000"),
        ("workerId", "w-1"),
        ("tableName", "leases"),
        ("timeoutInSeconds", "30"),
        ("initialPositionInStreamExtended", "1636609142"),
        ("maxLeasesForWorker", "4"),
        ("metricsLevel", "NONE"),
        ("workerMetricsTableName", "x"),
        ("frobnicate", "1"),
        (
            "AwsCredentialsProvider",
            "StsAssumeRoleCredentialsProvider|arn:aws:iam::222222222222:role/reader|kcld-session|externalId=abc",
        ),
    ])
    .unwrap();
    assert_eq!(m.command, ["python3", "app.py", "--verbose"]);
    assert_eq!(m.timeout, Some(Duration::from_secs(30)));
    assert!(s.fan_out.is_none(), "a polling property chooses polling");
    assert_eq!(s.polling.max_records, 500);
    assert_eq!(
        s.polling.idle_time_between_reads,
        Duration::from_millis(250)
    );
    assert_eq!(s.lease.failover_time, Duration::from_millis(20_000));
    assert_eq!(s.lease.max_leases_per_worker, 4);
    assert_eq!(s.worker_id, "w-1");
    assert_eq!(s.lease_table, "leases");
    assert!(matches!(
        s.initial_position,
        crate::InitialPosition::AtTimestamp {
            epoch_millis: 1_636_609_142_000,
            ..
        }
    ));
    let role = s.aws.assume_role.unwrap();
    assert_eq!(role.role_arn, "arn:aws:iam::222222222222:role/reader");
    assert_eq!(role.session_name, "kcld-session");
    assert_eq!(role.external_id.as_deref(), Some("abc"));
    assert_eq!(m.ignored, ["metricsLevel", "workerMetricsTableName"]);
    assert_eq!(m.unknown, ["frobnicate"]);
}

#[test]
fn retrieval_mode_and_consumer_properties() {
    let base = [
        ("executableName", "app"),
        ("streamArn", ARN),
        ("applicationName", "app"),
    ];
    let with = |extra: &[(&str, &str)]| {
        let mut all = base.to_vec();
        all.extend_from_slice(extra);
        load(&all).unwrap().0.fan_out.map(|f| f.consumer)
    };
    assert!(with(&[("retrievalMode", "polling")]).is_none());
    let arn = format!("{ARN}/consumer/shared:1");
    assert_eq!(
        with(&[("fanoutConfig.consumerArn", &arn)]),
        Some(crate::FanOutConsumer::Arn(arn.parse().unwrap()))
    );
    assert_eq!(
        with(&[
            ("retrievalMode", "FANOUT"),
            ("consumerName", "efo"),
            ("maxRecords", "10")
        ]),
        Some(crate::FanOutConsumer::Name("efo".into()))
    );
}

#[test]
fn errors_name_the_property() {
    let key = |pairs: &[(&str, &str)]| match load(pairs).unwrap_err() {
        ConfigError::Key { key, .. } => key,
        other => panic!("{other}"),
    };
    assert_eq!(
        key(&[("streamArn", ARN), ("applicationName", "app")]),
        "executableName"
    );
    assert_eq!(
        key(&[
            ("executableName", "x"),
            ("streamName", "orders"),
            ("applicationName", "app")
        ]),
        "streamArn"
    );
    assert_eq!(
        key(&[
            ("executableName", "x"),
            ("streamArn", ARN),
            ("applicationName", "app"),
            ("maxRecords", "0")
        ]),
        "maxRecords (properties file)"
    );
    assert_eq!(
        key(&[
            ("executableName", "x"),
            ("streamArn", "orders"),
            ("applicationName", "app")
        ]),
        "streamArn (properties file)"
    );
    assert_eq!(
        key(&[
            ("executableName", "x"),
            ("streamArn", ARN),
            ("applicationName", "app"),
            ("timeoutInSeconds", "soon")
        ]),
        "timeoutInSeconds"
    );
}

#[test]
fn the_example_file_loads() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("multilang.example.properties");
    let (s, m) = load_properties(&path, None, Vec::new()).unwrap();
    assert_eq!(m.command, ["python3", "sample_kclpy_app.py"]);
    assert_eq!(s.application_name, "orders-processor");
    assert!(s.fan_out.is_none());
    assert!(m.unknown.is_empty(), "{:?}", m.unknown);
}

#[test]
fn reads_the_java_properties_format() {
    let dir = std::env::temp_dir().join(format!("kcld-props-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("app.properties");
    std::fs::write(
        &path,
        format!(
            "# a comment\n! another\nexecutableName = python3 \\\n    app.py\nstreamArn: {ARN}\napplicationName app\nworkerId =\nmaxRecords=100\n"
        ),
    )
    .unwrap();
    let (s, m) = load_properties(&path, None, Vec::new()).unwrap();
    assert_eq!(m.command, ["python3", "app.py"]);
    assert_eq!(m.base_dir, dir);
    assert_eq!(s.application_name, "app");
    assert_eq!(s.polling.max_records, 100);
    assert!(!s.worker_id.is_empty(), "an empty value is not set");
    std::fs::remove_dir_all(&dir).unwrap();
}
