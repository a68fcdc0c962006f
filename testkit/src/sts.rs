//! An STS endpoint for the local stack, answering GetCallerIdentity only.
//!
//! Neither emulator serves STS, and kcld asks it one question: which
//! account is calling (before it registers a fan-out consumer, which only
//! the stream's own account may do). The answer follows the Kinesis
//! emulator's rule: a 12-digit access key id is the caller's account. The
//! SDK's real STS client talks to it over HTTP with its real serializers.

use std::net::SocketAddr;

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

/// A running identity endpoint; stops when dropped.
pub struct Identity {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
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
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(answer);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Identity { addr, task })
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

async fn answer(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let authorization = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req.into_body().collect().await?.to_bytes();
    let form = String::from_utf8_lossy(&body);
    if !form.split('&').any(|kv| kv == "Action=GetCallerIdentity") {
        let mut resp = Response::new(Full::new(Bytes::from_static(
            b"<ErrorResponse><Error><Type>Sender</Type><Code>InvalidAction</Code><Message>only GetCallerIdentity is served here</Message></Error></ErrorResponse>",
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
