//! The record shape of a Lambda Kinesis (or DynamoDB) event, shared by the sinks so that a
//! Lambda handler's code reads kcld's output unchanged. The encoder lives in
//! `kcld-records` ([`kcld_records::lambda`]), beside the decoder, where it is
//! benchmarked; this module ties it to the configuration.

use kcld_config::Settings;

pub use kcld_records::lambda::{encoded_len, write_record, EventContext};

/// The context for the configured stream and `sink.invoke_identity_arn`;
/// a DynamoDB table's stream gets Lambda's DynamoDB event record shape.
pub fn context(settings: &Settings) -> EventContext {
    if settings.stream_arn.is_dynamodb() {
        return EventContext::dynamodb(
            settings.stream_arn.region.clone(),
            settings.stream_arn.to_string(),
        );
    }
    EventContext::new(
        settings.stream_arn.region.clone(),
        settings.stream_arn.to_string(),
        settings.sink.invoke_identity_arn.clone(),
    )
}
