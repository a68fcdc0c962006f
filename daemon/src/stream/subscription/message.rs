//! What one event-stream message of a subscription says: its type from
//! its header block (read before its payload has arrived, to decide whether
//! it is split), and, received whole, its event or exception.

use aws_smithy_types::event_stream::Message;
use kcld_records::getrecords::{self, SubscribeEvent};

use super::Fault;
use crate::stream::error::EventException;

/// Whether an event-stream header block says `:message-type` `event` and
/// `:event-type` `SubscribeToShardEvent`; `false` for anything it cannot
/// read (the message is then framed whole, and its errors reported).
pub(super) fn is_subscribe_event(mut headers: &[u8]) -> bool {
    let (mut event, mut subscribe) = (false, false);
    while let Some((&name_len, rest)) = headers.split_first() {
        let Some((name, rest)) = rest.split_at_checked(usize::from(name_len)) else {
            return false;
        };
        let Some((&kind, rest)) = rest.split_first() else {
            return false;
        };
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return false,
        };
        let (value, rest) = match fixed {
            Some(n) => match rest.split_at_checked(n) {
                Some(split) => split,
                None => return false,
            },
            None => {
                let Some((len, rest)) = rest.split_at_checked(2) else {
                    return false;
                };
                match rest.split_at_checked(usize::from(u16::from_be_bytes([len[0], len[1]]))) {
                    Some(split) => split,
                    None => return false,
                }
            }
        };
        if kind == 7 {
            match name {
                b":message-type" => event = value == b"event",
                b":event-type" => subscribe = value == b"SubscribeToShardEvent",
                _ => {}
            }
        }
        headers = rest;
    }
    event && subscribe
}

/// A message received whole: a decoded `SubscribeToShardEvent`, `None`
/// for an event of another type (the initial response, or a type newer
/// than kcld), or the exception it carries.
pub(super) fn decode_message(message: &Message) -> Result<Option<SubscribeEvent>, Fault> {
    let header = |name: &str| {
        message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| h.value().as_string().ok())
            .map(|v| v.as_str().to_owned())
    };
    match header(":message-type").as_deref() {
        Some("event") => match header(":event-type").as_deref() {
            Some("SubscribeToShardEvent") => getrecords::decode_subscribe_event(message.payload())
                .map(Some)
                .map_err(|e| Fault::Broken(e.to_string())),
            _ => Ok(None),
        },
        Some("exception") => {
            #[derive(serde::Deserialize)]
            struct Body {
                #[serde(alias = "Message")]
                message: Option<String>,
            }
            let message_text = serde_json::from_slice::<Body>(message.payload())
                .ok()
                .and_then(|b| b.message)
                .unwrap_or_default();
            Err(Fault::Exception(EventException::new(
                header(":exception-type").unwrap_or_default(),
                message_text,
            )))
        }
        Some("error") => Err(Fault::Exception(EventException::new(
            header(":error-code").unwrap_or_default(),
            header(":error-message").unwrap_or_default(),
        ))),
        other => Err(Fault::Broken(format!(
            "event-stream message of type {other:?}"
        ))),
    }
}
