//! A TCP relay in front of an emulator that can cut every open connection
//! at once, mid-response (what a network failure or a load balancer
//! dropping a long-lived stream looks like to kcld), or stall them: kept
//! open, but nothing relayed any more (a silent network path).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running relay; stops (and drops its connections) when dropped.
pub struct CutProxy {
    pub addr: SocketAddr,
    cuts: watch::Sender<u64>,
    stalls: watch::Sender<u64>,
    blocked: Arc<std::sync::atomic::AtomicBool>,
    accepted: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        let _ = self.cuts.send(u64::MAX);
    }
}

impl CutProxy {
    /// Listens on a free loopback port and relays to `upstream`
    /// (`host:port`).
    pub async fn start(upstream: SocketAddr) -> Result<Self> {
        Self::start_with(upstream, None).await
    }

    /// [`CutProxy::start`], relaying responses at about `bytes_per_second`
    /// (requests at full speed): a large response is still arriving when a
    /// test cuts it, instead of already sitting in the client's socket.
    pub async fn throttled(upstream: SocketAddr, bytes_per_second: u64) -> Result<Self> {
        Self::start_with(upstream, Some(bytes_per_second.max(1))).await
    }

    async fn start_with(upstream: SocketAddr, rate: Option<u64>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (cuts, _) = watch::channel(0u64);
        let (stalls, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let blocked = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, stall_tx, count, refuse) = (
            cuts.clone(),
            stalls.clone(),
            accepted.clone(),
            blocked.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if refuse.load(Ordering::Relaxed) {
                    // Closed at once: the peer sees a reset connection.
                    drop(inbound);
                    continue;
                }
                count.fetch_add(1, Ordering::Relaxed);
                let mut cut = tx.subscribe();
                let mut stall = stall_tx.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let stalled = tokio::select! {
                        _ = relay(&mut inbound, &mut outbound, rate) => false,
                        _ = cut.changed() => false,
                        _ = stall.changed() => true,
                    };
                    if stalled {
                        // Hold both sockets open, relaying nothing, until cut.
                        let _ = cut.changed().await;
                    }
                    // Dropping both sockets resets the connection.
                });
            }
        });
        Ok(CutProxy {
            addr,
            cuts,
            stalls,
            blocked,
            accepted,
            task,
        })
    }

    /// The endpoint URL to give kcld.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts every connection open now; new ones go through as before.
    pub fn cut_all(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Stalls every connection open now: kept open, nothing relayed; new
    /// ones go through as before.
    pub fn stall_all(&self) {
        self.stalls.send_modify(|n| *n += 1);
    }

    /// Cuts every connection and refuses new ones until [`CutProxy::unblock`]:
    /// the service behind is unreachable.
    pub fn block(&self) {
        self.blocked.store(true, Ordering::Relaxed);
        self.cut_all();
    }

    pub fn unblock(&self) {
        self.blocked.store(false, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Relays both ways until both sides are done; responses at about `rate`
/// bytes a second when given.
async fn relay(inbound: &mut TcpStream, outbound: &mut TcpStream, rate: Option<u64>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(rate) = rate else {
        let _ = tokio::io::copy_bidirectional(inbound, outbound).await;
        return;
    };
    let (mut client_read, mut client_write) = inbound.split();
    let (mut server_read, mut server_write) = outbound.split();
    let requests = async {
        let _ = tokio::io::copy(&mut client_read, &mut server_write).await;
        let _ = server_write.shutdown().await;
    };
    let responses = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            if client_write.write_all(&buf[..n]).await.is_err() {
                break;
            }
            let pause = std::time::Duration::from_secs_f64(n as f64 / rate as f64);
            tokio::time::sleep(pause).await;
        }
        let _ = client_write.shutdown().await;
    };
    tokio::join!(requests, responses);
}
