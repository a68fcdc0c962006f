//! `kcld doctor`: calls every API the configuration needs, once, and says
//! for each failure which action is missing, which account must fix it, and
//! the statement to add.

use kcld_config::Settings;
use kcld_lease::table::{LeaseTable, TableError};
use serde_json::json;

use crate::policy;
use crate::stream::{KinesisError, StartAt, Stream};

/// One row of the report.
#[derive(Debug, serde::Serialize)]
pub struct Check {
    /// What was checked, e.g. `caller identity`.
    pub check: String,
    /// The stream the check is of, when several are read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// Whether the check passed.
    pub ok: bool,
    /// What was found, or the error on failure.
    pub detail: String,
    /// For an access failure: what to add, and where.
    pub fix: Option<Fix>,
}

/// How to grant a permission a check found missing.
#[derive(Debug, serde::Serialize)]
pub struct Fix {
    /// The IAM action that was denied, e.g. `kinesis:GetRecords`.
    pub missing_action: String,
    /// Who must add the statement, and to which policy.
    pub fixed_by: String,
    /// The policy statement to add, as JSON.
    pub statement: serde_json::Value,
}

#[derive(Default)]
struct Report {
    checks: Vec<Check>,
    /// The stream the checks being made are of (several streams only).
    stream: Option<String>,
}

impl Report {
    fn pass(&mut self, check: &str, detail: impl Into<String>) {
        self.checks.push(Check {
            check: check.into(),
            stream: self.stream.clone(),
            ok: true,
            detail: detail.into(),
            fix: None,
        });
    }

    fn fail(&mut self, check: &str, detail: impl Into<String>, fix: Option<Fix>) {
        self.checks.push(Check {
            check: check.into(),
            stream: self.stream.clone(),
            ok: false,
            detail: detail.into(),
            fix,
        });
    }
}

/// Runs every check; stops at the first one the others depend on. With
/// several streams each stream is checked with its own credentials (its
/// role, its region), and one stream's failure does not stop the others'
/// checks.
pub async fn run(settings: &Settings) -> Vec<Check> {
    let mut report = Report::default();
    let several = settings.streams.len() > 1;
    let mut cache = crate::aws::ClientsCache::default();
    let mut lease_clients = None;
    for i in 0..settings.streams.len() {
        let one = settings.for_stream(i);
        report.stream = several.then(|| one.stream_arn.to_string());
        let Some(clients) = credentials(&mut report, &one, &mut cache).await else {
            if several {
                continue;
            }
            return report.checks;
        };
        lease_clients.get_or_insert_with(|| clients.clone());
        stream_checks(&mut report, &one, &clients).await;
    }
    report.stream = None;
    if let Some(clients) = lease_clients {
        table_checks(&mut report, settings, &clients).await;
        if let Some(s3) = &settings.sink.s3 {
            bucket_checks(&mut report, settings, s3).await;
        }
    }
    report.checks
}

/// The S3 sink's bucket: a zero-byte object written under `_kcld/` with
/// the bucket owner's ACL (as the sink writes), then deleted. The bucket
/// policy kcld needs does not grant s3:DeleteObject (kcld never deletes),
/// so the probe may stay: it is one fixed key, overwritten by every run.
async fn bucket_checks(report: &mut Report, settings: &Settings, s3: &kcld_config::S3SinkSettings) {
    use aws_sdk_s3::error::ProvideErrorMetadata;
    let check = "s3:PutObject (sink bucket)";
    let client = match crate::aws::s3_client(settings, s3.region.as_deref()).await {
        Ok(c) => c,
        Err(e) => return report.fail(check, format!("S3 client: {e}"), None),
    };
    let key = "_kcld/doctor-probe";
    let answer = crate::sink::s3::put_for_bucket_owner(
        &client,
        &s3.bucket,
        key,
        bytes::Bytes::new(),
        "application/octet-stream",
    )
    .await;
    let note = match answer {
        Ok(false) => {
            "the bucket refuses ACLs (bucket owner enforced): its owner owns what kcld writes"
        }
        _ => "written with bucket-owner-full-control",
    };
    match answer {
        Ok(_) => {
            report.pass(check, format!("wrote s3://{}/{key} ({note})", s3.bucket));
            if let Err(e) = client
                .delete_object()
                .bucket(&s3.bucket)
                .key(key)
                .send()
                .await
            {
                report.pass(
                    "s3:DeleteObject (sink bucket, optional)",
                    format!(
                        "the probe s3://{}/{key} stays: {} (kcld never deletes objects and needs no s3:DeleteObject; every doctor run overwrites this one key)",
                        s3.bucket,
                        e.code().unwrap_or("not deleted")
                    ),
                );
            }
        }
        Err(e) => {
            let code = e.code().unwrap_or_default().to_owned();
            let detail = kcld_lease::table::plain_error(&e);
            let fix = matches!(code.as_str(), "AccessDenied" | "AllAccessDisabled").then(|| Fix {
                missing_action: "s3:PutObject".into(),
                fixed_by:
                    "the bucket owner, in the bucket policy (and the consumer role's own policy)"
                        .into(),
                statement: policy::bucket_write_statement(
                    &s3.bucket_arn,
                    &policy::role_placeholder(None),
                ),
            });
            report.fail(check, format!("s3://{}: {detail}", s3.bucket), fix);
        }
    }
}

/// The clients of one stream, its credentials resolved (and its role
/// assumed); `None` after a failed check.
async fn credentials(
    report: &mut Report,
    settings: &Settings,
    cache: &mut crate::aws::ClientsCache,
) -> Option<crate::aws::Clients> {
    match cache.get(settings, &None).await {
        Ok(c) => {
            match &settings.aws.assume_role {
                None => report.pass("credentials", "resolved from the default chain"),
                Some(role) => report.pass(
                    "credentials",
                    format!(
                        "resolved from the default chain; Kinesis as the assumed role {}",
                        role.role_arn
                    ),
                ),
            }
            Some(c)
        }
        Err(e) => {
            report.fail("credentials", e.to_string(), None);
            None
        }
    }
}

/// Every call reading the stream needs, with its fan-out consumer.
async fn stream_checks(report: &mut Report, settings: &Settings, clients: &crate::aws::Clients) {
    let caller = match clients.caller_account().await {
        Ok(account) => {
            let relation = if account == settings.stream_arn.account {
                "the stream's own account".to_owned()
            } else {
                format!(
                    "reading across accounts from the stream owner {}",
                    settings.stream_arn.account
                )
            };
            report.pass("caller identity", format!("account {account}, {relation}"));
            Some(account)
        }
        Err(e) => {
            report.fail("caller identity", e.to_string(), None);
            None
        }
    };
    let principal = if settings.sink.invoke_identity_arn.contains(":role/") {
        settings.sink.invoke_identity_arn.clone()
    } else {
        policy::role_placeholder(None)
    };
    let stream = Stream::open(clients, settings.stream_arn.clone());
    let kinesis_fix = |action: &str| {
        Fix {
        missing_action: action.to_owned(),
        fixed_by: format!(
            "the stream owner (account {}) in the stream's resource policy, and the consumer in its role's IAM policy",
            settings.stream_arn.account
        ),
        statement: policy::stream_read_statement(&settings.stream_arn, &principal),
    }
    };
    let kinesis =
        |report: &mut Report, check: &str, result: Result<String, KinesisError>| -> bool {
            match result {
                Ok(detail) => {
                    report.pass(check, detail);
                    true
                }
                Err(KinesisError::AccessDenied { action, message }) => {
                    report.fail(check, message, Some(kinesis_fix(action)));
                    false
                }
                Err(e) => {
                    report.fail(check, e.to_string(), None);
                    false
                }
            }
        };

    let described = stream.describe().await.map(|s| {
        format!(
            "{} with {} open shards, encryption {}",
            s.status, s.open_shards, s.encryption
        )
    });
    // A DynamoDB table's stream answers DescribeStream for all three.
    let dynamodb = settings.stream_arn.is_dynamodb();
    let (describe_check, list_check) = match dynamodb {
        true => ("DescribeStream", "DescribeStream (shards)"),
        false => ("DescribeStreamSummary", "ListShards"),
    };
    let stream_ok = kinesis(report, describe_check, described.clone());
    if stream_ok && !dynamodb {
        let full = stream
            .describe_stream()
            .await
            .map(|status| format!("{status} (the KCL's call, granted by `kcld policy`)"));
        kinesis(report, "DescribeStream", full);
    }
    let encrypted = described
        .as_ref()
        .is_ok_and(|d| d.ends_with("encryption KMS"));
    if stream_ok {
        let shards = stream.list_shards(1000).await;
        let first = shards
            .as_ref()
            .ok()
            .and_then(|s| s.iter().find(|s| !s.closed).or(s.first()))
            .map(|s| s.shard_id.clone());
        let listed = shards.map(|s| format!("{} shards", s.len()));
        if kinesis(report, list_check, listed) {
            if let Some(shard) = &first {
                let iterator = stream.shard_iterator(shard, &StartAt::Latest).await;
                let it = iterator.as_ref().ok().cloned();
                if kinesis(
                    report,
                    "GetShardIterator",
                    iterator.map(|_| format!("{shard} at LATEST")),
                ) {
                    if let Some(it) = it {
                        let records = stream
                            .get_records(&it, 1)
                            .await
                            .map(|r| format!("{} record(s) read", r.records.len()));
                        kinesis(report, "GetRecords", records);
                    }
                }
                if encrypted {
                    // At LATEST there is nothing to decrypt: read the
                    // oldest record, which KMS must decrypt.
                    let read = match stream.shard_iterator(shard, &StartAt::TrimHorizon).await {
                        Ok(it) => stream
                            .get_records(&it, 1)
                            .await
                            .map(|r| match r.records.len() {
                                0 => "no record in the shard to decrypt yet".to_owned(),
                                _ => "the oldest record read and decrypted".to_owned(),
                            }),
                        Err(e) => Err(e),
                    };
                    kinesis(
                        report,
                        "GetRecords of an encrypted record (kms:Decrypt)",
                        read,
                    );
                }
                if let (Some(fan_out), Some(shard)) = (&settings.fan_out, first) {
                    fan_out_checks(
                        report,
                        settings,
                        &stream,
                        fan_out,
                        &shard,
                        caller.as_deref(),
                        &principal,
                    )
                    .await;
                }
            }
        }
    }
}

/// The lease table: there or creatable, readable, writable, and not run by
/// a KCL 3.x leader.
async fn table_checks(report: &mut Report, settings: &Settings, clients: &crate::aws::Clients) {
    let table = LeaseTable::new(clients.dynamodb.clone(), &settings.lease_table);
    let table_arn = format!(
        "arn:{}:dynamodb:{}:<consumer-account>:table/{}",
        settings.stream_arn.partition, settings.aws.dynamodb_region, settings.lease_table
    );
    let dynamo_fix = |action: &str| Fix {
        missing_action: action.to_owned(),
        fixed_by: "the consumer account, in the consumer role's IAM policy".into(),
        statement: json!({ "Sid": "LeaseTable", "Effect": "Allow", "Action": policy::LEASE_TABLE_ACTIONS, "Resource": table_arn }),
    };
    let dynamo = |report: &mut Report,
                  check: &str,
                  action: &str,
                  result: Result<String, TableError>|
     -> bool {
        match result {
            Ok(detail) => {
                report.pass(check, detail);
                true
            }
            Err(TableError::AccessDenied(message)) => {
                report.fail(check, message, Some(dynamo_fix(action)));
                false
            }
            Err(e) => {
                report.fail(check, e.to_string(), None);
                false
            }
        }
    };
    match table.exists().await {
        Ok(false) => {
            report.pass(
                "lease table",
                format!(
                    "{} does not exist yet: kcld creates it at start (dynamodb:CreateTable)",
                    settings.lease_table
                ),
            );
            dynamo(
                report,
                "CreateTable",
                "dynamodb:CreateTable",
                table.probe_create().await.map(|()| {
                    "allowed (checked with a request DynamoDB refuses after the permission check)"
                        .to_owned()
                }),
            );
        }
        Ok(true) => {
            let (count, coordination) = match table.scan_all().await {
                Ok(scan) => (Ok(scan.leases.len()), scan.coordination),
                Err(e) => (Err(e), Default::default()),
            };
            if dynamo(
                report,
                "lease table read (Scan)",
                "dynamodb:Scan",
                count.map(|n| format!("{n} lease(s)")),
            ) {
                match table.live_kcl3_fleet(coordination).await {
                    None => report.pass(
                        "no running KCL 3.x leader",
                        "no KCL 3.x fleet assigns this table's leases",
                    ),
                    Some(fleet) => {
                        report.fail("no running KCL 3.x leader", fleet.to_string(), None)
                    }
                }
                dynamo(
                    report,
                    "lease read (GetItem)",
                    "dynamodb:GetItem",
                    table
                        .peek("kcld-doctor-probe-never-written")
                        .await
                        .map(|_| "allowed".into()),
                );
                dynamo(
                    report,
                    "lease table conditional write (UpdateItem)",
                    "dynamodb:UpdateItem",
                    table
                        .probe_conditional_write()
                        .await
                        .map(|()| "allowed (nothing written)".into()),
                );
            }
        }
        Err(e) => {
            let result: Result<String, TableError> = Err(e);
            dynamo(
                report,
                "lease table (DescribeTable)",
                "dynamodb:DescribeTable",
                result,
            );
        }
    }
}

/// DescribeStreamConsumer (or the lookup by name) and one SubscribeToShard
/// on `shard`, waiting for its first event: errors of a subscription can
/// arrive inside the event stream.
async fn fan_out_checks(
    report: &mut Report,
    settings: &Settings,
    stream: &Stream,
    fan_out: &kcld_config::FanOutSettings,
    shard: &str,
    caller: Option<&str>,
    principal: &str,
) {
    let owner = &settings.stream_arn.account;
    let fail_consumer = |report: &mut Report, check: &str, consumer: &str, e: KinesisError| {
        let fix = match &e {
            KinesisError::AccessDenied { action, .. } => Some(Fix {
                missing_action: (*action).to_owned(),
                fixed_by: format!(
                    "the stream owner (account {owner}) in the consumer's resource policy, and the consumer in its role's IAM policy"
                ),
                statement: policy::consumer_read_statement(consumer, principal),
            }),
            _ => None,
        };
        report.fail(check, e.to_string(), fix);
    };
    let consumer_arn = match &fan_out.consumer {
        kcld_config::FanOutConsumer::Arn(arn) => {
            let arn = arn.to_string();
            match stream.describe_consumer(&arn).await {
                Ok(info) => {
                    report.pass("DescribeStreamConsumer", format!("{} is {}", info.arn, info.status));
                    info.arn
                }
                Err(e) => return fail_consumer(report, "DescribeStreamConsumer", &arn, e),
            }
        }
        kcld_config::FanOutConsumer::Name(name) => match stream.find_consumer(name).await {
            Ok(Some(info)) => {
                report.pass("DescribeStreamConsumer", format!("{name}: {} is {}", info.arn, info.status));
                info.arn
            }
            Ok(None) if caller == Some(owner.as_str()) => {
                return report.pass(
                    "DescribeStreamConsumer",
                    format!("no consumer {name:?} yet: kcld registers it at start (kinesis:RegisterStreamConsumer in this account)"),
                )
            }
            Ok(None) => {
                let detail = match caller {
                    Some(caller) => policy::ForeignRegistration {
                        stream: settings.stream_arn.clone(),
                        name: name.to_owned(),
                        caller_account: caller.to_owned(),
                    }
                    .to_string(),
                    None => format!("no consumer {name:?} on the stream, and this account is unknown (see caller identity)"),
                };
                return report.fail("DescribeStreamConsumer", detail, None);
            }
            Err(e) => {
                let consumer = format!("{}/consumer/{name}:*", settings.stream_arn);
                return fail_consumer(report, "DescribeStreamConsumer", &consumer, e);
            }
        },
    };
    let subscribed = match stream
        .subscribe(&consumer_arn, shard, &crate::stream::StartAt::Latest)
        .await
    {
        Ok(mut subscription) => {
            let first = tokio::time::timeout(
                std::time::Duration::from_secs(15),
                stream.next_event(&mut subscription, &consumer_arn),
            )
            .await;
            match first {
                Ok(Ok(_)) => Ok(format!("{shard}: subscribed, first event received")),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(KinesisError::Other(format!(
                    "{shard}: subscribed, but no event within 15 s"
                ))),
            }
        }
        Err(e) => Err(e),
    };
    match subscribed {
        Ok(detail) => report.pass("SubscribeToShard", detail),
        Err(e) => fail_consumer(report, "SubscribeToShard", &consumer_arn, e),
    }
}

/// The report as a table a person reads.
pub fn render(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let mut out = format!("{:<width$}  RESULT  DETAIL\n", "CHECK");
    let mut group: Option<&str> = None;
    for c in checks {
        // With several streams, each stream's checks under its name, then
        // the lease table's.
        if c.stream.as_deref() != group {
            match &c.stream {
                Some(arn) => {
                    let owner = arn
                        .parse::<kcld_config::StreamArn>()
                        .map(|a| format!(" (account {}, {})", a.account, a.region))
                        .unwrap_or_default();
                    out.push_str(&format!("{arn}{owner}\n"));
                }
                None => out.push_str("lease table\n"),
            }
            group = c.stream.as_deref();
        }
        out.push_str(&format!(
            "{:<width$}  {:<6}  {}\n",
            c.check,
            if c.ok { "ok" } else { "FAILED" },
            c.detail
        ));
        if let Some(fix) = &c.fix {
            out.push_str(&format!(
                "{:<width$}          missing action: {}\n",
                "", fix.missing_action
            ));
            out.push_str(&format!(
                "{:<width$}          fixed by: {}\n",
                "", fix.fixed_by
            ));
            out.push_str(&format!(
                "{:<width$}          statement to add: {}\n",
                "", fix.statement
            ));
        }
    }
    out
}
