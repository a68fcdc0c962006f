//! The IAM statements a cross-account consumer needs, so that an access
//! error can say exactly what to add and where.

use kcld_config::StreamArn;

/// Every action polling a shared stream needs, on the stream. The console's
/// visual editor leaves out `kinesis:DescribeStream`; it is included here.
pub const STREAM_READ_ACTIONS: [&str; 5] = [
    "kinesis:DescribeStream",
    "kinesis:DescribeStreamSummary",
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:ListShards",
];

/// The statement the stream owner adds to the stream's resource policy.
/// `principal` is the consumer's IAM role ARN (a role, never a function or
/// user ARN: the console rejects those).
pub fn stream_read_statement(stream: &StreamArn, principal: &str) -> serde_json::Value {
    serde_json::json!({
        "Sid": "kcld-cross-account-read",
        "Effect": "Allow",
        "Principal": { "AWS": principal },
        "Action": STREAM_READ_ACTIONS,
        "Resource": stream.to_string(),
    })
}

/// A placeholder for the consumer role when kcld does not know it.
pub fn role_placeholder(consumer_account: Option<&str>) -> String {
    format!(
        "arn:aws:iam::{}:role/<consumer-role>",
        consumer_account.unwrap_or("<consumer-account>")
    )
}

/// One message for an AccessDenied on `action`: who must fix it and how.
pub fn access_denied_message(stream: &StreamArn, action: &str, detail: &str) -> String {
    let statement = stream_read_statement(stream, &role_placeholder(None));
    format!(
        "access denied: {action} on {stream} ({detail}). The stream owner (account {owner}) must \
         allow {action} to this consumer's IAM role in the stream's resource policy, and the role's \
         own IAM policy must allow it too. Statement for the stream policy: {statement}",
        owner = stream.account,
    )
}
