//! WebSocket messages ↔ protocol frames: binary MessagePack or, with `chat.v1+json`, text JSON.

use bytes::Bytes;
use chat_actors::protocol::Format;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// The subprotocol that selects JSON text frames.
pub const JSON_SUBPROTOCOL: &str = "chat.v1+json";

/// Wraps encoded bytes in the message type of `format`.
pub fn to_message(format: Format, bytes: Bytes) -> Message {
    match format {
        Format::MsgPack => Message::Binary(bytes),
        // Our JSON encoder only writes UTF-8; a failure here would be a bug, sent as binary.
        Format::Json => match Utf8Bytes::try_from(bytes.clone()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(bytes),
        },
    }
}
