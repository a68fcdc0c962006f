//! The daemon's error type and the exit codes it maps to.

use kcld_config::ConfigError;

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
    /// An AWS call failed in a way retrying will not fix (access denied, no
    /// such stream, no credentials, endpoint unreachable): exit code 1.
    #[error("{0}")]
    Aws(String),
    /// The record sink failed for good (stdout closed, ...): exit code 1.
    #[error("sink: {0}")]
    Sink(String),
    /// Anything else that stops kcld (TLS or metrics setup, a bad sink URL,
    /// ...): exit code 1.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// The process exit code: 2 for configuration errors, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Config(_) | Error::ForeignRegistration(_) => 2,
            _ => 1,
        }
    }
}

/// A result whose error defaults to [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
