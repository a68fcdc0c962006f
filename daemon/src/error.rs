//! The daemon's error type and the exit codes it maps to.
//!
//! Each variant keeps the error it came from as its `source`, so that a
//! caller embedding kcld can match on what went wrong (a refused Kinesis
//! action, a lease table that is gone, a processor that crashed) instead of
//! reading message text. The message of each is one line that says what to
//! do.

use kcld_checkpoint::CheckpointError;
use kcld_config::ConfigError;
use kcld_lease::table::TableError;
use kcld_lease::LeaseFailure;

use crate::aws::IdentityError;
use crate::retrieval::RegistrationError;
use crate::sink::SinkError;
use crate::stream::KinesisError;

/// A boxed error kept as the source of a setup failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Everything that stops kcld, each with one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration: exit code 2.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Fan-out by consumer name on another account's stream, where kcld
    /// may not register the consumer: a configuration error (exit code 2).
    #[error("{}", .0.config_error())]
    ForeignRegistration(Box<crate::policy::ForeignRegistration>),
    /// A Kinesis call failed in a way retrying will not fix (access denied,
    /// no such stream, a KMS key that cannot be used, unreachable).
    #[error(transparent)]
    Kinesis(#[from] KinesisError),
    /// The enhanced fan-out consumer cannot be used (being deleted, never
    /// became ACTIVE).
    #[error(transparent)]
    Registration(#[from] RegistrationError),
    /// No credentials, a role that cannot be assumed, or an identity that
    /// cannot be told.
    #[error(transparent)]
    Identity(Box<IdentityError>),
    /// A lease table call failed for good (access denied, wrong schema).
    #[error("{}", lease_table_message(table, source))]
    LeaseTable {
        /// The table's name.
        table: String,
        /// What the table call said.
        #[source]
        source: TableError,
    },
    /// The lease source closed by itself (its table was deleted).
    #[error(transparent)]
    Leases(#[from] LeaseFailure),
    /// A checkpoint was refused for good (access denied, a table of another
    /// shape).
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The record sink failed for good (stdout closed, ...).
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    /// `kcld doctor` found failing checks.
    #[error("doctor: {failed} check(s) failed")]
    ChecksFailed {
        /// How many checks failed.
        failed: usize,
    },
    /// A shard consumer task panicked.
    #[error("a shard consumer crashed: {0}")]
    Crashed(#[source] tokio::task::JoinError),
    /// A part could not be set up (TLS, metrics, the ops listener, the
    /// HTTP sink's URL or failure file); `what` names the setting.
    #[error("{what}: {source}")]
    Setup {
        /// The setting or part, with what to do about it.
        what: String,
        /// Why it failed.
        #[source]
        source: BoxError,
    },
    /// A misuse of the library API (a builder without a processor).
    #[error("{0}")]
    Usage(&'static str),
}

impl Error {
    /// The process exit code: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::ForeignRegistration(_) => 2,
            _ => 1,
        }
    }

    /// A [`Error::Setup`] for `what`, keeping `source`.
    pub(crate) fn setup(what: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Error::Setup {
            what: what.into(),
            source: source.into(),
        }
    }

    /// A [`Error::LeaseTable`] for `table` (named once in its message).
    pub(crate) fn lease_table(table: &str, source: TableError) -> Self {
        Error::LeaseTable {
            table: table.to_owned(),
            source,
        }
    }
}

impl From<IdentityError> for Error {
    fn from(e: IdentityError) -> Self {
        Error::Identity(Box::new(e))
    }
}

/// A result whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A lease table error's one line: the table's name in front, unless the
/// error already names it.
fn lease_table_message(table: &str, source: &TableError) -> String {
    let text = source.to_string();
    if text.contains(table) {
        text
    } else {
        format!("lease table {table}: {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn a_lease_table_error_names_the_table_once_and_keeps_the_table_error_as_source() {
        let e = Error::lease_table("orders-app", TableError::NotFound("orders-app".into()));
        assert_eq!(e.to_string(), "lease table orders-app does not exist");
        let busy = Error::lease_table("orders-app", TableError::Unavailable("throttled".into()));
        assert_eq!(
            busy.to_string(),
            "lease table orders-app: lease table unavailable: throttled"
        );
        let source = e.source().expect("a source");
        assert!(matches!(
            source.downcast_ref::<TableError>(),
            Some(TableError::NotFound(_))
        ));
        assert_eq!(e.exit_code(), 1);
    }

    #[test]
    fn a_refused_checkpoint_is_matchable_by_variant() {
        let e: Error = CheckpointError::Fatal("AccessDeniedException".into()).into();
        assert!(matches!(e, Error::Checkpoint(CheckpointError::Fatal(_))));
    }
}
