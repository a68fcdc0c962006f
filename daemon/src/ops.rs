//! Operations: Prometheus metrics, health endpoints and systemd
//! notifications.
//!
//! Metric names follow Prometheus conventions (base units, `_total` for
//! counters); per-shard series carry a `shard` label and every series that
//! concerns a stream the `stream` label (its ARN: a global label when kcld
//! reads one stream, the series' own when it reads several). `/healthz` answers while the process
//! runs; `/readyz` once credentials resolved, the stream was described and
//! the lease table answers.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use kcld_lease::dynamo::TableHealth;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::retrieval::isolation::StreamAccess;

/// What readiness is made of.
#[derive(Debug, Default)]
pub struct Health {
    credentials: AtomicBool,
    stream: AtomicBool,
    leases: AtomicBool,
    /// Unset with the in-memory lease store (no table to reach).
    table: OnceLock<(Arc<TableHealth>, Duration)>,
    /// With several streams, whether each can be read.
    streams: std::sync::Mutex<Vec<Arc<StreamAccess>>>,
}

impl Health {
    /// Credentials were resolved from the default chain.
    pub fn credentials_resolved(&self) {
        self.credentials.store(true, Ordering::Release);
    }

    /// The stream was described (it exists and this account may read it).
    pub fn stream_described(&self) {
        self.stream.store(true, Ordering::Release);
    }

    /// The lease source started (the table exists and was read).
    pub fn leases_started(&self) {
        self.leases.store(true, Ordering::Release);
    }

    /// The lease table counts as reachable when it answered within `within`.
    pub fn watch_table(&self, health: Arc<TableHealth>, within: Duration) {
        let _ = self.table.set((health, within));
    }

    /// Reports `access` in readiness: a stream of several that cannot be
    /// read (its shards wait) makes the instance not ready, by name.
    pub fn watch_stream(&self, access: Arc<StreamAccess>) {
        self.streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(access);
    }

    /// The checks that fail now, by name; empty when ready.
    pub fn failing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.credentials.load(Ordering::Acquire) {
            out.push("credentials".to_owned());
        }
        if !self.stream.load(Ordering::Acquire) {
            out.push("stream".to_owned());
        }
        if !self.leases.load(Ordering::Acquire) {
            out.push("leases".to_owned());
        }
        if let Some((table, within)) = self.table.get() {
            if !table.healthy(*within) {
                out.push("lease_table".to_owned());
            }
        }
        for access in self
            .streams
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            if let Some(why) = access.failing() {
                out.push(format!("stream {} ({why})", access.arn()));
            }
        }
        out
    }
}

/// The labels of one shard's series: `shard`, and `stream` (its ARN) when
/// the process reads several streams, whose shard ids repeat from stream to
/// stream. With one stream every series carries `stream` already, as a
/// global label, so it is not added twice.
#[derive(Clone, Debug)]
pub struct ShardLabels(Arc<[metrics::Label]>);

impl ShardLabels {
    /// The labels of `shard`, of the stream `stream` when several are read.
    pub fn new(stream: Option<&str>, shard: &str) -> Self {
        let mut labels = vec![metrics::Label::new("shard", shard.to_owned())];
        if let Some(arn) = stream {
            labels.push(metrics::Label::new("stream", arn.to_owned()));
        }
        ShardLabels(labels.into())
    }

    /// The labels, for the `metrics` macros.
    pub fn get(&self) -> std::slice::Iter<'_, metrics::Label> {
        self.0.iter()
    }
}

/// Installs the Prometheus recorder once per process; later calls get the
/// same handle. Every series is labelled `stream` with `stream_arn` when
/// kcld reads one stream; with several, series that concern one stream
/// carry it themselves ([`ShardLabels`]).
pub fn install_metrics(stream_arn: Option<&str>) -> Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let mut builder = PrometheusBuilder::new();
    if let Some(arn) = stream_arn {
        builder = builder.add_global_label("stream", arn);
    }
    let handle = builder
        .set_buckets_for_metric(
            Matcher::Suffix("_duration_seconds".into()),
            &[
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        )
        .map_err(|e| Error::setup("metrics", e))?
        .install_recorder()
        .map_err(|e| Error::setup("metrics", e))?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

#[derive(Clone)]
struct Ops {
    metrics: PrometheusHandle,
    health: Arc<Health>,
}

/// Serves /metrics, /healthz and /readyz on `listen` until `stop` fires.
/// Binds before returning, so a taken port is an error at start.
pub async fn serve(
    listen: SocketAddr,
    metrics: PrometheusHandle,
    health: Arc<Health>,
    stop: CancellationToken,
) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| {
        Error::setup(
            format!(
                "ops.listen {listen}: cannot listen (choose a free port or set ops.listen = \"off\")"
            ),
            e,
        )
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| Error::setup("ops.listen", e))?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(ops): State<Ops>| async move { ops.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(ops): State<Ops>| async move {
                let failing = ops.health.failing();
                if failing.is_empty() {
                    (StatusCode::OK, "ready\n".to_owned())
                } else {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", failing.join(", ")),
                    )
                }
            }),
        )
        .with_state(Ops { metrics, health });
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!("ops listener stopped: {e}");
        }
    });
    tracing::info!("metrics and health on http://{bound} (/metrics, /healthz, /readyz)");
    Ok(bound)
}

/// systemd's notify protocol (`Type=notify`); every call is a no-op when
/// NOTIFY_SOCKET is not set.
pub mod systemd {
    use std::time::Duration;

    use sd_notify::NotifyState;
    use tokio_util::sync::CancellationToken;

    /// Tells systemd the service is up (READY=1).
    pub fn ready() {
        let _ = sd_notify::notify(&[NotifyState::Ready]);
    }

    /// Tells systemd the service is shutting down (STOPPING=1).
    pub fn stopping() {
        let _ = sd_notify::notify(&[NotifyState::Stopping]);
    }

    /// Sends WATCHDOG=1 at half of WATCHDOG_USEC while the runtime is alive.
    pub fn spawn_watchdog(stop: CancellationToken) {
        let Some(timeout) = watchdog_timeout() else {
            return;
        };
        let period = timeout / 2;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => { let _ = sd_notify::notify(&[NotifyState::Watchdog]); }
                }
            }
        });
    }

    fn watchdog_timeout() -> Option<Duration> {
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        if let Ok(pid) = std::env::var("WATCHDOG_PID") {
            if pid.parse::<u32>().ok()? != std::process::id() {
                return None;
            }
        }
        (usec > 0).then(|| Duration::from_micros(usec))
    }
}
