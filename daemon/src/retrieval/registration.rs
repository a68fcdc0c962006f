//! Which enhanced fan-out consumer kcld subscribes through, resolved once at
//! start: a shared consumer ARN is checked with DescribeStreamConsumer; a
//! consumer name is looked up on the stream and registered when missing,
//! but only on a stream of the caller's own account. RegisterStreamConsumer
//! cannot be granted across accounts, and registering a consumer is the
//! owner's decision (each costs money and counts against the stream's 20).

use std::time::Duration;

use kcld_config::{FanOutConsumer, FanOutSettings};
use tokio::time::Instant;

use crate::error::{Error, Result};
use crate::policy;
use crate::stream::{ConsumerInfo, KinesisError, Stream};

/// Why the fan-out consumer cannot be used; each says who acts.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// The shared consumer is being deleted by the stream's owner.
    #[error(
        "consumer_arn {arn} is being deleted by the stream owner (account {owner}); ask them for \
         a consumer that stays registered"
    )]
    Deleting {
        /// The consumer's ARN.
        arn: String,
        /// The stream owner's account.
        owner: String,
    },
    /// The consumer did not become ACTIVE within the registration timeout.
    #[error(
        "consumer {consumer} did not become ACTIVE within {waited:?} (last status {status}); \
         raise fan_out.registration_timeout or check the consumer in the stream owner's account"
    )]
    NotActive {
        /// The consumer, as configured.
        consumer: String,
        /// How long kcld waited.
        waited: Duration,
        /// Its last status.
        status: String,
    },
}

/// How often a consumer that is not ACTIVE yet is described again.
const POLL: Duration = Duration::from_secs(1);
/// How often waiting is logged.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The ARN of an ACTIVE consumer to subscribe through. `caller_account`
/// is asked only when a consumer must be registered.
pub async fn resolve<F, Fut>(
    stream: &Stream,
    settings: &FanOutSettings,
    caller_account: F,
) -> Result<String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let deadline = Instant::now() + settings.registration_timeout;
    match &settings.consumer {
        FanOutConsumer::Arn(arn) => {
            let arn = arn.to_string();
            let mut waiting = Waiting::new(&arn, deadline);
            loop {
                let info = retry_transient(|| stream.describe_consumer(&arn), deadline).await?;
                match info.status.as_str() {
                    "ACTIVE" => return Ok(info.arn),
                    "DELETING" => {
                        return Err(RegistrationError::Deleting {
                            arn,
                            owner: stream.arn().account.clone(),
                        }
                        .into())
                    }
                    status => waiting.wait(status).await?,
                }
            }
        }
        FanOutConsumer::Name(name) => {
            let mut caller_account = Some(caller_account);
            let mut waiting = Waiting::new(name, deadline);
            loop {
                let found = retry_transient(|| stream.find_consumer(name), deadline).await?;
                match found {
                    Some(info) if info.status == "ACTIVE" => {
                        tracing::info!(consumer = %info.arn, "enhanced fan-out consumer is ACTIVE");
                        return Ok(info.arn);
                    }
                    Some(info) => waiting.wait(&info.status).await?,
                    None => {
                        if let Some(ask) = caller_account.take() {
                            let caller = ask().await?;
                            if caller != stream.arn().account {
                                return Err(Error::ForeignRegistration(Box::new(
                                    policy::ForeignRegistration {
                                        stream: stream.arn().clone(),
                                        name: name.to_owned(),
                                        caller_account: caller,
                                    },
                                )));
                            }
                        }
                        match stream.register_consumer(name).await {
                            Ok(ConsumerInfo { arn, status }) => {
                                tracing::info!(consumer = %arn, %status, "registered the enhanced fan-out consumer; waiting until it is ACTIVE");
                            }
                            // Another instance registered it meanwhile.
                            Err(KinesisError::InUse(_)) => {}
                            Err(e) if e.is_transient() => waiting.wait(e.kind()).await?,
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
        }
    }
}

/// Retries `call` while its errors are transient and time is left.
async fn retry_transient<T, F, Fut>(mut call: F, deadline: Instant) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, KinesisError>>,
{
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && Instant::now() + POLL < deadline => {
                tracing::warn!("{e}; retrying");
                tokio::time::sleep(POLL).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Waiting for a consumer to become ACTIVE, with progress in the log.
struct Waiting<'a> {
    what: &'a str,
    started: Instant,
    deadline: Instant,
    logged: Option<Instant>,
}

impl<'a> Waiting<'a> {
    fn new(what: &'a str, deadline: Instant) -> Self {
        Waiting {
            what,
            started: Instant::now(),
            deadline,
            logged: None,
        }
    }

    async fn wait(&mut self, status: &str) -> Result<()> {
        let now = Instant::now();
        if now + POLL > self.deadline {
            return Err(RegistrationError::NotActive {
                consumer: self.what.to_owned(),
                waited: self.deadline - self.started,
                status: status.to_owned(),
            }
            .into());
        }
        if self.logged.is_none_or(|at| now - at >= LOG_EVERY) {
            tracing::info!(
                consumer = self.what,
                status,
                waited_s = (now - self.started).as_secs(),
                "waiting for the enhanced fan-out consumer to become ACTIVE"
            );
            self.logged = Some(now);
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }
}
