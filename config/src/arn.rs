//! Kinesis stream ARNs: `arn:<partition>:kinesis:<region>:<account>:stream/<name>`.
//! Region and account of the stream come from here and nowhere else.

use std::fmt;
use std::str::FromStr;

/// A parsed Kinesis data stream ARN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamArn {
    /// The AWS partition, e.g. `aws` or `aws-cn`.
    pub partition: String,
    /// The region the stream lives in, e.g. `us-east-1`.
    pub region: String,
    /// The 12-digit id of the account that owns the stream.
    pub account: String,
    /// The stream's name, the part after `stream/`.
    pub stream_name: String,
}

/// Why a string is not a stream ARN; the text says what was expected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ArnError(String);

impl FromStr for StreamArn {
    type Err = ArnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| ArnError(format!("{s:?} is not a Kinesis stream ARN: {why}"));
        let parts: Vec<&str> = s.splitn(6, ':').collect();
        if parts.len() != 6 || parts[0] != "arn" {
            return Err(bad(
                "expected arn:aws:kinesis:<region>:<account>:stream/<name>",
            ));
        }
        let (partition, service, region, account, resource) =
            (parts[1], parts[2], parts[3], parts[4], parts[5]);
        if !matches!(
            partition,
            "aws" | "aws-cn" | "aws-us-gov" | "aws-iso" | "aws-iso-b"
        ) && !partition.starts_with("aws-")
        {
            return Err(bad(
                "the partition (second field) must be aws, aws-cn, aws-us-gov, ...",
            ));
        }
        if service != "kinesis" {
            return Err(bad("the service (third field) must be kinesis"));
        }
        if region.is_empty()
            || !region
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(bad("the region (fourth field) must look like us-east-1"));
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(
                "the account (fifth field) must be the owner's 12-digit account id",
            ));
        }
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
        })
    }
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
        write!(
            f,
            "arn:{}:kinesis:{}:{}:stream/{}",
            self.partition, self.region, self.account, self.stream_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
