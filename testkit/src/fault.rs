//! A fault proxy in front of an emulator: forwards every request, except
//! that chosen operations (by their `X-Amz-Target`) get a canned AWS error,
//! as a real service would answer them. For tests of how kcld explains
//! failures (AccessDenied for one action, throttling, 5xx).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A canned error answer.
#[derive(Clone, Debug)]
pub struct Fault {
    pub status: u16,
    pub error_type: String,
    pub message: String,
}

impl Fault {
    pub fn throughput_exceeded() -> Self {
        Fault {
            status: 400,
            error_type: "ProvisionedThroughputExceededException".into(),
            message: "Rate exceeded for shard".into(),
        }
    }

    pub fn limit_exceeded() -> Self {
        Fault {
            status: 400,
            error_type: "LimitExceededException".into(),
            message: "Rate exceeded for stream".into(),
        }
    }

    pub fn internal_failure() -> Self {
        Fault {
            status: 500,
            error_type: "InternalFailure".into(),
            message: "internal service error".into(),
        }
    }

    pub fn access_denied(action: &str) -> Self {
        Fault {
            status: 400,
            error_type: "AccessDeniedException".into(),
            message: format!("User is not authorized to perform: {action} on resource"),
        }
    }
}

/// When a fault applies: to one call in `one_in` (1 = every call).
#[derive(Clone, Debug)]
struct Rule {
    fault: Fault,
    one_in: u32,
    calls: u32,
    faulted: u32,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    faults: Arc<Mutex<HashMap<String, Rule>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream`
    /// (`http://host:port`).
    pub async fn start(upstream: &str) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let faults: Arc<Mutex<HashMap<String, Rule>>> = Arc::default();
        let upstream: hyper::Uri = upstream.parse()?;
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let faults = shared.clone();
                let client = client.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let faults = faults.clone();
                        let client = client.clone();
                        let upstream = upstream.clone();
                        async move { handle(req, &faults, &client, &upstream).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FaultProxy { addr, faults, task })
    }

    /// The endpoint URL to give kcld.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `target` (for example `Kinesis_20131202.GetRecords`) with
    /// `fault` from now on.
    pub fn fail(&self, target: &str, fault: Fault) {
        self.fail_one_in(target, fault, 1);
    }

    /// Answers one call of `target` in `one_in` with `fault` (the others
    /// are forwarded), from now on.
    pub fn fail_one_in(&self, target: &str, fault: Fault, one_in: u32) {
        if let Ok(mut f) = self.faults.lock() {
            f.insert(
                target.to_owned(),
                Rule {
                    fault,
                    one_in: one_in.max(1),
                    calls: 0,
                    faulted: 0,
                },
            );
        }
    }

    /// Forwards every call again.
    pub fn clear(&self) {
        if let Ok(mut f) = self.faults.lock() {
            f.clear();
        }
    }

    /// Calls of `target` since its rule was set: (answered with the
    /// fault, seen).
    pub fn counts(&self, target: &str) -> (u32, u32) {
        self.faults
            .lock()
            .ok()
            .and_then(|f| f.get(target).map(|r| (r.faulted, r.calls)))
            .unwrap_or((0, 0))
    }
}

async fn handle(
    req: Request<Incoming>,
    faults: &Mutex<HashMap<String, Rule>>,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: &hyper::Uri,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let fault = faults.lock().ok().and_then(|mut f| {
        let rule = f.get_mut(&target)?;
        rule.calls += 1;
        // The first call of every `one_in` fails.
        let fail = (rule.calls - 1) % rule.one_in == 0;
        rule.faulted += u32::from(fail);
        fail.then(|| rule.fault.clone())
    });
    if let Some(fault) = fault {
        let body =
            serde_json::json!({ "__type": fault.error_type, "message": fault.message }).to_string();
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = StatusCode::from_u16(fault.status).unwrap_or(StatusCode::BAD_REQUEST);
        resp.headers_mut().insert(
            "content-type",
            hyper::header::HeaderValue::from_static("application/x-amz-json-1.1"),
        );
        resp.headers_mut().insert(
            "x-amzn-errortype",
            hyper::header::HeaderValue::from_str(&fault.error_type)
                .unwrap_or(hyper::header::HeaderValue::from_static("Error")),
        );
        return Ok(resp);
    }
    let (mut parts, body) = req.into_parts();
    let bytes = body.collect().await?.to_bytes();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_owned();
    parts.uri = format!("{}{}", upstream.to_string().trim_end_matches('/'), path)
        .parse()
        .unwrap_or_else(|_| upstream.clone());
    let forwarded = Request::from_parts(parts, Full::new(bytes));
    match client.request(forwarded).await {
        Ok(resp) => {
            let (parts, body) = resp.into_parts();
            let bytes = body.collect().await?.to_bytes();
            Ok(Response::from_parts(parts, Full::new(bytes)))
        }
        Err(e) => {
            let mut resp = Response::new(Full::new(Bytes::from(format!("proxy: {e}"))));
            *resp.status_mut() = StatusCode::BAD_GATEWAY;
            Ok(resp)
        }
    }
}
