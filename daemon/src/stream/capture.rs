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
