//! Kinesis errors, classified into what the caller should do about them;
//! access and not-found errors name the action, the resource and who fixes
//! it.

use aws_sdk_kinesis::error::{ErrorMetadata, ProvideErrorMetadata, SdkError};
use kcld_config::StreamArn;

use crate::policy;

/// What a failed Kinesis call means for the caller.
#[derive(Clone, Debug, thiserror::Error)]
pub enum KinesisError {
    /// The caller may not make the call (IAM, resource policy or KMS key): a
    /// person must fix it.
    #[error("{message}")]
    AccessDenied {
        /// The API action that was refused, e.g. `kinesis:GetRecords`.
        action: &'static str,
        /// What was refused and who can fix it.
        message: String,
    },
    /// The stream, shard or consumer does not exist; says what to check.
    #[error("{0}")]
    NotFound(String),
    /// ProvisionedThroughputExceeded or LimitExceeded: wait and retry.
    #[error("throttled: {0}")]
    Throttled(String),
    /// The shard iterator is older than five minutes: get a new one.
    #[error("shard iterator expired")]
    ExpiredIterator,
    /// ResourceInUseException: another subscription to the shard is still
    /// open, or the consumer is being created or deleted: wait and retry.
    #[error("in use: {0}")]
    InUse(String),
    /// The stream's KMS key cannot be used (disabled, not found, pending
    /// deletion, the owner's account not opted in): its owner must act;
    /// retrying does not help.
    #[error("{0}")]
    Kms(String),
    /// No connection to the endpoint, or it timed out.
    #[error(
        "cannot reach Kinesis ({0}); check aws.kinesis_endpoint / AWS_ENDPOINT_URL_KINESIS and \
         the network"
    )]
    Unreachable(String),
    /// Any other failure; retried like a transient one.
    #[error("{0}")]
    Other(String),
}

impl KinesisError {
    /// A short label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            KinesisError::AccessDenied { .. } => "access_denied",
            KinesisError::NotFound(_) => "not_found",
            KinesisError::Throttled(_) => "throttled",
            KinesisError::ExpiredIterator => "expired_iterator",
            KinesisError::InUse(_) => "in_use",
            KinesisError::Kms(_) => "kms",
            KinesisError::Unreachable(_) => "unreachable",
            KinesisError::Other(_) => "other",
        }
    }

    /// True for errors worth retrying in place.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            KinesisError::Throttled(_)
                | KinesisError::Unreachable(_)
                | KinesisError::InUse(_)
                | KinesisError::Other(_)
        )
    }

    pub(crate) fn classify<E, R>(
        err: SdkError<E, R>,
        stream: &StreamArn,
        action: &'static str,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let detail = kcld_lease::table::plain_error(&err);
        match &err {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
                return KinesisError::Unreachable(detail)
            }
            _ => {}
        }
        let code = err.code().unwrap_or_default();
        let message = err.message().unwrap_or_default();
        KinesisError::from_code(code, message, &detail, stream, action)
    }

    /// What the service's error type `code` (with its `message`) means for
    /// `action` on `stream`; `detail` describes an error without a type.
    /// Shared by SDK calls and kcld's own GetRecords requests.
    pub(crate) fn from_code(
        code: &str,
        message: &str,
        detail: &str,
        stream: &StreamArn,
        action: &'static str,
    ) -> Self {
        match code {
            "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => {
                KinesisError::AccessDenied {
                    action,
                    message: policy::access_denied_message(stream, action, message),
                }
            }
            "KMSDisabledException"
            | "KMSNotFoundException"
            | "KMSInvalidStateException"
            | "KMSOptInRequired" => kms_unusable(code, stream, action, message),
            "KMSThrottlingException" => KinesisError::Throttled(format!("{action}: {code}")),
            // What is missing is the key's permission, whatever the call.
            "KMSAccessDeniedException" => KinesisError::AccessDenied {
                action: "kms:Decrypt",
                message: format!(
                    "{action} on {stream}: the stream is encrypted and this role may not use its \
                     KMS key ({message}); the owner must share a customer-managed key and allow \
                     kms:Decrypt to this consumer's role"
                ),
            },
            "ResourceNotFoundException" => KinesisError::NotFound(format!(
                "{action} on {stream}: not found ({message}); check stream_arn: the owner's \
                 account and region are part of the ARN"
            )),
            "ProvisionedThroughputExceededException"
            | "LimitExceededException"
            | "ThrottlingException" => KinesisError::Throttled(format!("{action}: {code}")),
            "ExpiredIteratorException" => KinesisError::ExpiredIterator,
            "ResourceInUseException" => KinesisError::InUse(format!("{action}: {message}")),
            "" => KinesisError::Other(format!("{action}: {detail}")),
            _ => KinesisError::Other(format!("{action}: {code}: {message}")),
        }
    }
}

/// The stream's KMS key cannot be used, by the service's error code: what is
/// wrong with the key, and what its owner does.
pub(crate) fn kms_unusable(
    code: &str,
    stream: &StreamArn,
    action: &str,
    message: &str,
) -> KinesisError {
    let owner = &stream.account;
    let (what, fix) = match code {
        "KMSDisabledException" => (
            "the stream's KMS key is disabled",
            format!("the key's owner (the stream owner, account {owner}) enables it: `aws kms enable-key --key-id <key>`"),
        ),
        "KMSNotFoundException" => (
            "the stream's KMS key was not found (deleted, or in another region)",
            format!("the stream owner (account {owner}) encrypts the stream with a key that exists: `aws kinesis start-stream-encryption --stream-arn {stream} --encryption-type KMS --key-id <key>`"),
        ),
        "KMSInvalidStateException" => (
            "the stream's KMS key is not in a usable state (pending deletion, or pending import)",
            format!("the key's owner (account {owner}) cancels its deletion (`aws kms cancel-key-deletion`, then `enable-key`) or completes the key material import"),
        ),
        _ => (
            "the stream owner's account is not subscribed to AWS KMS",
            format!("the stream owner (account {owner}) opts in to AWS KMS for the account"),
        ),
    };
    KinesisError::Kms(format!(
        "{action} on {stream}: {what} ({code}: {message}); kcld cannot read the stream until {fix}"
    ))
}

impl KinesisError {
    /// [`KinesisError::classify`] for calls on an enhanced fan-out consumer:
    /// access and not-found errors name the consumer and who must act.
    pub(crate) fn classify_consumer<E, R>(
        err: SdkError<E, R>,
        stream: &StreamArn,
        consumer: &str,
        action: &'static str,
    ) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug + 'static,
    {
        let detail = err.message().unwrap_or_default().to_owned();
        match KinesisError::classify(err, stream, action) {
            // The stream's key refused, not the consumer: keep what the key's
            // owner must do.
            kms @ KinesisError::AccessDenied {
                action: "kms:Decrypt",
                ..
            } => kms,
            KinesisError::AccessDenied { .. } => KinesisError::AccessDenied {
                action,
                message: policy::consumer_access_denied_message(stream, consumer, action, &detail),
            },
            KinesisError::NotFound(_) => KinesisError::NotFound(format!(
                "{action}: consumer {consumer} not found ({detail}); check consumer_arn: the \
                 stream owner (account {owner}) registers it with `aws kinesis \
                 register-stream-consumer --stream-arn {stream} --consumer-name <name>` and shares \
                 it with a consumer resource policy (`kcld policy --consumer-arn` prints it)",
                owner = stream.account,
            )),
            other => other,
        }
    }
}

/// An exception inside a subscription's event stream (`ResourceInUse`,
/// the KMS errors, `InternalFailure`, ...), with the service's code, so it
/// is classified like the same error of a call.
#[derive(Debug)]
pub(crate) struct EventException {
    meta: ErrorMetadata,
}

impl EventException {
    pub(crate) fn new(code: String, message: String) -> Self {
        EventException {
            meta: ErrorMetadata::builder().code(code).message(message).build(),
        }
    }
}

impl std::fmt::Display for EventException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {}",
            self.meta.code().unwrap_or("unknown exception"),
            self.meta.message().unwrap_or_default()
        )
    }
}

impl std::error::Error for EventException {}

impl ProvideErrorMetadata for EventException {
    fn meta(&self) -> &ErrorMetadata {
        &self.meta
    }
}
