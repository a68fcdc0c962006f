//! Stream ARNs: a Kinesis data stream's,
//! `arn:<partition>:kinesis:<region>:<account>:stream/<name>`, or a DynamoDB
//! table's stream, `arn:<partition>:dynamodb:<region>:<account>:table/<table>/stream/<label>`.
//! Region and account of the stream come from here and nowhere else.

use std::fmt;
use std::str::FromStr;

/// A parsed stream ARN: a Kinesis data stream or a DynamoDB table's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamArn {
    /// The AWS partition, e.g. `aws` or `aws-cn`.
    pub partition: String,
    /// The region the stream lives in, e.g. `us-east-1`.
    pub region: String,
    /// The 12-digit id of the account that owns the stream.
    pub account: String,
    /// The Kinesis stream's name (the part after `stream/`), or the
    /// DynamoDB table's.
    pub stream_name: String,
    /// Which service's stream this is.
    pub kind: StreamKind,
}

/// The service a stream belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// A Kinesis data stream.
    Kinesis,
    /// A DynamoDB table's stream (DynamoDB Streams).
    DynamoDb {
        /// The stream's label, its creation time as the ARN spells it
        /// (`2026-12-07T09:12:57.169`).
        label: String,
    },
}

impl StreamArn {
    /// Whether this is a DynamoDB table's stream.
    pub fn is_dynamodb(&self) -> bool {
        matches!(self.kind, StreamKind::DynamoDb { .. })
    }

    /// The stream's name in multi-stream lease keys
    /// (`account:<this>:creationEpoch:shardId`): a Kinesis stream's name,
    /// or for a DynamoDB stream what the KCL's DynamoDB Streams adapter
    /// writes, `<region>$<account>$<table>$<label>` with the label's `:`
    /// as `_` (lease keys split on `:`).
    pub fn lease_stream_name(&self) -> String {
        match &self.kind {
            StreamKind::Kinesis => self.stream_name.clone(),
            StreamKind::DynamoDb { label } => format!(
                "{}${}${}${}",
                self.region,
                self.account,
                self.stream_name,
                label.replace(':', "_")
            ),
        }
    }
}

/// Why a string is not a stream ARN; the text says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArnError(String);

impl FromStr for StreamArn {
    type Err = ArnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ArnError(format!("{s:?} is not a Kinesis stream ARN: {why}"));
        if s.split(':').nth(2) == Some("dynamodb") {
            return parse_dynamodb(s);
        }
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" {
            return Err(bad(
                "expected arn:aws:kinesis:<region>:<account>:stream/<name>",
            ));
        }
        let (partition, service, region, account, resource) =
            (parts[1], parts[2], parts[3], parts[4], parts[5]);
        if service != "kinesis" {
            return Err(bad(
                "the service (third field) must be kinesis (or dynamodb, for a DynamoDB table's stream)",
            ));
        }
        check_place(partition, region, account).map_err(bad)?;
        let Some(name) = resource.strip_prefix("stream/") else {
            return Err(bad("the resource must be stream/<name>"));
        };
        if name.contains('/') {
            return Err(bad(
                "this is a consumer ARN (stream/<name>/consumer/...); use the stream's ARN here",
            ));
        }
        if !valid_name(name) {
            return Err(bad(
                "the stream name must be 1 to 128 characters of a-z, A-Z, 0-9, '_', '.', '-'",
            ));
        }
        Ok(StreamArn {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account: account.to_owned(),
            stream_name: name.to_owned(),
            kind: StreamKind::Kinesis,
        })
    }
}

/// The partition, region and account fields of an ARN; the problem, if any.
fn check_place(partition: &str, region: &str, account: &str) -> Result<(), &'static str> {
    if partition != "aws" && !partition.starts_with("aws-") {
        return Err("the partition (second field) must be aws, aws-cn, aws-us-gov, ...");
    }
    if region.is_empty()
        || !region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("the region (fourth field) must look like us-east-1");
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the account (fifth field) must be the owner's 12-digit account id");
    }
    Ok(())
}

/// `arn:<partition>:dynamodb:<region>:<account>:table/<table>/stream/<label>`.
fn parse_dynamodb(s: &str) -> Result<StreamArn, ArnError> {
    let bad = |why: &str| ArnError(format!("{s:?} is not a DynamoDB stream ARN: {why}"));
    let parts: Vec<&str> = s.splitn(6, ':').collect();
    let [_, partition, _, region, account, resource] = parts.as_slice() else {
        return Err(bad(
            "expected arn:aws:dynamodb:<region>:<account>:table/<table>/stream/<label>",
        ));
    };
    check_place(partition, region, account).map_err(bad)?;
    let Some(rest) = resource.strip_prefix("table/") else {
        return Err(bad("the resource must be table/<table>/stream/<label>"));
    };
    let Some((table, label)) = rest.split_once("/stream/") else {
        return Err(bad(
            "this is a table ARN; use its stream's ARN (aws dynamodb describe-table --table-name <table> --query Table.LatestStreamArn)",
        ));
    };
    let table_ok = (3..=255).contains(&table.len())
        && table
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !table_ok {
        return Err(bad(
            "the table name must be 3 to 255 characters of a-z, A-Z, 0-9, '_', '.', '-'",
        ));
    }
    if label.is_empty() || label.contains('/') {
        return Err(bad(
            "the stream label after /stream/ must be the stream's creation time, e.g. 2026-12-07T09:12:57.169",
        ));
    }
    Ok(StreamArn {
        partition: (*partition).to_owned(),
        region: (*region).to_owned(),
        account: (*account).to_owned(),
        stream_name: table.to_owned(),
        kind: StreamKind::DynamoDb {
            label: label.to_owned(),
        },
    })
}

/// A registered enhanced fan-out consumer:
/// `<stream ARN>/consumer/<name>:<creation timestamp>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerArn {
    /// The stream the consumer is registered on.
    pub stream: StreamArn,
    /// The consumer's name, as given at registration.
    pub consumer_name: String,
    /// The registration time, epoch seconds, as the ARN spells it.
    pub created: String,
}

impl FromStr for ConsumerArn {
    type Err = ArnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ArnError(format!("{s:?} is not a Kinesis consumer ARN: {why}"));
        let Some((stream, rest)) = s.split_once("/consumer/") else {
            return Err(bad(
                "expected arn:aws:kinesis:<region>:<account>:stream/<name>/consumer/<consumer>:<timestamp>",
            ));
        };
        let stream: StreamArn = stream.parse().map_err(|e: ArnError| bad(&e.0))?;
        let Some((name, created)) = rest.rsplit_once(':') else {
            return Err(bad(
                "the consumer part must be consumer/<name>:<creation timestamp>",
            ));
        };
        if !valid_name(name) {
            return Err(bad(
                "the consumer name must be 1 to 128 characters of a-z, A-Z, 0-9, '_', '.', '-'",
            ));
        }
        if created.is_empty() || !created.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                "the creation timestamp after the consumer name must be digits",
            ));
        }
        Ok(ConsumerArn {
            stream,
            consumer_name: name.to_owned(),
            created: created.to_owned(),
        })
    }
}

impl fmt::Display for ConsumerArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/consumer/{}:{}",
            self.stream, self.consumer_name, self.created
        )
    }
}

impl serde::Serialize for ConsumerArn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Stream and consumer names: 1 to 128 characters of a-z, A-Z, 0-9, '_',
/// '.', '-'.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// The account of an IAM role ARN (`arn:<partition>:iam::<account>:role/...`),
/// or `None` when it is not one. Resource policies name roles, never users
/// or functions.
pub fn role_account(role_arn: &str) -> Option<&str> {
    let parts: Vec<&str> = role_arn.splitn(6, ':').collect();
    match parts.as_slice() {
        ["arn", _, "iam", "", account, resource]
            if account.len() == 12
                && account.bytes().all(|b| b.is_ascii_digit())
                && resource.starts_with("role/") =>
        {
            Some(account)
        }
        _ => None,
    }
}

impl serde::Serialize for StreamArn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl fmt::Display for StreamArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            StreamKind::Kinesis => write!(
                f,
                "arn:{}:kinesis:{}:{}:stream/{}",
                self.partition, self.region, self.account, self.stream_name
            ),
            StreamKind::DynamoDb { label } => write!(
                f,
                "arn:{}:dynamodb:{}:{}:table/{}/stream/{}",
                self.partition, self.region, self.account, self.stream_name, label
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamodb_stream_arns_parse_and_name_their_stream_as_the_adapter_does() {
        let text = "arn:aws:dynamodb:us-west-2:123456789012:table/TestTable/stream/2024-02-03T00:00:00.000";
        let arn: StreamArn = text.parse().unwrap();
        assert!(arn.is_dynamodb());
        assert_eq!(
            (
                arn.region.as_str(),
                arn.account.as_str(),
                arn.stream_name.as_str()
            ),
            ("us-west-2", "123456789012", "TestTable")
        );
        assert_eq!(arn.to_string(), text);
        // The KCL DynamoDB Streams adapter's stream name (its own test's value).
        assert_eq!(
            arn.lease_stream_name(),
            "us-west-2$123456789012$TestTable$2024-02-03T00_00_00.000"
        );
        for (bad, says) in [
            (
                "arn:aws:dynamodb:us-west-2:123456789012:table/TestTable",
                "table ARN",
            ),
            (
                "arn:aws:dynamodb:us-west-2:1234:table/T1x/stream/x",
                "12-digit",
            ),
            (
                "arn:aws:dynamodb:us-west-2:123456789012:table/T!/stream/x",
                "table name",
            ),
            (
                "arn:aws:dynamodb:us-west-2:123456789012:table/Tab/stream/",
                "label",
            ),
            (
                "arn:aws:dynamodb:us-west-2:123456789012:index/x",
                "table/<table>",
            ),
        ] {
            let e = bad.parse::<StreamArn>().unwrap_err().to_string();
            assert!(
                e.contains("DynamoDB stream ARN") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn parses_region_account_and_name() {
        let arn: StreamArn = "arn:aws:kinesis:eu-west-1:111111111111:stream/orders.v2"
            .parse()
            .unwrap();
        assert_eq!(arn.region, "eu-west-1");
        assert_eq!(arn.account, "111111111111");
        assert_eq!(arn.stream_name, "orders.v2");
        assert_eq!(
            arn.to_string(),
            "arn:aws:kinesis:eu-west-1:111111111111:stream/orders.v2"
        );
    }

    #[test]
    fn role_arns_give_their_account() {
        assert_eq!(
            role_account("arn:aws:iam::222222222222:role/kcld"),
            Some("222222222222")
        );
        assert_eq!(
            role_account("arn:aws:iam::222222222222:role/path/kcld"),
            Some("222222222222")
        );
        for bad in [
            "arn:aws:iam::222222222222:user/bob",
            "arn:aws:iam::2222:role/x",
            "arn:aws:sts::222222222222:role/x",
            "kcld",
        ] {
            assert_eq!(role_account(bad), None, "{bad}");
        }
    }

    #[test]
    fn says_what_is_wrong() {
        let cases = [
            ("orders", "expected arn:aws:kinesis"),
            ("arn:aws:sqs:us-east-1:111111111111:stream/x", "service"),
            ("arn:aws:kinesis:us-east-1:1111:stream/x", "12-digit"),
            ("arn:aws:kinesis::111111111111:stream/x", "region"),
            (
                "arn:aws:kinesis:us-east-1:111111111111:table/x",
                "stream/<name>",
            ),
            (
                "arn:aws:kinesis:us-east-1:111111111111:stream/x/consumer/c:1",
                "consumer ARN",
            ),
            (
                "arn:aws:kinesis:us-east-1:111111111111:stream/",
                "stream name",
            ),
            (
                "arn:aws:kinesis:us-east-1:111111111111:stream/a b",
                "stream name",
            ),
        ];
        for (input, expect) in cases {
            let err = input.parse::<StreamArn>().unwrap_err().to_string();
            assert!(err.contains(expect), "{input}: {err}");
        }
    }

    #[test]
    fn consumer_arns_name_their_stream() {
        let text =
            "arn:aws:kinesis:us-east-1:111111111111:stream/orders/consumer/kcld-efo:1795329156";
        let arn: ConsumerArn = text.parse().unwrap();
        assert_eq!(
            arn.stream.to_string(),
            "arn:aws:kinesis:us-east-1:111111111111:stream/orders"
        );
        assert_eq!(arn.consumer_name, "kcld-efo");
        assert_eq!(arn.created, "1795329156");
        assert_eq!(arn.to_string(), text);
        for (bad, expect) in [
            (
                "arn:aws:kinesis:us-east-1:111111111111:stream/orders",
                "expected arn:aws:kinesis",
            ),
            (
                "arn:aws:kinesis:us-east-1:111111111111:stream/orders/consumer/c",
                "consumer/<name>:<creation timestamp>",
            ),
            (
                "arn:aws:kinesis:us-east-1:111111111111:stream/orders/consumer/c:x1",
                "digits",
            ),
            (
                "arn:aws:kinesis:us-east-1:111111111111:stream/orders/consumer/a b:1",
                "consumer name",
            ),
            (
                "arn:aws:kinesis:us-east-1:1111:stream/orders/consumer/c:1",
                "12-digit",
            ),
        ] {
            let err = bad.parse::<ConsumerArn>().unwrap_err().to_string();
            assert!(err.contains(expect), "{bad}: {err}");
        }
    }
}
