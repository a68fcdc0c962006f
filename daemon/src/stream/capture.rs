//! A successful response's body (a GetRecords body, a SubscribeToShard
//! event stream), taken before the SDK's deserializer sees it.

use std::sync::{Arc, Mutex};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;

/// Takes the body of a successful response before the SDK deserializes it,
/// leaving the SDK a minimal valid body. Error responses are left to the
/// SDK, which classifies them.
#[derive(Clone, Debug)]
pub(super) struct CaptureBody {
    slot: Arc<Mutex<Option<SdkBody>>>,
    replacement: fn() -> SdkBody,
}

impl Default for CaptureBody {
    /// For GetRecords: the SDK is left `{"Records":[]}`.
    fn default() -> Self {
        CaptureBody::replacing_with(|| SdkBody::from(r#"{"Records":[]}"#))
    }
}

impl CaptureBody {
    /// Leaves the SDK `replacement()` as the body it deserializes.
    pub(super) fn replacing_with(replacement: fn() -> SdkBody) -> Self {
        CaptureBody {
            slot: Arc::default(),
            replacement,
        }
    }

    pub(super) fn take(&self) -> Option<SdkBody> {
        self.slot.lock().ok()?.take()
    }

    /// The captured GetRecords body, read whole, once the call succeeded.
    pub(super) async fn body(&self) -> Result<bytes::Bytes, super::KinesisError> {
        use super::KinesisError;
        let body = self.take().ok_or_else(|| {
            KinesisError::Other("GetRecords: the response body was not captured".into())
        })?;
        read_body(body).await.map_err(|e| {
            KinesisError::Unreachable(format!("GetRecords: reading the response: {e}"))
        })
    }
}

impl Intercept for CaptureBody {
    fn name(&self) -> &'static str {
        "kcld-response-body"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        if response.status().is_success() {
            let body = std::mem::replace(response.body_mut(), (self.replacement)());
            if let Ok(mut slot) = self.slot.lock() {
                *slot = Some(body);
            }
        }
        Ok(())
    }
}

/// Reads a whole response body into one buffer, sized once from its
/// length when known and filled as the chunks arrive, each chunk freed at
/// once: a body of a megabyte or more is held once, not once in chunks and
/// again in the copy that joins them. A body that comes in one chunk is
/// taken as it is.
pub(super) async fn read_body(mut body: SdkBody) -> Result<bytes::Bytes, BoxError> {
    use http_body_util::BodyExt;
    let expected = body.content_length().and_then(|n| usize::try_from(n).ok());
    let mut joined: Option<bytes::BytesMut> = None;
    let mut first: Option<bytes::Bytes> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue; // trailers: none on these responses
        };
        match (&mut joined, first.take()) {
            (Some(buf), _) => buf.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(earlier)) => {
                let mut buf = bytes::BytesMut::with_capacity(
                    expected.unwrap_or(0).max(earlier.len() + data.len()),
                );
                buf.extend_from_slice(&earlier);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
        }
    }
    Ok(match (joined, first) {
        (Some(buf), _) => buf.freeze(),
        (None, Some(only)) => only,
        (None, None) => bytes::Bytes::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: &[&'static [u8]]) -> SdkBody {
        let frames = parts
            .iter()
            .map(|p| {
                Ok::<_, std::io::Error>(hyper::body::Frame::data(bytes::Bytes::from_static(p)))
            })
            .collect::<Vec<_>>();
        SdkBody::from_body_1_x(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    #[tokio::test]
    async fn bodies_are_read_whole_whatever_their_chunks() {
        assert_eq!(read_body(chunked(&[])).await.unwrap(), &b""[..]);
        assert_eq!(read_body(chunked(&[b"one"])).await.unwrap(), &b"one"[..]);
        assert_eq!(
            read_body(chunked(&[b"a", b"bc", b"", b"def"]))
                .await
                .unwrap(),
            &b"abcdef"[..]
        );
        assert_eq!(
            read_body(SdkBody::from("in memory")).await.unwrap(),
            &b"in memory"[..]
        );
    }
}
