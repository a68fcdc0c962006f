//! AWS clients for the stream's account and region.
//!
//! Credentials come from the SDK's default chain (environment, profile, web
//! identity, container and instance roles); Kinesis may use an assumed role
//! of its own. The region is the stream ARN's, so a consumer in one account
//! reads a stream in another without any region setting.

use std::collections::HashMap;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::provider::error::CredentialsError;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use aws_smithy_types::retry::RetryConfig;
use aws_smithy_types::timeout::TimeoutConfig;
use kcld_config::Settings;

use crate::error::{Error, Result};

mod subscriptions;
pub use subscriptions::{READ_BUFFER, STREAM_WINDOW};

/// How long a connection to Kinesis may take to open.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Kinesis call may take: a GetRecords of 10 MiB on a slow
/// link; anything longer is stuck.
pub(crate) const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The clients kcld talks to, configured for the stream's region.
#[derive(Clone, Debug)]
pub struct Clients {
    /// Kinesis in the stream's region, with the assumed role's credentials when
    /// one is configured.
    pub kinesis: aws_sdk_kinesis::Client,
    /// The same, for SubscribeToShard: its HTTP client bounds what a
    /// subscription's connection reads ahead ([`subscriptions`]).
    pub kinesis_subscriptions: aws_sdk_kinesis::Client,
    /// DynamoDB in the lease table's region, with the default credentials.
    pub dynamodb: aws_sdk_dynamodb::Client,
    /// DynamoDB Streams in the stream's region, with Kinesis' credentials:
    /// for a DynamoDB table's stream.
    pub dynamodb_streams: aws_sdk_dynamodbstreams::Client,
    /// STS with the default credentials, for the caller's identity.
    pub sts: aws_sdk_sts::Client,
    /// The account of the assumed role, when Kinesis uses one.
    assumed_account: Option<String>,
}

impl Clients {
    /// The account Kinesis calls are made as: the assumed role's, else the
    /// default credentials' (STS GetCallerIdentity, which needs no
    /// permission).
    pub async fn caller_account(&self) -> Result<String> {
        if let Some(account) = &self.assumed_account {
            return Ok(account.clone());
        }
        let out = self.sts.get_caller_identity().send().await.map_err(|e| {
            IdentityError::CallerUnknown {
                detail: kcld_lease::table::plain_error(&e),
                source: Box::new(e),
            }
        })?;
        out.account
            .filter(|a| !a.is_empty())
            .ok_or_else(|| IdentityError::NoAccount.into())
    }
}

/// The clients of each (region, role) once: streams of one account and
/// region share them (and the role's credentials, refreshed before they
/// expire by the SDK's provider).
#[derive(Default)]
pub struct ClientsCache {
    made: HashMap<ClientsKey, Clients>,
}

/// A stream's region, and the role (with its external id) it is read as.
type ClientsKey = (String, Option<(String, Option<String>)>);

impl ClientsCache {
    /// The clients for `settings` (one stream's, [`Settings::for_stream`]):
    /// made once per region and role, with `credentials` when given.
    pub async fn get(
        &mut self,
        settings: &Settings,
        credentials: &Option<SharedCredentialsProvider>,
    ) -> Result<Clients> {
        let key = (
            settings.stream_arn.region.clone(),
            settings
                .aws
                .assume_role
                .as_ref()
                .map(|r| (r.role_arn.clone(), r.external_id.clone())),
        );
        if let Some(clients) = self.made.get(&key) {
            return Ok(clients.clone());
        }
        let clients = connect_with(settings, credentials.clone()).await?;
        self.made.insert(key, clients.clone());
        Ok(clients)
    }
}

/// Builds the clients and resolves credentials once, so that missing
/// credentials are reported at start rather than on the first call.
pub async fn connect(settings: &Settings) -> Result<Clients> {
    connect_with(settings, None).await
}

/// [`connect`] with `credentials` in place of the default chain (an
/// embedding application's own).
pub async fn connect_with(
    settings: &Settings,
    credentials: Option<SharedCredentialsProvider>,
) -> Result<Clients> {
    let base = base_config(settings, &settings.stream_arn.region, credentials).await?;

    let default_credentials = base
        .credentials_provider()
        .ok_or(IdentityError::NoProvider)?;
    check_credentials(&default_credentials, "the default credential chain").await?;

    let kinesis_credentials = match &settings.aws.assume_role {
        None => default_credentials,
        Some(role) => {
            let mut sts_builder = base.to_builder();
            if let Some(url) = &settings.aws.sts_endpoint {
                sts_builder.set_endpoint_url(Some(url.clone()));
            }
            let sts_config = sts_builder.build();
            let mut builder = aws_config::sts::AssumeRoleProvider::builder(&role.role_arn)
                .session_name(&role.session_name)
                .configure(&sts_config);
            if let Some(id) = &role.external_id {
                builder = builder.external_id(id);
            }
            let provider = SharedCredentialsProvider::new(builder.build().await);
            if let Err(e) = provider.provide_credentials().await {
                let sts = aws_sdk_sts::Client::new(&sts_config);
                return Err(assume_role_refused(role, e, &sts).await.into());
            }
            provider
        }
    };

    let mut dynamodb_streams = aws_sdk_dynamodbstreams::config::Builder::from(&base)
        .credentials_provider(kinesis_credentials.clone());
    if let Some(url) = &settings.aws.dynamodb_streams_endpoint {
        dynamodb_streams = dynamodb_streams.endpoint_url(url);
    }
    let mut kinesis = aws_sdk_kinesis::config::Builder::from(&base)
        .credentials_provider(kinesis_credentials)
        .interceptor(CountAttemptErrors);
    if let Some(url) = &settings.aws.kinesis_endpoint {
        kinesis = kinesis.endpoint_url(url);
    }
    // Lease calls are small: a stuck one must fail fast so that renewals
    // keep their rhythm (the watchdog stops shards regardless).
    let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(&base)
        .region(Region::new(settings.aws.dynamodb_region.clone()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(15))
                .build(),
        );
    if let Some(url) = &settings.aws.dynamodb_endpoint {
        dynamodb = dynamodb.endpoint_url(url);
    }
    let mut sts = aws_sdk_sts::config::Builder::from(&base);
    if let Some(url) = &settings.aws.sts_endpoint {
        sts = sts.endpoint_url(url);
    }
    let kinesis = kinesis.build();
    let kinesis_subscriptions = kinesis
        .to_builder()
        .http_client(subscriptions::client(ca_pem(settings)?.as_deref()))
        .build();
    Ok(Clients {
        kinesis: aws_sdk_kinesis::Client::from_conf(kinesis),
        kinesis_subscriptions: aws_sdk_kinesis::Client::from_conf(kinesis_subscriptions),
        dynamodb: aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
        dynamodb_streams: aws_sdk_dynamodbstreams::Client::from_conf(dynamodb_streams.build()),
        sts: aws_sdk_sts::Client::from_conf(sts.build()),
        assumed_account: settings
            .aws
            .assume_role
            .as_ref()
            .and_then(|r| kcld_config::arn::role_account(&r.role_arn))
            .map(str::to_owned),
    })
}

/// An S3 client for the S3 sink: the default credentials (the consumer's
/// own role: the bucket owner's policy names it), the bucket's region (else
/// the consumer's), path-style addressing when an endpoint is set (local
/// stand-ins), the SDK's retries.
pub async fn s3_client(
    settings: &Settings,
    bucket_region: Option<&str>,
) -> Result<aws_sdk_s3::Client> {
    let region = bucket_region.unwrap_or(&settings.aws.dynamodb_region);
    let base = base_config(settings, region, None).await?;
    let mut s3 = aws_sdk_s3::config::Builder::from(&base);
    if let Some(url) = &settings.aws.s3_endpoint {
        s3 = s3.endpoint_url(url).force_path_style(true);
    }
    Ok(aws_sdk_s3::Client::from_conf(s3.build()))
}

/// An SQS client for an on-failure destination queue in `region`: the
/// consumer's own credentials (the queue policy names its role).
pub async fn sqs_client(settings: &Settings, region: &str) -> Result<aws_sdk_sqs::Client> {
    let base = base_config(settings, region, None).await?;
    let mut sqs = aws_sdk_sqs::config::Builder::from(&base);
    if let Some(url) = &settings.aws.sqs_endpoint {
        sqs = sqs.endpoint_url(url);
    }
    Ok(aws_sdk_sqs::Client::from_conf(sqs.build()))
}

/// An SNS client for an on-failure destination topic in `region`: the
/// consumer's own credentials (the topic policy names its role).
pub async fn sns_client(settings: &Settings, region: &str) -> Result<aws_sdk_sns::Client> {
    let base = base_config(settings, region, None).await?;
    let mut sns = aws_sdk_sns::config::Builder::from(&base);
    if let Some(url) = &settings.aws.sns_endpoint {
        sns = sns.endpoint_url(url);
    }
    Ok(aws_sdk_sns::Client::from_conf(sns.build()))
}

/// The SDK configuration every client starts from: the HTTP client (CA
/// file included), `region`, kcld's timeouts, the SDK's standard retries
/// (3 attempts), and `credentials` in place of the default chain when given.
async fn base_config(
    settings: &Settings,
    region: &str,
    credentials: Option<SharedCredentialsProvider>,
) -> Result<aws_config::SdkConfig> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(provider) = credentials {
        loader = loader.credentials_provider(provider);
    }
    Ok(loader
        .http_client(http_client(settings)?)
        .region(Region::new(region.to_owned()))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .build(),
        )
        .retry_config(RetryConfig::standard().with_max_attempts(3))
        .load()
        .await)
}

/// One HTTPS-capable client (it also speaks plain HTTP to local endpoints),
/// trusting the system roots plus `aws.ca_file` when set.
fn http_client(
    settings: &Settings,
) -> Result<aws_smithy_runtime_api::client::http::SharedHttpClient> {
    let mut trust = TrustStore::default();
    if let Some(pem) = ca_pem(settings)? {
        trust = trust.with_pem_certificate(pem);
    }
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| Error::setup("TLS setup", e.to_string()))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https())
}

/// The PEM certificates of `aws.ca_file`, when set, checked: the SDK's HTTP
/// client panics on a bad certificate later, so a bad file is refused now.
fn ca_pem(settings: &Settings) -> Result<Option<Vec<u8>>> {
    let Some(path) = &settings.aws.ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path)
        .map_err(|e| Error::setup(format!("aws.ca_file {}: cannot read it", path.display()), e))?;
    use rustls_pki_types::{pem::PemObject, CertificateDer};
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| {
            Error::setup(
                format!(
                    "aws.ca_file {}: not a PEM certificate; point it at the CA's .pem file",
                    path.display()
                ),
                e.to_string(),
            )
        })?;
    if certs.is_empty() {
        return Err(Error::setup(
            format!("aws.ca_file {}", path.display()),
            "holds no certificate; point it at the CA's .pem file",
        ));
    }
    Ok(Some(pem))
}

/// When nothing in the file or the environment named the consumer's
/// region (`aws.dynamodb_region`, `AWS_REGION`, `AWS_DEFAULT_REGION`), asks
/// the SDK's region chain, the AWS profile then the instance's metadata
/// (within 3 s), and puts the lease table there: on EC2 the table follows
/// the instance, not the stream's owner. Without an answer the stream's
/// region stays.
pub async fn settle_consumer_region(settings: &mut Settings) {
    if !settings.aws.dynamodb_region_fallback {
        return;
    }
    settings.aws.dynamodb_region_fallback = false;
    let Ok(http) = http_client(settings) else {
        return; // the same error is reported when the clients are built
    };
    let config = aws_config::provider_config::ProviderConfig::default().with_http_client(http);
    let chain = aws_config::meta::region::RegionProviderChain::first_try(
        aws_config::profile::ProfileFileRegionProvider::builder()
            .configure(&config)
            .build(),
    )
    .or_else(
        aws_config::imds::region::ImdsRegionProvider::builder()
            .configure(&config)
            .build(),
    );
    let found = tokio::time::timeout(Duration::from_secs(3), chain.region())
        .await
        .ok()
        .flatten()
        .filter(|r| !r.as_ref().is_empty());
    if let Some(region) = found {
        settings.aws.dynamodb_region = region.to_string();
        settings.aws.dynamodb_region_from = "the AWS profile or the instance's metadata".into();
    }
}

/// Counts every Kinesis attempt that was throttled or failed on the
/// server's side, including those the SDK retried by itself (which kcld's
/// own back-off never sees): `kcld_kinesis_attempt_errors_total` by
/// operation and kind. The kind comes from the `x-amzn-ErrorType` header
/// the service sets on its errors, else from a 5xx status.
#[derive(Debug)]
struct CountAttemptErrors;

impl aws_smithy_runtime_api::client::interceptors::Intercept for CountAttemptErrors {
    fn name(&self) -> &'static str {
        "kcld-count-attempt-errors"
    }

    fn read_before_deserialization(
        &self,
        context: &aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef<'_>,
        _components: &aws_smithy_runtime_api::client::runtime_components::RuntimeComponents,
        cfg: &mut aws_smithy_types::config_bag::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        let response = context.response();
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .unwrap_or_default();
        let Some(kind) = attempt_error_kind(status.is_server_error(), error_type) else {
            return Ok(());
        };
        let operation = cfg
            .load::<aws_smithy_runtime_api::client::orchestrator::Metadata>()
            .map(|m| m.name().to_owned())
            .unwrap_or_else(|| "unknown".into());
        metrics::counter!("kcld_kinesis_attempt_errors_total", "operation" => operation, "kind" => kind)
            .increment(1);
        Ok(())
    }
}

/// The `kind` label of `kcld_kinesis_attempt_errors_total` for a failed
/// attempt: `throttled` by the error type (the `x-amzn-ErrorType` header),
/// `server_error` for a 5xx status, `None` for errors not counted there.
pub(crate) fn attempt_error_kind(server_error: bool, error_type: &str) -> Option<&'static str> {
    let throttled = [
        "ProvisionedThroughputExceededException",
        "LimitExceededException",
        "ThrottlingException",
    ]
    .iter()
    .any(|t| error_type.starts_with(t));
    if throttled {
        Some("throttled")
    } else if server_error {
        Some("server_error")
    } else {
        None
    }
}

/// Why kcld has no usable identity: each message says what to set.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The SDK found no credential provider at all.
    #[error(
        "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile \
         (AWS_PROFILE), a web identity token, or run with a container or instance role"
    )]
    NoProvider,
    /// The credential chain gave no credentials.
    #[error(
        "no AWS credentials from {from} ({detail}); set AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY, a profile (AWS_PROFILE), a web identity token, or run with a \
         container or instance role"
    )]
    NoCredentials {
        /// Which provider was asked.
        from: &'static str,
        /// The provider's reason, on one line.
        detail: String,
        /// The provider's error.
        #[source]
        source: CredentialsError,
    },
    /// `aws.assume_role_arn` could not be assumed.
    #[error(
        "cannot assume {role} (aws.assume_role_arn): {detail}; the role's owner (account \
         {owner}) adds to the role's trust policy: {statement}, and {who} needs sts:AssumeRole \
         on {role} in its own policy"
    )]
    AssumeRoleRefused {
        /// The role's ARN.
        role: String,
        /// STS's code and message.
        detail: String,
        /// The account that owns the role.
        owner: String,
        /// The trust policy statement the role's owner adds, as JSON.
        statement: String,
        /// Who asked: this process's identity.
        who: String,
        /// The credential provider's error.
        #[source]
        source: CredentialsError,
    },
    /// sts:GetCallerIdentity failed.
    #[error(
        "cannot tell which account this is (sts:GetCallerIdentity: {detail}); check \
         aws.sts_endpoint / AWS_ENDPOINT_URL_STS and the network"
    )]
    CallerUnknown {
        /// The call's error on one line.
        detail: String,
        /// The call's error.
        #[source]
        source: crate::error::BoxError,
    },
    /// sts:GetCallerIdentity answered without an account.
    #[error("sts:GetCallerIdentity returned no account")]
    NoAccount,
}

/// A role that could not be assumed: the role, the trust policy statement
/// its owner adds (with the external id when one is set), and the
/// permission the caller needs, in one line.
async fn assume_role_refused(
    role: &kcld_config::AssumeRole,
    err: CredentialsError,
    sts: &aws_sdk_sts::Client,
) -> IdentityError {
    // The provider's error wraps the service's answer in layers; asking
    // once more gives its code and message as the service wrote them.
    let detail = match sts
        .assume_role()
        .role_arn(&role.role_arn)
        .role_session_name(&role.session_name)
        .set_external_id(role.external_id.clone())
        .send()
        .await
    {
        Err(e) => {
            use aws_sdk_sts::error::ProvideErrorMetadata;
            match (e.code(), e.message()) {
                (Some(code), Some(message)) => format!("{code}: {message}"),
                _ => kcld_lease::table::plain_error(&e),
            }
        }
        Ok(_) => kcld_lease::table::plain_error(&err),
    };
    // Who is asking, for the trust policy's principal (best effort).
    let caller = match sts.get_caller_identity().send().await {
        Ok(out) => out.arn.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let principal = if caller.is_empty() {
        "<this process's role ARN>".to_owned()
    } else {
        caller.clone()
    };
    let mut statement = serde_json::json!({
        "Effect": "Allow",
        "Principal": { "AWS": principal },
        "Action": "sts:AssumeRole",
    });
    if let Some(id) = &role.external_id {
        statement["Condition"] = serde_json::json!({ "StringEquals": { "sts:ExternalId": id } });
    }
    IdentityError::AssumeRoleRefused {
        role: role.role_arn.clone(),
        detail,
        owner: kcld_config::arn::role_account(&role.role_arn)
            .unwrap_or("the role's account")
            .to_owned(),
        statement: statement.to_string(),
        who: if caller.is_empty() {
            "this process's identity".to_owned()
        } else {
            caller
        },
        source: err,
    }
}

async fn check_credentials(
    provider: &SharedCredentialsProvider,
    from: &'static str,
) -> Result<(), IdentityError> {
    provider
        .provide_credentials()
        .await
        .map(|_| ())
        .map_err(|e| {
            // The chain's report spans lines (one per provider tried); keep the
            // message to one line.
            let detail = kcld_lease::table::plain_error(&e);
            let detail = detail
                .split(" (")
                .next()
                .unwrap_or_default()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            IdentityError::NoCredentials {
                from,
                detail,
                source: e,
            }
        })
}
