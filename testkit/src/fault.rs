//! A fault proxy in front of an emulator: forwards every request, except
//! that chosen operations (by their `X-Amz-Target`) get a canned AWS error,
//! as a real service would answer them, or are held before being
//! forwarded; a rule can also match on the request body (one shard, one
//! lease). For tests of how kcld explains and survives failures
//! (AccessDenied for one action, throttling, 5xx, a shard gone, a slow
//! call).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

    pub fn resource_not_found(message: &str) -> Self {
        Fault {
            status: 400,
            error_type: "ResourceNotFoundException".into(),
            message: message.into(),
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

/// What a rule does to the calls it matches.
#[derive(Clone, Debug)]
enum Action {
    /// Answer with a canned error.
    Fail(Fault),
    /// Forward the call only after this long (a call the service is slow
    /// to answer).
    Hold(Duration),
}

/// When a rule applies: to calls of `target` whose body contains
/// `contains` (any body when `None`), one call in `one_in` (1 = every call).
#[derive(Clone, Debug)]
struct Rule {
    target: String,
    contains: Option<String>,
    action: Action,
    one_in: u32,
    calls: u32,
    faulted: u32,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    pub addr: SocketAddr,
    rules: Arc<Mutex<Vec<Rule>>>,
    /// The access key ids requests were signed with.
    keys: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// The signatures' `region/service` scopes.
    scopes: Arc<Mutex<std::collections::BTreeSet<String>>>,
    /// Every call by target (see [`FaultProxy::calls`]).
    tally: Tally,
    task: tokio::task::JoinHandle<()>,
}

/// Calls seen, by target; a read asked strongly consistent counts under
/// its target followed by ` consistent`.
type Tally = Arc<Mutex<std::collections::BTreeMap<String, u32>>>;

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
        let rules: Arc<Mutex<Vec<Rule>>> = Arc::default();
        let keys: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
        let seen = keys.clone();
        let scopes: Arc<Mutex<std::collections::BTreeSet<String>>> = Arc::default();
        let scopes_shared = scopes.clone();
        let upstream: hyper::Uri = upstream.parse()?;
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let shared = rules.clone();
        let tally: Tally = Arc::default();
        let tally_shared = tally.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let rules = shared.clone();
                let tally = tally_shared.clone();
                let seen = seen.clone();
                let scopes_seen = scopes_shared.clone();
                let client = client.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let rules = rules.clone();
                        let tally = tally.clone();
                        if let Some(credential) = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|a| a.split("Credential=").nth(1))
                        {
                            // KEY/DATE/REGION/SERVICE/aws4_request
                            let parts: Vec<&str> = credential.split('/').collect();
                            if let Ok(mut k) = seen.lock() {
                                k.insert(parts[0].to_owned());
                            }
                            if let (Some(region), Some(service)) = (parts.get(2), parts.get(3)) {
                                if let Ok(mut s) = scopes_seen.lock() {
                                    s.insert(format!("{region}/{service}"));
                                }
                            }
                        }
                        let client = client.clone();
                        let upstream = upstream.clone();
                        async move { handle(req, &rules, &tally, &client, &upstream).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(FaultProxy {
            addr,
            rules,
            keys,
            scopes,
            tally,
            task,
        })
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
        self.add(target, None, Action::Fail(fault), one_in);
    }

    /// Answers the calls of `target` whose request body contains
    /// `contains` (a shard id, a lease key) with `fault`, from now on.
    pub fn fail_matching(&self, target: &str, contains: &str, fault: Fault) {
        self.add(target, Some(contains), Action::Fail(fault), 1);
    }

    /// Holds the calls of `target` whose request body contains `contains`
    /// for `delay` before forwarding them, from now on.
    pub fn hold_matching(&self, target: &str, contains: &str, delay: Duration) {
        self.add(target, Some(contains), Action::Hold(delay), 1);
    }

    /// A new rule replaces the one for the same target and body match.
    fn add(&self, target: &str, contains: Option<&str>, action: Action, one_in: u32) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.retain(|r| !(r.target == target && r.contains.as_deref() == contains));
            rules.push(Rule {
                target: target.to_owned(),
                contains: contains.map(str::to_owned),
                action,
                one_in: one_in.max(1),
                calls: 0,
                faulted: 0,
            });
        }
    }

    /// The access key ids the requests so far were signed with.
    pub fn access_keys(&self) -> Vec<String> {
        self.keys
            .lock()
            .map(|k| k.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The `region/service` the requests so far were signed for.
    pub fn signing_scopes(&self) -> Vec<String> {
        self.scopes
            .lock()
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// How many calls of `target` (for example
    /// `DynamoDB_20120810.Scan`) came through so far, whatever the rules
    /// did with them; `target consistent` counts the strongly consistent
    /// reads among them.
    pub fn calls(&self, target: &str) -> u32 {
        self.tally
            .lock()
            .ok()
            .and_then(|t| t.get(target).copied())
            .unwrap_or(0)
    }

    /// Forgets the calls counted so far ([`FaultProxy::calls`]).
    pub fn reset_calls(&self) {
        if let Ok(mut t) = self.tally.lock() {
            t.clear();
        }
    }

    /// Forwards every call again.
    pub fn clear(&self) {
        if let Ok(mut rules) = self.rules.lock() {
            rules.clear();
        }
    }

    /// Calls of `target` its rules matched since they were set: (answered
    /// with the fault or held, seen).
    pub fn counts(&self, target: &str) -> (u32, u32) {
        self.rules
            .lock()
            .ok()
            .map(|rules| {
                rules
                    .iter()
                    .filter(|r| r.target == target)
                    .fold((0, 0), |(f, c), r| (f + r.faulted, c + r.calls))
            })
            .unwrap_or((0, 0))
    }
}

async fn handle(
    req: Request<Incoming>,
    rules: &Mutex<Vec<Rule>>,
    tally: &Mutex<std::collections::BTreeMap<String, u32>>,
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    upstream: &hyper::Uri,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let target = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let (mut parts, body) = req.into_parts();
    let bytes = body.collect().await?.to_bytes();
    if let Ok(mut t) = tally.lock() {
        *t.entry(target.clone()).or_default() += 1;
        let consistent = b"\"ConsistentRead\":true";
        if bytes.windows(consistent.len()).any(|w| w == consistent) {
            *t.entry(format!("{target} consistent")).or_default() += 1;
        }
    }
    let action = rules.lock().ok().and_then(|mut rules| {
        let rule = rules.iter_mut().find(|r| {
            r.target == target
                && r.contains
                    .as_ref()
                    .is_none_or(|c| bytes.windows(c.len().max(1)).any(|w| w == c.as_bytes()))
        })?;
        rule.calls += 1;
        // The first call of every `one_in` is acted on.
        let act = (rule.calls - 1) % rule.one_in == 0;
        rule.faulted += u32::from(act);
        act.then(|| rule.action.clone())
    });
    match action {
        Some(Action::Fail(fault)) => return Ok(fault_response(&fault)),
        Some(Action::Hold(delay)) => tokio::time::sleep(delay).await,
        None => {}
    }
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

/// An AWS JSON error answer.
fn fault_response(fault: &Fault) -> Response<Full<Bytes>> {
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
    resp
}
