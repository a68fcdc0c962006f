//! A TLS endpoint that speaks only HTTP/2, in front of the Kinesis
//! emulator's plain port: it offers nothing but `h2` in ALPN, checks that
//! each connection starts with the HTTP/2 client preface, and relays the
//! bytes to the emulator (which takes HTTP/2 without TLS). A client that
//! reads through it has used TLS with HTTP/2, the production path of
//! SubscribeToShard; one that tried HTTP/1.1 fails and is counted.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls;

/// The first bytes of every HTTP/2 connection (RFC 9113, 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connection counts of an [`H2Relay`].
#[derive(Debug, Default)]
pub struct Counts {
    /// TLS handshakes that agreed on `h2` and began with the preface.
    pub http2: AtomicU64,
    /// Connections refused: no `h2` in ALPN, or no preface.
    pub refused: AtomicU64,
    /// What each HTTP/2 connection's client announced in its first frames.
    pub windows: std::sync::Mutex<Vec<Windows>>,
}

/// The receive windows a client announced: `SETTINGS_INITIAL_WINDOW_SIZE`
/// (each stream's) and its first WINDOW_UPDATE of the connection (the
/// connection's, above the 65,535 bytes every connection starts with).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Windows {
    pub stream: Option<u32>,
    pub connection: Option<u32>,
}

/// A running relay; stops when dropped.
pub struct H2Relay {
    pub addr: SocketAddr,
    pub counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for H2Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl H2Relay {
    /// Serves TLS with the certificate and key (PEM) of the local stack on
    /// a free loopback port, relaying to `upstream`.
    pub async fn start(cert: &Path, key: &Path, upstream: SocketAddr) -> Result<Self> {
        let certs = CertificateDer::pem_file_iter(cert)
            .with_context(|| format!("{}", cert.display()))?
            .collect::<Result<Vec<_>, _>>()?;
        let key =
            PrivateKeyDer::from_pem_file(key).with_context(|| format!("{}", key.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(certs, key)?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, counts) = (acceptor.clone(), shared.clone());
                tokio::spawn(async move {
                    if relay(acceptor, tcp, upstream, &counts).await.is_err() {
                        counts.refused.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
        });
        Ok(H2Relay { addr, counts, task })
    }

    /// The endpoint URL to give kcld (the certificate names localhost).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    pub fn http2_connections(&self) -> u64 {
        self.counts.http2.load(Ordering::Relaxed)
    }

    pub fn refused_connections(&self) -> u64 {
        self.counts.refused.load(Ordering::Relaxed)
    }

    /// The windows announced on every HTTP/2 connection so far.
    pub fn windows(&self) -> Vec<Windows> {
        self.counts
            .windows
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default()
    }
}

/// Relays a client's first two frames, noting the windows they announce:
/// its SETTINGS, then its connection WINDOW_UPDATE if it has one, else its
/// first request (a client sends both before it waits for the server's
/// frames, which are relayed only after these).
async fn first_frames(
    tls: &mut (impl AsyncReadExt + Unpin),
    plain: &mut TcpStream,
) -> Result<Windows> {
    const SETTINGS: u8 = 0x4;
    const WINDOW_UPDATE: u8 = 0x8;
    const INITIAL_WINDOW_SIZE: u16 = 0x4;
    let mut windows = Windows::default();
    for _ in 0..2 {
        let mut head = [0u8; 9];
        tls.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        anyhow::ensure!(len <= 16_384, "a first frame of {len} bytes");
        let mut payload = vec![0u8; len];
        tls.read_exact(&mut payload).await?;
        plain.write_all(&head).await?;
        plain.write_all(&payload).await?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        match head[3] {
            // Not an acknowledgement: the client's own settings.
            SETTINGS if head[4] & 1 == 0 => {
                for entry in payload.chunks_exact(6) {
                    if u16::from_be_bytes([entry[0], entry[1]]) == INITIAL_WINDOW_SIZE {
                        windows.stream =
                            Some(u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]));
                    }
                }
            }
            WINDOW_UPDATE if stream == 0 && len == 4 => {
                windows.connection = Some(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ]));
                break;
            }
            _ => {}
        }
    }
    Ok(windows)
}

async fn relay(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    upstream: SocketAddr,
    counts: &Counts,
) -> Result<()> {
    let mut tls = acceptor.accept(tcp).await?;
    anyhow::ensure!(
        tls.get_ref().1.alpn_protocol() == Some(b"h2"),
        "the client did not choose h2"
    );
    let mut preface = [0u8; PREFACE.len()];
    tls.read_exact(&mut preface).await?;
    anyhow::ensure!(preface == PREFACE, "no HTTP/2 preface");
    counts.http2.fetch_add(1, Ordering::Relaxed);
    let mut plain = TcpStream::connect(upstream).await?;
    plain.write_all(&preface).await?;
    let windows = first_frames(&mut tls, &mut plain).await?;
    if let Ok(mut seen) = counts.windows.lock() {
        seen.push(windows);
    }
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
    Ok(())
}
