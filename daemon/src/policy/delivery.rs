//! What a sink writes outside the stream: the S3 sink's bucket policy (and
//! KMS key statement), an on-failure destination's queue, topic or bucket
//! policy, the consumer role's matching statements and the owners'
//! commands, as `kcld policy` adds them to its document.

/// What the S3 sink does in a bucket of another account, as the seeds list
/// it for a cross-account delivery (Firehose's actions).
pub const BUCKET_WRITE_ACTIONS: [&str; 7] = [
    "s3:AbortMultipartUpload",
    "s3:GetBucketLocation",
    "s3:GetObject",
    "s3:ListBucket",
    "s3:ListBucketMultipartUploads",
    "s3:PutObject",
    "s3:PutObjectAcl",
];

/// The statement the bucket owner adds to the bucket policy so that
/// `principal` (the consumer's role) can write the S3 sink's objects.
pub fn bucket_write_statement(bucket_arn: &str, principal: &str) -> serde_json::Value {
    serde_json::json!({
        "Sid": "kcld-cross-account-delivery",
        "Effect": "Allow",
        "Principal": { "AWS": principal },
        "Action": BUCKET_WRITE_ACTIONS,
        "Resource": [bucket_arn, format!("{bucket_arn}/*")],
    })
}

/// The statement the owner of an on-failure destination adds to its
/// resource policy (queue, topic or bucket policy) so that `principal`
/// (the consumer's role) can send failed batches' records to it.
pub fn destination_statement(
    destination: &kcld_config::FailureDestination,
    principal: &str,
) -> serde_json::Value {
    use kcld_config::FailureDestination;
    let (action, resource) = match destination {
        FailureDestination::Sqs { arn, .. } => ("sqs:SendMessage", arn.clone()),
        FailureDestination::Sns { arn, .. } => ("sns:Publish", arn.clone()),
        FailureDestination::S3 { arn, .. } => ("s3:PutObject", format!("{arn}/*")),
    };
    serde_json::json!({
        "Sid": "kcld-on-failure-destination",
        "Effect": "Allow",
        "Principal": { "AWS": principal },
        "Action": action,
        "Resource": resource,
    })
}

/// What the sink writes outside the stream, added to a `kcld policy`
/// document: for an S3 sink the bucket policy its owner attaches (and the
/// KMS key statement with SSE-KMS), for an on-failure destination its
/// queue, topic or bucket policy statement; the consumer role's matching
/// statements and the owners' commands.
pub fn add_delivery(doc: &mut serde_json::Value, sink: &kcld_config::SinkSettings, role_arn: &str) {
    use kcld_config::{FailureDestination, S3Encryption};
    let mut role_statements = Vec::new();
    let mut commands = Vec::new();
    let step = |who: &str, saves: &str, command: String| serde_json::json!({ "account": format!("<{}'s account>", who), "run_by": who, "save_field_as_file": saves, "command": command });
    if let Some(s3) = &sink.s3 {
        doc["bucket_policy"] = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [bucket_write_statement(&s3.bucket_arn, role_arn)],
        });
        role_statements.push(serde_json::json!({
            "Sid": "DeliverToBucket",
            "Effect": "Allow",
            "Action": BUCKET_WRITE_ACTIONS,
            "Resource": [s3.bucket_arn.clone(), format!("{}/*", s3.bucket_arn)],
        }));
        commands.push(step(
            "bucket owner",
            "bucket_policy (merged into the bucket's policy, if it has one) -> bucket-policy.json",
            format!(
                "aws s3api put-bucket-policy --bucket {} --policy file://bucket-policy.json",
                s3.bucket
            ),
        ));
        if let S3Encryption::Kms(key) = &s3.encryption {
            doc["bucket_kms_key_policy_statement"] = serde_json::json!({
                "Sid": "kcld-cross-account-encrypt",
                "Effect": "Allow",
                "Principal": { "AWS": role_arn },
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                "Resource": "*",
            });
            role_statements.push(serde_json::json!({
                "Sid": "EncryptForBucket",
                "Effect": "Allow",
                "Action": ["kms:GenerateDataKey", "kms:Decrypt"],
                "Resource": key,
            }));
            commands.push(step(
                "bucket owner",
                "bucket_kms_key_policy_statement: add it to the key's policy document -> key-policy.json",
                format!("aws kms put-key-policy --key-id {key} --policy-name default --policy file://key-policy.json"),
            ));
        }
    }
    if let Some(destination) = sink
        .http
        .as_ref()
        .and_then(|h| h.on_failure_destination.as_ref())
    {
        let statement = destination_statement(destination, role_arn);
        doc["on_failure_destination_policy"] = serde_json::json!({
            "Version": "2012-10-17",
            "Statement": [statement.clone()],
        });
        let mut own = statement;
        if let Some(o) = own.as_object_mut() {
            o.remove("Principal");
            o.insert("Sid".into(), "OnFailureDestination".into());
        }
        role_statements.push(own);
        commands.push(step(
            "destination owner",
            "on_failure_destination_policy (merged into its policy, if it has one) -> destination-policy.json",
            match destination {
                FailureDestination::Sqs { region, account, name, .. } => format!(
                    "aws sqs set-queue-attributes --region {region} --queue-url https://sqs.{region}.amazonaws.com/{account}/{name} --attributes Policy=\"$(jq -c . destination-policy.json | jq -Rs .)\""
                ),
                FailureDestination::Sns { arn, region } => format!(
                    "aws sns set-topic-attributes --region {region} --topic-arn {arn} --attribute-name Policy --attribute-value file://destination-policy.json"
                ),
                FailureDestination::S3 { bucket, .. } => format!(
                    "aws s3api put-bucket-policy --bucket {bucket} --policy file://destination-policy.json"
                ),
            },
        ));
    }
    if role_statements.is_empty() {
        return;
    }
    if let Some(list) = doc["consumer_role_policy"]["Statement"].as_array_mut() {
        list.extend(role_statements);
    }
    if let Some(list) = doc["commands"].as_array_mut() {
        // Before the consumer's own step, which saves the role policy.
        let at = list
            .iter()
            .position(|c| c["run_by"] == "consumer")
            .unwrap_or(list.len());
        for (i, c) in commands.into_iter().enumerate() {
            list.insert(at + i, c);
        }
    }
}
