//! The one mapping of a rejection to the wire: a WebSocket `error` frame or an HTTP error body.

use chat_actors::protocol::{Rejection, ServerFrame};

/// The `error` frame answering request `id`.
pub fn error_frame(id: Option<u64>, rejection: Rejection) -> ServerFrame {
    ServerFrame::Error {
        id,
        code: rejection.code,
        message: rejection.message,
    }
}

/// The JSON body `{"error":{"code","message"}}` and the status for a rejection.
pub fn http_error(rejection: &Rejection) -> (u16, serde_json::Value) {
    (
        rejection.code.http_status(),
        serde_json::json!({"error": {"code": rejection.code, "message": rejection.message}}),
    )
}
