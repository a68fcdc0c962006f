//! GetRecords without the SDK's request orchestration.
//!
//! A GetRecords call through the SDK spends about 45 µs of CPU in its
//! orchestrator (interceptor chain, config layers, retry and timeout
//! machinery, identity cache, endpoint rules, deserializer plumbing) on top
//! of signing and the HTTP exchange: as much again as the call itself when
//! a caught-up shard gets an empty answer (BENCHMARKS.md, "The whole
//! GetRecords call"). So once a shard's first GetRecords went through the
//! SDK, the next ones keep what the SDK gave and skip the rest:
//!
//! - the **transport** is the SDK's own HTTP connector (TLS with the
//!   configured CA, the connection pool, HTTP/2 where negotiated), taken
//!   from the runtime components of that first call;
//! - the **endpoint** is the URL the SDK's endpoint rules resolved for it
//!   (the stream ARN's account endpoint on AWS, the override locally);
//! - **credentials** come from the client's SigV4 identity resolver (its
//!   credentials provider), cached here until five minutes before they
//!   expire (an assumed role is refreshed, static keys are kept);
//! - **signing** is the SDK's SigV4 signer;
//! - **retries** follow the SDK's standard mode: three attempts for
//!   throttling, 5xx and transport errors, with jittered exponential
//!   back-off, before kcld's own back-off sees the error;
//! - **errors** are classified from the service's error type exactly as
//!   for SDK calls ([`KinesisError::from_code`]).
//!
//! What is left out: the SDK's clock-skew correction (a host whose clock is
//! minutes off gets signature errors; run NTP, as EC2 does by default) and
//! its cross-request retry quota.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::auth::AuthSchemeId;
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::identity::{Identity, ResolveIdentity, SharedIdentityResolver};
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::{GetIdentityResolver, RuntimeComponents};
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;
use futures::future::BoxFuture;
use kcld_config::StreamArn;
use kcld_records::getrecords;

use super::capture::read_body;
use super::KinesisError;
use crate::aws::{ATTEMPT_TIMEOUT, CONNECT_TIMEOUT};

/// Credentials are refreshed this long before they expire.
const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(300);
/// The SDK's standard retry mode: attempts per call and the first back-off.
const MAX_ATTEMPTS: u32 = 3;
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);

/// What a GetRecords call through the SDK shows about its transport and
/// endpoint, taken just before it is sent.
#[derive(Clone, Debug, Default)]
pub(super) struct Learn {
    seen: Arc<Mutex<Option<(RuntimeComponents, String)>>>,
}

impl Learn {
    /// The runtime components and the endpoint URL of the call, once sent.
    pub(super) fn take(&self) -> Option<(RuntimeComponents, String)> {
        self.seen.lock().ok()?.take()
    }
}

impl Intercept for Learn {
    fn name(&self) -> &'static str {
        "kcld-learn-transport"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let uri = context.request().uri().to_owned();
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((runtime_components.clone(), uri));
        }
        Ok(())
    }
}

/// GetRecords for one stream, signed and sent directly.
pub(super) struct DirectGetRecords {
    connector: SharedHttpConnector,
    uri: String,
    region: String,
    credentials: CredentialCache,
}

impl std::fmt::Debug for DirectGetRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectGetRecords")
            .field("uri", &self.uri)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

impl DirectGetRecords {
    /// From what a call through the SDK showed; `None` when it had no HTTP
    /// client or no SigV4 identity resolver (then calls stay on the SDK).
    pub(super) fn new(learned: (RuntimeComponents, String), region: &str) -> Option<Self> {
        let (components, uri) = learned;
        let settings = HttpConnectorSettings::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build();
        let connector = components
            .http_client()?
            .http_connector(&settings, &components);
        let resolver = components.identity_resolver(AuthSchemeId::new("sigv4"))?;
        Some(DirectGetRecords {
            connector,
            uri,
            region: region.to_owned(),
            credentials: CredentialCache::from_client(resolver, components),
        })
    }

    /// One GetRecords call, retried as the SDK's standard mode would.
    pub(super) async fn get_records(
        &self,
        stream: &StreamArn,
        stream_arn: &str,
        iterator: &str,
        limit: i32,
    ) -> Result<getrecords::Response, KinesisError> {
        /// The request body, serialised straight from borrowed fields (no
        /// JSON tree on every call).
        #[derive(serde::Serialize)]
        struct Request<'a> {
            #[serde(rename = "ShardIterator")]
            shard_iterator: &'a str,
            #[serde(rename = "Limit")]
            limit: i32,
            #[serde(rename = "StreamARN")]
            stream_arn: &'a str,
        }
        let body = Bytes::from(
            serde_json::to_vec(&Request {
                shard_iterator: iterator,
                limit,
                stream_arn,
            })
            .map_err(|e| KinesisError::Other(format!("GetRecords request: {e}")))?,
        );
        let mut attempt = 1;
        loop {
            match self.attempt(stream, body.clone()).await {
                Ok(response) => return Ok(response),
                Err(Failure { error, retry }) if retry && attempt < MAX_ATTEMPTS => {
                    tracing::debug!("GetRecords attempt {attempt} failed, retrying: {error}");
                    let ceiling = INITIAL_BACKOFF * 2u32.pow(attempt - 1);
                    tokio::time::sleep(ceiling.mul_f64(rand::random::<f64>())).await;
                    attempt += 1;
                }
                Err(Failure { error, .. }) => return Err(error),
            }
        }
    }

    async fn attempt(
        &self,
        stream: &StreamArn,
        body: Bytes,
    ) -> Result<getrecords::Response, Failure> {
        let action = "kinesis:GetRecords";
        let request = self.signed_request(body).await.map_err(Failure::fatal)?;
        let response = tokio::time::timeout(ATTEMPT_TIMEOUT, self.connector.call(request))
            .await
            .map_err(|_| {
                Failure::retry(KinesisError::Unreachable(format!(
                    "{action}: no answer from {} within {} s",
                    self.uri,
                    ATTEMPT_TIMEOUT.as_secs()
                )))
            })?
            .map_err(|e| {
                Failure::retry(KinesisError::Unreachable(format!(
                    "{action}: {}: {}",
                    self.uri,
                    kcld_lease::table::plain_error(&e)
                )))
            })?;
        let status = response.status();
        let error_type = response
            .headers()
            .get("x-amzn-errortype")
            .map(str::to_owned);
        let bytes = tokio::time::timeout(ATTEMPT_TIMEOUT, read_body(response.into_body()))
            .await
            .map_err(|_| {
                Failure::retry(KinesisError::Unreachable(format!(
                    "{action}: reading the response timed out"
                )))
            })?
            .map_err(|e| {
                Failure::retry(KinesisError::Unreachable(format!(
                    "{action}: reading the response: {e}"
                )))
            })?;
        if status.is_success() {
            return getrecords::decode(bytes)
                .map_err(|e| Failure::fatal(KinesisError::Other(e.to_string())));
        }
        let (code, message) = error_of(error_type.as_deref(), &bytes);
        if let Some(kind) = crate::aws::attempt_error_kind(status.is_server_error(), &code) {
            metrics::counter!("kcld_kinesis_attempt_errors_total", "operation" => "GetRecords", "kind" => kind)
                .increment(1);
        }
        let detail = format!("HTTP {}", status.as_u16());
        let error = KinesisError::from_code(&code, &message, &detail, stream, action);
        // The SDK's standard mode retries throttling and 5xx answers.
        let retry = status.is_server_error() || matches!(error, KinesisError::Throttled(_));
        Err(Failure { error, retry })
    }

    async fn signed_request(&self, body: Bytes) -> Result<HttpRequest, KinesisError> {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let identity = self.credentials.get().await?;
        let sign_error = |e: &dyn std::fmt::Display| {
            KinesisError::Other(format!("GetRecords: signing the request: {e}"))
        };
        let mut request = http::Request::builder()
            .method("POST")
            .uri(&self.uri)
            .header("content-type", "application/x-amz-json-1.1")
            .header("x-amz-target", "Kinesis_20131202.GetRecords")
            .header("content-length", body.len())
            .body(SdkBody::from(body.clone()))
            .map_err(|e| sign_error(&e))?;
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("kinesis")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| sign_error(&e))?
            .into();
        let headers = request
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)));
        let signable = SignableRequest::new("POST", &self.uri, headers, SignableBody::Bytes(&body))
            .map_err(|e| sign_error(&e))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| sign_error(&e))?
            .into_parts();
        instructions.apply_to_request_http1x(&mut request);
        HttpRequest::try_from(request).map_err(|e| sign_error(&e))
    }
}

/// A failed attempt, and whether the SDK's standard mode would retry it
/// (throttling, 5xx, transport errors).
struct Failure {
    error: KinesisError,
    retry: bool,
}

impl Failure {
    fn retry(error: KinesisError) -> Self {
        Failure { error, retry: true }
    }

    fn fatal(error: KinesisError) -> Self {
        Failure {
            error,
            retry: false,
        }
    }
}

/// The error's type and message: the `x-amzn-ErrorType` header (up to its
/// `:`), else the body's `__type` (after any `#` namespace); the message is
/// the body's `message` or `Message`.
fn error_of(header: Option<&str>, body: &[u8]) -> (String, String) {
    #[derive(serde::Deserialize)]
    struct Body {
        #[serde(rename = "__type")]
        kind: Option<String>,
        #[serde(alias = "Message")]
        message: Option<String>,
    }
    let parsed = serde_json::from_slice::<Body>(body).ok();
    let from_body = parsed.as_ref().and_then(|b| b.kind.as_deref());
    let code = header
        .map(|h| h.split(':').next().unwrap_or_default())
        .filter(|c| !c.is_empty())
        .or_else(|| from_body.map(|t| t.rsplit('#').next().unwrap_or(t)))
        .unwrap_or_default()
        .to_owned();
    let message = parsed.and_then(|b| b.message).unwrap_or_default();
    (code, message)
}

/// Resolves the identity to sign with (the SDK client's credentials
/// provider, or a test's).
type Resolve =
    Box<dyn Fn() -> BoxFuture<'static, Result<Identity, String>> + Send + Sync + 'static>;

/// The client's credentials, kept until shortly before they expire.
struct CredentialCache {
    resolve: Resolve,
    current: RwLock<Option<Identity>>,
    refresh: tokio::sync::Mutex<()>,
}

impl CredentialCache {
    /// Identities from the SDK client's SigV4 identity resolver (its
    /// credentials provider: the default chain or the assumed role).
    fn from_client(resolver: SharedIdentityResolver, components: RuntimeComponents) -> Self {
        CredentialCache::new(Box::new(move || {
            let resolver = resolver.clone();
            let components = components.clone();
            Box::pin(async move {
                resolver
                    .resolve_identity(&components, &ConfigBag::base())
                    .await
                    .map_err(|e| kcld_lease::table::plain_error(&*e))
            })
        }))
    }

    fn new(resolve: Resolve) -> Self {
        CredentialCache {
            resolve,
            current: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn fresh(&self) -> Option<Identity> {
        let current = self.current.read().ok()?;
        let identity = current.as_ref()?;
        match identity.expiration() {
            Some(expiry) if expiry <= SystemTime::now() + REFRESH_BEFORE_EXPIRY => None,
            _ => Some(identity.clone()),
        }
    }

    async fn get(&self) -> Result<Identity, KinesisError> {
        if let Some(identity) = self.fresh() {
            return Ok(identity);
        }
        // One refresh at a time; the others find its result.
        let _refreshing = self.refresh.lock().await;
        if let Some(identity) = self.fresh() {
            return Ok(identity);
        }
        let identity = (self.resolve)().await.map_err(|e| {
            KinesisError::Unreachable(format!(
                "GetRecords: credentials could not be refreshed: {e}"
            ))
        })?;
        if let Ok(mut current) = self.current.write() {
            *current = Some(identity.clone());
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::Credentials;

    #[test]
    fn error_types_come_from_the_header_or_the_body() {
        let (code, message) = error_of(
            Some(
                "ExpiredIteratorException:http://internal.amazon.com/coral/com.amazonaws.kinesis/",
            ),
            br#"{"__type":"ExpiredIteratorException","message":"Iterator expired"}"#,
        );
        assert_eq!(code, "ExpiredIteratorException");
        assert_eq!(message, "Iterator expired");
        let (code, message) = error_of(
            None,
            br#"{"__type":"com.amazonaws.kinesis.v20131202#AccessDeniedException","Message":"no"}"#,
        );
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("AccessDeniedException", "no")
        );
        assert_eq!(
            error_of(None, b"<html>bad gateway</html>"),
            (String::new(), String::new())
        );
    }

    #[tokio::test]
    async fn credentials_are_kept_until_shortly_before_they_expire() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        fn counting(calls: Arc<AtomicUsize>, lifetime: Duration) -> CredentialCache {
            CredentialCache::new(Box::new(move || {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                Box::pin(async move {
                    Ok(Credentials::new(
                        format!("AKID{n}"),
                        "secret",
                        None,
                        Some(SystemTime::now() + lifetime),
                        "test",
                    )
                    .into())
                })
            }))
        }
        let key = |identity: Identity| {
            identity
                .data::<Credentials>()
                .map(|c| c.access_key_id().to_owned())
        };
        let calls = Arc::new(AtomicUsize::new(0));
        let lasting = counting(calls.clone(), Duration::from_secs(3600));
        for _ in 0..3 {
            assert_eq!(key(lasting.get().await.unwrap()).as_deref(), Some("AKID0"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        // Credentials that expire within the refresh margin are refreshed
        // on every use.
        let expiring = counting(Arc::new(AtomicUsize::new(0)), Duration::from_secs(60));
        assert_eq!(key(expiring.get().await.unwrap()).as_deref(), Some("AKID0"));
        assert_eq!(key(expiring.get().await.unwrap()).as_deref(), Some("AKID1"));
    }
}
