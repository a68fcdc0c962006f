//! Bad input: each mistake gives one clear line naming what is wrong and the
//! fix, and the documented exit code. Runs the real binary.

use std::collections::HashMap;
use std::time::Duration;

use kcld_testkit::{unique_name, Kcld, Stack};

const KCLD: &str = env!("CARGO_BIN_EXE_kcld");
const ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs kcld to completion; returns (exit code, stdout lines, stderr).
async fn run(args: &[&str], vars: HashMap<String, String>) -> (i32, Vec<String>, String) {
    let mut kcld = Kcld::spawn(KCLD, args, &vars).unwrap();
    let out = kcld.drain_for(Duration::from_secs(30)).await;
    let stderr_handle = kcld.stderr.clone();
    let status = kcld.wait(Duration::from_secs(30)).await.unwrap();
    // Let the stderr reader catch the last line.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let err = stderr_handle.lock().unwrap().clone();
    (status.code().unwrap_or(-1), out, err)
}

fn one_error_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("stack backtrace"), "{stderr}");
    lines[0]
}

#[tokio::test]
async fn version_and_help() {
    let (code, out, _) = run(&["--version"], env(&[])).await;
    assert_eq!(code, 0);
    assert_eq!(out, [format!("kcld {}", env!("CARGO_PKG_VERSION"))]);
    let (code, out, _) = run(&["--help"], env(&[])).await;
    assert_eq!(code, 0);
    let help = out.join("\n");
    for word in [
        "run",
        "check-config",
        "--config",
        "KCLD_CONFIG",
        "Exit codes",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

#[tokio::test]
async fn check_config_prints_the_effective_configuration() {
    let (code, out, err) = run(
        &["check-config"],
        env(&[
            ("KCLD_APPLICATION_NAME", "orders-reader"),
            ("KCLD_STREAM_ARN", ARN),
            ("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:1"),
        ]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let text = out.join("\n");
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    assert_eq!(parsed["lease_table"].as_str(), Some("orders-reader"));
    assert_eq!(
        parsed["aws"]["kinesis_endpoint"].as_str(),
        Some("http://127.0.0.1:1")
    );
    // No region named anywhere: the lookup at start is said, not pinned.
    assert!(parsed["aws"].get("dynamodb_region").is_none(), "{text}");
    assert!(
        text.contains("# dynamodb_region: unset: the AWS profile's or the instance's region"),
        "{text}"
    );
    assert!(text.contains("account 111111111111"), "{text}");
}

#[tokio::test]
async fn configuration_errors_exit_2_naming_the_key() {
    let cases: Vec<(Vec<&str>, HashMap<String, String>, &str)> = vec![
        (
            vec!["run"],
            env(&[("KCLD_STREAM_ARN", ARN)]),
            "application_name",
        ),
        (
            vec!["check-config"],
            env(&[("KCLD_APPLICATION_NAME", "app")]),
            "stream_arn",
        ),
        (
            vec!["run"],
            env(&[
                ("KCLD_APPLICATION_NAME", "app"),
                ("KCLD_STREAM_ARN", "arn:aws:kinesis:us-east-1:1111:stream/x"),
            ]),
            "stream_arn",
        ),
        (
            vec!["check-config"],
            env(&[
                ("KCLD_APPLICATION_NAME", "app"),
                ("KCLD_STREAM_ARN", ARN),
                ("KCLD_POLLING__MAX_RECORDS", "lots"),
            ]),
            "max_records",
        ),
        (
            vec!["check-config", "--config", "/nonexistent/kcld.toml"],
            env(&[]),
            "/nonexistent/kcld.toml",
        ),
    ];
    for (args, vars, key) in cases {
        let (code, out, err) = run(&args, vars).await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(out.is_empty(), "{args:?} printed to stdout: {out:?}");
        let line = one_error_line(&err);
        assert!(line.contains(key), "{args:?}: {line:?} does not name {key}");
    }
    // Usage errors are configuration errors too.
    let (code, _, err) = run(&["frobnicate"], env(&[])).await;
    assert_eq!(code, 2, "{err}");
}

#[tokio::test]
async fn an_unreachable_endpoint_exits_1_and_says_where() {
    // Port 9 on loopback: nothing listens there.
    let (code, out, err) = run(
        &["run"],
        env(&[
            ("KCLD_APPLICATION_NAME", "app"),
            ("KCLD_STREAM_ARN", ARN),
            ("AWS_ACCESS_KEY_ID", "222222222222"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:9"),
        ]),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    let line = one_error_line(&err);
    assert!(
        line.contains("cannot reach Kinesis") && line.contains("AWS_ENDPOINT_URL_KINESIS"),
        "{line}"
    );
    // The cause in plain words, no Rust debug dump.
    assert!(line.contains("Connection refused"), "{line}");
    assert!(
        !line.contains("DispatchFailure(") && !line.contains("ConnectorError {"),
        "{line}"
    );
}

#[tokio::test]
async fn missing_credentials_exit_1_and_say_how_to_provide_them() {
    let (code, _, err) = run(
        &["run"],
        env(&[
            ("KCLD_APPLICATION_NAME", "app"),
            ("KCLD_STREAM_ARN", ARN),
            ("AWS_ENDPOINT_URL_KINESIS", "http://127.0.0.1:9"),
            // No keys, no profile, and no instance metadata on loopback.
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("AWS_CONFIG_FILE", "/nonexistent"),
            ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
        ]),
    )
    .await;
    assert_eq!(code, 1, "{err}");
    let line = one_error_line(&err);
    assert!(
        line.contains("credentials") && line.contains("AWS_ACCESS_KEY_ID"),
        "{line}"
    );
    // The SDK's per-provider failures, with their debug dumps, stay out.
    assert!(!err.contains("ProviderError("), "{err}");
    assert!(!err.contains("provider failed to provide"), "{err}");
}

#[tokio::test]
async fn a_stream_that_does_not_exist_exits_1_naming_it() {
    let stack = Stack::from_env().unwrap();
    let arn = format!(
        "arn:aws:kinesis:us-east-1:{}:stream/{}",
        stack.producer_account,
        unique_name("missing")
    );
    let mut vars = stack.consumer_env();
    vars.insert("KCLD_APPLICATION_NAME".into(), "app".into());
    vars.insert("KCLD_STREAM_ARN".into(), arn.clone());
    let (code, out, err) = run(&["run"], vars).await;
    assert_eq!(code, 1, "{err}");
    assert!(out.is_empty());
    let line = one_error_line(&err);
    assert!(line.contains("not found") && line.contains(&arn), "{line}");
}

#[tokio::test]
async fn policy_prints_every_action_the_seeds_require() {
    let stream = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";
    let role = "arn:aws:iam::222222222222:role/kcld-consumer";
    let (code, out, err) = run(
        &[
            "policy",
            "--stream-arn",
            stream,
            "--consumer-role-arn",
            role,
        ],
        env(&[]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out.join("\n")).unwrap();
    let statement = &doc["stream_resource_policy"]["Statement"][0];
    assert_eq!(
        statement["Principal"]["AWS"], role,
        "the principal is the consumer's role"
    );
    assert_eq!(statement["Resource"], stream);
    let actions: Vec<&str> = statement["Action"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for needed in [
        "kinesis:DescribeStream",
        "kinesis:DescribeStreamSummary",
        "kinesis:GetRecords",
        "kinesis:GetShardIterator",
        "kinesis:ListShards",
    ] {
        assert!(
            actions.contains(&needed),
            "{needed} missing from {actions:?}"
        );
    }
    // No lease table named: a placeholder that says so, never a made-up name.
    let table = doc["consumer_role_policy"]["Statement"][1]["Resource"]
        .as_str()
        .unwrap();
    assert!(table.ends_with("table/<application_name>"), "{table}");
    assert!(doc["notes"][0].as_str().unwrap().contains("--lease-table"));
    assert!(
        doc.get("consumer_resource_policy").is_none(),
        "no fan-out asked for"
    );
    let role_policy = doc["consumer_role_policy"]["Statement"].as_array().unwrap();
    assert!(role_policy.iter().any(
        |s| s["Resource"] == "arn:aws:dynamodb:us-east-1:222222222222:table/<application_name>"
    ));
    let accounts: Vec<&str> = doc["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["account"].as_str().unwrap())
        .collect();
    assert_eq!(accounts, ["111111111111", "222222222222"]);
}

#[tokio::test]
async fn policy_for_a_consumer_by_name_registers_it_at_home_and_asks_the_owner_abroad() {
    let role = "arn:aws:iam::222222222222:role/kcld-consumer";
    let policy = |stream: &'static str| async move {
        let (code, out, err) = run(
            &[
                "policy",
                "--stream-arn",
                stream,
                "--consumer-role-arn",
                role,
                "--consumer-name",
                "orders-reader",
                "--lease-table",
                "orders-reader",
            ],
            env(&[]),
        )
        .await;
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<serde_json::Value>(&out.join("\n")).unwrap()
    };

    // The stream is in the role's own account: kcld registers the consumer
    // when it finds none, so the role may; no resource policy is needed.
    let home = "arn:aws:kinesis:us-east-1:222222222222:stream/orders";
    let doc = policy(home).await;
    let statements = doc["consumer_role_policy"]["Statement"].as_array().unwrap();
    let register = statements
        .iter()
        .find(|s| s["Sid"] == "RegisterConsumer")
        .unwrap_or_else(|| panic!("no RegisterStreamConsumer: {doc}"));
    assert_eq!(
        register["Action"],
        serde_json::json!(["kinesis:RegisterStreamConsumer"])
    );
    assert_eq!(register["Resource"], home);
    let read = doc["consumer_role_policy"]["Statement"][0].to_string();
    for needed in ["kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard"] {
        assert!(read.contains(needed), "{read}");
    }
    assert!(
        read.contains(&format!("{home}/consumer/orders-reader:*")),
        "{read}"
    );
    assert!(doc.get("consumer_resource_policy").is_none(), "{doc}");

    // Another account's stream: only its owner can register the consumer;
    // the owner's steps say how, and the role gets no RegisterStreamConsumer.
    let abroad = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";
    let doc = policy(abroad).await;
    assert!(
        !doc["consumer_role_policy"]
            .to_string()
            .contains("RegisterStreamConsumer"),
        "{doc}"
    );
    let shared = &doc["consumer_resource_policy"]["Statement"][0];
    assert_eq!(shared["Principal"]["AWS"], role);
    assert_eq!(
        shared["Resource"],
        format!("{abroad}/consumer/orders-reader:<creation-timestamp>")
    );
    let commands: Vec<&str> = doc["commands"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["command"].as_str().unwrap())
        .collect();
    assert!(
        commands
            .iter()
            .any(|c| c.starts_with("aws kinesis register-stream-consumer")
                && c.contains("--consumer-name orders-reader")
                && c.contains(abroad)),
        "{commands:?}"
    );

    // A name Kinesis would refuse is one error naming the flag.
    let (code, _, err) = run(
        &[
            "policy",
            "--stream-arn",
            home,
            "--consumer-role-arn",
            role,
            "--consumer-name",
            "no spaces",
        ],
        env(&[]),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    assert!(line.contains("--consumer-name"), "{line}");
}

#[tokio::test]
async fn policy_names_a_kms_key_that_is_not_a_key_arn() {
    let stream = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";
    let role = "arn:aws:iam::222222222222:role/kcld-consumer";
    for bad in [
        "alias/aws/kinesis",
        "arn:aws:kms:us-east-1:111111111111:alias/orders",
        "arn:aws:kms:us-east-1:1111:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
    ] {
        let (code, out, err) = run(
            &[
                "policy",
                "--stream-arn",
                stream,
                "--consumer-role-arn",
                role,
                "--kms-key-arn",
                bad,
            ],
            env(&[]),
        )
        .await;
        assert_eq!(code, 2, "{bad}: {err}");
        assert!(out.is_empty(), "{bad}: nothing printed: {out:?}");
        let line = one_error_line(&err);
        assert!(
            line.contains("--kms-key-arn") && line.contains("key/"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn policy_for_fan_out_and_an_encrypted_stream() {
    let consumer =
        "arn:aws:kinesis:us-east-1:111111111111:stream/orders/consumer/shared:1700000000";
    let key = "arn:aws:kms:us-east-1:111111111111:key/1234abcd-12ab-34cd-56ef-1234567890ab";
    let (code, out, err) = run(
        &[
            "policy",
            "--consumer-role-arn",
            "arn:aws:iam::222222222222:role/kcld-consumer",
            "--consumer-arn",
            consumer,
            "--kms-key-arn",
            key,
        ],
        env(&[
            ("KCLD_APPLICATION_NAME", "orders-reader"),
            ("KCLD_STREAM_ARN", ARN),
        ]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out.join("\n")).unwrap();
    let fan_out = &doc["consumer_resource_policy"]["Statement"][0];
    assert_eq!(fan_out["Resource"], consumer);
    assert_eq!(
        fan_out["Action"],
        serde_json::json!(["kinesis:DescribeStreamConsumer", "kinesis:SubscribeToShard"])
    );
    let text = doc["consumer_role_policy"].to_string();
    assert!(text.contains("kms:Decrypt") && text.contains(key), "{text}");
    assert!(
        text.contains("table/orders-reader"),
        "lease table from the configuration: {text}"
    );
    assert_eq!(
        doc["kms_key_policy_statement"]["Principal"]["AWS"],
        "arn:aws:iam::222222222222:role/kcld-consumer"
    );

    // The consumer ARN of the configuration is used when no flag names one.
    let (code, out, err) = run(
        &[
            "policy",
            "--consumer-role-arn",
            "arn:aws:iam::222222222222:role/kcld-consumer",
        ],
        env(&[
            ("KCLD_APPLICATION_NAME", "orders-reader"),
            ("KCLD_STREAM_ARN", ARN),
            ("KCLD_CONSUMER_ARN", consumer),
        ]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out.join("\n")).unwrap();
    assert_eq!(
        doc["consumer_resource_policy"]["Statement"][0]["Resource"],
        consumer
    );

    // A consumer of another stream is refused.
    let (code, _, err) = run(
        &[
            "policy",
            "--stream-arn",
            ARN,
            "--consumer-role-arn",
            "arn:aws:iam::222222222222:role/kcld-consumer",
            "--consumer-arn",
            "arn:aws:kinesis:us-east-1:111111111111:stream/payments/consumer/c:1",
        ],
        env(&[]),
    )
    .await;
    assert_eq!(code, 2);
    assert!(one_error_line(&err).contains("consumer-arn"), "{err}");

    // A user ARN is not a principal a resource policy should name.
    let (code, _, err) = run(
        &[
            "policy",
            "--stream-arn",
            ARN,
            "--consumer-role-arn",
            "arn:aws:iam::222222222222:user/bob",
        ],
        env(&[]),
    )
    .await;
    assert_eq!(code, 2);
    assert!(one_error_line(&err).contains("consumer-role-arn"), "{err}");
}

#[tokio::test]
async fn a_stray_kcld_variable_is_one_warning_not_a_stop() {
    let (code, out, err) = run(
        &["check-config"],
        env(&[
            ("KCLD_APPLICATION_NAME", "orders-app"),
            ("KCLD_STREAM_ARN", ARN),
            ("KCLD_WRAPPER_MODE", "1"),
            ("KCLD_POLING__MAX_RECORDS", "5"),
        ]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.is_empty());
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warning")).collect();
    assert_eq!(warnings.len(), 2, "{err}");
    assert!(
        warnings.iter().any(|w| w.contains("KCLD_WRAPPER_MODE")),
        "{err}"
    );
    assert!(
        warnings
            .iter()
            .any(|w| w.contains("KCLD_POLING__MAX_RECORDS")
                && w.contains("KCLD_POLLING__MAX_RECORDS")),
        "the closest variable is suggested: {err}"
    );
}

#[tokio::test]
async fn a_mistyped_key_in_a_section_is_named_with_its_section_and_the_nearest_key() {
    let dir = std::env::temp_dir().join(unique_name("kcld-cli"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kcld.toml");
    std::fs::write(
        &path,
        format!("application_name = \"a\"\nstream_arn = \"{ARN}\"\n[polling]\nmax_record = 5\n"),
    )
    .unwrap();
    let (code, _, err) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        env(&[]),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    for part in [
        "polling.max_record",
        "[polling]",
        "`polling.max_records`",
        "KCLD_POLLING__MAX_RECORDS",
    ] {
        assert!(line.contains(part), "{part} missing from: {line}");
    }

    // A syntax error: one line with the place.
    std::fs::write(
        &path,
        "application_name = \"a\"\n[polling\nmax_records = 5\n",
    )
    .unwrap();
    let (code, _, err) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        env(&[]),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    assert!(line.contains("line 2, column"), "{line}");
    assert_eq!(err.trim().lines().count(), 1, "one line only:\n{err}");

    // A value of the wrong type names the key and its variable.
    std::fs::write(
        &path,
        format!(
            "application_name = \"a\"\nstream_arn = \"{ARN}\"\n[polling]\nmax_records = \"many\"\n"
        ),
    )
    .unwrap();
    let (code, _, err) = run(
        &["check-config", "--config", path.to_str().unwrap()],
        env(&[]),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    assert!(
        line.contains("polling.max_records") && line.contains("KCLD_POLLING__MAX_RECORDS"),
        "{line}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn an_unusable_kms_key_is_one_error_naming_what_the_owner_does() {
    use kcld_testkit::fault::{Fault, FaultProxy};
    let stack = Stack::from_env().unwrap();
    let arn = stack
        .create_shared_stream(&unique_name("kms"), 1)
        .await
        .unwrap();
    let proxy = FaultProxy::start(&stack.kinesis_endpoint).await.unwrap();
    for (code, says) in [
        ("KMSDisabledException", "enable-key"),
        ("KMSNotFoundException", "start-stream-encryption"),
        ("KMSInvalidStateException", "cancel-key-deletion"),
        ("KMSOptInRequired", "opts in"),
    ] {
        proxy.fail(
            "Kinesis_20131202.GetRecords",
            Fault {
                status: 400,
                error_type: code.into(),
                message: "The request was rejected because of the key".into(),
            },
        );
        let mut vars = stack.consumer_env();
        vars.insert("AWS_ENDPOINT_URL_KINESIS".into(), proxy.url());
        vars.insert("KCLD_APPLICATION_NAME".into(), unique_name("kms-app"));
        vars.insert("KCLD_STREAM_ARN".into(), arn.clone());
        vars.insert("KCLD_LEASE__STORE".into(), "memory".into());
        // Retried as transient, this would never exit.
        let (code_out, _, err) = run(&["run"], vars).await;
        assert_eq!(code_out, 1, "{code}: {err}");
        let line = one_error_line(&err);
        assert!(line.contains(code) && line.contains(says), "{code}: {line}");
    }

    // The key disabled while kcld reads (its GetRecords calls no longer go
    // through the SDK by then): the same one error, and an exit.
    proxy.clear();
    stack
        .put_records(&arn, &kcld_testkit::sample_records(3, 1))
        .await
        .unwrap();
    let mut vars = stack.consumer_env();
    vars.insert("AWS_ENDPOINT_URL_KINESIS".into(), proxy.url());
    vars.insert("KCLD_APPLICATION_NAME".into(), unique_name("kms-app"));
    vars.insert("KCLD_STREAM_ARN".into(), arn.clone());
    vars.insert("KCLD_INITIAL_POSITION".into(), "TRIM_HORIZON".into());
    vars.insert("KCLD_LEASE__STORE".into(), "memory".into());
    let mut kcld = kcld_testkit::Kcld::spawn(KCLD, &["run"], &vars).unwrap();
    assert_eq!(
        kcld.take_lines(3, std::time::Duration::from_secs(60))
            .await
            .len(),
        3
    );
    proxy.fail(
        "Kinesis_20131202.GetRecords",
        Fault {
            status: 400,
            error_type: "KMSDisabledException".into(),
            message: "The request was rejected because of the key".into(),
        },
    );
    let log = kcld.stderr.clone();
    let status = kcld.wait(std::time::Duration::from_secs(30)).await.unwrap();
    let err = log.lock().unwrap().clone();
    assert_eq!(status.code(), Some(1), "{err}");
    let line = one_error_line(&err);
    assert!(
        line.contains("KMSDisabledException") && line.contains("enable-key"),
        "{line}"
    );
}

#[tokio::test]
async fn with_json_logs_the_final_error_is_json_too() {
    for (args, vars) in [
        (
            vec!["--log-format", "json", "check-config"],
            env(&[("KCLD_STREAM_ARN", ARN)]),
        ),
        (
            vec!["check-config"],
            env(&[("KCLD_STREAM_ARN", ARN), ("KCLD_LOG__FORMAT", "json")]),
        ),
    ] {
        let (code, _, err) = run(&args, vars).await;
        assert_eq!(code, 2, "{err}");
        let last = err.trim().lines().last().unwrap_or_default();
        let line: serde_json::Value =
            serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {err}"));
        assert_eq!(line["level"], "ERROR");
        assert_eq!(line["exit_code"], 2);
        assert!(
            line["message"]
                .as_str()
                .unwrap()
                .contains("application_name"),
            "{line}"
        );
    }
}

#[tokio::test]
async fn policy_without_a_stream_names_the_missing_stream_arn() {
    // The README's own example, without a stream anywhere.
    let (code, _, err) = run(
        &[
            "policy",
            "--consumer-role-arn",
            "arn:aws:iam::222222222222:role/kcld-consumer",
        ],
        env(&[]),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    let line = one_error_line(&err);
    assert!(
        line.contains("--stream-arn") && !line.contains("application_name"),
        "{line}"
    );
}

#[tokio::test]
async fn policy_for_an_assumed_role_includes_its_trust_statement() {
    let role = "arn:aws:iam::222222222222:role/kcld-consumer";
    let (code, out, err) = run(
        &["policy", "--consumer-role-arn", role],
        env(&[
            ("KCLD_APPLICATION_NAME", "orders-reader"),
            ("KCLD_STREAM_ARN", ARN),
            ("KCLD_AWS__ASSUME_ROLE_ARN", role),
            ("KCLD_AWS__ASSUME_ROLE_EXTERNAL_ID", "ext-7"),
        ]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let doc: serde_json::Value = serde_json::from_str(&out.join("\n")).unwrap();
    let trust = &doc["consumer_role_trust_policy"]["Statement"][0];
    assert_eq!(trust["Action"], "sts:AssumeRole");
    assert_eq!(
        trust["Condition"]["StringEquals"]["sts:ExternalId"],
        "ext-7"
    );
    let commands = doc["commands"].to_string();
    assert!(
        commands.contains("update-assume-role-policy --role-name kcld-consumer"),
        "{commands}"
    );
}
