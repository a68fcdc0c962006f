//! Lease table call failures, classified into what the caller does about
//! them, and SDK errors in plain words.

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};

/// An error and its causes in plain words, each cause once, joined by
/// ": " (`dispatch failure: io error: tcp connect error: Connection
/// refused`). Unlike the SDK's `DisplayErrorContext`, no `Debug` dump of the
/// innermost error is appended: messages are read by people.
pub fn plain_error(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        let text = text.trim();
        // A cause often repeats its wrapper's words; keep what is new.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(text)) {
            parts.push(text.to_owned());
        }
        next = e.source();
    }
    parts.join(": ")
}

/// Why a lease table call failed.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The condition did not hold: someone else wrote the lease (or it is
    /// gone). For a renewal or checkpoint this means the lease was lost.
    #[error("conditional check failed")]
    ConditionFailed,
    /// A table of that name exists with another key schema than `leaseKey`
    /// alone; says what to do.
    #[error("{0}")]
    WrongSchema(String),
    /// The role may not make the call; names the actions the IAM role needs.
    #[error("{0}")]
    AccessDenied(String),
    /// The table does not exist; holds its name.
    #[error("lease table {0} does not exist")]
    NotFound(String),
    /// Throttled, unreachable, or a server error: try again later.
    #[error("lease table unavailable: {0}")]
    Unavailable(String),
    /// Any other error of the call, with its code and message.
    #[error("{0}")]
    Other(String),
    /// A live KCL 3.x fleet assigns the table's leases through its leader.
    #[error(transparent)]
    Kcl3Fleet(crate::kcl3::Kcl3Fleet),
}

impl TableError {
    pub(super) fn classify<E, R>(err: SdkError<E, R>, table: &str, action: &str) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        if matches!(
            err,
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)
        ) {
            return TableError::Unavailable(format!(
                "cannot reach DynamoDB ({}); check aws.dynamodb_endpoint / AWS_ENDPOINT_URL_DYNAMODB and the network",
                plain_error(&err)
            ));
        }
        let code = err.code().unwrap_or_default().to_owned();
        let message = err.message().unwrap_or_default().to_owned();
        match code.as_str() {
            "ConditionalCheckFailedException" => TableError::ConditionFailed,
            "ResourceNotFoundException" => TableError::NotFound(table.to_owned()),
            "AccessDeniedException" | "UnrecognizedClientException" => TableError::AccessDenied(format!(
                "access denied: {action} on lease table {table} ({message}); the consumer's IAM role needs \
                 dynamodb:CreateTable, DescribeTable, Scan, GetItem, PutItem, UpdateItem and DeleteItem on \
                 arn:aws:dynamodb:<region>:<consumer-account>:table/{table}"
            )),
            "ProvisionedThroughputExceededException" | "ThrottlingException" | "RequestLimitExceeded"
            | "InternalServerError" | "ServiceUnavailable" => {
                TableError::Unavailable(format!("{action}: {code}: {message}"))
            }
            "" => TableError::Unavailable(format!("{action}: {}", plain_error(&err))),
            _ => TableError::Other(format!("{action} on lease table {table}: {code}: {message}")),
        }
    }
}
