//! An STS endpoint for the local stack, answering GetCallerIdentity and
//! AssumeRole.
//!
//! Neither emulator serves STS. kcld asks it which account is calling
//! (before it registers a fan-out consumer, which only the stream's own
//! account may do), and assumes `aws.assume_role_arn`. The answers follow
//! the Kinesis emulator's rule: a 12-digit access key id is the caller's
//! account, so the temporary keys of an assumed role are the role's account
//! number, and calls signed with them are that account's. The SDK's real
//! STS client talks to it over HTTP with its real serializers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A running identity endpoint; stops when dropped.
pub struct Identity {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

/// What the endpoint refuses, and the AssumeRole calls it answered.
#[derive(Default)]
struct State {
    denied: HashSet<String>,
    assumed: Vec<AssumeRoleCall>,
}

/// One AssumeRole request, as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AssumeRoleCall {
    /// The account that asked (its access key id).
    pub caller: String,
    pub role_arn: String,
    pub session_name: String,
    pub external_id: Option<String>,
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Identity {
    /// Listens on a free loopback port.
    pub async fn start() -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state: Arc<Mutex<State>> = Arc::default();
        let shared = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let state = state.clone();
                        async move { answer(req, &state).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Identity { addr, state, task })
    }

    /// AssumeRole of `role_arn` is refused (AccessDenied) from now on.
    pub fn deny(&self, role_arn: &str) {
        if let Ok(mut s) = self.state.lock() {
            s.denied.insert(role_arn.to_owned());
        }
    }

    /// The AssumeRole calls answered so far (granted or refused).
    pub fn assumed(&self) -> Vec<AssumeRoleCall> {
        self.state
            .lock()
            .map(|s| s.assumed.clone())
            .unwrap_or_default()
    }

    /// The endpoint URL (`AWS_ENDPOINT_URL_STS`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// The account of a SigV4 `Authorization` header's access key id, as the
/// Kinesis emulator judges it.
pub fn account_of(authorization: &str) -> String {
    let key = authorization
        .split("Credential=")
        .nth(1)
        .and_then(|c| c.split('/').next())
        .unwrap_or_default();
    if key.len() == 12 && key.bytes().all(|b| b.is_ascii_digit()) {
        key.to_owned()
    } else {
        "000000000000".to_owned()
    }
}

/// A form value, percent-decoded.
fn form_value(form: &str, name: &str) -> Option<String> {
    let raw = form
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?;
    let bytes = raw.replace('+', " ").into_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&String::from_utf8_lossy(&bytes[i + 1..i + 3]), 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Some(String::from_utf8_lossy(&out).into_owned())
}

fn xml(body: String, status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/xml"),
    );
    resp
}

/// AssumeRole: temporary keys whose id is the role's account.
fn assume_role(form: &str, caller: &str, state: &Mutex<State>) -> Response<Full<Bytes>> {
    let call = AssumeRoleCall {
        caller: caller.to_owned(),
        role_arn: form_value(form, "RoleArn").unwrap_or_default(),
        session_name: form_value(form, "RoleSessionName").unwrap_or_default(),
        external_id: form_value(form, "ExternalId"),
    };
    let denied = state
        .lock()
        .map(|mut s| {
            s.assumed.push(call.clone());
            s.denied.contains(&call.role_arn)
        })
        .unwrap_or(false);
    if denied {
        return xml(
            format!(
                "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><Error><Type>Sender</Type>\
                 <Code>AccessDenied</Code><Message>User: arn:aws:iam::{caller}:user/local is not authorized \
                 to perform: sts:AssumeRole on resource: {role}</Message></Error><RequestId>local</RequestId></ErrorResponse>",
                role = call.role_arn
            ),
            StatusCode::FORBIDDEN,
        );
    }
    let account = call
        .role_arn
        .split(':')
        .nth(4)
        .unwrap_or("000000000000")
        .to_owned();
    let role = call.role_arn.rsplit('/').next().unwrap_or("role");
    xml(
        format!(
            "<AssumeRoleResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleResult>\
             <Credentials><AccessKeyId>{account}</AccessKeyId><SecretAccessKey>local-secret</SecretAccessKey>\
             <SessionToken>local-session-{session}</SessionToken><Expiration>2099-01-01T00:00:00Z</Expiration></Credentials>\
             <AssumedRoleUser><AssumedRoleId>AROALOCAL:{session}</AssumedRoleId>\
             <Arn>arn:aws:sts::{account}:assumed-role/{role}/{session}</Arn></AssumedRoleUser>\
             </AssumeRoleResult><ResponseMetadata><RequestId>local</RequestId></ResponseMetadata></AssumeRoleResponse>",
            session = call.session_name
        ),
        StatusCode::OK,
    )
}

async fn answer(
    req: Request<Incoming>,
    state: &Mutex<State>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    let form = String::from_utf8_lossy(&body);
    if form.split('&').any(|kv| kv == "Action=AssumeRole") {
        return Ok(assume_role(&form, &account_of(&authorization), state));
    }
    if !form.split('&').any(|kv| kv == "Action=GetCallerIdentity") {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            b"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>only GetCallerIdentity and AssumeRole are served here</Message></Error></ErrorResponse>",
        )));
        *resp.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(resp);
    }
    let account = account_of(&authorization);
    let xml = format!(
        "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\
         <GetCallerIdentityResult><Arn>arn:aws:iam::{account}:user/local</Arn>\
         <UserId>AIDALOCAL{account}</UserId><Account>{account}</Account></GetCallerIdentityResult>\
         <ResponseMetadata><RequestId>local</RequestId></ResponseMetadata></GetCallerIdentityResponse>"
    );
    let mut resp = Response::new(Full::new(Bytes::from(xml)));
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("text/xml"),
    );
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_access_key_id_names_the_account() {
        let h = "AWS4-HMAC-SHA256 Credential=222222222222/20261123/us-east-1/sts/aws4_request, SignedHeaders=host, Signature=ab";
        assert_eq!(account_of(h), "222222222222");
        assert_eq!(
            account_of("AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/2026/x"),
            "000000000000"
        );
    }
}
