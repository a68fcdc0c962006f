//! The HTTP client of SubscribeToShard: the SDK's own, except for how much
//! a connection reads ahead of kcld.
//!
//! A subscription is read only as fast as its records are taken
//! ([`crate::stream::Subscription`]); whatever the HTTP client has read
//! beyond that sits in its buffers, on every subscription at once while
//! shards catch up. The SDK's client cannot be told how much that is:
//!
//! - over HTTP/1.1 (the local stack) hyper grows a connection's read buffer
//!   up to about 400 KiB, and a subscription's is always full at catch-up;
//!   at 8 shards that was about 6 MiB of a 29 MiB process (BENCHMARKS.md,
//!   "Large events handed on as they arrive");
//! - over HTTP/2 (the service) each subscription is a stream with a
//!   receive window of 2 MiB, all sharing one connection window of 5 MiB:
//!   three subscriptions waiting for their sink fill the connection's
//!   window and stall the others.
//!
//! So this client reads about [`READ_BUFFER`] at a time over HTTP/1.1, and
//! gives each HTTP/2 stream a window of [`STREAM_WINDOW`] with a connection
//! window that never binds (what a connection holds is then at most its
//! streams' windows, and a slow shard cannot stall another). The rest is
//! what the SDK's client does: TLS with the system's roots and
//! `aws.ca_file`, HTTP/2 where the service offers it, a pool of connections,
//! the connect timeout; SigV4, endpoints, retries and the attempt timeout
//! stay the SDK's, around this client.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use hyper_util::client::legacy::connect::HttpConnector as TcpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::CONNECT_TIMEOUT;

/// What an HTTP/1.1 connection reads at once: a run of a large event
/// ([`crate::stream::RUN_BYTES`]), what a subscription hands on at a time.
/// (hyper reads into its buffer's whole spare room, which can be up to
/// twice this.)
pub const READ_BUFFER: usize = crate::stream::RUN_BYTES;
/// An HTTP/2 subscription's receive window: what the service may send
/// ahead of kcld. At 2 MB/s per shard (the service's limit) it is a quarter
/// of a second, far above a round trip.
pub const STREAM_WINDOW: u32 = 512 * 1024;
/// The largest window HTTP/2 allows: the connection's window never stops a
/// stream whose own window is open.
const CONNECTION_WINDOW: u32 = (1 << 31) - 1;
/// How long an idle connection is kept, as the SDK's client does.
const POOL_IDLE: Duration = Duration::from_secs(90);

/// The client, trusting the system's roots and the PEM certificates in
/// `extra_roots` (`aws.ca_file`, already checked). It is built on the first
/// subscription: a process that only polls never loads the roots for it.
pub fn client(extra_roots: Option<&[u8]>) -> SharedHttpClient {
    SharedHttpClient::new(SubscriptionHttp::new(extra_roots))
}

type Https = hyper_rustls::HttpsConnector<TcpConnector>;

/// See the module documentation.
#[derive(Clone)]
struct SubscriptionHttp {
    extra_roots: Option<Arc<[u8]>>,
    client: Arc<OnceLock<Result<Client<Https, SdkBody>, String>>>,
}

impl SubscriptionHttp {
    fn new(extra_roots: Option<&[u8]>) -> Self {
        SubscriptionHttp {
            extra_roots: extra_roots.map(Arc::from),
            client: Arc::default(),
        }
    }

    /// The hyper client, built once.
    fn hyper(&self) -> Result<Client<Https, SdkBody>, ConnectorError> {
        self.client
            .get_or_init(|| build(self.extra_roots.as_deref()))
            .clone()
            .map_err(|e| ConnectorError::user(e.into()))
    }
}

fn build(extra_roots: Option<&[u8]>) -> Result<Client<Https, SdkBody>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    if let Some(pem) = extra_roots {
        use rustls_pki_types::{pem::PemObject, CertificateDer};
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("aws.ca_file: {e}"))?;
            roots.add(cert).map_err(|e| format!("aws.ca_file: {e}"))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut tcp = TcpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .http1_max_buf_size(READ_BUFFER)
        .http2_initial_stream_window_size(STREAM_WINDOW)
        .http2_initial_connection_window_size(CONNECTION_WINDOW)
        .http2_adaptive_window(false)
        .timer(TokioTimer::new())
        .build(connector))
}

impl std::fmt::Debug for SubscriptionHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriptionHttp")
            .field("http1_read_buffer", &READ_BUFFER)
            .field("http2_stream_window", &STREAM_WINDOW)
            .finish()
    }
}

impl HttpClient for SubscriptionHttp {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for SubscriptionHttp {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.hyper();
        HttpConnectorFuture::new(async move {
            let client = client?;
            let request = request
                .try_into_http1x()
                .map_err(|e| ConnectorError::user(e.into()))?;
            // Connection refused or reset, TLS failures: transient, for the
            // SDK's retries and then kcld's back-off.
            let response = client
                .request(request)
                .await
                .map_err(|e| ConnectorError::io(e.into()))?;
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|e| ConnectorError::other(e.into(), None))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Over HTTP/1.1 a subscription's connection hands over about
    /// `READ_BUFFER` at a time, even with megabytes waiting in the socket.
    #[tokio::test]
    async fn an_http1_connection_reads_at_most_a_run_at_a_time() {
        const BODY: usize = 4 * 1024 * 1024;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = [0u8; 4096];
            let _ = socket.read(&mut request).await.unwrap();
            let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n");
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(&vec![b'x'; BODY]).await.unwrap();
        });
        let connector = SubscriptionHttp::new(None);
        let request = http::Request::builder()
            .uri(format!("http://{addr}/"))
            .body(SdkBody::empty())
            .unwrap();
        let response = connector
            .call(HttpRequest::try_from(request).unwrap())
            .await
            .unwrap();
        // The server's bytes pile up in the socket before the first read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut body = response.into_body();
        let (mut total, mut largest) = (0, 0);
        while let Some(frame) = body.frame().await {
            let chunk = frame.unwrap().into_data().unwrap();
            total += chunk.len();
            largest = largest.max(chunk.len());
        }
        assert_eq!(total, BODY);
        // hyper reads into the whole spare room of its buffer, which may
        // have doubled past the limit; the SDK's client reads 400 KiB.
        assert!(largest <= 2 * READ_BUFFER, "a chunk of {largest} bytes");
    }
}
